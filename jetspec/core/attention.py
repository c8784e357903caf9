"""Run a Hugging Face model's attention through jetspec's tree attention, one model at a time.

Verifying a draft tree is one target forward over the N tree nodes against the cached prefix
(docs/design.md §6.4). transformers already accepts such a forward: pass a 4-D additive float
mask ``[B, 1, N, P + N]`` (0 visible, -inf hidden) and explicit ``position_ids``. This module
lets the attention inside that forward run on ``jetspec.kernels.tree_attention`` instead of SDPA,
without patching anything globally:

    with attention_backend(model, "triton"):   # or "torch", "auto"; None / "sdpa" change nothing
        out = model(input_ids=ids, position_ids=pos, attention_mask=mask4d, cache=cache, use_cache=True)

How it plugs in (checked against transformers 5.24 source, ``masking_utils.py`` and
``modeling_utils.py``):

* ``AttentionInterface.register(name, fn)`` adds an attention implementation by name; a model
  uses it once ``model.set_attn_implementation(name)`` has set ``config._attn_implementation``.
  Each attention layer then calls ``fn(module, query, key, value, attention_mask, dropout=...,
  scaling=..., [sliding_window=...], **kwargs)`` with query ``[B, h, N, K]`` (RoPE applied) and
  key/value ``[B, h_kv, P + N, K]`` (cache already updated), and expects
  ``(output [B, N, h, K], weights or None)`` back.
* A 4-D mask given by the caller is passed to every layer untouched (``_preprocess_mask_arguments``
  returns it early, whatever the implementation). Masks that transformers builds itself (prefill
  with no mask or a 2-D padding mask) go through ``AttentionMaskInterface[name]``; for a name not
  registered there the mask becomes None and the prefill would run without its causal mask. We
  register transformers' own ``sdpa_mask``: boolean masks (True = visible), or None for the plain
  causal and single-token cases, so no ``[T, T]`` mask is built for an ordinary prefill.

The attention function recognises a *tree-shaped* mask (prefix fully visible, one tree part shared
by the batch) and runs the tree kernel; any other mask (left padding, arbitrary biases) falls back
to the reference masked attention, so the result is always the attention the mask describes.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from jaxtyping import Bool
from torch import Tensor

from jetspec.core.masks import chain_ancestor, full_ancestor
from jetspec.kernels import masked_attention, pack_ancestor_bits, tree_attention, triton_installed
from jetspec.kernels.tree_attention import triton_or_twin

TREE_TORCH = "jetspec_tree_torch"  # attention implementation names as registered in transformers
TREE_TRITON = "jetspec_tree_triton"
_IMPLEMENTATIONS = {"torch": TREE_TORCH, "triton": TREE_TRITON}
HIDDEN_BELOW = -1.0e4  # a float mask entry <= this hides its key: exp(-1e4) is 0 even in fp64


@dataclass(frozen=True)
class TreeLayout:
    """What the tree kernel needs, read from a mask: attend to keys[:kv_len] with this tree."""

    prefix_len: int  # P
    ancestor: Bool[Tensor, "N N"]
    kv_len: int  # P + N; fewer than the keys given only for an upper-left causal prefill


def tree_layout(
    mask: Optional[Tensor], q_len: int, kv_len: int, causal: bool, device=None
) -> Optional[TreeLayout]:
    """Read the tree out of the mask an attention layer receives, or None if it is not tree-shaped.

    ``mask`` is None (plain attention, causal when ``causal``), boolean (True = visible) or an
    additive float mask, broadcastable as ``[B, 1 or h, N, P + N]``. ``device``: where to build the
    ancestor mask when there is no mask tensor to read it from.
    """
    if mask is None:
        if causal and q_len > 1:
            # SDPA's is_causal is upper-left aligned: query i sees keys 0..i and transformers only
            # skips the mask when the keys beyond the queries are not real tokens (empty cache).
            return TreeLayout(0, chain_ancestor(q_len, device=device), q_len)
        if kv_len < q_len:
            return None
        return TreeLayout(kv_len - q_len, full_ancestor(q_len, device=device), kv_len)
    device = mask.device
    if mask.dim() != 4 or mask.shape[-2] != q_len or mask.shape[-1] != kv_len or kv_len < q_len:
        return None
    prefix_len = kv_len - q_len
    if mask.dtype == torch.bool:
        visible, binary = mask, torch.ones((), dtype=torch.bool, device=device)
    else:
        visible = mask == 0
        binary = (visible | (mask <= HIDDEN_BELOW)).all()  # nothing but "visible" and "hidden"
    first = visible[:1, :1]  # (1, 1, N, P + N): the tree must be the same for every batch row and head
    ok = binary & visible[..., :prefix_len].all() & (visible == first).all()
    if not bool(ok):  # one device sync per distinct mask (see _LayoutCache)
        return None
    return TreeLayout(prefix_len, first[0, 0, :, prefix_len:].contiguous(), kv_len)


class _LayoutCache:
    """The layout of the mask of the forward under way: every layer of one forward gets the same
    mask tensor, so it is inspected (and the device synchronised) once per forward, not once per
    layer, and the ancestor bits the Triton kernel reads are packed once.

    A forward starts at the layer with ``layer_idx == 0``: there the memory is dropped, so a mask
    edited in place between two forwards is read again. Only the mask's identity (a weak
    reference) and the call's shapes are compared; no private tensor field is read. A model whose
    attention modules carry no ``layer_idx`` is not cached (each layer reads the mask itself).
    """

    def __init__(self) -> None:
        self._ref = None  # weak reference to the mask tensor, or None for "no mask"
        self._key = None
        self._layout: Optional[TreeLayout] = None
        self._bits: Optional[Tensor] = None

    def get(
        self, module: torch.nn.Module, mask: Optional[Tensor], q_len: int, kv_len: int, causal: bool, device
    ) -> Optional[TreeLayout]:
        layer = getattr(module, "layer_idx", None)
        if layer is None:
            return tree_layout(mask, q_len, kv_len, causal, device)
        key = (q_len, kv_len, causal, str(device))
        same_mask = (mask is None and self._ref is None) or (self._ref is not None and self._ref() is mask)
        if layer != 0 and self._key == key and same_mask:
            return self._layout
        layout = tree_layout(mask, q_len, kv_len, causal, device)
        self._ref = None if mask is None else weakref.ref(mask)
        self._key, self._layout, self._bits = key, layout, None
        return layout

    def bits(self, layout: TreeLayout, device) -> Tensor:
        """``pack_ancestor_bits`` of the current layout's ancestor, packed once per forward."""
        if layout is not self._layout:  # a layout this cache does not hold (a model without layer_idx)
            return pack_ancestor_bits(layout.ancestor.to(device))
        if self._bits is None:
            self._bits = pack_ancestor_bits(layout.ancestor.to(device))
        return self._bits


_layouts = _LayoutCache()


def tree_attention_forward(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Optional[Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    backend: str = "torch",
    **kwargs,
) -> tuple[Tensor, None]:
    """A transformers attention function: query [B, h, N, K], key/value [B, h_kv, P + N, K].

    Returns ``(out [B, N, h, K], None)``. ``sliding_window`` and other extra kwargs are ignored:
    transformers already folds sliding windows into the mask it passes.
    """
    if dropout and module.training:
        raise ValueError("jetspec tree attention does not implement attention dropout; call model.eval()")
    for unsupported in ("softcap", "s_aux"):
        if kwargs.get(unsupported) is not None:
            raise ValueError(f"jetspec tree attention does not support `{unsupported}`; "
                             "use 'sdpa' or 'eager'")
    q_len, kv_len = query.shape[2], key.shape[2]
    causal = getattr(module, "is_causal", True)
    layout = _layouts.get(module, attention_mask, q_len, kv_len, causal, query.device)
    if layout is not None:
        k, v = key[:, :, : layout.kv_len], value[:, :, : layout.kv_len]
        bits = _layouts.bits(layout, query.device) if backend == "triton" else None
        out = tree_attention(query, k, v, layout.ancestor, scale=scaling, backend=backend, ancestor_bits=bits)
    else:
        out = masked_attention(query, key, value, attention_mask, scaling)  # any other mask: exact fallback
    return out.transpose(1, 2).contiguous(), None  # (B, N, h, K), as the attention modules expect


def _torch_attention(module, query, key, value, attention_mask, **kwargs):
    return tree_attention_forward(module, query, key, value, attention_mask, backend="torch", **kwargs)


def _triton_attention(module, query, key, value, attention_mask, **kwargs):
    return tree_attention_forward(module, query, key, value, attention_mask, backend="triton", **kwargs)


def register_tree_attention() -> None:
    """Register both implementations with transformers (idempotent; only adds two names)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(TREE_TORCH, _torch_attention)
    AttentionInterface.register(TREE_TRITON, _triton_attention)
    # Without these two, masks transformers builds itself (prefill) would be dropped (None).
    AttentionMaskInterface.register(TREE_TORCH, sdpa_mask)
    AttentionMaskInterface.register(TREE_TRITON, sdpa_mask)


def resolve_backend(model: torch.nn.Module, backend: Optional[str]) -> Optional[str]:
    """The attention implementation name for ``backend``, or None to leave the model as it is."""
    if backend in (None, "sdpa"):
        return None
    if backend == "auto":
        on_cuda = any(p.is_cuda for p in model.parameters())
        backend = "triton" if on_cuda and triton_installed() else "torch"
    backend = triton_or_twin(backend)  # where triton is not installed: its twin, with one notice
    if backend in _IMPLEMENTATIONS:
        return _IMPLEMENTATIONS[backend]
    if backend in _IMPLEMENTATIONS.values():
        return backend
    raise ValueError(f"attention backend must be None, 'sdpa', 'torch', 'triton' or 'auto', got {backend!r}")


@contextmanager
def attention_backend(model: torch.nn.Module, backend: Optional[str]) -> Iterator[torch.nn.Module]:
    """Switch this one model's attention to jetspec tree attention, and restore it on exit.

    ``backend``: ``"torch"`` (reference), ``"triton"`` (kernel; the reference, with one notice, where
    triton is not installed), ``"auto"`` (triton when the model is on CUDA and triton is installed),
    or None / ``"sdpa"`` to leave the model untouched. Other models, and this model outside the
    ``with`` block, keep their own implementation.
    """
    name = resolve_backend(model, backend)
    if name is None:
        yield model
        return
    register_tree_attention()
    previous = model.config._attn_implementation
    if previous == name:
        yield model
        return
    model.set_attn_implementation(name)
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)
