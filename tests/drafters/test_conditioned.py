"""Branch-conditioned parallel drafting (JetSpecHead(conditioned=True)): wiring, equivalences, losslessness.

The conditioned head's training forward packs MASK blocks and teacher-forced blocks; its drafting
runs one tree forward with real tokens. The tests pin the teacher-forced training rows to the
tree forward on the ground-truth branch, check the candidate tree the builders receive, prove
greedy losslessness against Hugging Face generate, and check the forward counts the decoder
reports (1 for one-pass parallel heads, 2 conditioned).
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import tiny_model

from jetspec import SpeculativeDecoder
from jetspec.core.target import Teacher
from jetspec.core.types import DraftInput, DraftTree
from jetspec.drafters import DFlashHead, JetSpecHead, ParallelHead
from jetspec.drafters.conditioned import branch_logprobs, teacher_forced
from jetspec.testing.toy import peaked_tiny_target
from jetspec.training.data import TokenDataModule, sample_continuations
from jetspec.trees import BestFirstBuilder, ChainBuilder, FanoutCapBuilder


@pytest.fixture(scope="module")
def targets():
    return {"llama": tiny_model("llama", seed=0), "qwen3": tiny_model("qwen3", seed=1)}


def taps_of(target, head, ids):
    return Teacher(target, head.tap_layers)(ids).taps  # [B, T, F]


def chain_tree(tokens: list[int]) -> DraftTree:
    n = len(tokens)
    return DraftTree(tokens=torch.tensor(tokens), parents=torch.arange(-1, n - 1), depth=torch.arange(n),
                     score=torch.zeros(n))


def test_only_causal_heads_condition(targets):
    with pytest.raises(ValueError, match="causal"):
        DFlashHead(targets["llama"], conditioned=True)
    assert teacher_forced(5).tolist() == [False, True, False, True, False]


@pytest.mark.parametrize("family,direct", [("llama", False), ("qwen3", False), ("llama", True)])
def test_packed_forward_equals_one_pass_and_tree_forwards(targets, family, direct):
    """MASK anchors: the one-pass head's packed rows. Teacher-forced anchors: the tree forward."""
    target = targets[family]
    s = 5
    torch.manual_seed(0)
    head = JetSpecHead(target, block_size=s, conditioned=True, direct_path=direct)
    if direct:  # it starts at zero; make the anchor + last-context term matter
        torch.nn.init.normal_(head.net.direct.weight, std=0.3)
    plain = JetSpecHead(target, block_size=s, direct_path=direct)
    plain.net.load_state_dict(head.net.state_dict())
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (2, 16), generator=gen)
    taps = taps_of(target, head, ids)
    anchors = torch.stack([torch.randperm(11, generator=gen)[:4].sort().values for _ in range(2)])  # [B, A]
    got = head.packed_hidden(ids, taps, anchors)  # [B, A, S, H]
    want = plain.packed_hidden(ids, taps, anchors)
    forced = teacher_forced(4)
    torch.testing.assert_close(got[:, ~forced], want[:, ~forced], rtol=0, atol=0)
    for b in range(2):
        for i in forced.nonzero().flatten().tolist():
            a = int(anchors[b, i])
            head.draft_logits(ids[b, : a + 1], taps[b, :a], round_index=0, depth=1)  # fills the context cache
            rows, logq = branch_logprobs(head, chain_tree(ids[b, a: a + s - 1].tolist()), a, s - 1)
            assert rows == list(range(s - 1))
            packed = torch.log_softmax(head.lm_head(got[b, i, 1:]), -1)  # slot k predicts depth k
            torch.testing.assert_close(logq, packed, rtol=0, atol=1e-10)


def test_candidate_tree_fills_the_budget_and_counts_two_forwards(targets):
    target = targets["qwen3"]
    torch.manual_seed(2)
    head = JetSpecHead(target, block_size=6, conditioned=True)
    ids = torch.randint(0, 64, (1, 9))
    taps = taps_of(target, head, ids)[0, :8]
    for budget, width, depth in ((12, 3, 5), (5, 1, 5), (30, 4, 4)):
        out = head.draft(DraftInput(tokens=ids[0], depth=depth, width=width, budget=budget, taps=taps))
        assert out.forwards == 2 and out.node_tokens is not None
        par, tok = out.node_parents.tolist(), out.node_tokens.tolist()
        assert all(p < m for m, p in enumerate(par))
        siblings: dict[int, list[int]] = {}
        for m, p in enumerate(par):
            siblings.setdefault(p, []).append(tok[m])
        assert all(len(v) == len(set(v)) <= width for v in siblings.values())
        tree = BestFirstBuilder(budget=budget, width=width, depth=depth).build(out, int(ids[0, -1]))
        assert tree.budget == budget and tree.max_depth <= depth
        # The root's children are scored by the tree forward's root row (its own distribution).
        root = head.draft_logits(ids[0], taps, 0, depth=1)  # refresh the cache for the check below
        assert root.shape == (1, 64)
        _, logq = branch_logprobs(head, chain_tree([int(ids[0, -1])]), 8, depth)
        kids = [(t, lp) for t, p, lp in zip(tok, par, out.node_logprobs.tolist()) if p == -1]
        assert sorted(t for t, _ in kids) == sorted(logq[0].topk(width).indices.tolist())
        assert all(abs(lp - float(logq[0, t])) < 1e-6 for t, lp in kids)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_random_conditioned_head_greedy_is_lossless(targets, family):
    target = targets[family]
    torch.manual_seed(3)
    head = JetSpecHead(target, block_size=6, conditioned=True)
    prompt = torch.randint(0, 64, (1, 7))
    want = target.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False,
                           eos_token_id=None, pad_token_id=0)
    for builder in (ChainBuilder(depth=5), BestFirstBuilder(budget=12, width=3, depth=5),
                    FanoutCapBuilder(budget=12, width=3, depth=5)):
        res = SpeculativeDecoder(target, head, builder).generate(prompt, max_new_tokens=20)
        assert torch.equal(res.sequences, want), builder
        assert set(res.draft_forwards) == {2}


def test_one_pass_heads_report_one_forward_per_round(targets):
    target = targets["llama"]
    prompt = torch.randint(0, 64, (1, 6))
    for head in (JetSpecHead(target, block_size=5), DFlashHead(target, block_size=5)):
        res = SpeculativeDecoder(target, head, BestFirstBuilder(budget=8, width=2, depth=4)).generate(
            prompt, max_new_tokens=10)
        assert set(res.draft_forwards) == {1} and len(res.draft_forwards) == len(res.accepted_lengths)


def test_sampling_smoke_and_persistence(targets, tmp_path):
    target = targets["qwen3"]
    torch.manual_seed(4)
    head = JetSpecHead(target, block_size=5, conditioned=True)
    prompt = torch.randint(0, 64, (1, 5))
    for builder in (ChainBuilder(depth=4), FanoutCapBuilder(budget=8, width=3, depth=4)):
        runs = [SpeculativeDecoder(target, head, builder).generate(
            prompt, max_new_tokens=12, temperature=0.9, top_k=20,
            generator=torch.Generator().manual_seed(5)).sequences for _ in range(2)]
        assert runs[0].shape == (1, 17) and int(runs[0].max()) < 64
        assert torch.equal(runs[0], runs[1])  # seeded: reproducible
    head.save_pretrained(tmp_path / "h")
    again = ParallelHead.from_pretrained(tmp_path / "h", target=target)
    assert again.config.conditioned and isinstance(again, JetSpecHead)


# ------------------------------------------------------------------------------ learning
@pytest.mark.slow
def test_conditioning_beats_one_pass_drafting_of_the_same_trained_head():
    """Same weights, same budget: the second forward's branch-conditioned tree accepts more."""
    target = peaked_tiny_target(seed=0)
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, 128, (128, 8), generator=gen).tolist()
    held_out = torch.randint(0, 128, (6, 8), generator=gen)
    rows = sample_continuations(target, prompts, max_new_tokens=32, temperature=0.3, seed=0)
    torch.manual_seed(0)
    head = JetSpecHead(target, block_size=8, conditioned=True, anchors_per_seq=32, lr=3e-3, warmup_steps=10)
    L.Trainer(max_steps=200, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(
        head, datamodule=TokenDataModule(rows, batch_size=8))

    def tau() -> tuple[float, set]:
        dec = SpeculativeDecoder(target, head, BestFirstBuilder(budget=16, width=4, depth=7))
        res = [dec.generate(p[None], max_new_tokens=32) for p in held_out]
        lengths = [n for r in res for n in r.accepted_lengths]
        return sum(lengths) / len(lengths), {f for r in res for f in r.draft_forwards}

    conditioned, fw2 = tau()
    head.config.conditioned = False
    one_pass, fw1 = tau()
    print(f"conditioned tau {conditioned:.3f} vs one-pass {one_pass:.3f}")  # measured ~2.6 vs ~1.8
    assert fw2 == {2} and fw1 == {1}
    assert conditioned >= one_pass + 0.4
