"""jetspec.kernels: attention for verifying draft trees, as a Triton kernel and its PyTorch twin.

Installed only as ``jetspec.kernels`` (never import it as a top-level ``kernels``: that name
belongs to an unrelated package that transformers probes for). Importing it has no side effects
and does not import triton; the kernel is compiled on first use.

    tree_attention(q, k, v, ancestor, scale=None, backend="auto")
    PackedLinear(weights, biases=None, backend="auto")   # a frozen model's products, prepacked


A drafting head's block attention is the same call with a chain (causal) or all-True
(bidirectional) ancestor mask; see ``chain_ancestor`` and ``full_ancestor``.
"""

from .packed_linear import PackedLinear, onednn_available
from .reference import (
    additive_mask,
    ancestor_from_parents,
    chain_ancestor,
    full_ancestor,
    masked_attention,
    padded_visibility,
    tree_attention_reference,
    tree_visibility,
)
from .tree_attention import pack_ancestor_bits, tree_attention, tree_attention_triton, triton_installed

__all__ = [
    "PackedLinear",
    "onednn_available",
    "additive_mask",
    "ancestor_from_parents",
    "chain_ancestor",
    "full_ancestor",
    "masked_attention",
    "pack_ancestor_bits",
    "padded_visibility",
    "tree_attention",
    "tree_attention_reference",
    "tree_attention_triton",
    "tree_visibility",
    "triton_installed",
]
