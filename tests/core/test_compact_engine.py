"""The fast engine (CompactEngine + KVBuffer) against the Hugging Face engine it replaces.

Both engines run the same target; in float64 every logit, tap and cached key/value must agree to
1e-10 (only the order of additions differs), on random trees, across cache growth and commits.
In float32 the fast engine runs the skinny AVX-512 kernel (oneDNN where it cannot build), so
agreement is to rounding and the greedy output must still equal Hugging Face ``generate`` on a
tie-free model.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config, tiny_model
from hypothesis import given
from hypothesis import strategies as st

from jetspec import SpeculativeDecoder, autoregressive_generate
from jetspec.core.compact_engine import KVBuffer, compact_engine_support
from jetspec.core.target import TargetModel
from jetspec.core.types import DraftTree
from jetspec.drafters import NGramDrafter, RandomDrafter
from jetspec.trees import BestFirstBuilder

MODELS = {"llama": tiny_model("llama", seed=0), "qwen3": tiny_model("qwen3", seed=1)}


def qwen2_with_biases():
    """Qwen2 has q/k/v biases: the fused product must carry them."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(3)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True)
    return AutoModelForCausalLM.from_config(cfg).to(torch.float64).eval()


MODELS["qwen2"] = qwen2_with_biases()


def random_tree(g: torch.Generator, n: int) -> DraftTree:
    parents = [-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, n)]
    depth = [0] * n
    for i in range(1, n):
        depth[i] = depth[parents[i]] + 1
    return DraftTree(tokens=torch.randint(0, 64, (n,), generator=g), parents=torch.tensor(parents),
                     depth=torch.tensor(depth), score=torch.zeros(n))


def assert_same_cache(a: TargetModel, b: TargetModel, atol: float) -> None:
    assert a.cache_length == b.cache_length
    if a.cache_length == 0:  # an empty DynamicCache holds None, not empty tensors
        return
    for x, y in zip(a.cache.layers, b.cache.layers, strict=True):
        torch.testing.assert_close(x.keys, y.keys, atol=atol, rtol=0)
        torch.testing.assert_close(x.values, y.values, atol=atol, rtol=0)


@given(family=st.sampled_from(sorted(MODELS)), seed=st.integers(0, 10_000), prompt=st.integers(1, 40),
       sizes=st.lists(st.integers(1, 20), min_size=1, max_size=4))
def test_fast_engine_equals_hugging_face_engine(family, seed, prompt, sizes):
    model, g = MODELS[family], torch.Generator().manual_seed(seed)
    fast, hf = TargetModel(model, engine="fast"), TargetModel(model, engine="hf", min_rows=1)
    assert fast.engine == "fast" and hf.engine == "hf"
    for t in (fast, hf):
        t.set_taps([0, model.config.num_hidden_layers - 1])
    tokens = torch.randint(0, 64, (prompt,), generator=g)
    torch.testing.assert_close(fast.prefill(tokens), hf.prefill(tokens), atol=1e-10, rtol=0)
    assert_same_cache(fast, hf, 1e-10)
    for n in sizes:  # rounds: verify a random tree, keep a random root-to-node path
        tree = random_tree(g, n)
        a, b = fast.verify(tree), hf.verify(tree)
        torch.testing.assert_close(a.logits, b.logits, atol=1e-10, rtol=0)
        torch.testing.assert_close(a.taps, b.taps, atol=1e-10, rtol=0)
        keep = [0] + tree.path_to(int(torch.randint(0, n, (1,), generator=g)))
        fast.commit(keep, n)
        hf.commit(keep, n)
        assert_same_cache(fast, hf, 1e-10)
    torch.testing.assert_close(fast.step(5), hf.step(5), atol=1e-10, rtol=0)


def test_cache_grows_past_its_capacity():
    model = MODELS["llama"]
    fast, hf = TargetModel(model, engine="fast"), TargetModel(model, engine="hf")
    tokens = torch.arange(300) % 64  # more than the initial 256 rows
    fast.prefill(tokens)
    hf.prefill(tokens)
    assert fast.cache.keys.shape[2] >= 299
    for tok in (3, 4, 5):
        torch.testing.assert_close(fast.step(tok), hf.step(tok), atol=1e-10, rtol=0)
    assert_same_cache(fast, hf, 1e-10)


def test_kv_buffer_keep_and_crop():
    buf = KVBuffer(layers=2, kv_heads=1, head_dim=1, dtype=torch.float64, device="cpu", capacity=2)
    buf.reserve(6)
    assert buf.keys.shape[2] == 8  # doubled until it fits
    buf.keys[:, 0, :6, 0] = torch.arange(6.0)
    buf.advance(6)
    buf.keep(prefix=2, rows=[0, 2, 3])  # rows 2, 4, 5 after the prefix 0, 1
    assert buf.length == 5 and buf.layers[1].keys.flatten().tolist() == [0, 1, 2, 4, 5]
    buf.crop(-2)
    assert buf.get_seq_length() == 3


def test_float32_fast_engine_greedy_equals_hugging_face():
    """oneDNN products round differently; on a tie-free target greedy output must not change."""
    model = tiny_model("llama", seed=4, dtype=torch.float32)
    target = TargetModel(model)
    assert target.engine == "fast"
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(0))
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    assert torch.equal(autoregressive_generate(target, ids, 24).sequences, ref)
    for drafter in (NGramDrafter(), RandomDrafter(64, seed=2)):
        res = SpeculativeDecoder(target, drafter, BestFirstBuilder(12, 3, 4)).generate(ids, max_new_tokens=24)
        assert torch.equal(res.sequences, ref)
    target.prefill(ids[0])  # caches all but the last token; the step forwards that one
    torch.testing.assert_close(target.step(int(ids[0, -1])), model(ids).logits[0, -1], atol=1e-4, rtol=1e-4)


class CountingHead:
    """Stands in for the fast engine's lm_head product and counts the rows it scored."""

    def __init__(self, head) -> None:
        self.head, self.rows = head, 0

    def __call__(self, x):
        self.rows += x.numel() // x.shape[-1]
        return self.head(x)


def test_a_prefill_skips_the_lm_head_and_decoding_is_unchanged():
    from jetspec.core.batched_target import BatchedTarget

    model = tiny_model("llama", seed=4)
    ids = torch.randint(0, 64, (12,), generator=torch.Generator().manual_seed(0))
    target = TargetModel(model, freeze=False)
    target.set_taps([0, 1])
    target.prefill(ids[:1])  # packs the engine, which later calls reuse
    counter = CountingHead(target._fast.lm_head)
    target._fast.lm_head = counter
    taps = target.prefill(ids)
    assert counter.rows == 0 and taps.shape == (11, 2 * model.config.hidden_size)
    logits = target.step(int(ids[-1]))
    assert counter.rows == 1
    torch.testing.assert_close(logits, model(ids[None]).logits[0, -1], rtol=1e-10, atol=1e-10)
    batched = BatchedTarget(target)
    batched.prefill(torch.stack([ids, ids.flip(0)]), torch.ones(2, 12, dtype=torch.bool))
    assert counter.rows == 1  # the two rows' 22 cached tokens were never scored
    rows = batched.step(torch.stack([ids[-1], ids[0]]))
    assert counter.rows == 3
    torch.testing.assert_close(rows[0], logits, rtol=1e-10, atol=1e-10)


def test_unsupported_models_fall_back_with_a_reason():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=64)).eval()
    assert "model_type 'gpt2'" in compact_engine_support(gpt2)
    assert TargetModel(gpt2).engine == "hf"
    with pytest.raises(ValueError, match="engine='fast' cannot run this model: model_type 'gpt2'"):
        TargetModel(gpt2, engine="fast")
    with pytest.raises(ValueError, match="engine must be one of"):
        TargetModel(MODELS["llama"], engine="compiled")


def test_attention_backends_select_the_hugging_face_engine():
    model = MODELS["llama"]
    assert TargetModel(model, attn_backend="torch").engine == "hf"
    with pytest.raises(ValueError, match="runs its own attention"):
        TargetModel(model, attn_backend="torch", engine="fast")
    with pytest.raises(ValueError, match="needs a TargetModel with engine='hf'"):
        SpeculativeDecoder(TargetModel(model), NGramDrafter(), attn_backend="torch")
    hf = TargetModel(model, engine="hf")
    with pytest.raises(ValueError, match="needs a TargetModel with engine='hf'"):
        SpeculativeDecoder(hf, NGramDrafter(), attn_backend="torch")
    assert hf.attn_backend is None  # the caller's wrapper is left as it was


def test_target_model_leaves_the_callers_module_alone():
    model = tiny_model("llama", seed=7, dtype=torch.float32)
    grads = [p.requires_grad for p in model.parameters()]
    TargetModel(model)
    assert [p.requires_grad for p in model.parameters()] == grads and not model.training
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        TargetModel(model)
    TargetModel(model, freeze=True)  # explicit: eval mode, gradients off
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_packed_weights_are_reused_until_the_weights_change():
    model = tiny_model("llama", seed=6, dtype=torch.float32)
    a, b = TargetModel(model), TargetModel(model)
    assert a._fast is b._fast  # packed once for both wrappers
    ids = torch.arange(10)
    a.prefill(ids)
    before = a.step(3)
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)  # an in-place edit, as a training step would make
    c = TargetModel(model)
    assert c._fast is not a._fast
    c.prefill(ids)
    torch.testing.assert_close(c.step(3), model(torch.cat([ids[:-1], torch.tensor([3])])[None]).logits[0, -1],
                               atol=1e-4, rtol=1e-4)
    assert not torch.allclose(c.step(4), before)


def test_adapters_subclasses_and_hooks_keep_the_hugging_face_engine():
    """The fast engine multiplies by bare weights and skips most submodules' forwards: anything that
    computes more (a LoRA-style layer, a Linear subclass, a forward hook) must not run on it."""

    class Scaled(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2.0

    model = tiny_model("llama", seed=7, dtype=torch.float32)
    assert TargetModel(model).engine == "fast"
    old = model.model.layers[1].self_attn.v_proj
    model.model.layers[1].self_attn.v_proj = Scaled(old.in_features, old.out_features, bias=False)
    assert "layer 1 `v_proj` is not a plain nn.Linear" in compact_engine_support(model)
    assert TargetModel(model).engine == "hf"
    model.model.layers[1].self_attn.v_proj = old
    handle = model.model.layers[0].mlp.register_forward_hook(lambda *a: None)
    assert "forward hooks" in compact_engine_support(model) and TargetModel(model).engine == "hf"
    handle.remove()
    assert TargetModel(model).engine == "fast"


def test_a_permuted_weight_is_packed_again():
    """Swapping two rows keeps a plain sum: the fingerprint must still see it."""
    model = tiny_model("llama", seed=8, dtype=torch.float32)
    first = TargetModel(model)
    with torch.no_grad():
        w = model.lm_head.weight
        w[[3, 7]] = w[[7, 3]].clone()
    second = TargetModel(model)
    assert second._fast is not first._fast
    ids = torch.arange(1, 9)
    second.prefill(ids)
    hf = TargetModel(model, engine="hf")
    hf.prefill(ids)
    torch.testing.assert_close(second.step(2), hf.step(2), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("engine", ["fast", "hf"])
def test_commit_refuses_rows_the_last_verify_did_not_add(engine):
    target = TargetModel(MODELS["llama"], engine=engine)
    target.prefill(torch.arange(1, 9))
    tree = random_tree(torch.Generator().manual_seed(0), 3)
    target.verify(tree)
    with pytest.raises(ValueError, match="keep_nodes"):
        target.commit([0, 7], 3)


def test_half_precision_targets_get_a_working_engine():
    """fp16 oneDNN products need CPU features this machine may lack: auto must fall back, not fail."""
    model = tiny_model("llama", seed=9, dtype=torch.float16)
    target = TargetModel(model)
    target.prefill(torch.arange(1, 9))
    assert torch.isfinite(target.step(3).float()).all()


def _greedy(model, ids, n=12):
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                          eos_token_id=None, pad_token_id=0)


@pytest.mark.parametrize("engine", ["fast", "hf"])
def test_a_wrapper_built_before_load_state_dict_gives_the_new_model(engine):
    """A wrapper follows its model: after load_state_dict its next sequence is the new model's, on
    both engines (docs/design.md §6.3), never a mix of the old packed products and the new
    embedding and norms."""
    model, other = tiny_model("llama", seed=8), tiny_model("llama", seed=9)
    with torch.no_grad():
        for m in (model, other):
            m.lm_head.weight.mul_(30)
    ids = torch.arange(3, 11)[None]
    wrapper = TargetModel(model, engine=engine)
    assert torch.equal(autoregressive_generate(wrapper, ids, 12).sequences, _greedy(model, ids))
    model.load_state_dict(other.state_dict())
    assert torch.equal(autoregressive_generate(wrapper, ids, 12).sequences, _greedy(other, ids))


@pytest.mark.parametrize("engine", ["fast", "hf"])
def test_a_wrapper_follows_an_edit_of_a_tied_embedding(engine):
    from transformers import LlamaForCausalLM

    torch.manual_seed(10)
    cfg = tiny_config("llama")
    cfg.tie_word_embeddings = True
    model = LlamaForCausalLM(cfg).double().eval()
    ids = torch.arange(3, 11)[None]
    wrapper = TargetModel(model, engine=engine)
    autoregressive_generate(wrapper, ids, 4)
    with torch.no_grad():
        w = model.get_input_embeddings().weight  # the lm_head is the same tensor
        w.copy_(w.roll(1, dims=0))
    assert torch.equal(autoregressive_generate(wrapper, ids, 12).sequences, _greedy(model, ids))


def test_zero_sum_edits_on_a_coarse_grid_are_seen():
    """Weights on a coarse grid (as after dequantization) edited so that every row and column sum is
    unchanged: the packed copy must not be reused (the former weighted-sum fingerprint reused it)."""
    model = tiny_model("llama", seed=11)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((p * 64).round() / 64)
    first = TargetModel(model)
    w = model.model.layers[0].mlp.down_proj.weight
    with torch.no_grad():  # +d, -d in rows 0 and 1, columns 0 and 1: all sums stay the same
        w[0, 0] += 0.5
        w[0, 1] -= 0.5
        w[1, 0] -= 0.5
        w[1, 1] += 0.5
    second = TargetModel(model)
    assert second._fast is not first._fast
    ids = torch.arange(3, 13)
    second.prefill(ids)
    torch.testing.assert_close(second.step(5), model(torch.cat([ids[:-1], torch.tensor([5])])[None]).logits[0, -1],
                               atol=1e-10, rtol=0)
