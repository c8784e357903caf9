"""Linear layers of a frozen model with prepacked weights: the CPU verify forward's main cost.

On a CPU, a target forward over a few rows is almost all matrix products against the weights
(``y = x @ W^T``). PyTorch's default CPU path hands each product to a BLAS ``sgemm`` that re-packs
``W`` into its blocked layout on every call and picks kernels tuned for large matrices. For the
skinny shapes of decoding (M = 1 to 65 rows against 576 x 1536 weights) that wastes most of the
machine: on the 2-core CPU of BENCHMARKS.md the 30 layers' products of SmolLM2-135M took
24 ms at M = 1 and 47 ms at M = 17 that way, and 12 ms / 18 ms with the weights packed once into
oneDNN's layout (``scripts/roofline`` numbers are in BENCHMARKS.md).

``PackedLinear`` packs one or more weights that read the same input (q/k/v, or gate/up) into one
matrix, so a decoder layer runs 4 products instead of 7, each wider. It has two backends:

* ``"onednn"``: the weight is reordered once (``torch.ops.mkldnn._reorder_linear_weight``, the
  op PyTorch's own compiler uses when it freezes a CPU model) and every call runs
  ``torch.ops.mkldnn._linear_pointwise``. fp32 / bf16 / fp16 on CPU only.
* ``"torch"``: ``F.linear`` on the concatenated dense weight. This is the reference twin, and
  what runs for fp64, on GPUs and where PyTorch was built without oneDNN.

``backend="auto"`` picks oneDNN where it applies. Both compute the same product; they differ only
in the order of the floating-point additions (the tests bound the difference).

The packed weight is a *copy*, made once: later in-place edits of the model's weights are not
seen. This is for frozen targets; build a new one after changing weights.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

BACKENDS = ("auto", "onednn", "torch")
ONEDNN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def onednn_available(dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether the prepacked oneDNN product can run for weights of this dtype on this device."""
    return (torch.device(device).type == "cpu" and dtype in ONEDNN_DTYPES
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def resolve_linear_backend(backend: str, dtype: torch.dtype, device) -> str:
    """``"onednn"`` or ``"torch"`` for ``backend``; an explicit ``"onednn"`` that cannot run raises."""
    if backend not in BACKENDS:
        raise ValueError(f"linear backend must be one of {BACKENDS}, got {backend!r}")
    available = onednn_available(dtype, device)
    if backend == "onednn" and not available:
        raise ValueError(f"linear backend 'onednn' needs a CPU tensor of dtype {ONEDNN_DTYPES} and a PyTorch "
                         f"built with oneDNN; got {dtype} on {device}. Use backend='torch' or 'auto'.")
    if backend == "auto":
        return "onednn" if available else "torch"
    return backend


class PackedLinear:
    """``y = x @ cat(weights)^T + cat(biases)``, with the weights packed once for fast calls.

    Args:
        weights: ``[O_i, I]`` matrices that read the same input (nn.Linear's ``weight`` layout).
        biases: one bias ``[O_i]`` or None per weight; None (the default) means no bias at all.
        backend: ``"auto"``, ``"onednn"`` or ``"torch"`` (see the module docstring).

    Calling it on ``x [..., I]`` returns ``[..., O]`` with ``O = sum(O_i)``; ``split(y)`` cuts that
    back into the ``[..., O_i]`` parts, in the order the weights were given.
    """

    def __init__(self, weights: Sequence[Tensor], biases: Optional[Sequence[Optional[Tensor]]] = None,
                 backend: str = "auto") -> None:
        if not weights:
            raise ValueError("PackedLinear needs at least one weight")
        in_features = {w.shape[1] for w in weights}
        if any(w.dim() != 2 for w in weights) or len(in_features) != 1:
            raise ValueError(f"weights must be 2-D [O_i, I] with one I; got {[tuple(w.shape) for w in weights]}")
        self.sizes = [w.shape[0] for w in weights]
        self.in_features = in_features.pop()
        self.out_features = sum(self.sizes)
        weight = torch.cat([w.detach() for w in weights]) if len(weights) > 1 else weights[0].detach()
        self.bias = None
        if biases is not None and any(b is not None for b in biases):
            if len(biases) != len(weights):
                raise ValueError(f"got {len(biases)} biases for {len(weights)} weights")
            self.bias = torch.cat([b.detach() if b is not None else weight.new_zeros(o)
                                   for b, o in zip(biases, self.sizes)])
        self.backend = resolve_linear_backend(backend, weight.dtype, weight.device)
        if self.backend == "onednn":
            self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous())
        else:
            self.weight = weight  # a view of the model's own weight when there is only one

    def __call__(self, x: Float[Tensor, "*B I"]) -> Float[Tensor, "*B O"]:
        if self.backend == "onednn":
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def split(self, y: Float[Tensor, "*B O"]) -> tuple[Tensor, ...]:
        return y.split(self.sizes, dim=-1)

    def __repr__(self) -> str:
        return f"PackedLinear({self.in_features} -> {self.sizes}, backend={self.backend!r})"
