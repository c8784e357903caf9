"""Train a head for a few steps with N CPU processes and write the per-step losses (rank 0).

Run as ``python ddp_train.py OUT.json DEVICES STRATEGY``: tests/training/test_ddp.py compares one process
with batch 2*b against two processes with batch b each (same global batch, same data order).
It is a script, not a test, because under pytest Lightning's ddp launcher would re-run pytest.
"""

from __future__ import annotations

import json
import sys
import warnings

import lightning as L
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from jetspec.drafters import DFlashHead, JetSpecHead
from jetspec.training.data import TokenDataModule

GLOBAL_BATCH = 4
STEPS = 4


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss"]))


def main(out: str, devices: int, strategy: str, head_name: str) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    target = LlamaForCausalLM(cfg).double().eval()
    gen = torch.Generator().manual_seed(1)
    # Different lengths and response starts, so the processes hold different numbers of supervised slots.
    lengths, starts = torch.randint(10, 24, (16,), generator=gen), torch.randint(0, 8, (16,), generator=gen)
    seqs = [{"input_ids": torch.randint(0, 64, (int(n),), generator=gen).tolist(), "response_start": int(r)}
            for n, r in zip(lengths, starts)]
    torch.manual_seed(0)
    cls = {"jetspec": JetSpecHead, "dflash": DFlashHead}[head_name]
    head = cls(target, block_size=4, anchors_per_seq=3, lr=1e-2, warmup_steps=0)
    rec = LossRecorder()
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", devices=devices, strategy=strategy, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[rec], num_sanity_val_steps=0)
    trainer.fit(head, datamodule=TokenDataModule(seqs, batch_size=GLOBAL_BATCH // devices, seed=3))
    if trainer.is_global_zero:
        weights = {k: v.sum().item() for k, v in head.net.state_dict().items()}
        json.dump({"losses": rec.losses, "weights": weights, "world": trainer.world_size}, open(out, "w"))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "jetspec")
