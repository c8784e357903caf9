"""A thin wrapper that lets any Hugging Face causal LM verify draft trees (docs/design.md §6).

The wrapper owns the target's KV cache and keeps one invariant between rounds:

    cache = K/V of the committed tokens x[0..t-1]; the anchor x[t] is NOT cached yet.

A round then runs one forward over the N tree nodes (node 0 = the anchor), each at RoPE position
P + depth, in which the cached prefix is visible and the tree part is the ancestor mask. Commit
keeps the prefix plus the K/V rows of the accepted path, so the cache is an ordinary causal prefix
again. Plain decoding (``step``) is the same forward with one row.

Two engines run that forward; both give the same logits up to floating-point rounding:

* ``"fast"``: ``jetspec.core.compact_engine.CompactEngine``, a compact forward for Llama-family models
  with prepacked, fused products, a preallocated KV buffer and GQA-folded attention (BENCHMARKS.md
  has its measured speed against ``"hf"``).
* ``"hf"``: the model's own Hugging Face forward with a ``DynamicCache`` and an additive float
  mask; it runs any causal LM and any ``attn_backend`` (the Triton tree kernel included).

``engine="auto"`` (the default) takes ``"fast"`` on CPU when the model qualifies
(``compact_engine_support``) and no attention backend is asked for, else ``"hf"``.

Small trees are padded on the ``"hf"`` engine. CPU BLAS computes a product with 2 or 3 rows as
that many matrix-vector products, so a forward over 2-3 tokens took longer than one over 4-8.
``min_rows`` (default 4 for the ``"hf"`` engine on CPU, else 1; the prepacked products of the
fast engine have no such step) pads any multi-node tree with dummy rows: each sees the prefix and
itself only, no real node sees them, their logits and taps are dropped and commit removes their
K/V rows, so they cannot change any output.

Tapped hidden states (outputs of chosen decoder layers, the features parallel and EAGLE heads
read) come back with the logits: the fast engine keeps them as it goes, the ``"hf"`` engine
captures them by forward hooks on those layers only.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformers import DynamicCache

from jetspec.core.compact_engine import KVBuffer, compact_engine_for, compact_engine_support
from jetspec.core.masks import additive_mask, tree_visibility
from jetspec.core.target_support import attention_windows, hf_cache, hf_masks, unsupported_reason
from jetspec.core.types import DraftTree

ENGINES = ("auto", "fast", "hf")


@dataclass
class TargetOutput:
    logits: Optional[Float[Tensor, "N V"]]  # next-token logits after each node's path (None: not asked for)
    taps: Optional[Float[Tensor, "N F"]]  # tapped layer outputs, concatenated: F = k * H


class TargetModel:
    """Prefill, tree-verify, commit and plain decoding over a frozen HF causal LM (batch 1; batches:
    ``jetspec.core.batched_target.BatchedTarget``, docs/design.md §6.9)."""

    def __init__(self, model: torch.nn.Module, attn_backend: Optional[str] = None,
                 min_rows: Optional[int] = None, engine: str = "auto", linear_backend: str = "auto",
                 freeze: bool = False) -> None:
        """``engine``: ``"auto"``, ``"fast"`` or ``"hf"`` (module docstring); ``linear_backend``: how the
        fast engine runs its products (``jetspec.kernels.PackedLinear``).

        The wrapper leaves the caller's module as it is: every forward runs under ``torch.no_grad``,
        so the parameters' ``requires_grad`` does not matter. The model must be in eval mode
        (dropout would change the logits verification compares); ``freeze=True`` puts it there and
        turns its gradients off, an explicit change to the caller's module.
        """
        if not hasattr(model, "config") or not hasattr(model, "get_output_embeddings"):
            raise TypeError("target must be a Hugging Face causal LM (a PreTrainedModel with an lm_head)")
        if freeze:
            model.eval().requires_grad_(False)
        elif model.training:
            raise ValueError("the target is in training mode (dropout would change its logits): call "
                             "model.eval() first, or pass freeze=True to let TargetModel do it")
        reason = unsupported_reason(model.config)
        if reason is not None:
            raise ValueError(f"jetspec cannot verify this target exactly: {reason}")
        self.model = model
        self.config = model.config
        # layer type -> sliding window (None: full attention); windows are applied in jetspec's masks
        self.windows = attention_windows(self.config)
        self.sliding = any(w is not None for w in self.windows.values())
        self.vocab_size: int = model.get_output_embeddings().weight.shape[0]
        self.hidden_size: int = self.config.hidden_size
        self.num_layers: int = self.config.num_hidden_layers
        self.attn_backend = attn_backend
        self.engine = self._choose_engine(engine)
        self._linear_backend = linear_backend
        self._fast = compact_engine_for(model, linear_backend) if self.engine == "fast" else None
        # which product backend the fast engine runs (None on the "hf" engine)
        self.linear_backend: Optional[str] = self._fast.linear_backend if self._fast is not None else None
        if min_rows is not None and min_rows < 1:
            raise ValueError(f"min_rows must be >= 1, got {min_rows}")
        if min_rows is None:
            min_rows = 4 if self.engine == "hf" and self.device.type == "cpu" else 1
        self.min_rows = min_rows
        self.tap_layers: tuple[int, ...] = ()
        self.cache: Optional[DynamicCache | KVBuffer] = None
        self._padded = 0  # dummy rows the last verify appended to the cache

    def _choose_engine(self, engine: str) -> str:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        reason = compact_engine_support(self.model)
        if engine == "fast" and reason is not None:
            raise ValueError(f"engine='fast' cannot run this model: {reason}; use engine='hf'")
        if engine == "fast" and self.attn_backend not in (None, "sdpa"):
            raise ValueError(f"engine='fast' runs its own attention; attn_backend={self.attn_backend!r} "
                             "needs engine='hf'")
        if engine == "auto":
            fits = reason is None and self.attn_backend in (None, "sdpa") and self.device.type == "cpu"
            return "fast" if fits else "hf"
        return engine

    # ----------------------------------------------------------------- plumbing
    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's parameters."""
        return next(self.model.parameters()).dtype

    def refresh_weights(self) -> None:
        """Follow the model's current weights: on the fast engine, repack if any parameter or buffer
        changed since the packed copy was made (a cheap identity check; ``compact_engine_for``).
        Every prefill calls this, so a wrapper computes with the weights its model holds when a
        sequence starts, on both engines (the ``"hf"`` engine runs the model itself). Changing the
        weights in the middle of a sequence is not supported: the cache holds the old weights' K/V."""
        if self._fast is not None:
            self._fast = compact_engine_for(self.model, self._linear_backend)

    def new_hf_cache(self) -> DynamicCache:
        """An empty cache for the ``"hf"`` engine. With sliding-window layers every layer keeps all its
        keys (Hugging Face's sliding layers keep their own length, which commit cannot compact); the
        window is applied by jetspec's masks instead (docs/design.md §6.10)."""
        return hf_cache(self.config)

    @property
    def cache_length(self) -> int:
        """Tokens held by the KV cache (0 before the prefill)."""
        return 0 if self.cache is None else self.cache.get_seq_length()

    def decoder_layers(self) -> torch.nn.ModuleList:
        """The target's decoder layers (where taps are read)."""
        return self.model.get_decoder().layers

    def set_taps(self, layers: Sequence[int]) -> None:
        """Choose which decoder layers' outputs are captured (HF hidden_states[l + 1] = layer l)."""
        layers = tuple(int(i) for i in layers)
        for i in layers:
            if not 0 <= i < self.num_layers:
                raise ValueError(f"tap layer {i} is outside the target's {self.num_layers} layers")
        self.tap_layers = layers

    def _attention(self):
        if self.attn_backend in (None, "sdpa", "eager"):
            return nullcontext()
        from jetspec.core.attention import attention_backend  # kernels are optional
        return attention_backend(self.model, self.attn_backend)

    @torch.no_grad()
    def _forward(self, ids: Tensor, positions: Tensor, ancestor: Optional[Tensor], logits: bool = True) -> TargetOutput:
        """One forward over ``ids`` against the cache, appending their rows. ``ancestor``: which rows
        of this forward each row sees (None: a single row, or a causal prefill from an empty cache).
        ``logits=False`` (a prefill): the fast engine skips the lm_head and returns None logits."""
        if self._fast is not None:
            logits, taps = self._fast(self.cache, ids, positions, ancestor, self.tap_layers, logits=logits)
            return TargetOutput(logits=logits, taps=taps)
        p = self.cache_length
        if self.sliding:  # every forward gets its windows by position (docs/design.md §6.10)
            n = ids.shape[0]
            tree = ancestor if ancestor is not None else torch.ones(n, n, dtype=torch.bool).tril()
            visible = tree_visibility(tree.to(self.device), p)[None]
            k_pos = torch.cat([torch.arange(p, device=self.device), positions])[None]
            mask = hf_masks(visible, positions[None], k_pos, self.windows, self.dtype)
        else:
            mask = None if ancestor is None else tree_attention_mask(ancestor, p, self.dtype, self.device)
        with capture_taps(self.model, self.tap_layers) as captured, self._attention():
            out = self.model(input_ids=ids[None], position_ids=positions[None], attention_mask=mask,
                             cache=self.cache, use_cache=True)
        self.cache = out.cache
        taps = None
        if self.tap_layers:
            taps = torch.cat([captured[i][0] for i in self.tap_layers], dim=-1)  # [N, k*H]
        return TargetOutput(logits=out.logits[0], taps=taps)

    # ----------------------------------------------------------------- the four operations
    def prefill(self, tokens: Int[Tensor, " T"]) -> Optional[Float[Tensor, "T-1 F"]]:
        """Start a sequence: cache every token but the last (the first anchor). Returns its taps."""
        if tokens.dim() != 1 or tokens.numel() < 1:
            raise ValueError("prefill expects a non-empty 1-D token tensor")
        self.refresh_weights()
        self.cache = self._fast.new_cache() if self._fast is not None else self.new_hf_cache()
        self._padded = 0
        ctx = tokens[:-1].to(self.device)
        if ctx.numel() == 0:
            if not self.tap_layers:
                return None
            return torch.zeros(0, len(self.tap_layers) * self.hidden_size, dtype=self.dtype, device=self.device)
        out = self._forward(ctx, torch.arange(ctx.numel(), device=self.device), None, logits=False)
        return out.taps

    def verify(self, tree: DraftTree) -> TargetOutput:
        """One forward over all tree nodes against the cached prefix (appends N rows to the cache,
        plus dummy rows up to ``min_rows`` for a multi-node tree; commit removes them)."""
        p, n = self.cache_length, tree.num_nodes
        pad = self.min_rows - n if 1 < n < self.min_rows else 0
        tokens, depth, ancestor = tree.tokens, tree.depth, tree.ancestor
        if pad:
            tokens = torch.cat([tokens, tokens[:1].expand(pad)])  # the anchor again, at its position
            depth = torch.cat([depth, depth[:1].expand(pad)])
            ancestor = torch.block_diag(ancestor, torch.eye(pad, dtype=torch.bool))  # dummies see only themselves
        self._padded = pad
        positions = (depth + p).to(self.device)
        out = self._forward(tokens.to(self.device), positions, None if n == 1 else ancestor)
        if pad:
            out = TargetOutput(logits=out.logits[:n], taps=None if out.taps is None else out.taps[:n])
        return out

    def commit(self, keep_nodes: Sequence[int], num_tree_nodes: int) -> None:
        """Compact the cache to prefix + the K/V rows of ``keep_nodes`` (root and accepted path).

        Called after ``verify`` added ``num_tree_nodes`` rows; afterwards the cache is a plain
        causal prefix of the committed tokens again.
        """
        total = self.cache_length
        num_rows, self._padded = num_tree_nodes + self._padded, 0
        prefix = total - num_rows
        keep_nodes = [int(i) for i in keep_nodes]
        valid = all(0 <= i < num_tree_nodes for i in keep_nodes) and len(set(keep_nodes)) == len(keep_nodes)
        if prefix < 0 or not valid:
            raise ValueError(f"commit: keep_nodes {keep_nodes} must be distinct nodes of the {num_tree_nodes}-node "
                             f"tree the last verify ran (the cache holds {total} rows)")
        if isinstance(self.cache, KVBuffer):
            self.cache.keep(prefix, keep_nodes)
            return
        if keep_nodes == list(range(len(keep_nodes))):
            # The accepted path is the first rows of the tree (chains, the one-node tree): crop.
            drop = num_rows - len(keep_nodes)
            if drop:
                self.cache.crop(-drop)
            return
        keep = torch.cat([torch.arange(prefix), prefix + torch.tensor(keep_nodes)]).to(self.device)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(-2, keep)
            layer.values = layer.values.index_select(-2, keep)

    def step(self, token: int) -> Float[Tensor, " V"]:
        """Plain decoding: forward the one token ``token`` at the next position, cache it, return its
        next-token logits. The baseline every speedup is measured against runs this."""
        p = self.cache_length
        ids = torch.tensor([int(token)], device=self.device)
        return self._forward(ids, torch.tensor([p], device=self.device), None).logits[0]

    def reset(self) -> None:
        """Drop the KV cache: the next call starts with a prefill."""
        self.cache = None
        self._padded = 0


@contextmanager
def capture_taps(model: torch.nn.Module, tap_layers: Sequence[int]):
    """Collect the outputs of decoder layers ``tap_layers`` of a Hugging Face causal LM.

    Yields a dict, filled while forwards run inside the ``with`` block: layer index -> that
    layer's output [B, T, H] in the latest forward. Only those layers get forward hooks (asking
    HF for every hidden state would keep L copies alive); the hooks are removed on exit, also
    after an exception. The one home of tap capture: verification and the training teacher use it.
    """
    captured: dict[int, Tensor] = {}
    layers = model.get_decoder().layers
    handles = []
    for i in tap_layers:
        def hook(_mod, _inp, out, i=i):
            captured[i] = out[0] if isinstance(out, tuple) else out
        handles.append(layers[i].register_forward_hook(hook))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


@dataclass
class TeacherOutput:
    """What the frozen target tells the head about a batch."""

    taps: Float[Tensor, "B T F"]  # tapped layer outputs, concatenated per token
    logits: Optional[Float[Tensor, "B T V"]] = None  # full next-token logits
    top_values: Optional[Float[Tensor, "B T C"]] = None  # or only the top-C of them
    top_indices: Optional[Int[Tensor, "B T C"]] = None

    def top1(self) -> Int[Tensor, "B T"]:
        return self.logits.argmax(-1) if self.logits is not None else self.top_indices[..., 0]


class Teacher:
    """Runs the frozen target under no_grad and captures the tapped layers (``capture_taps``).

    Only the tapped layers are captured (asking HF for all hidden states would keep L copies alive).
    """

    def __init__(self, model: torch.nn.Module, tap_layers: Sequence[int], topk: Optional[int] = None) -> None:
        self.model = model
        self.tap_layers = tuple(tap_layers)
        self.topk = topk

    @torch.no_grad()
    def __call__(self, input_ids: Int[Tensor, "B T"],
                 attention_mask: Optional[Tensor] = None) -> TeacherOutput:
        with capture_taps(self.model, self.tap_layers) as captured:
            # Right padding only: causal attention keeps padded tails out of real positions.
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        taps = torch.cat([captured[i] for i in self.tap_layers], dim=-1)  # [B, T, k*H]
        if self.topk is None:
            return TeacherOutput(taps=taps, logits=logits)
        top = logits.topk(min(self.topk, logits.shape[-1]), dim=-1)
        return TeacherOutput(taps=taps, top_values=top.values, top_indices=top.indices)


def tree_attention_mask(ancestor: Bool[Tensor, "N N"], prefix: int, dtype: torch.dtype,
                        device) -> Float[Tensor, "1 1 N T"]:
    """Additive float mask ``[1, 1, N, P + N]``: prefix visible, tree part = ancestor mask.

    Built from the kernels' one visibility rule and one additive mask (float, not boolean: see
    ``jetspec.core.masks.additive_mask``).
    """
    return additive_mask(tree_visibility(ancestor.to(device), prefix), dtype)[None, None]


def as_target(target, attn_backend: Optional[str] = None) -> TargetModel:
    """Accept a ``TargetModel`` or wrap a Hugging Face model.

    A ``TargetModel`` is returned as it is, never changed: asking it for another ``attn_backend``
    than its own is refused (build the wrapper with the backend you want).
    """
    if isinstance(target, TargetModel):
        if attn_backend is not None and attn_backend != target.attn_backend:
            engine = ", engine='hf'" if attn_backend not in ("sdpa", "eager") else ""
            raise ValueError(f"attn_backend={attn_backend!r} needs a TargetModel with engine='hf' built for it: "
                             f"pass TargetModel(model, attn_backend={attn_backend!r}{engine}); as_target never "
                             f"changes the backend ({target.attn_backend!r}) of a wrapper it is given")
        return target
    return TargetModel(target, attn_backend=attn_backend)
