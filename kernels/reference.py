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

Shapes (the glossary of ``jetspec``): B batch, h query heads, h_kv key/value heads, N tree nodes,
P cached prefix length, T = P + N keys, K head dim.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union, no_type_check

import torch
from jaxtyping import Bool, Float
from torch import Tensor

# Dtypes the reference accepts. fp64 is here so that exactness tests can run in double precision;
# the Triton kernel accepts only the first three (see tree_attention.py).
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ----------------------------------------------------------------------------- ancestor helpers
def ancestor_from_parents(parents: Union[Sequence[int], Tensor], device=None) -> Bool[Tensor, "N N"]:
    """Ancestor mask (self included) of a forest given as a parents array: the one ancestor closure.

    ``parents[i]`` is the parent of node ``i`` and parents come before their children
    (``parents[i] < i``), the order every jetspec tree uses. Because of that order one pass
    suffices: node i's row is its parent's row plus itself.

    The rule for roots: every node with ``parents[i] == -1`` is a root, so several roots (a forest,
    e.g. the independent blocks of a packed batch) are accepted here. Whether a *draft tree* may
    have only one root, node 0, is the tree's own rule, checked by ``jetspec.core.types.ancestor_mask``.

    Example: ``parents = [-1, 0, 0, 1]`` (a root with two children, the first with a child) gives
    rows ``1000, 1100, 1010, 1101``.
    """
    parents = torch.as_tensor(parents, dtype=torch.long).tolist()
    n = len(parents)
    anc = torch.zeros(n, n, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= i or p < -1:
            raise ValueError(f"parents[{i}] = {p}: parents must precede their children (-1 <= parents[i] < i)")
        if p >= 0:
            anc[i] = anc[p]
        anc[i, i] = True
    return anc.to(device) if device is not None else anc


def chain_ancestor(n: int, device=None) -> Bool[Tensor, "N N"]:
    """A chain of ``n`` nodes: node i sees nodes 0..i (lower-triangular).

    This is an ordinary causal mask: a drafting head's causal block of S slots is a chain tree.
    """
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def full_ancestor(n: int, device=None) -> Bool[Tensor, "N N"]:
    """Every node sees every node: the bidirectional block of a DFlash-style head."""
    return torch.ones(n, n, dtype=torch.bool, device=device)


def tree_visibility(ancestor: Bool[Tensor, "N N"], prefix_len: int) -> Bool[Tensor, "N T"]:
    """The ``[N, P + N]`` visibility matrix: the whole prefix, then the ancestor mask."""
    n = ancestor.shape[0]
    prefix = torch.ones(n, prefix_len, dtype=torch.bool, device=ancestor.device)
    return torch.cat([prefix, ancestor.to(torch.bool)], dim=1)


def padded_visibility(visible: Sequence[Tensor], prefix_lens: Sequence[int]) -> Bool[Tensor, "B N T"]:
    """Several rows' visibility matrices in one batch whose prefixes and node counts differ.

    Row b's ``visible[b]`` is ``[N_b, P_b + N_b]`` (its own prefix, then its own nodes, as
    ``tree_visibility`` makes it). The batch lays the keys out as the prefixes padded to
    P = max P_b, then the nodes padded to N = max N_b, so that every row's nodes sit at the same
    columns: row b's padding keys are hidden from its queries, and a padding query sees only
    itself (a query that sees nothing would be 0/0 in a plain softmax).
    """
    if len(visible) != len(prefix_lens):
        raise ValueError(f"{len(visible)} visibility matrices for {len(prefix_lens)} prefix lengths")
    p = max(prefix_lens, default=0)
    n = max((v.shape[0] for v in visible), default=0)
    device = visible[0].device if len(visible) else None
    out = torch.zeros(len(visible), n, p + n, dtype=torch.bool, device=device)
    pad = torch.eye(n, dtype=torch.bool, device=device)
    for b, (vis, pb) in enumerate(zip(visible, prefix_lens)):
        m = vis.shape[0]
        if vis.shape[1] != pb + m:
            raise ValueError(f"visible[{b}] is {tuple(vis.shape)}; with prefix length {pb} it must be "
                             f"[N_b, {pb} + N_b]")
        out[b, :m, :pb] = vis[:, :pb]
        out[b, :m, p: p + m] = vis[:, pb:]
        out[b, m:, p:] = pad[m:]
    return out


def stack_kv(rows: Sequence[list[tuple[Tensor, Tensor]]], length: int) -> list[tuple[Tensor, Tensor]]:
    """Per layer, several rows' cached K/V ``[1, h_kv, P_b, K]`` as one ``[B, h_kv, P, K]`` batch.

    Each row is zero-padded at the end to ``length`` = P (the caller's mask hides the padding,
    ``padded_visibility``). Used when a drafter runs several batch rows in one forward
    (docs/design.md §4.9).
    """
    out = []
    for layer in zip(*rows):
        ks = [torch.nn.functional.pad(k, (0, 0, 0, length - k.shape[2])) for k, _ in layer]
        vs = [torch.nn.functional.pad(v, (0, 0, 0, length - v.shape[2])) for _, v in layer]
        out.append((torch.cat(ks), torch.cat(vs)))
    return out


def additive_mask(visible: Bool[Tensor, "*shape"], dtype: torch.dtype) -> Float[Tensor, "*shape"]:
    """The one additive float mask: 0 where ``visible``, ``-inf`` elsewhere, same shape and device.

    Models take float masks rather than boolean ones: transformers' eager attention mishandles
    boolean 4-D masks, while 0 / -inf added to the scores means the same thing to every backend.
    """
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(~visible, float("-inf"))


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
        >>> tree_attention_reference(q, k, v, ancestor_from_parents([-1, 0, 0])).shape
        torch.Size([1, 4, 3, 16])
    """
    check_tree_attention_args(q, k, v, ancestor)
    prefix_len = k.shape[2] - q.shape[2]
    visible = tree_visibility(ancestor.to(q.device), prefix_len)  # (N, P + N)
    return masked_attention(q, k, v, visible[None, None], scale)  # broadcast over B and h
