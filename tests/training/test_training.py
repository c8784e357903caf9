"""Training a parallel head: anchors, the packed mask, losses, teacher and cache, data, Lightning, learning.

The unit tests compare each piece with its definition written the slow, obvious way. The
integration tests run real ``lightning.Trainer`` fits on tiny targets; the learning test checks
that a few hundred CPU steps on target-written data raise tau well above an untrained head.
"""

from __future__ import annotations

import copy
import csv
import json

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import random_seqs, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec import SpeculativeDecoder
from jetspec.core.target import Teacher
from jetspec.drafters import DFlashHead, JetSpecHead, ParallelHead
from jetspec.testing.toy import mean_tau, peaked_tiny_target
from jetspec.training.data import TokenDataModule, collate, sample_continuations
from jetspec.training.recipe import (
    TeacherCache,
    TrainConfig,
    acceptance_estimate,
    block_targets,
    depth_weights,
    forward_kl,
    on_policy_slots,
    packed_block_mask,
    sample_anchors,
    topk_forward_kl,
    warmup_cosine,
)
from jetspec.trees import BestFirstBuilder

QUIET = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)


# ------------------------------------------------------------------------------ anchors and masks
@settings(deadline=None)
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=5),
       starts=st.lists(st.integers(0, 30), min_size=5, max_size=5), num=st.integers(1, 12),
       seed=st.integers(0, 1000))
def test_anchors_lie_in_the_response_span(lengths, starts, num, seed):
    b = len(lengths)
    ln, rs = torch.tensor(lengths), torch.tensor(starts[:b])
    seeds = [seed + i for i in range(b)]
    anchors, valid = sample_anchors(ln, rs, num, seeds)
    for i in range(b):
        picked = anchors[i][valid[i]].tolist()
        lo, hi = max(int(rs[i]) - 1, 0), int(ln[i]) - 2
        assert picked == sorted(set(picked)) and all(lo <= a <= hi for a in picked)
        assert len(picked) == min(num, max(0, hi - lo + 1))
        # A sequence's anchors depend on its own seed only, not on its batch neighbours.
        alone, _ = sample_anchors(ln[i: i + 1], rs[i: i + 1], num, seeds[i: i + 1])
        assert torch.equal(alone[0], anchors[i])


@settings(deadline=None)
@given(t=st.integers(1, 12), s=st.integers(2, 5), causal=st.booleans(), data=st.data())
def test_packed_block_mask_matches_its_definition(t, s, causal, data):
    a = data.draw(st.integers(1, 4))
    anchors = torch.tensor([data.draw(st.lists(st.integers(0, t), min_size=a, max_size=a))])
    mask = packed_block_mask(anchors, t, s, causal, torch.float64)[0, 0]  # [A*S, T + A*S]
    for qa in range(a):
        for qi in range(s):
            row = mask[qa * s + qi]
            for j in range(t):
                assert (row[j] == 0) == (j < int(anchors[0, qa]))
            for ka in range(a):
                for kj in range(s):
                    visible = ka == qa and (kj <= qi or not causal)
                    assert (row[t + ka * s + kj] == 0) == visible


def test_block_targets_supervise_slot_k_with_position_a_plus_k_minus_1():
    anchors, valid = torch.tensor([[2, 5], [0, 0]]), torch.tensor([[True, True], [True, False]])
    rows, ok = block_targets(anchors, valid, 4, torch.tensor([8, 3]))
    assert rows[0, 0].tolist() == [2, 3, 4] and rows[0, 1].tolist() == [5, 6, 7]
    # Sequence 0 has 8 tokens: anchor 5's slot 3 would predict token 8, which does not exist.
    assert ok[0, 1].tolist() == [True, True, False]
    assert ok[1, 0].tolist() == [True, True, False] and not ok[1, 1].any()


@settings(deadline=None, max_examples=40)
@given(data=st.data(), t=st.integers(2, 16), s=st.integers(2, 6), vocab=st.integers(2, 4))
def test_on_policy_slots_match_their_definition(data, t, s, vocab):
    ids = torch.tensor(data.draw(st.lists(st.integers(0, vocab - 1), min_size=t, max_size=t)))[None]
    top1 = torch.tensor(data.draw(st.lists(st.integers(0, vocab - 1), min_size=t, max_size=t)))[None]
    anchors = torch.tensor(data.draw(st.lists(st.integers(0, t - 1), min_size=1, max_size=4)))[None]
    rows, _ = block_targets(anchors, torch.ones_like(anchors, dtype=torch.bool), s, torch.tensor([t]))
    rows = rows.clamp(max=t - 1)
    got = on_policy_slots(ids, top1, rows)
    for j, a in enumerate(anchors[0].tolist()):
        for k in range(1, s):  # slot k: tokens a+1..a+k-1 must each be the argmax one position earlier
            want = all(a + i < t and ids[0, a + i] == top1[0, a + i - 1] for i in range(1, k))
            assert bool(got[0, j, k - 1]) == want, (a, k)


def test_on_policy_keeps_greedy_text_and_cuts_other_text(llama64):
    """On the target's own greedy text every slot stays; on random text deep slots are dropped."""
    from jetspec import autoregressive_generate

    greedy = autoregressive_generate(llama64, torch.tensor([[3, 4, 5]]), 24).sequences[0].tolist()
    seqs = [{"input_ids": greedy, "response_start": 3}] + random_seqs(3, seed=1, lo=20, hi=27)
    batch = collate([{"input_ids": torch.tensor(r["input_ids"]), "response_start": r["response_start"], "index": i}
                     for i, r in enumerate(seqs)])
    counts = {}
    for on in (False, True):
        torch.manual_seed(0)
        head = JetSpecHead(llama64, block_size=4, anchors_per_seq=6, on_policy=on)
        counts[on] = head.slot_batch(batch, epoch=0).ok.sum((1, 2))  # supervised slots per sequence
    assert counts[True][0] == counts[False][0] > 0
    assert (counts[True][1:] < counts[False][1:]).all()


# ------------------------------------------------------------------------------ losses and metrics
def test_losses_match_their_definitions():
    gen = torch.Generator().manual_seed(0)
    p, q = (torch.randn(5, 11, generator=gen, dtype=torch.float64) for _ in range(2))
    want = F.kl_div(torch.log_softmax(q, -1), torch.log_softmax(p, -1), log_target=True,
                    reduction="none").sum(-1)
    torch.testing.assert_close(forward_kl(p, q), want)
    assert forward_kl(p, p).abs().max() < 1e-12
    top = p.topk(11)
    torch.testing.assert_close(topk_forward_kl(top.values, top.indices, q), want)  # k = V: the full KL
    top3 = p.topk(3)
    q_good = torch.full_like(q, -30.0).scatter(-1, top3.indices, top3.values)
    assert topk_forward_kl(top3.values, top3.indices, q_good).abs().max() < 1e-9
    torch.testing.assert_close(depth_weights(3, None), torch.ones(3))
    torch.testing.assert_close(depth_weights(3, 2.0), torch.exp(-torch.arange(3.0) / 2))
    assert acceptance_estimate([1.0, 1.0, 1.0]) == 4.0
    assert acceptance_estimate(torch.tensor([0.5, 0.5, 0.0])) == pytest.approx(1.75)
    assert warmup_cosine(0, 10, 100, 0.1) == pytest.approx(0.1) and warmup_cosine(9, 10, 100, 0.1) == 1.0
    assert warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="kl_topk"):
        TrainConfig(teacher_cache="x")


# ------------------------------------------------------------------------------ teacher
def test_teacher_taps_equal_the_decoders_taps(llama64):
    from jetspec.core.target import TargetModel

    ids = torch.randint(0, 64, (2, 9))
    out = Teacher(llama64, (0, 1))(ids)
    hf = llama64(ids, output_hidden_states=True)
    # HF's hidden_states[l + 1] is layer l's output, except the last entry, which is after the final norm.
    torch.testing.assert_close(out.taps[..., :32], hf.hidden_states[1], rtol=0, atol=0)
    torch.testing.assert_close(out.logits, hf.logits, rtol=0, atol=0)
    # What the head trains on is what the decoding loop will hand it (TargetModel's hooks).
    tm = TargetModel(llama64)
    tm.set_taps((0, 1))
    torch.testing.assert_close(tm.prefill(ids[0]), out.taps[0, :-1], rtol=0, atol=1e-12)
    top = Teacher(llama64, (1,), topk=4)(ids)
    assert top.logits is None and top.top_indices.shape == (2, 9, 4)
    assert torch.equal(top.top1(), hf.logits.argmax(-1))


def test_capture_taps_is_one_hook_set_removed_on_exit(llama64):
    from jetspec.core.target import capture_taps

    layers = llama64.get_decoder().layers
    ids = torch.randint(0, 64, (1, 5))
    with capture_taps(llama64, (0,)) as captured:
        hf = llama64(ids, output_hidden_states=True)
    before = [len(layer._forward_hooks) for layer in layers]  # transformers may add hooks of its own
    assert set(captured) == {0}
    torch.testing.assert_close(captured[0], hf.hidden_states[1], rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="boom"), capture_taps(llama64, (0, 1)):
        raise RuntimeError("boom")
    assert [len(layer._forward_hooks) for layer in layers] == before  # removed after the error too


def test_teacher_cache_reuses_shards_and_changes_nothing(llama64, tmp_path):
    seqs = random_seqs(6)
    batch = collate([{"input_ids": torch.tensor(s["input_ids"]), "response_start": s["response_start"],
                      "index": i} for i, s in enumerate(seqs)])
    cached = JetSpecHead(llama64, block_size=4, kl_topk=8, teacher_cache=str(tmp_path / "cache"))
    plain = JetSpecHead(llama64, block_size=4, kl_topk=8)
    plain.net.load_state_dict(cached.net.state_dict())
    first = cached.slot_batch(batch, epoch=0)
    shards = sorted((tmp_path / "cache").glob("shard-*"))
    second = cached.slot_batch(batch, epoch=0)  # served from disk
    assert sorted((tmp_path / "cache").glob("shard-*")) == shards and len(shards) == 1
    ref = plain.slot_batch(batch, epoch=0)
    torch.testing.assert_close(first.losses, ref.losses, rtol=0, atol=0)
    torch.testing.assert_close(second.losses, ref.losses, rtol=0, atol=0)
    with pytest.raises(ValueError, match="made for"):
        TeacherCache(tmp_path / "cache", (0,), 8)


# ------------------------------------------------------------------------------ data
def tiny_tokenizer():
    """A word-level tokenizer built offline, with a chat template (0 pad, 1 bos, 2 eos, 3 unk)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>", "user", "assistant", ":"] + [f"w{i}" for i in range(57)]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    tok.chat_template = ("{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                         "{% if add_generation_prompt %}<s> assistant : {% endif %}")
    return tok


def test_datamodule_batches_and_splits():
    dm = TokenDataModule([[5, 6, 7], {"input_ids": [1, 2, 3, 4], "response_start": 2}, [9], [4, 4]] * 3,
                         batch_size=4, val_fraction=0.25, shuffle=False)
    assert dm.num_dropped == 3  # the one-token sequences
    assert len(dm.train_set) + len(dm.val_set) == 9 and len(dm.val_set) == 2
    assert not set(dm.train_set.indices) & set(dm.val_set.indices)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 4)
    assert batch["attention_mask"].sum(1).tolist() == batch["lengths"].tolist()
    row = batch["index"].tolist().index(1)
    assert batch["response_start"][row] == 2 and batch["input_ids"][row].tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="no usable sequence"):
        TokenDataModule([[1]])


def test_resumable_sampler_skips_what_was_trained_and_refuses_other_data():
    from jetspec.training.data import ResumableSampler

    dm = TokenDataModule(random_seqs(10), batch_size=2, seed=5)
    sampler = ResumableSampler(dm.train_set, num_replicas=1, rank=0, shuffle=True, seed=5)
    sampler.tracked = True
    sampler.set_epoch(1)
    whole = list(sampler)
    sampler.advance(2)
    sampler.advance(2)
    state = sampler.state_dict()
    assert (state["epoch"], state["position"]) == (1, 4)
    again = ResumableSampler(dm.train_set, num_replicas=1, rank=0, shuffle=True, seed=5)
    again.tracked = True
    again.load_state_dict(state)
    again.set_epoch(1)
    assert list(again) == whole[4:] and len(again) == len(whole)
    assert list(again) == whole  # only the resumed epoch is cut
    again.set_epoch(2)
    assert again.state_dict()["position"] == 0  # nothing of epoch 2 trained yet
    other = ResumableSampler(TokenDataModule(random_seqs(12), seed=5).train_set, 1, 0, True, 5)
    with pytest.raises(ValueError, match="num_items 10 in the checkpoint, 12 now"):
        other.load_state_dict(state)
    with pytest.warns(UserWarning, match="no position"):
        other.load_state_dict({**state, "position": None})


def test_text_front_ends(tmp_path):
    tok = tiny_tokenizer()
    rows = [{"prompt": "w1 w2", "response": "w3 w4"},
            {"messages": [{"role": "user", "content": "w5"}, {"role": "assistant", "content": "w6 w7"}]},
            {"input_ids": [1, 9, 10, 11], "response_start": 2},
            {"text": "w8 w9 w10"}]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dm = TokenDataModule.from_path(path, tok, shuffle=False)
    ex = dm.train_set.examples
    prompt = tok.apply_chat_template([{"role": "user", "content": "w1 w2"}], add_generation_prompt=True,
                                     tokenize=True)["input_ids"]
    assert ex[0].input_ids[: ex[0].response_start] == list(prompt)
    assert tok.decode(ex[0].input_ids[ex[0].response_start:]).split()[:2] == ["w3", "w4"]
    assert tok.decode(ex[1].input_ids[ex[1].response_start:]).split()[:2] == ["w6", "w7"]
    assert (ex[2].input_ids, ex[2].response_start) == ([1, 9, 10, 11], 2)
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"w{i % 50}" for i in range(25)))
    chunks = TokenDataModule.from_path(text, tok, chunk_length=10).train_set.examples
    assert [len(e.input_ids) for e in chunks] == [10, 10, 5]
    (tmp_path / "bad.jsonl").write_text('{"question": "w1"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        TokenDataModule.from_jsonl(tmp_path / "bad.jsonl", tok)
    with pytest.raises(FileNotFoundError):
        TokenDataModule.from_path(tmp_path / "missing.jsonl", tok)


def test_sample_continuations_are_the_targets_own(llama64):
    from jetspec import autoregressive_generate

    prompts = [[5, 6, 7], [8, 9], [10, 11, 12]]
    rows = sample_continuations(llama64, prompts, max_new_tokens=6)
    for p, row in zip(prompts, rows):
        assert row["response_start"] == len(p) and row["input_ids"][: len(p)] == p
        eos = llama64.config.eos_token_id
        want = autoregressive_generate(llama64, torch.tensor([p]), 6, eos_token_id=eos)
        assert row["input_ids"] == want.sequences[0].tolist()
    sampled = [sample_continuations(llama64, prompts, 6, temperature=1.0, seed=3) for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_hf_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"prompt": "w1", "response": "w2 w3"}]).save_to_disk(str(tmp_path / "ds"))
    assert len(TokenDataModule.from_path(tmp_path / "ds", tiny_tokenizer()).train_set) == 1


# ------------------------------------------------------------------------------ Lightning
def test_the_users_line_works(llama64):
    seqs = random_seqs(10)
    target = llama64
    L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False).fit(
        JetSpecHead(target, num_layers=1, block_size=16), datamodule=TokenDataModule(seqs))


def test_logging_validation_checkpoint_and_resume(qwen64, tmp_path):
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    # 9 training sequences in batches of 4: 3 steps per epoch.
    dm = lambda: TokenDataModule(random_seqs(12, seed=1), batch_size=4, val_fraction=0.25)

    class StopAt(L.Callback):  # an interrupted run (same max_steps, so the same LR schedule)
        def __init__(self, step):
            self.step = step

        def on_train_batch_end(self, trainer, *args):
            trainer.should_stop = trainer.should_stop or trainer.global_step >= self.step

    def fit(stop=None, ckpt=None, folder="run"):
        torch.manual_seed(0)
        head = DFlashHead(qwen64, block_size=4, anchors_per_seq=4, decay_gamma=4.0, warmup_steps=2)
        saver = ModelCheckpoint(dirpath=tmp_path / folder / "ckpt", save_last=True, every_n_train_steps=3)
        callbacks = [saver, LearningRateMonitor("step")] + ([StopAt(stop)] if stop else [])
        trainer = L.Trainer(max_steps=6, logger=CSVLogger(tmp_path, name=folder), gradient_clip_val=1.0,
                            callbacks=callbacks, log_every_n_steps=1, **QUIET)
        trainer.fit(head, datamodule=dm(), ckpt_path=ckpt)
        return head, trainer

    straight, _ = fit(folder="straight")
    _, first = fit(stop=3)
    assert first.global_step == 3
    resumed, trainer = fit(ckpt=str(tmp_path / "run" / "ckpt" / "last.ckpt"))
    assert trainer.global_step == 6
    for (name, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)
    rows = list(csv.DictReader(open(first.logger.log_dir + "/metrics.csv")))
    keys = set().union(*rows)
    assert {"train/loss", "val/loss", "val/accept_len", "val/agree_d1", "val/agree_d3", "lr-AdamW"} <= keys
    acc = [float(r["val/accept_len"]) for r in rows if r.get("val/accept_len")]
    assert acc and all(1.0 <= a <= 4.0 for a in acc)


def _resume_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "scripts" / "resume_train.py"
    spec = importlib.util.spec_from_file_location("resume_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(tmp_path):
    """Killed after step 3 (last checkpoint: step 2, mid-epoch), resumed: the weights of a straight run."""
    import subprocess
    import sys

    script, run = _resume_script()
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "killed"), "3"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-3000:]  # SIGKILL: no clean shutdown
    ckpts = tmp_path / "killed" / "ckpt"
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    straight = run.fit(str(tmp_path / "straight"))
    want = straight.net.state_dict()

    def same(head) -> bool:
        return all(torch.allclose(a, want[k], rtol=1e-9, atol=1e-12) for k, a in head.net.state_dict().items())

    assert same(run.fit(str(tmp_path / "resumed"), ckpt_path=str(ckpts / "last.ckpt")))
    # Resuming in the second epoch (step 6 = batch 1 of epoch 1) works the same way.
    assert same(run.fit(str(tmp_path / "resumed6"),
                        ckpt_path=str(tmp_path / "straight" / "ckpt" / "epoch=1-step=6.ckpt")))
    # Negative control: without the data position the resumed epoch starts over and the weights differ.
    state = torch.load(ckpts / "last.ckpt", weights_only=False)
    loader_states = state["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_states == [{"epoch": 0, "position": 4, "num_replicas": 1, "num_items": 10, "seed": 3,
                              "shuffle": True}]  # 2 steps of 2 items
    loader_states[0]["position"] = 0
    torch.save(state, tmp_path / "blind.ckpt")
    assert not same(run.fit(str(tmp_path / "blind"), ckpt_path=str(tmp_path / "blind.ckpt")))


def test_bf16_mixed_precision_runs():
    target = tiny_model("llama", seed=2, dtype=torch.float32)
    head = JetSpecHead(target, block_size=4)
    L.Trainer(max_steps=2, precision="bf16-mixed", logger=False, enable_checkpointing=False, **QUIET).fit(
        head, datamodule=TokenDataModule(random_seqs(8), batch_size=4))
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in head.parameters())


def test_cli_train(tmp_path, capsys):
    from jetspec.cli import main

    target, tok = tiny_model("llama", seed=4, dtype=torch.float32), tiny_tokenizer()
    target.save_pretrained(tmp_path / "target")
    tok.save_pretrained(tmp_path / "target")
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in random_seqs(8)) + "\n")
    argv = ["train", "--head", "dflash", "--target", str(tmp_path / "target"), "--data", str(data),
            "--out", str(tmp_path / "out"), "--batch-size", "4", "--block-size", "4", "--accelerator", "cpu",
            "--devices", "1", "--save-dtype", "float16", "--checkpoint-every", "1"]
    assert main(argv + ["--max-steps", "2"]) == 0
    head = ParallelHead.from_pretrained(tmp_path / "out" / "head", target=target)
    assert isinstance(head, DFlashHead) and head.config.block_size == 4
    assert (tmp_path / "out" / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "out" / "logs").is_dir()
    assert main(argv + ["--max-steps", "3", "--resume", "last"]) == 0
    assert "after 3 steps" in capsys.readouterr().out


# ------------------------------------------------------------------------------ learning
def learnable_target():
    """A tiny random Llama whose next token depends strongly on the recent context.

    With the default init (std 0.02) a random LM's next-token distribution is almost uniform: its
    argmax is decided by noise-level logit gaps, and there is nothing a drafter could learn. Scaling
    the lm_head by 30 gives peaked distributions, like a trained LM's.
    """
    return peaked_tiny_target(seed=0)


@pytest.fixture(scope="module")
def learned():
    """Both heads before and after 300 steps on data the target wrote itself (temperature 0.3)."""
    target = learnable_target()
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, 128, (128, 8), generator=gen).tolist()
    held_out = torch.randint(0, 128, (6, 8), generator=gen)
    rows = sample_continuations(target, prompts, max_new_tokens=32, temperature=0.3, seed=0)
    out = {"target": target}
    for cls in (JetSpecHead, DFlashHead):
        torch.manual_seed(0)
        head = cls(target, block_size=8, anchors_per_seq=32, lr=3e-3, warmup_steps=10)
        before = mean_tau(target, head, held_out)
        L.Trainer(max_steps=300, logger=False, enable_checkpointing=False, **QUIET).fit(
            head, datamodule=TokenDataModule(rows, batch_size=8))
        out[cls.__name__] = (head, before, mean_tau(target, head, held_out))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["JetSpecHead", "DFlashHead"])
def test_training_raises_tau(learned, name):
    _, before, after = learned[name]
    print(f"{name}: tau {before:.3f} -> {after:.3f}")
    assert before < 1.2
    assert after >= before + 0.5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["JetSpecHead", "DFlashHead"])
def test_trained_head_is_lossless_in_fp64(learned, name, tmp_path):
    head, _, _ = learned[name]
    target64 = copy.deepcopy(learned["target"]).double()
    head.save_pretrained(tmp_path / "h")
    head64 = ParallelHead.from_pretrained(tmp_path / "h", target=target64)
    prompt = torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(9))
    want = target64.generate(prompt, max_new_tokens=40, do_sample=False, eos_token_id=None, pad_token_id=0)
    res = SpeculativeDecoder(target64, head64, BestFirstBuilder(budget=16, width=4, depth=7)).generate(
        prompt, max_new_tokens=40)
    assert torch.equal(res.sequences, want)
    assert sum(res.accepted_depths) >= 5  # drafts are really accepted, so commit paths are exercised
