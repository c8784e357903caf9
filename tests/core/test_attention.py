"""jetspec tree attention inside Hugging Face models: same logits as SDPA, nothing patched globally.

Tiny random Llama and Qwen3 targets (GQA, built from a config, no hub). The torch backend runs in
fp64, the Triton backend (CPU interpreter) in fp32. Spies on the two code paths check that tree
masks really reach the kernel and that other masks really take the exact fallback.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_model
from transformers import DynamicCache

import jetspec.core.attention as attn
from jetspec.core.attention import TREE_TORCH, TREE_TRITON, attention_backend, tree_layout
from jetspec.core.masks import ancestor_from_parents, chain_ancestor
from jetspec.kernels import triton_installed

PARENTS = [-1, 0, 0, 1, 1, 2, 3, 6]  # 8 nodes, depth 4, branching at the root and at node 1
DEPTH = torch.tensor([0, 1, 1, 2, 2, 2, 3, 4])
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}
CASES = [("llama", "torch", torch.float64), ("qwen3", "torch", torch.float64),
         ("llama", "triton", torch.float32), ("qwen3", "triton", torch.float32)]


@pytest.fixture
def spy(monkeypatch):
    """Count which path each attention call took."""
    calls = {"tree": 0, "fallback": 0}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(attn, "tree_attention", counting("tree", attn.tree_attention))
    monkeypatch.setattr(attn, "masked_attention", counting("fallback", attn.masked_attention))
    return calls


def model_for(family, dtype):
    return tiny_model(family, seed=3, dtype=dtype, hidden=64, heads=4, kv_heads=2)  # K = 16


def tree_mask(anc, prefix, dtype):
    n = anc.shape[0]
    mask = torch.zeros(1, 1, n, prefix + n, dtype=dtype)
    mask[..., prefix:].masked_fill_(~anc, float("-inf"))
    return mask


@torch.no_grad()
def verify(model, cache, tokens, prefix, dtype):
    """One tree-verify forward against a copy of the prefix cache, as jetspec's target wrapper does."""
    mask = tree_mask(ancestor_from_parents(PARENTS), prefix, dtype)
    out = model(input_ids=tokens, position_ids=(prefix + DEPTH)[None], attention_mask=mask,
                cache=copy.deepcopy(cache), use_cache=True)
    return out.logits


@pytest.mark.parametrize("family,backend,dtype", CASES)
def test_tree_verify_matches_sdpa(family, backend, dtype, spy):
    model = model_for(family, dtype)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 64, (1, 13), generator=gen)  # P = 13: an odd prefix
    tokens = torch.randint(0, 64, (1, len(PARENTS)), generator=gen)
    with torch.no_grad():
        cache = model(input_ids=prompt, use_cache=True).cache
    want = verify(model, cache, tokens, 13, dtype)
    with attention_backend(model, backend):
        got = verify(model, cache, tokens, 13, dtype)
    assert spy == {"tree": model.config.num_hidden_layers, "fallback": 0}
    torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("family,backend,dtype", CASES)
def test_prefill_chunked_prefill_and_decode_match_sdpa(family, backend, dtype, spy):
    model = model_for(family, dtype)
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(1))

    @torch.no_grad()
    def run():
        full = model(input_ids=ids[:, :9], use_cache=True)  # causal prefill: mask None (is_causal)
        chunk = model(input_ids=ids[:, 9:11], cache=full.cache, use_cache=True)  # bool mask, P = 9
        step = model(input_ids=ids[:, 11:], cache=chunk.cache, use_cache=True)  # one token: mask None
        return torch.cat([full.logits, chunk.logits, step.logits], dim=1)

    want = run()
    with attention_backend(model, backend):
        got = run()
    assert spy == {"tree": 3 * model.config.num_hidden_layers, "fallback": 0}
    torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=TOL[dtype])


def test_inference_mode_tensors(spy):
    # Inference tensors have no version counter, so the per-forward mask memory must step aside.
    model = model_for("qwen3", torch.float64)
    gen = torch.Generator().manual_seed(8)
    prompt = torch.randint(0, 64, (1, 9), generator=gen)
    tokens = torch.randint(0, 64, (1, len(PARENTS)), generator=gen)
    with torch.inference_mode():
        cache = model(input_ids=prompt, use_cache=True).cache
        want = verify(model, cache, tokens, 9, torch.float64)
        with attention_backend(model, "torch"):
            got = verify(model, cache, tokens, 9, torch.float64)
    assert spy == {"tree": model.config.num_hidden_layers, "fallback": 0}
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_left_padded_batch_takes_the_exact_fallback(family, spy):
    model = model_for(family, torch.float64)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(2))
    pad = torch.ones(2, 7, dtype=torch.long)
    pad[0, :3] = 0  # row 0 is left-padded: its mask differs per batch row, so it is not a tree
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=pad).logits
        with attention_backend(model, "torch"):
            got = model(input_ids=ids, attention_mask=pad).logits
    assert spy["fallback"] == model.config.num_hidden_layers and spy["tree"] == 0
    torch.testing.assert_close(got[0, 3:], want[0, 3:], atol=1e-10, rtol=1e-10)  # real tokens only
    torch.testing.assert_close(got[1], want[1], atol=1e-10, rtol=1e-10)


def test_backend_is_per_model_and_restored(llama64):
    other = tiny_model("llama", seed=5)
    before = llama64.config._attn_implementation
    with attention_backend(llama64, "torch"):
        assert llama64.config._attn_implementation == TREE_TORCH
        assert other.config._attn_implementation == before  # no global switch
    assert llama64.config._attn_implementation == before
    with pytest.raises(RuntimeError, match="boom"):
        with attention_backend(llama64, "triton"):  # where triton is missing: its twin (with a notice)
            assert llama64.config._attn_implementation == (TREE_TRITON if triton_installed() else TREE_TORCH)
            raise RuntimeError("boom")
    assert llama64.config._attn_implementation == before  # restored on error too
    for untouched in (None, "sdpa"):
        with attention_backend(llama64, untouched):
            assert llama64.config._attn_implementation == before
    with attention_backend(llama64, "auto"):  # CPU model: auto means the torch reference
        assert llama64.config._attn_implementation == TREE_TORCH
    with pytest.raises(ValueError, match="attention backend"):
        with attention_backend(llama64, "flash"):
            pass


def test_tree_layout_reads_masks():
    anc = ancestor_from_parents([-1, 0, 0, 2])
    layout = tree_layout(tree_mask(anc, 5, torch.float32), 4, 9, causal=True)
    assert layout.prefix_len == 5 and layout.kv_len == 9 and torch.equal(layout.ancestor, anc)
    # transformers' own boolean masks and its None shortcuts
    bool_mask = torch.cat([torch.ones(4, 5, dtype=torch.bool), anc], 1)[None, None]
    assert torch.equal(tree_layout(bool_mask, 4, 9, causal=True).ancestor, anc)
    causal = tree_layout(None, 6, 10, causal=True)  # upper-left causal prefill: keys[:6]
    assert causal.prefix_len == 0 and causal.kv_len == 6 and torch.equal(causal.ancestor, chain_ancestor(6))
    decode = tree_layout(None, 1, 10, causal=True)
    assert decode.prefix_len == 9 and decode.ancestor.all()
    # not trees: a hidden prefix key, a non-binary bias, different trees per batch row
    hidden_prefix = tree_mask(anc, 5, torch.float32)
    hidden_prefix[..., 0, 2] = float("-inf")
    assert tree_layout(hidden_prefix, 4, 9, causal=True) is None
    biased = tree_mask(anc, 5, torch.float32)
    biased[..., 1, 1] = -0.5
    assert tree_layout(biased, 4, 9, causal=True) is None
    two_rows = torch.cat([tree_mask(anc, 5, torch.float32), tree_mask(chain_ancestor(4), 5, torch.float32)])
    assert tree_layout(two_rows, 4, 9, causal=True) is None
    # finfo.min (what transformers' eager masks use) hides a key just like -inf
    eager_style = tree_mask(anc, 5, torch.float32).clamp(min=torch.finfo(torch.float32).min)
    assert torch.equal(tree_layout(eager_style, 4, 9, causal=True).ancestor, anc)


def test_biased_float_mask_falls_back_and_still_matches_sdpa(spy):
    model = model_for("llama", torch.float64)
    gen = torch.Generator().manual_seed(4)
    prompt, tokens = torch.randint(0, 64, (1, 6), generator=gen), torch.randint(0, 64, (1, 3), generator=gen)
    mask = tree_mask(chain_ancestor(3), 6, torch.float64)
    mask[..., 2] = -1.5  # an additive bias, not a visibility mask
    with torch.no_grad():
        cache = model(input_ids=prompt, use_cache=True).cache
        kwargs = dict(input_ids=tokens, position_ids=torch.tensor([[6, 7, 8]]), attention_mask=mask,
                      use_cache=True)
        want = model(cache=copy.deepcopy(cache), **kwargs).logits
        with attention_backend(model, "torch"):
            got = model(cache=copy.deepcopy(cache), **kwargs).logits
    assert spy == {"tree": 0, "fallback": model.config.num_hidden_layers}
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_target_wrapper_verify_with_each_backend(backend):
    """The core's TargetModel drives the backend through `attention_backend` (its contract)."""
    from jetspec.core.target import TargetModel
    from jetspec.core.types import DraftTree

    dtype = torch.float64 if backend == "torch" else torch.float32
    model = model_for("qwen3", dtype)
    prompt = torch.randint(0, 64, (10,), generator=torch.Generator().manual_seed(6))
    tree = DraftTree(tokens=torch.randint(0, 64, (len(PARENTS),), generator=torch.Generator().manual_seed(7)),
                     parents=torch.tensor(PARENTS), depth=DEPTH, score=torch.zeros(len(PARENTS)))
    logits = {}
    for name in (None, backend):
        target = TargetModel(model, attn_backend=name)
        target.prefill(prompt)
        logits[name] = target.verify(tree).logits
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(logits[backend], logits[None], atol=TOL[dtype], rtol=TOL[dtype])


def test_cache_and_mask_kwargs_reach_attention_as_documented():
    """Pins the transformers facts the wiring relies on: a caller's 4-D mask arrives untouched."""
    model = model_for("llama", torch.float64)
    seen = []
    original = attn.tree_attention_forward

    def recording(module, query, key, value, attention_mask, **kwargs):
        seen.append((tuple(query.shape), tuple(key.shape), attention_mask, sorted(kwargs)))
        return original(module, query, key, value, attention_mask, **kwargs)

    mask = tree_mask(chain_ancestor(2), 4, torch.float64)
    cache = DynamicCache(config=model.config)
    try:
        attn.tree_attention_forward = recording
        with torch.no_grad(), attention_backend(model, "torch"):
            model(input_ids=torch.zeros(1, 4, dtype=torch.long), cache=cache, use_cache=True)
            model(input_ids=torch.zeros(1, 2, dtype=torch.long), position_ids=torch.tensor([[4, 5]]),
                  attention_mask=mask, cache=cache, use_cache=True)
    finally:
        attn.tree_attention_forward = original
    (q0, k0, m0, _), (q1, k1, m1, kw1) = seen[0], seen[-1]
    assert q0 == (1, 4, 4, 16) and k0 == (1, 2, 4, 16) and m0 is None  # causal prefill: no mask built
    assert q1 == (1, 4, 2, 16) and k1 == (1, 2, 6, 16) and m1 is mask  # the very tensor we passed
    assert {"scaling", "dropout", "position_ids"} <= set(kw1)
