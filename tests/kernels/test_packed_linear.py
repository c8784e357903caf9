"""PackedLinear: prepacked (oneDNN) products against F.linear, the reference twin."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from jetspec.kernels import PackedLinear, onednn_available

needs_onednn = pytest.mark.skipif(not onednn_available(torch.float32, "cpu"),
                                  reason="this PyTorch build has no oneDNN")


@needs_onednn
@given(rows=st.integers(1, 40), in_features=st.integers(1, 70), outs=st.lists(st.integers(1, 50), min_size=1,
       max_size=3), bias=st.booleans(), seed=st.integers(0, 1000))
def test_onednn_equals_separate_f_linear(rows, in_features, outs, bias, seed):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o, in_features, generator=g) for o in outs]
    biases = [torch.randn(o, generator=g) if bias else None for o in outs]
    x = torch.randn(1, rows, in_features, generator=g)
    packed = PackedLinear(weights, biases, backend="onednn")
    assert packed.backend == "onednn" and packed.weight.is_mkldnn
    parts = packed.split(packed(x))
    assert len(parts) == len(outs)
    for part, w, b in zip(parts, weights, biases):
        ref = F.linear(x.double(), w.double(), None if b is None else b.double())
        assert part.shape == (1, rows, w.shape[0])
        torch.testing.assert_close(part.double(), ref, atol=1e-4 * in_features ** 0.5, rtol=1e-4)


def test_torch_backend_is_f_linear_on_the_fused_weight():
    g = torch.Generator().manual_seed(0)
    w1, w2, b1 = (torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(3, 7, generator=g,
                  dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64))
    x = torch.randn(4, 7, generator=g, dtype=torch.float64)
    packed = PackedLinear([w1, w2], [b1, None], backend="auto")  # fp64: oneDNN does not apply
    assert packed.backend == "torch"
    y1, y2 = packed.split(packed(x))
    # Same products; BLAS may block the fused matrix differently, so equal to rounding only.
    torch.testing.assert_close(y1, F.linear(x, w1, b1), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(y2, F.linear(x, w2), atol=1e-12, rtol=1e-12)


def test_packed_weight_is_a_snapshot():
    """Packing copies: later in-place edits of the source weight are not seen (documented)."""
    w = torch.randn(6, 4)
    packed = PackedLinear([w, w.clone()], backend="auto")
    x = torch.randn(2, 4)
    before = packed(x)
    w.add_(1.0)
    assert torch.equal(packed(x), before)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="linear backend must be one of"):
        PackedLinear([torch.randn(2, 2)], backend="mkl")
    with pytest.raises(ValueError, match="'onednn' needs a CPU tensor"):
        PackedLinear([torch.randn(2, 2, dtype=torch.float64)], backend="onednn")
    with pytest.raises(ValueError, match="one I"):
        PackedLinear([torch.randn(2, 3), torch.randn(2, 4)])
    with pytest.raises(ValueError, match="at least one weight"):
        PackedLinear([])
    with pytest.raises(ValueError, match="2 biases for 1 weights"):
        PackedLinear([torch.randn(2, 3)], [torch.randn(2), torch.randn(2)])
