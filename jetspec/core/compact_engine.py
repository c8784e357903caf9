"""A compact forward pass for Llama-family targets: the CPU fast path of ``TargetModel``.

Verifying a tree is one target forward over N rows. Through Hugging Face's generic forward a
17-row verify of SmolLM2-135M cost 2x a one-token step on the 2-core CPU of BENCHMARKS.md, and
the one-token step itself ran at a third of the memory bandwidth. The profile (``jetspec
roofline``) put the time in four places; this module removes each, and nothing else:

1. **Products.** 80% of the forward is ``x @ W^T``. The weights are packed once for oneDNN and
   q/k/v and gate/up are fused, so a layer runs 4 products instead of 7
   (``jetspec.kernels.PackedLinear``).
2. **The KV cache.** One preallocated buffer ``[L, h_kv, capacity, K]`` per keys and values
   (``KVBuffer``): a forward writes its rows in place instead of concatenating every layer's
   cache, and commit gathers the accepted rows for all layers in one indexing op.
3. **Grouped-query attention.** Hugging Face expands the h_kv key/value heads to h heads (a copy
   of the whole cache per layer) whenever a mask is given. Here the ``g = h / h_kv`` query heads
   that share a key/value head are stacked along the query axis instead:
   ``q [1, h, N, K] -> [1, h_kv, g * N, K]``, so attention reads the cache as it is.
4. **The mask.** One additive mask ``[g * N, P + N]`` (prefix visible, tree part = ancestor
   mask, tiled g times) is built per forward, not per layer; a one-token step needs none.

Everything else is the model's own modules, called as Hugging Face calls them: the embedding,
the RMSNorms (with Qwen3's per-head q/k norms), the rotary embedding (so any RoPE scaling the
config asks for applies) and the MLP's activation. ``TargetModel(engine="fast")`` uses this (the
user-facing value stays ``"fast"``, which scripts and docs already pass; the code calls it the compact engine);
``compact_engine_support`` says which models qualify and why others do not. The result equals the
Hugging Face forward up to the order of floating-point additions (tests: 1e-10 in fp64).

Shapes use the glossary of ``jetspec`` (docs/design.md §8).

Batches (``forward_rows`` over a ``RowsKVBuffer``): docs/design.md §6.9.

Design: docs/design.md §6.3.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from jetspec.core.masks import additive_mask, tree_visibility
from jetspec.core.target_support import unsupported_reason
from jetspec.kernels.packed_linear import PackedLinear

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")


def compact_engine_support(model: torch.nn.Module) -> Optional[str]:
    """None if ``CompactEngine`` can run ``model`` exactly, else the reason it cannot."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model_type {model_type!r} is not one of {SUPPORTED_MODEL_TYPES}"
    layer_types = getattr(config, "layer_types", None) or ()
    if any(t != "full_attention" for t in layer_types) or (
            model_type == "mistral" and getattr(config, "sliding_window", None) is not None):
        return "sliding-window attention layers are not supported"
    reason = unsupported_reason(config)  # what neither engine verifies exactly (RoPE recomputed per forward)
    if reason is not None:
        return reason
    decoder = model.get_decoder()
    for name in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if not hasattr(decoder, name):
            return f"the decoder has no `{name}`"
    for i, layer in enumerate(decoder.layers):
        attn, mlp = layer.self_attn, layer.mlp
        for mod, names in ((attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
                           (mlp, ("gate_proj", "up_proj", "down_proj"))):
            for name in names:
                # Exactly nn.Linear: a subclass or an adapter (LoRA) computes more than x @ W^T + b,
                # and this engine multiplies by the bare weight.
                if type(getattr(mod, name, None)) is not torch.nn.Linear:
                    return f"layer {i} `{name}` is not a plain nn.Linear"
    # This engine calls a few submodules itself and skips the rest, so hooks would silently not run.
    # (nn.Module keeps hooks in these dicts; there is no public accessor.)
    hooked = [name for name, mod in model.named_modules() if mod._forward_hooks or mod._forward_pre_hooks]
    if hooked:
        return f"forward hooks are registered on {hooked[:3]}"
    return None


@dataclass
class LayerKV:
    """One layer's cached keys and values, ``[1, h_kv, P, K]`` (the layout Hugging Face caches use)."""

    keys: Tensor
    values: Tensor


def _grown(buf: Tensor, length: int, need: int, dim: int) -> Tensor:
    """``buf`` if its capacity along ``dim`` holds ``need``; else a copy whose capacity doubled until it
    does, with the first ``length`` entries along ``dim`` kept (a cache grows by doubling, rarely)."""
    capacity = buf.shape[dim]
    if need <= capacity:
        return buf
    while capacity < need:
        capacity *= 2
    shape = list(buf.shape)
    shape[dim] = capacity
    new = buf.new_zeros(shape)
    new.narrow(dim, 0, length).copy_(buf.narrow(dim, 0, length))
    return new


class KVBuffer:
    """The keys and values of every layer in two preallocated tensors ``[L, h_kv, capacity, K]``.

    ``length`` rows are valid. A forward writes its N rows at ``length .. length + N`` (``write``)
    and then counts them (``advance``); ``keep`` compacts after a verify; the capacity doubles
    when a forward would not fit.
    """

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype, device, capacity: int = 256) -> None:
        self.keys = torch.zeros(layers, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.length = 0

    def get_seq_length(self) -> int:
        return self.length

    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` more rows after ``length``."""
        self.keys, self.values = (_grown(x, self.length, self.length + rows, dim=2) for x in (self.keys, self.values))

    def write(self, layer: int, k: Float[Tensor, "1 h_kv N K"], v: Float[Tensor, "1 h_kv N K"]
              ) -> tuple[Tensor, Tensor]:
        """Store a forward's rows for ``layer``; return the layer's keys and values ``[1, h_kv, P + N, K]``."""
        end = self.length + k.shape[2]
        self.keys[layer, :, self.length: end] = k[0]
        self.values[layer, :, self.length: end] = v[0]
        return self.keys[layer: layer + 1, :, :end], self.values[layer: layer + 1, :, :end]

    def advance(self, rows: int) -> None:
        self.length += rows

    def keep(self, prefix: int, rows: Sequence[int]) -> None:
        """Keep rows ``0..prefix-1`` and then ``prefix + rows`` (in that order), drop the rest."""
        rows = list(rows)
        if not 0 <= prefix <= self.length or any(not 0 <= r < self.length - prefix for r in rows):
            raise ValueError(f"keep: rows {rows} after prefix {prefix} are not among the {self.length - prefix} "
                             "rows of the last forward")
        if rows != list(range(len(rows))):  # a chain's path is already in place: nothing to move
            src = torch.tensor(rows, device=self.keys.device) + prefix
            dst = slice(prefix, prefix + len(rows))
            self.keys[:, :, dst] = self.keys.index_select(2, src)
            self.values[:, :, dst] = self.values.index_select(2, src)
        self.length = prefix + len(rows)

    def crop(self, length: int) -> None:
        """Forget every row from ``length`` on (a negative value drops that many, as DynamicCache)."""
        self.length = self.length + length if length < 0 else min(length, self.length)

    @property
    def layers(self) -> list[LayerKV]:
        """Per-layer views ``[1, h_kv, P, K]``, for reading (tests and tutorials compare caches)."""
        n = self.length
        return [LayerKV(self.keys[i: i + 1, :, :n], self.values[i: i + 1, :, :n]) for i in range(self.keys.shape[0])]


class RowsKVBuffer:
    """``KVBuffer`` for a batch: keys and values ``[L, B, h_kv, capacity, K]``, one common length S.

    All rows share the columns ``0 .. S-1``; which of them hold a row's real tokens (left padding
    and commit's holes do not) is the batched target's business, not the buffer's
    (docs/design.md §6.9). ``gather`` is the batched commit; ``select_rows`` drops finished rows.
    """

    def __init__(self, layers: int, batch: int, kv_heads: int, head_dim: int, dtype, device,
                 capacity: int = 256) -> None:
        self.keys = torch.zeros(layers, batch, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.length = 0

    def get_seq_length(self) -> int:
        return self.length

    def reserve(self, cols: int) -> None:
        """Make room for ``cols`` more columns after ``length`` (the capacity doubles)."""
        self.keys, self.values = (_grown(x, self.length, self.length + cols, dim=3) for x in (self.keys, self.values))

    def write(self, layer: int, k: Float[Tensor, "B h_kv N K"], v: Float[Tensor, "B h_kv N K"]
              ) -> tuple[Tensor, Tensor]:
        """Store a forward's columns for ``layer``; return its keys and values ``[B, h_kv, S + N, K]``."""
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length: end] = k
        self.values[layer, :, :, self.length: end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, cols: int) -> None:
        self.length += cols

    def gather(self, start: int, cols: Int[Tensor, "B R"]) -> None:
        """Row b keeps columns ``start + cols[b]`` at ``start .. start + R - 1``; the rest is dropped."""
        if not 0 <= start <= self.length:
            raise ValueError(f"gather: start {start} is outside the {self.length} cached columns")
        b, r = cols.shape
        index = (cols.to(self.keys.device) + start)[None, :, None, :, None]
        index = index.expand(self.keys.shape[0], b, self.keys.shape[2], r, self.keys.shape[4])
        for name in ("keys", "values"):
            buf = getattr(self, name)
            buf[:, :, :, start: start + r] = buf.gather(3, index)
        self.length = start + r

    def select_rows(self, rows: Sequence[int]) -> None:
        """Keep only the batch rows ``rows`` (in that order)."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.keys.device)
        self.keys, self.values = self.keys.index_select(1, index), self.values.index_select(1, index)

    def row_layers(self, row: int) -> list[LayerKV]:
        """Row ``row``'s per-layer views ``[1, h_kv, S, K]`` (every column, valid or not)."""
        n = self.length
        return [LayerKV(self.keys[i, row: row + 1, :, :n], self.values[i, row: row + 1, :, :n])
                for i in range(self.keys.shape[0])]


@dataclass
class _Layer:
    qkv: PackedLinear
    o: PackedLinear
    gate_up: PackedLinear
    down: PackedLinear
    module: torch.nn.Module  # the Hugging Face decoder layer: its norms and activation


class CompactEngine:
    """Runs a Llama-family causal LM's forward over a ``KVBuffer`` (see the module docstring).

    Args:
        model: a Hugging Face causal LM for which ``compact_engine_support(model)`` is None. Its
            weights are read (and packed into copies) once; the model itself is not changed.
        linear_backend: ``"auto"``, ``"skinny"``, ``"onednn"`` or ``"torch"`` (``jetspec.kernels.PackedLinear``).
    """

    def __init__(self, model: torch.nn.Module, linear_backend: str = "auto") -> None:
        reason = compact_engine_support(model)
        if reason is not None:
            raise ValueError(f"the compact engine cannot run this model: {reason}; use engine='hf'")
        decoder = model.get_decoder()
        self.decoder = decoder
        attn = decoder.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.kv_heads = attn.k_proj.out_features // self.head_dim
        self.heads = attn.q_proj.out_features // self.head_dim
        self.scaling = attn.scaling
        self.layers = []
        for layer in decoder.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append(_Layer(
                qkv=PackedLinear([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight],
                                 [a.q_proj.bias, a.k_proj.bias, a.v_proj.bias], linear_backend),
                o=PackedLinear([a.o_proj.weight], [a.o_proj.bias], linear_backend),
                gate_up=PackedLinear([m.gate_proj.weight, m.up_proj.weight], [m.gate_proj.bias, m.up_proj.bias],
                                     linear_backend),
                down=PackedLinear([m.down_proj.weight], [m.down_proj.bias], linear_backend),
                module=layer))
        self.lm_head = PackedLinear([model.get_output_embeddings().weight], None, linear_backend)
        self.linear_backend = self.lm_head.backend
        p = next(model.parameters())
        self.dtype, self.device = p.dtype, p.device

    def new_cache(self) -> KVBuffer:
        return KVBuffer(len(self.layers), self.kv_heads, self.head_dim, self.dtype, self.device)

    def new_rows_cache(self, batch: int) -> RowsKVBuffer:
        return RowsKVBuffer(len(self.layers), batch, self.kv_heads, self.head_dim, self.dtype, self.device)

    def mask(self, ancestor: Optional[Bool[Tensor, "N N"]], prefix: int) -> Optional[Tensor]:
        """The additive mask ``[1, 1, g * N, P + N]`` for GQA-folded queries; None for one row."""
        if ancestor is None:
            return None
        group = self.heads // self.kv_heads
        mask = additive_mask(tree_visibility(ancestor.to(self.device), prefix), self.dtype)
        return mask.repeat(group, 1)[None, None]  # row r * N + i = query head group r, node i

    @torch.no_grad()
    def __call__(self, cache: KVBuffer, ids: Int[Tensor, " N"], positions: Int[Tensor, " N"],
                 ancestor: Optional[Bool[Tensor, "N N"]], tap_layers: Sequence[int] = (), logits: bool = True
                 ) -> tuple[Optional[Float[Tensor, "N V"]], Optional[Float[Tensor, "N F"]]]:
        """Forward ``ids`` at ``positions`` against the ``cache.length`` cached rows and append them.

        ``ancestor[i, j]``: row i may see row j of this forward (every cached row is visible).
        None means causal: allowed for a single row, or for a prefill into an empty cache, which then
        runs SDPA's causal kernel instead of building a ``[g * N, N]`` mask. Returns the logits and,
        if ``tap_layers`` is not empty, the outputs of those decoder layers concatenated
        (F = len(tap_layers) * H). ``logits=False`` skips the final norm and lm_head (None instead):
        a prefill needs only the cache and the taps, and the lm_head is a fifth of SmolLM2's weights.
        """
        n = ids.shape[0]
        if ancestor is None and n != 1 and cache.length != 0:
            raise ValueError("a forward over several rows after cached rows needs their ancestor (visibility) mask")
        cache.reserve(n)
        mask = self.mask(ancestor, cache.length) if ancestor is not None else None
        out, taps = self._layers(cache, ids[None], positions[None], mask, tap_layers, logits)
        return None if out is None else out[0], None if taps is None else taps[0]

    @torch.no_grad()
    def forward_rows(self, cache: "RowsKVBuffer", ids: Int[Tensor, "B N"], positions: Int[Tensor, "B N"],
                     visible: Bool[Tensor, "B N T"], tap_layers: Sequence[int] = (), logits: bool = True
                     ) -> tuple[Optional[Float[Tensor, "B N V"]], Optional[Float[Tensor, "B N F"]]]:
        """The batched forward (docs/design.md §6.9): row b's N new rows at ``positions[b]`` against
        the ``cache.length`` cached columns; ``visible[b, i, j]`` says whether row b's query i sees
        key column j (the cached columns, then this forward's N). Every query must see at least
        itself: a query that sees nothing gives NaN, and NaN keys poison even masked scores.
        ``logits=False``: no lm_head, None instead (as ``__call__``)."""
        cache.reserve(ids.shape[1])
        group = self.heads // self.kv_heads
        mask = additive_mask(visible.to(self.device), self.dtype).repeat(1, group, 1)[:, None]  # [B, 1, g*N, T]
        return self._layers(cache, ids, positions, mask, tap_layers, logits)

    def _layers(self, cache, ids: Tensor, positions: Tensor, mask: Optional[Tensor], tap_layers: Sequence[int],
                logits: bool = True) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """Embedding, decoder layers and head over ids [B, N]; both caches take [B, h_kv, N, K] writes."""
        x = self.decoder.embed_tokens(ids)  # (B, N, H)
        cos, sin = self.decoder.rotary_emb(x, positions)  # (B, N, K) each
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, N, K): broadcast over heads
        taps = {}
        for i, layer in enumerate(self.layers):
            x = x + self._attention(i, layer, x, cos, sin, cache, mask)
            mlp = layer.module.mlp
            gate, up = layer.gate_up.split(layer.gate_up(layer.module.post_attention_layernorm(x)))
            x = x + layer.down(mlp.act_fn(gate) * up)
            if i in tap_layers:
                taps[i] = x
        cache.advance(ids.shape[1])
        out = self.lm_head(self.decoder.norm(x)) if logits else None
        return out, (torch.cat([taps[i] for i in tap_layers], dim=-1) if tap_layers else None)

    def _attention(self, i: int, layer: _Layer, x: Tensor, cos: Tensor, sin: Tensor, cache,
                   mask: Optional[Tensor]) -> Float[Tensor, "B N H"]:
        attn, (b, n), d = layer.module.self_attn, x.shape[:2], self.head_dim
        q, k, v = layer.qkv.split(layer.qkv(layer.module.input_layernorm(x)))
        q, k, v = q.view(b, n, self.heads, d), k.view(b, n, self.kv_heads, d), v.view(b, n, self.kv_heads, d)
        if hasattr(attn, "q_norm"):  # Qwen3 normalises each head's query and key before RoPE
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = apply_rope(q.transpose(1, 2), cos, sin), apply_rope(k.transpose(1, 2), cos, sin)  # (B, heads, N, K)
        keys, values = cache.write(i, k, v.transpose(1, 2))  # (B, h_kv, P + N, K)
        if mask is None and n > 1:  # causal prefill into an empty cache: no mask to build
            out = F.scaled_dot_product_attention(q, keys, values, is_causal=True, scale=self.scaling, enable_gqa=True)
            return layer.o(out.transpose(1, 2).reshape(b, n, self.heads * d))
        group = self.heads // self.kv_heads
        q = q.reshape(b, self.kv_heads, group * n, d)  # query head j = kv head j // group: stack the group
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scaling)
        out = out.view(b, self.heads, n, d).transpose(1, 2).reshape(b, n, self.heads * d)
        return layer.o(out)


def apply_rope(x: Float[Tensor, "B h N K"], cos: Float[Tensor, "#B 1 N K"],
               sin: Float[Tensor, "#B 1 N K"]) -> Float[Tensor, "B h N K"]:
    """Rotary embedding in the half-split convention Llama and Qwen use (``rotate_half``): pairs
    (x_i, x_{i+K/2}) rotated by the position's angle. The one RoPE of the package (the draft heads' too)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


# Packing a target's weights takes a second or two (SmolLM2-135M on the CPU of BENCHMARKS.md), and
# tutorials and benchmarks wrap the same model many times; TargetModel also asks again at every
# prefill, because a wrapper computes with the weights its model holds when a sequence starts
# (docs/design.md §6.3). So the packed forward of a model is kept while the model lives, and reused
# only while every parameter and buffer is the same tensor, unchanged: the identity of each is its
# storage address and PyTorch's version counter, which every in-place write through the tensor
# bumps (an optimizer step, load_state_dict, a zero-sum edit). It reads no weight (microseconds for
# SmolLM2, where the former position-weighted sums read every weight and cost ~0.35 s and missed
# edits that keep those sums). The packed entry keeps an alias of each storage it was built from, so
# a replaced tensor's address cannot be reused by a newer one while the entry lives. Writes through
# ``.data``, which PyTorch does not count, are the one kind it cannot see (they bypass autograd's
# checks too); build the wrapper with ``TargetModel(..., engine="hf")`` if you edit weights that way.
_PACKED: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[WeightsIdentity, CompactEngine]]" = (
    weakref.WeakKeyDictionary())


class WeightsIdentity:
    """Which tensors these weights are, and how often each was written in place (see above).

    ``WeightsIdentity.of(model, backend)`` covers a model's parameters and buffers; the draft heads
    key their packed layers on a few weights (``jetspec.drafters.head_layers.PackedLinears``)."""

    def __init__(self, tensors: Sequence[torch.Tensor], linear_backend: str) -> None:
        self.linear_backend = linear_backend
        self.aliases = [t.detach() for t in tensors]  # keeps the storages alive: addresses stay unique
        self.key = [(t.data_ptr(), t._version, t.dtype, tuple(t.shape), t.device) for t in tensors]

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, WeightsIdentity) and self.linear_backend == other.linear_backend
                and self.key == other.key)

    @classmethod
    def of(cls, model: torch.nn.Module, linear_backend: str) -> "WeightsIdentity":
        return cls([t for _, t in model.named_parameters()] + [t for _, t in model.named_buffers()], linear_backend)


def compact_engine_for(model: torch.nn.Module, linear_backend: str = "auto") -> CompactEngine:
    """The ``CompactEngine`` of ``model``'s current weights: packed once, reused while they are unchanged."""
    identity = WeightsIdentity.of(model, linear_backend)
    cached = _PACKED.get(model)
    if cached is not None and cached[0] == identity:
        return cached[1]
    fast = CompactEngine(model, linear_backend)
    _PACKED[model] = (identity, fast)
    return fast
