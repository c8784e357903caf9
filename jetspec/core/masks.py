"""Masks: which keys a query may see, as ancestor, visibility and additive float masks.

One home for the mask vocabulary every part of jetspec speaks (docs/design.md §2.3, §4.9): the
target's verify forward, the compact engine, the drafting heads and their training recipe, and
the attention kernels (whose ``ancestor`` argument is one of these). The matrices:

* ancestor ``[N, N]``: node i sees node j iff j is i or one of its ancestors
  (``ancestor_from_parents``; ``chain_ancestor`` is causal, ``full_ancestor`` bidirectional);
* visibility ``[N, P + N]``: the whole cached prefix, then the ancestor mask (``tree_visibility``),
  and several rows of different sizes in one padded batch (``padded_visibility``, with ``stack_kv``
  laying their cached K/V out the same way);
* the additive float form models take (``additive_mask``).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from jaxtyping import Bool, Float
from torch import Tensor


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
