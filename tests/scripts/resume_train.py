"""A tiny head-training run with mid-epoch checkpoints, optionally killed with SIGKILL at a step.

Run as ``python resume_train.py FOLDER KILL_AT``: trains with a checkpoint every ``EVERY`` steps into
``FOLDER/ckpt`` and sends itself SIGKILL right after step ``KILL_AT`` (no clean shutdown, nothing
flushed: what a crash or an out-of-memory kill leaves behind). tests/training/test_training.py imports
``fit`` from here for the uninterrupted and the resumed runs, so all three share one set-up.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import LlamaConfig, LlamaForCausalLM

from jetspec.drafters import JetSpecHead
from jetspec.training.data import TokenDataModule

BATCH, SEQS = 2, 10  # 5 batches per epoch
STEPS, EVERY = 8, 2  # checkpoints at steps 2, 4, 6: the ones at 2 and 6 are mid-epoch


class KillAt(L.Callback):
    """SIGKILL this process once ``step`` optimizer steps are done (before any later checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def sequences() -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(8, 16, (SEQS,), generator=gen).tolist()
    return [{"input_ids": torch.randint(0, 64, (n,), generator=gen).tolist(), "response_start": n // 3}
            for n in lengths]


def fit(folder: str, kill_at: Optional[int] = None, ckpt_path: Optional[str] = None) -> JetSpecHead:
    """Train from scratch (or from ``ckpt_path``) to ``STEPS`` steps; the same run every time."""
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    target = LlamaForCausalLM(cfg).double().eval()
    torch.manual_seed(0)
    head = JetSpecHead(target, block_size=4, anchors_per_seq=3, lr=1e-2, warmup_steps=0)
    saver = ModelCheckpoint(dirpath=os.path.join(folder, "ckpt"), save_last=True, every_n_train_steps=EVERY,
                            save_top_k=-1)
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[saver] + ([KillAt(kill_at)] if kill_at else []))
    trainer.fit(head, datamodule=TokenDataModule(sequences(), batch_size=BATCH, seed=3), ckpt_path=ckpt_path)
    return head


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    fit(sys.argv[1], kill_at=int(sys.argv[2]))
