"""Tree attention in plain PyTorch: the readable twin of the Triton kernel.

This file is three things at once:

* the **definition** of tree attention in jetspec (what the kernel must compute),
* the **CPU fallback** that ``tree_attention(..., backend="torch")`` runs,
* the **test oracle** the Triton kernel is compared against.

It favours clarity over speed: it materialises the full ``[B, h, N, P + N]`` score matrix in
fp32 (fp64 for fp64 inputs), which is exactly the memory traffic the kernel avoids.

Tree attention, in one sentence: query ``i`` (tree node ``i``) may look at every cached prefix
token and at the tree nodes on its own root-to-``i`` path. Written as a visibility matrix over
the ``P + N`` keys::

    keys:       0 .. P-1 (cached prefix)  |  P .. P+N-1 (the tree nodes)
    query i:    all visible               |  ancestor[i, :]

Shapes use the glossary of ``jetspec`` (docs/design.md §8).
"""

from __future__ import annotations

import math
from typing import Optional, no_type_check

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from jetspec.core.masks import tree_visibility

# Dtypes the reference accepts. fp64 is here so that exactness tests can run in double precision;
# the Triton kernel accepts only the first three (see tree_attention.py).
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ----------------------------------------------------------------------------- validation
def check_tree_attention_args(q: Tensor, k: Tensor, v: Tensor, ancestor: Tensor) -> None:
    """Raise a ValueError naming the offending argument when shapes or dtypes do not fit.

    Shared by both backends so that they reject exactly the same inputs.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 4-D tensor, got {shape}; expected q [B, h, N, K] and "
                             "k, v [B, h_kv, P + N, K]")
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{name} has dtype {t.dtype}; supported: {[str(d) for d in SUPPORTED_DTYPES]}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    b, h, n, kd = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape "
                         "[B, h_kv, P + N, K]")
    if k.shape[0] != b:
        raise ValueError(f"k has batch {k.shape[0]} but q has batch {b}")
    if k.shape[3] != kd:
        raise ValueError(f"k has head dim {k.shape[3]} but q has head dim {kd}")
    if kd == 0:  # the default scale 1 / sqrt(K) is undefined; no model has K = 0
        raise ValueError("q has head dim 0; attention needs a head dim K >= 1")
    h_kv = k.shape[1]
    if h_kv == 0 or h % h_kv != 0:
        raise ValueError(f"q has {h} heads, k has {h_kv}: the query heads must be a multiple of the kv "
                         "heads (GQA)")
    if k.shape[2] < n:
        raise ValueError(f"k has {k.shape[2]} positions, fewer than the N = {n} tree nodes of q "
                         "(k must hold the P prefix tokens followed by the N nodes)")
    if not isinstance(ancestor, Tensor) or ancestor.dtype != torch.bool:
        got = ancestor.dtype if isinstance(ancestor, Tensor) else type(ancestor).__name__
        raise ValueError(f"ancestor must be a bool tensor [N, N], got {got}")
    if tuple(ancestor.shape) != (n, n):
        raise ValueError(f"ancestor has shape {tuple(ancestor.shape)}, expected [N, N] = [{n}, {n}]")


# ----------------------------------------------------------------------------- the math
def masked_attention(
    q: Float[Tensor, "B h N K"],
    k: Float[Tensor, "B h_kv T K"],
    v: Float[Tensor, "B h_kv T K"],
    mask: Optional[Tensor],
    scale: Optional[float] = None,
) -> Float[Tensor, "B h N K"]:
    """Attention of N queries over T keys under an arbitrary mask, computed explicitly.

    ``mask`` broadcasts to ``[B, h, N, T]`` and is either boolean (True = visible) or an
    additive float mask (0 = visible, -inf or a very negative number = hidden, other values are
    added to the scores as a bias). ``None`` means every key is visible.

    A query that sees no key at all gets a zero output (instead of softmax's 0/0 = NaN), the same
    convention as the Triton kernel.
    """
    if k.shape[2] == 0:  # no key at all (and so no tree node): every query sees nothing
        return q.new_zeros(q.shape)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    group = q.shape[1] // k.shape[1]
    # GQA: query head j reads kv head j // group, so each kv head serves `group` query heads.
    kf = k.to(acc).repeat_interleave(group, dim=1)  # (B, h, T, K)
    vf = v.to(acc).repeat_interleave(group, dim=1)  # (B, h, T, K)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("bhnk,bhtk->bhnt", q.to(acc), kf) * scale  # (B, h, N, T): the big buffer
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(acc)
    # Softmax by hand so that all-hidden rows give 0 rather than NaN.
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - row_max)  # (B, h, N, T), exp(-inf) = 0 for hidden keys
    denom = weights.sum(dim=-1, keepdim=True)
    weights = weights / torch.where(denom > 0, denom, torch.ones_like(denom))
    out = torch.einsum("bhnt,bhtk->bhnk", weights, vf)  # (B, h, N, K)
    return out.to(q.dtype)


@no_type_check  # validates its arguments with errors naming them (check_tree_attention_args)
def tree_attention_reference(
    q: Float[Tensor, "B h N K"],
    k: Float[Tensor, "B h_kv T K"],
    v: Float[Tensor, "B h_kv T K"],
    ancestor: Bool[Tensor, "N N"],
    scale: Optional[float] = None,
) -> Float[Tensor, "B h N K"]:
    """Tree attention, the slow and obvious way (same arguments as ``tree_attention``).

    Args:
        q: ``[B, h, N, K]`` queries of the N tree nodes (RoPE already applied).
        k: ``[B, h_kv, P + N, K]`` the P cached prefix positions, then the N tree nodes.
        v: ``[B, h_kv, P + N, K]``, the values of the same positions as ``k``.
        ancestor: bool ``[N, N]``; ``ancestor[i, j]`` is True iff node j is node i or one of
            its ancestors. Shared by the whole batch.
        scale: softmax scale, ``1 / sqrt(K)`` by default.

    Returns:
        ``[B, h, N, K]`` in q's dtype; key j is visible to query i iff ``j < P`` or
        ``ancestor[i, j - P]``.

    Example:
        >>> q = torch.randn(1, 4, 3, 16); k = v = torch.randn(1, 2, 5 + 3, 16)
        >>> from jetspec.core.masks import ancestor_from_parents
        >>> tree_attention_reference(q, k, v, ancestor_from_parents([-1, 0, 0])).shape
        torch.Size([1, 4, 3, 16])
    """
    check_tree_attention_args(q, k, v, ancestor)
    prefix_len = k.shape[2] - q.shape[2]
    visible = tree_visibility(ancestor.to(q.device), prefix_len)  # (N, P + N)
    return masked_attention(q, k, v, visible[None, None], scale)  # broadcast over B and h
