"""``PackedLinears``: a head module's Linear children run as one prepacked product while drafting.

The claims: under ``no_grad`` the packed product computes what the children compute one by one (to
fp32 rounding; the kernels add in another order); it follows every change of the weights (an
in-place write, a replaced child, ``.to``); training (autograd recording) and large batches keep the
plain ``nn.Linear`` calls, bit for bit.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from conftest import tiny_llama
from torch import nn

from jetspec.drafters.head_layers import PACKED_MAX_ROWS, Attention, LayerShape, SwiGLU
from jetspec.drafters.parallel_head import JetSpecHead
from jetspec.kernels import PackedLinear
from jetspec.training.recipe import Teacher

SHAPE = LayerShape(hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=96)


def mlp(seed: int = 0) -> SwiGLU:
    torch.manual_seed(seed)
    m = SwiGLU(SHAPE.hidden_size, SHAPE.intermediate_size)
    for p in m.parameters():
        nn.init.normal_(p, std=0.2)
    return m


def reference(m: SwiGLU, x: torch.Tensor) -> torch.Tensor:
    """The MLP computed by hand from its weights (no module call)."""
    return torch.nn.functional.silu(x @ m.gate_proj.weight.T) * (x @ m.up_proj.weight.T) @ m.down_proj.weight.T


def test_drafting_runs_one_packed_product_per_group_and_computes_what_the_layers_compute():
    m, x = mlp(), torch.randn(3, 5, SHAPE.hidden_size)
    with torch.no_grad():
        got = m(x)
    assert set(m._packed) == {("gate_proj", "up_proj"), ("down_proj",)}
    packed = m._packed["gate_proj", "up_proj"][1]
    assert isinstance(packed, PackedLinear) and packed.sizes == [96, 96]
    torch.testing.assert_close(got, reference(m, x), rtol=1e-5, atol=1e-5)


def test_an_in_place_weight_write_is_seen_at_the_next_call():
    m, x = mlp(), torch.randn(2, SHAPE.hidden_size)
    with torch.no_grad():
        before = m(x)
        m.up_proj.weight.mul_(-1.0)  # as an optimizer step writes: same tensor, version bumped
        after = m(x)
    torch.testing.assert_close(after, reference(m, x), rtol=1e-5, atol=1e-5)
    # negative control: the write changes the output, so a stale packed copy would have been caught
    assert (after - before).abs().max() > 1e-2


def test_load_state_dict_dtype_changes_and_a_replaced_child_are_seen():
    m, other, x = mlp(0), mlp(1), torch.randn(4, SHAPE.hidden_size)
    with torch.no_grad():
        m(x)
        m.load_state_dict(other.state_dict())
        torch.testing.assert_close(m(x), reference(other, x), rtol=1e-5, atol=1e-5)
        m.to(torch.float64)
        torch.testing.assert_close(m(x.double()), reference(m, x.double()), rtol=1e-12, atol=1e-12)
        m.down_proj = nn.Linear(SHAPE.intermediate_size, SHAPE.hidden_size, bias=False).double()
        torch.testing.assert_close(m(x.double()), reference(m, x.double()), rtol=1e-12, atol=1e-12)


def test_training_and_large_batches_keep_the_plain_layers_bit_for_bit():
    m = mlp()
    x = torch.randn(3, SHAPE.hidden_size)
    plain = m.down_proj(torch.nn.functional.silu(m.gate_proj(x)) * m.up_proj(x))
    y = m(x)  # autograd records: the reference path, with a backward
    assert y.requires_grad and torch.equal(y, plain) and not m._packed
    y.sum().backward()
    assert m.gate_proj.weight.grad is not None
    big = torch.randn(PACKED_MAX_ROWS + 1, SHAPE.hidden_size)
    with torch.no_grad():
        assert torch.equal(m(big), m.down_proj(torch.nn.functional.silu(m.gate_proj(big)) * m.up_proj(big)))
    assert not m._packed


def test_attention_packs_q_k_v_and_its_keys_match_the_context_projection():
    torch.manual_seed(0)
    attn = Attention(SHAPE)
    x = torch.randn(1, 6, SHAPE.hidden_size)
    cos, sin = torch.ones(1, 6, SHAPE.head_dim), torch.zeros(1, 6, SHAPE.head_dim)  # RoPE at angle 0
    with torch.no_grad():
        drafted = attn(x, cos, sin, torch.zeros(1, 1, 6, 6))
        k, v = attn.project_kv(x, cos, sin)
    train = attn(x, cos, sin, torch.zeros(1, 1, 6, 6))
    assert ("q_proj", "k_proj", "v_proj") in attn._packed and ("k_proj", "v_proj") in attn._packed
    torch.testing.assert_close(drafted, train.detach(), rtol=1e-5, atol=1e-5)
    want_k = (x @ attn.k_proj.weight.T).view(1, 6, 2, 16).transpose(1, 2)
    torch.testing.assert_close(k, want_k, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grad", [False, True])
def test_a_frozen_module_drafts_packed_even_with_autograd_on(grad):
    m, x = mlp(), torch.randn(2, SHAPE.hidden_size)
    m.requires_grad_(False)  # a loaded head used for drafting only
    with torch.set_grad_enabled(grad):
        y = m(x)
    assert ("gate_proj", "up_proj") in m._packed and not y.requires_grad
    torch.testing.assert_close(y, reference(m, x), rtol=1e-5, atol=1e-5)


def test_a_frozen_module_passes_the_gradient_of_its_input_back():
    m = mlp().requires_grad_(False)
    x = torch.randn(2, SHAPE.hidden_size, requires_grad=True)
    m(x).sum().backward()  # the packed kernels have no backward: this must take the plain layers
    assert x.grad is not None and x.grad.abs().sum() > 0 and not m._packed


def test_hooks_linear_subclasses_autocast_and_other_dtypes_keep_the_plain_layers():
    m, x = mlp(), torch.randn(2, SHAPE.hidden_size)
    calls = []
    handle = m.up_proj.register_forward_hook(lambda mod, args, out: calls.append(1))
    with torch.no_grad():
        m(x)
    assert calls == [1] and ("gate_proj", "up_proj") not in m._packed  # the hook ran: not packed
    handle.remove()

    class Scaled(nn.Linear):  # an adapter-like child computes more than x @ W^T
        def forward(self, inp):
            return 2.0 * super().forward(inp)

    scaled = Scaled(SHAPE.intermediate_size, SHAPE.hidden_size, bias=False)
    scaled.weight.data.copy_(m.down_proj.weight)
    plain_out = m(x).detach()
    m.down_proj = scaled
    with torch.no_grad():
        torch.testing.assert_close(m(x), 2.0 * plain_out)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert m(x).dtype == torch.bfloat16  # autocast computes in bf16: the plain layers ran
        with pytest.raises(RuntimeError):
            m(x.double())  # as nn.Linear refuses another dtype, at any number of rows


def test_a_bias_that_trains_keeps_its_gradient():
    lin = SwiGLU(4, 8)
    lin.gate_proj = nn.Linear(4, 8, bias=True)
    lin.requires_grad_(False)
    lin.gate_proj.bias.requires_grad_(True)
    lin(torch.randn(3, 4)).sum().backward()
    assert lin.gate_proj.bias.grad is not None and not lin._packed


def test_copies_and_pickles_carry_the_weights_not_the_packed_copies():
    m, x = mlp(), torch.randn(2, SHAPE.hidden_size)
    with torch.no_grad():
        want = m(x)
    assert m._packed
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert not clone._packed
        with torch.no_grad():
            torch.testing.assert_close(clone(x), want, rtol=0, atol=0)


def tiny_head():
    target = tiny_llama(seed=0, dtype=torch.float32)
    torch.manual_seed(1)
    head = JetSpecHead(target, block_size=4)
    ids = torch.randint(3, 64, (12,))
    taps = Teacher(target, head.tap_layers)(ids[None]).taps[0]
    return target, head, ids, taps


def test_a_head_drafts_a_new_sequence_with_the_weights_a_fused_optimizer_step_wrote():
    target, head, ids, taps = tiny_head()
    before = head.draft_logits(ids[:9], taps[:8], round_index=0, depth=3)
    opt = torch.optim.AdamW(head.net.parameters(), lr=0.1, fused=True)
    for p in head.net.parameters():
        p.grad = torch.ones_like(p)
    opt.step()  # fused: the same storages, no version bump; the next sequence must still see the step
    after = head.draft_logits(ids[:9], taps[:8], round_index=0, depth=3)
    fresh = JetSpecHead(target, block_size=4)
    fresh.load_state_dict(head.state_dict())
    assert torch.equal(after, fresh.draft_logits(ids[:9], taps[:8], round_index=0, depth=3))
    assert (after - before).abs().max() > 1e-3  # negative control: the step changed the drafts


def test_a_head_built_in_inference_mode_drafts():
    with torch.inference_mode():
        _, head, ids, taps = tiny_head()
        got = head.draft_logits(ids[:9], taps[:8], round_index=0, depth=3)
    assert got.shape == (3, 64)
