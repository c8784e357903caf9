"""EAGLE head: train/draft equivalence, the drafted tree, builders on it, losslessness, learning, persistence.

All on tiny random float64 targets (tests/conftest.py) except the learning test, which reuses the
peaked tiny target of tests/training/test_training.py. The packed training forward (training-time test,
teacher-forced chains for many anchors at once) and the drafting forwards (one per depth over a
tree, against the head's cache) are two code paths for one function; the tests pin them together.
"""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from conftest import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec import SpeculativeDecoder
from jetspec.core.target import TargetModel, Teacher
from jetspec.core.types import DraftInput
from jetspec.drafters import EagleConfig, EagleHead, JetSpecHead
from jetspec.drafters.eagle_head import eagle_tap_layers
from jetspec.drafters.eagle_training import ttt_mask
from jetspec.testing.toy import mean_tau, peaked_tiny_target
from jetspec.training.data import TokenDataModule, sample_continuations
from jetspec.trees import BestFirstBuilder, ChainBuilder, FanoutCapBuilder


@pytest.fixture(scope="module")
def targets():
    return {"llama": tiny_model("llama", seed=0, layers=3), "qwen3": tiny_model("qwen3", seed=1, layers=3)}


def taps_of(target, head, ids):
    return Teacher(target, head.tap_layers)(ids).taps  # [B, T, F]


# ------------------------------------------------------------------------------ configuration
def test_config_and_target_ownership(targets):
    assert eagle_tap_layers(36) == (1, 17, 32)  # EAGLE-3's inputs of layers 2, 18, 33
    assert eagle_tap_layers(2) == (0, 1) and eagle_tap_layers(5) == (1, 3, 4)
    target = targets["qwen3"]
    head = EagleHead(target, num_layers=2, ttt_steps=3)
    assert head.config.block_size == 4 and head.config.qk_norm is False and head.max_depth is None
    assert head.vocab_size == 64 and head.tap_layers == (1, 2)
    assert head.net.layers[0].attn.q_proj.in_features == 64  # [embedding ; feature] = 2H
    assert not {p.data_ptr() for p in target.parameters()} & {p.data_ptr() for p in head.parameters()}
    assert all(k.startswith("net.") for k in head.state_dict())
    assert EagleHead(TargetModel(target)).target_model is target
    with pytest.raises(TypeError, match="unknown EAGLE head option"):
        EagleHead(target, block_size=4)
    with pytest.raises(ValueError, match="ttt_steps"):
        EagleHead(target, ttt_steps=0)
    with pytest.raises(ValueError, match="tap_layers"):
        EagleHead(target, tap_layers=(0, 3))
    with pytest.raises(ValueError, match="taps"):
        head.draft(DraftInput(tokens=torch.arange(5), depth=2, width=2, budget=4, taps=None))


def test_ttt_mask_matches_its_definition():
    anchors = torch.tensor([[1, 4, 6]])
    mask = ttt_mask(anchors, 7, 2, torch.float64)[0, 0]  # [A, T + 2A]
    for i, a in enumerate(anchors[0].tolist()):
        assert [(mask[i, j] == 0).item() for j in range(7)] == [j < a for j in range(7)]
        for step in range(2):
            assert [(mask[i, 7 + step * 3 + j] == 0).item() for j in range(3)] == [j == i for j in range(3)]


# ------------------------------------------------------------------------------ equivalences
@settings(deadline=None, max_examples=8)
@given(family=st.sampled_from(["llama", "qwen3"]), layers=st.integers(1, 2), steps=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_packed_training_forward_equals_drafting_forwards(targets, family, layers, steps, seed):
    """Slot k of anchor a = the drafted depth-k distribution along the ground-truth chain."""
    target = targets[family]
    torch.manual_seed(seed)
    head = EagleHead(target, num_layers=layers, ttt_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (2, 13), generator=gen)
    taps = taps_of(target, head, ids)
    anchors = torch.stack([torch.randperm(11, generator=gen)[:3].sort().values + 1 for _ in range(2)])
    packed = torch.log_softmax(head(ids, taps, anchors), -1)  # [B, A, S-1, V]
    for b in range(2):
        for i, a in enumerate(anchors[b].tolist()):
            chain = ids[b, a + 1: a + steps].clone()
            pad = torch.zeros(steps - 1 - chain.numel(), dtype=torch.long)  # past the end of the sequence
            chain = torch.cat([chain, pad])
            parents = torch.arange(-1, steps - 2)
            got = head.tree_logprobs(ids[b, : a + 1], taps[b, :a], chain, parents)  # [steps, V]
            n = min(steps, 12 - a)  # depths whose ground-truth inputs exist
            torch.testing.assert_close(got[:n], packed[b, i, :n], rtol=0, atol=1e-10)


def test_head_cache_across_rounds(targets):
    target = targets["llama"]
    torch.manual_seed(0)
    head = EagleHead(target, num_layers=2, ttt_steps=2)
    ids = torch.randint(0, 64, (1, 20))
    taps = taps_of(target, head, ids)
    anchors = [3, 4, 8, 13, 18]  # growing prefixes: each round runs only the new context rows
    packed = torch.log_softmax(head(ids, taps, torch.tensor([anchors])), -1)[0]
    for r, a in enumerate(anchors):
        got = head.tree_logprobs(ids[0, : a + 1], taps[0, :a], ids[0, a + 1: a + 2], torch.tensor([-1]),
                                 round_index=r)
        assert head.context_cache(0).length == a and head.context_cache(0).kv[1][0].shape[2] == a
        torch.testing.assert_close(got, packed[r], rtol=0, atol=1e-10)


def test_every_expanded_node_has_its_own_distribution(targets):
    target = targets["qwen3"]
    torch.manual_seed(1)
    head = EagleHead(target, num_layers=1)
    ids = torch.randint(0, 64, (1, 9))
    taps = taps_of(target, head, ids)[0, :8]
    out = head.draft(DraftInput(tokens=ids[0], depth=4, width=3, budget=20, taps=taps))
    assert out.forwards == 4 and out.node_q is None
    par, tok = out.node_parents.tolist(), out.node_tokens.tolist()
    assert all(p < m for m, p in enumerate(par))
    kids: dict[int, list[int]] = {}
    for m, p in enumerate(par):
        kids.setdefault(p, []).append(tok[m])
    assert all(len(v) == 3 and len(set(v)) == 3 for v in kids.values())  # top-W, distinct
    assert len(kids) == 1 + 3 + 3 + 3  # the root, then W frontier nodes at depths 1..3
    # Re-running the drafted tree with prescribed nodes gives the same conditional log-probs.
    rows = head.tree_logprobs(ids[0], taps, out.node_tokens, out.node_parents)
    want = torch.stack([rows[p + 1, t] for p, t in zip(par, tok)]).float()
    torch.testing.assert_close(out.node_logprobs, want, rtol=0, atol=1e-6)
    distinct = {tuple(rows[p + 1].topk(3).indices.tolist()) for p in kids if p >= 0}
    assert len(distinct) > 1  # children really differ between nodes (not a shared per-depth table)


# ------------------------------------------------------------------------------ builders on EAGLE trees
@settings(deadline=None, max_examples=15)
@given(budget=st.integers(1, 20), width=st.integers(1, 4), depth=st.integers(1, 5), seed=st.integers(0, 999),
       kind=st.sampled_from(["bestfirst", "fanout", "chain"]))
def test_builders_respect_budget_width_depth_on_eagle_output(targets, budget, width, depth, seed, kind):
    target = targets["llama"]
    torch.manual_seed(seed)
    head = EagleHead(target, num_layers=1)
    ids = torch.randint(0, 64, (1, 7), generator=torch.Generator().manual_seed(seed))
    builder = {"bestfirst": lambda: BestFirstBuilder(budget=budget, width=width, depth=depth),
               "fanout": lambda: FanoutCapBuilder(budget=budget, width=width, depth=depth, beta=2.0),
               "chain": lambda: ChainBuilder(depth=depth)}[kind]()
    inp = DraftInput(tokens=ids[0], depth=builder.depth, width=builder.width, budget=builder.budget,
                     taps=taps_of(target, head, ids)[0, :6])
    out = head.draft(inp)
    assert out.forwards == min(builder.depth, builder.budget)
    tree = builder.build(out, int(ids[0, -1]))
    assert tree.budget <= builder.budget and tree.max_depth <= builder.depth
    assert all(len(k) <= builder.width for k in tree.children())
    # Every tree node is a drafted candidate under the same parent, with its drafted score.
    cands = {}
    for m, (p, t) in enumerate(zip(out.node_parents.tolist(), out.node_tokens.tolist())):
        cands[(p, t)] = m
    node_cand = {0: -1}
    for i in range(1, tree.num_nodes):
        key = (node_cand[int(tree.parents[i])], int(tree.tokens[i]))
        assert key in cands
        node_cand[i] = cands[key]
    if kind == "bestfirst" and budget <= width:  # the best children of the root, in order
        assert tree.budget == budget and tree.max_depth == 1


# ------------------------------------------------------------------------------ losslessness
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_random_head_greedy_is_lossless_and_counts_forwards(targets, family):
    target = targets[family]
    torch.manual_seed(3)
    head = EagleHead(target, num_layers=2)
    prompt = torch.randint(0, 64, (1, 7))
    want = target.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16, do_sample=False,
                           eos_token_id=None, pad_token_id=0)
    for builder in (ChainBuilder(depth=4), BestFirstBuilder(budget=10, width=3, depth=4),
                    FanoutCapBuilder(budget=10, width=3, depth=5)):
        res = SpeculativeDecoder(target, head, builder).generate(prompt, max_new_tokens=16)
        assert torch.equal(res.sequences, want), builder
        assert res.draft_forwards == [builder.depth] * len(res.accepted_lengths)
    # A one-token prompt has no context row: the first round drafts nothing (0 forwards).
    one = prompt[:, :1]
    res = SpeculativeDecoder(target, head, ChainBuilder(depth=3)).generate(one, max_new_tokens=6)
    want = target.generate(one, attention_mask=torch.ones_like(one), max_new_tokens=6, do_sample=False,
                           eos_token_id=None, pad_token_id=0)
    assert torch.equal(res.sequences, want) and res.draft_forwards[0] == 0 and res.draft_forwards[1] == 3


def test_sampling_smoke(targets):
    target = targets["qwen3"]
    head = EagleHead(target)
    prompt = torch.randint(0, 64, (1, 5))
    for builder in (ChainBuilder(depth=3), BestFirstBuilder(budget=8, width=3, depth=4)):
        runs = [SpeculativeDecoder(target, head, builder).generate(
            prompt, max_new_tokens=12, temperature=0.9, top_k=20,
            generator=torch.Generator().manual_seed(5)).sequences for _ in range(2)]
        assert runs[0].shape == (1, 17) and int(runs[0].max()) < 64
        assert torch.equal(runs[0], runs[1])  # seeded: reproducible


# ------------------------------------------------------------------------------ persistence
def test_save_and_load_round_trip_and_errors(targets, tmp_path):
    from safetensors.torch import load_file

    target = targets["qwen3"]
    torch.manual_seed(0)
    head = EagleHead(target, num_layers=2, ttt_steps=3, lr=1e-3)
    ids = torch.randint(0, 64, (1, 12))
    taps, anchors = taps_of(target, head, ids), torch.tensor([[2, 6, 9]])
    head.save_pretrained(tmp_path / "h")
    assert set(load_file(str(tmp_path / "h" / "model.safetensors"))) == {k[4:] for k in head.state_dict()}
    again = EagleHead.from_pretrained(tmp_path / "h", target=target)
    assert again.config == head.config and again.train_config.lr == 1e-3
    torch.testing.assert_close(again(ids, taps, anchors), head(ids, taps, anchors), rtol=0, atol=0)
    for kw, what in ((dict(hidden=48), "hidden size"), (dict(vocab=80), "vocab size"),
                     (dict(layers=4), "number of layers")):
        with pytest.raises(ValueError, match=what):
            EagleHead.from_pretrained(tmp_path / "h", target=tiny_model("qwen3", **{"layers": 3, **kw}))
    JetSpecHead(target, block_size=3).save_pretrained(tmp_path / "p")
    with pytest.raises(ValueError, match="not an EagleHead"):
        EagleHead.from_pretrained(tmp_path / "p", target=target)
    with pytest.raises(FileNotFoundError, match="config.json"):
        EagleHead.from_pretrained(tmp_path / "nowhere", target=target)
    assert EagleConfig(ttt_steps=2).resolved(target).target_num_layers == 3


# ------------------------------------------------------------------------------ learning
def peaked_target():
    """The tiny Llama of tests/training/test_training.py: lm_head x 30 gives peaked, learnable laws."""
    return peaked_tiny_target(seed=0)


@pytest.mark.slow
def test_training_raises_tau_and_trained_head_is_lossless(tmp_path):
    """300 steps (~30 s) on target-written data: tau rises well above an untrained head's."""
    target = peaked_target()
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, 128, (128, 8), generator=gen).tolist()
    held_out = torch.randint(0, 128, (6, 8), generator=gen)
    rows = sample_continuations(target, prompts, max_new_tokens=32, temperature=0.3, seed=0)
    torch.manual_seed(0)
    head = EagleHead(target, ttt_steps=7, anchors_per_seq=32, lr=3e-3, warmup_steps=10)
    before = mean_tau(target, head, held_out)
    L.Trainer(max_steps=300, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(
        head, datamodule=TokenDataModule(rows, batch_size=8))
    after = mean_tau(target, head, held_out)
    print(f"EagleHead: tau {before:.3f} -> {after:.3f}")  # measured 1.02 -> 2.26
    assert before < 1.2
    assert after >= before + 0.6
    # The trained head, moved to float64 through save/load, is still exactly lossless.
    target64 = copy.deepcopy(target).double()
    head.save_pretrained(tmp_path / "h")
    head64 = EagleHead.from_pretrained(tmp_path / "h", target=target64)
    prompt = torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(9))
    want = target64.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40,
                             do_sample=False, eos_token_id=None, pad_token_id=0)
    res = SpeculativeDecoder(target64, head64, BestFirstBuilder(budget=16, width=4, depth=6)).generate(
        prompt, max_new_tokens=40)
    assert torch.equal(res.sequences, want)
    assert sum(res.accepted_depths) >= 5 and set(res.draft_forwards) == {6}
