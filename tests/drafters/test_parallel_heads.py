"""Parallel heads (JetSpec causal / DFlash bidirectional): wiring, equivalences, losslessness, persistence.

All on tiny random float64 targets (tests/conftest.py), so "equal" can mean 1e-10 and greedy
decoding has no argmax ties. The training forward (many anchors packed under a block-sparse mask)
and the drafting forward (one block against the cached context) are two code paths for one
function; the tests pin them to each other.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec import TREE_BUILDERS, SpeculativeDecoder
from jetspec.core.target import TargetModel
from jetspec.core.types import DraftInput
from jetspec.drafters import DFlashHead, HeadConfig, JetSpecHead, ParallelHead
from jetspec.drafters.head_config import default_tap_layers
from jetspec.training.recipe import Teacher, packed_block_mask
from jetspec.trees import BestFirstBuilder, ChainBuilder, EntropyBuilder, FanoutCapBuilder, HybridBuilder

HEADS = [JetSpecHead, DFlashHead]


@pytest.fixture(scope="module")
def targets():
    return {"llama": tiny_model("llama", seed=0), "qwen3": tiny_model("qwen3", seed=1)}


def taps_of(target, head, ids):
    return Teacher(target, head.tap_layers)(ids).taps  # [B, T, F]


# ------------------------------------------------------------------------------ configuration
def test_default_tap_layers():
    assert default_tap_layers(36) == (1, 9, 17, 25, 33)  # the paper's 8B example
    assert default_tap_layers(2) == (0, 1)
    assert default_tap_layers(3) == (1, 2)
    assert default_tap_layers(4) == (1, 2, 3)
    for n in range(1, 81):
        taps = default_tap_layers(n)
        assert 1 <= len(taps) <= 5 and list(taps) == sorted(set(taps)) and 0 <= taps[0] and taps[-1] < n


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("cls", HEADS)
def test_target_is_used_but_not_owned(targets, family, cls):
    target = targets[family]
    head = cls(target, block_size=4)
    assert head.causal is (cls is JetSpecHead)
    assert head.config.qk_norm is (family == "qwen3")
    assert head.vocab_size == 64 and head.max_depth == 3 and head.tap_layers == (0, 1)
    # Nothing of the target is a parameter, a buffer or a state_dict entry of the head.
    target_ptrs = {p.data_ptr() for p in target.parameters()}
    assert not target_ptrs & {p.data_ptr() for p in head.parameters()}
    assert all(k.startswith("net.") for k in head.state_dict())
    assert sum(p.numel() for p in head.parameters()) == sum(p.numel() for p in head.net.parameters())
    assert not any(p.requires_grad for p in target.parameters())
    # A TargetModel wrapper is accepted as well.
    assert cls(TargetModel(target), block_size=4).target_model is target


def test_the_heads_share_one_declared_training_base():
    from jetspec.drafters import EagleHead
    from jetspec.drafters.learned_head import LearnedHead

    assert all(issubclass(cls, LearnedHead) for cls in (JetSpecHead, DFlashHead, EagleHead))
    # What a head must implement is written down as abstract methods; the recipe and the per-row
    # context caches (one RowContext per batch row) are inherited.
    assert {"packed_hidden", "draft"} <= LearnedHead.__abstractmethods__
    for hook in ("training_step", "validation_step", "configure_optimizers", "save_pretrained", "reset_cache",
                 "context_cache", "start_context"):
        assert hook not in vars(ParallelHead) and hook not in vars(EagleHead)


def test_options_and_errors(targets):
    target = targets["llama"]
    wide = JetSpecHead(target, hidden_size=48, num_heads=4, num_kv_heads=2, num_layers=2, block_size=3)
    assert wide.net.in_proj is not None and wide.config.head_dim == 12 and len(wide.net.layers) == 2
    masked = DFlashHead(target, mask_token_id=5, block_size=3)
    assert masked.net.mask_embedding is None
    with pytest.raises(TypeError, match="unknown head option"):
        JetSpecHead(target, blocksize=4)
    with pytest.raises(ValueError, match="tap_layers"):
        JetSpecHead(target, tap_layers=(0, 7))
    with pytest.raises(ValueError, match="block_size"):
        JetSpecHead(target, block_size=1)
    with pytest.raises(ValueError, match="mask_token_id"):
        JetSpecHead(target, mask_token_id=64)
    head = JetSpecHead(target, block_size=4)
    ids = torch.arange(6)
    with pytest.raises(ValueError, match="depth"):
        head.draft_logits(ids, torch.zeros(5, 64, dtype=torch.float64), 0, depth=4)
    with pytest.raises(ValueError, match="taps"):
        head.draft_logits(ids, None, 0, depth=2)


# ------------------------------------------------------------------------------ equivalences
@settings(deadline=None, max_examples=12)
@given(cls=st.sampled_from(HEADS), family=st.sampled_from(["llama", "qwen3"]), block=st.integers(2, 6),
       mask_token=st.booleans(), direct=st.booleans(), reduced=st.booleans(), seed=st.integers(0, 2**16))
def test_packed_training_forward_equals_drafting_forward(targets, cls, family, block, mask_token, direct,
                                                          reduced, seed):
    target = targets[family]
    torch.manual_seed(seed)
    vocab = torch.randperm(64)[:24] if reduced else None
    head = cls(target, block_size=block, mask_token_id=7 if mask_token else None, direct_path=direct,
               draft_vocab=vocab)
    if direct:  # it starts at zero (= the paper's design); make it matter
        torch.nn.init.normal_(head.net.direct.weight, std=0.3)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (2, 14), generator=gen)
    taps = taps_of(target, head, ids)
    anchors = torch.stack([torch.randperm(13, generator=gen)[:3].sort().values for _ in range(2)])  # [2, 3]
    packed = head(ids, taps, anchors)  # [B, A, S-1, V]
    for b in range(2):
        for i, a in enumerate(anchors[b].tolist()):
            alone = head.draft_logits(ids[b, : a + 1], taps[b, :a], round_index=0, depth=block - 1)
            torch.testing.assert_close(alone, packed[b, i], rtol=0, atol=1e-10)


@pytest.mark.parametrize("cls", HEADS)
def test_head_cache_across_rounds_matches_packed_forward(targets, cls):
    target = targets["qwen3"]
    torch.manual_seed(0)
    head = cls(target, block_size=5)
    ids = torch.randint(0, 64, (1, 24))
    taps = taps_of(target, head, ids)
    anchors = [3, 4, 9, 15, 22]  # growing prefixes: each round projects only the new context rows
    packed = head(ids, taps, torch.tensor([anchors]))[0]
    for r, a in enumerate(anchors):
        got = head.draft_logits(ids[0, : a + 1], taps[0, :a], round_index=r, depth=4)
        assert head.context_cache(0).length == a
        torch.testing.assert_close(got, packed[r], rtol=0, atol=1e-10)
    # round_index 0 starts a new sequence: the cache is rebuilt, not extended.
    other = torch.randint(0, 64, (1, 8))
    fresh = head.draft_logits(other[0], taps_of(target, head, other)[0, :7], round_index=0, depth=4)
    torch.testing.assert_close(fresh, head(other, taps_of(target, head, other), torch.tensor([[7]]))[0, 0],
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("cls", HEADS)
def test_causality_of_the_block(targets, cls):
    """A later MASK slot's input changes no earlier slot in JetSpec, and does change them in DFlash."""
    target = targets["llama"]
    torch.manual_seed(0)
    head = cls(target, block_size=6)
    ids = torch.randint(0, 64, (1, 10))
    t = 9
    ctx_kv = head.net.context_kv(taps_of(target, head, ids)[:, :t], torch.arange(t)[None])
    emb = head.block_embeddings(ids[:, t:], 6)[:, 0]  # [1, S, H]
    pos = torch.arange(t, t + 6)[None]
    mask = packed_block_mask(torch.tensor([[t]]), t, 6, head.causal, emb.dtype)
    base = head.net(emb, pos, ctx_kv, mask)
    for j in range(2, 6):
        changed = emb.clone()
        changed[0, j] += torch.randn(emb.shape[-1], dtype=emb.dtype)
        out = head.net(changed, pos, ctx_kv, mask)
        if head.causal:
            assert torch.equal(out[0, :j], base[0, :j])
        else:
            assert (out[0, :j] - base[0, :j]).abs().max() > 1e-6
    # For the causal head, drafting fewer depths (a shorter block) gives the same first rows.
    full = head.draft_logits(ids[0], taps_of(target, head, ids)[0, :t], 0, depth=5)
    short = head.draft_logits(ids[0], taps_of(target, head, ids)[0, :t], 0, depth=2)
    if head.causal:
        torch.testing.assert_close(short, full[:2], rtol=0, atol=1e-12)


def test_draft_output_is_a_sorted_top_w_table(targets):
    target = targets["llama"]
    head = JetSpecHead(target, block_size=6)
    ids = torch.randint(0, 64, (1, 9))
    taps = taps_of(target, head, ids)[0, :8]
    out = head.draft(DraftInput(tokens=ids[0], depth=4, width=3, budget=8, taps=taps))
    assert out.depth_tokens.shape == (4, 3) and out.forwards == 1
    assert torch.all(out.depth_logprobs[:, :-1] >= out.depth_logprobs[:, 1:])
    logq = torch.log_softmax(head.draft_logits(ids[0], taps, 0, depth=4), -1)
    torch.testing.assert_close(out.depth_logprobs.double(), logq.topk(3).values, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------ losslessness
@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("cls", HEADS)
def test_random_head_greedy_is_lossless(targets, family, cls):
    target = targets[family]
    torch.manual_seed(3)
    head = cls(target, block_size=6)
    prompt = torch.randint(0, 64, (1, 7))
    want = target.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
    for builder in (ChainBuilder(depth=5), BestFirstBuilder(budget=12, width=3, depth=5),
                    FanoutCapBuilder(budget=12, width=3, depth=5), EntropyBuilder(budget=12, width=3, depth=5),
                    HybridBuilder(budget=12, width=3, depth=5)):
        res = SpeculativeDecoder(target, head, builder).generate(prompt, max_new_tokens=20)
        assert torch.equal(res.sequences, want), builder
    # A one-token prompt: the first round drafts from an empty context.
    one = prompt[:, :1]
    want = target.generate(one, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    res = SpeculativeDecoder(target, head, BestFirstBuilder(budget=8, width=2, depth=4)).generate(one, 10)
    assert torch.equal(res.sequences, want)


@pytest.mark.parametrize("cls", HEADS)
def test_sampling_smoke_with_every_builder(targets, cls):
    target = targets["qwen3"]
    head = cls(target, block_size=5)
    prompt = torch.randint(0, 64, (1, 5))
    for name, builder_cls in sorted(TREE_BUILDERS.items()):
        builder = builder_cls(depth=4)
        runs = [SpeculativeDecoder(target, head, builder).generate(
            prompt, max_new_tokens=12, temperature=0.9, top_k=20,
            generator=torch.Generator().manual_seed(5)).sequences for _ in range(2)]
        assert runs[0].shape == (1, 17) and int(runs[0].max()) < 64, name
        assert torch.equal(runs[0], runs[1]), name  # seeded: reproducible


# ------------------------------------------------------------------------------ persistence
@pytest.mark.parametrize("cls", HEADS)
def test_save_and_load_round_trip(targets, cls, tmp_path):
    from safetensors.torch import load_file

    target = targets["qwen3"]
    torch.manual_seed(0)
    head = cls(target, block_size=4, num_layers=2, lr=1e-3)
    ids = torch.randint(0, 64, (1, 12))
    taps = taps_of(target, head, ids)
    anchors = torch.tensor([[2, 6, 10]])
    head.save_pretrained(tmp_path / "h")
    saved = load_file(str(tmp_path / "h" / "model.safetensors"))
    assert set(saved) == {k[len("net."):] for k in head.state_dict()}  # no target weight inside
    for loader in (cls, ParallelHead):
        again = loader.from_pretrained(tmp_path / "h", target=target)
        assert type(again) is cls and again.config == head.config and again.train_config.lr == 1e-3
        torch.testing.assert_close(again(ids, taps, anchors), head(ids, taps, anchors), rtol=0, atol=0)
    head.save_pretrained(tmp_path / "h16", dtype=torch.float16)
    half_file = load_file(str(tmp_path / "h16" / "model.safetensors"))
    assert all(t.dtype == torch.float16 for t in half_file.values())
    half = cls.from_pretrained(tmp_path / "h16", target=TargetModel(target))
    torch.testing.assert_close(half(ids, taps, anchors), head(ids, taps, anchors), rtol=0, atol=0.05)


def test_loading_errors(targets, tmp_path):
    head = JetSpecHead(targets["llama"], block_size=4)
    head.save_pretrained(tmp_path / "h")
    for kw, what in ((dict(hidden=48), "hidden size"), (dict(vocab=80), "vocab size"),
                     (dict(layers=3), "number of layers")):
        with pytest.raises(ValueError, match=what):
            JetSpecHead.from_pretrained(tmp_path / "h", target=tiny_model("llama", **kw))
    with pytest.raises(ValueError, match="JetSpecHead"):
        DFlashHead.from_pretrained(tmp_path / "h", target=targets["llama"])
    with pytest.raises(FileNotFoundError, match="config.json"):
        JetSpecHead.from_pretrained(tmp_path / "nowhere", target=targets["llama"])
    (tmp_path / "h" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        JetSpecHead.from_pretrained(tmp_path / "h", target=targets["llama"])
    assert HeadConfig(block_size=4).resolved(targets["llama"]).target_num_layers == 2
