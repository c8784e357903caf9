"""Decoder-layer building blocks shared by the learned draft heads (docs/design.md §4.3-§4.5).

A draft head is a few Llama/Qwen3-style decoder layers that read the frozen target's features.
The blocks here are deliberately general so the parallel heads (JetSpec, DFlash) and an
EAGLE-style autoregressive head can all be built from them:

    RMSNorm             x / rms(x) * weight
    RotaryEmbedding     cos/sin tables for absolute positions (rotate-half convention)
    Attention           GQA attention with optional per-head q/k RMSNorm (Qwen3) and
                        *KV injection*: extra key/value rows (e.g. the target's context features,
                        projected by this layer) are placed in front of the layer's own keys
    SwiGLU              down(silu(gate(x)) * up(x))
    DecoderLayer        pre-norm attention + pre-norm MLP, both residual
    PackedLinears       the base of the modules above with weights: their Linear children that
                        read one input run as ONE prepacked product while drafting

Attention is plain PyTorch (SDPA with an additive float mask). The mask is additive, not boolean,
for the same reason as in the target wrapper: one convention everywhere, and it is the form a
tree-attention kernel's reference uses. ``attend`` is the single function a kernel plugs into.

Shapes use the glossary of ``jetspec`` (docs/design.md §8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from jetspec.core.compact_engine import WeightsIdentity, apply_rope
from jetspec.kernels import PackedLinear

PACKED_MAX_ROWS = 64  # drafting's skinny products; larger ones (training batches, a long prompt) stay on BLAS


class RMSNorm(nn.Module):
    """Root-mean-square norm (no mean subtraction, no bias), computed in float32 at least."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # Half-precision squares overflow/underflow easily, so normalise in fp32 (or fp64 if given).
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """RoPE tables for absolute integer positions.

    The head uses the target's base frequency (``theta``) so its positions mean what the target's
    mean, but no scaling variants: draft blocks are short and positions are absolute.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        # Not a parameter and not saved: it is a pure function of (head_dim, theta).
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos, sin of shape [*positions.shape, K] (each frequency repeated for both halves)."""
        angles = positions.to(torch.float64)[..., None] * self.inv_freq  # [..., K/2]
        angles = torch.cat([angles, angles], dim=-1)  # [..., K]
        return angles.cos().to(dtype), angles.sin().to(dtype)


def attend(q: Float[Tensor, "B h N K"], k: Float[Tensor, "B h_kv T K"], v: Float[Tensor, "B h_kv T K"],
           mask: Float[Tensor, "#B 1 N T"]) -> Float[Tensor, "B h N K"]:
    """Scaled dot-product attention with grouped K/V heads and an additive float mask (0 / -inf).

    The reference path every head uses in training. Query head j reads K/V head j // (h / h_kv).
    """
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)  # [B, h, T, K]
        v = v.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))


@dataclass
class LayerShape:
    """The sizes of one decoder layer (filled from a head config)."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    qk_norm: bool = False  # Qwen3-style per-head RMSNorm on queries and keys
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                             f"({self.num_kv_heads}) for grouped-query attention")


class PackedLinears(nn.Module):
    """A module whose ``nn.Linear`` children that read one input can run as one product (``linears``).

    Drafting (autograd not recording, at most ``PACKED_MAX_ROWS`` rows) runs the named children as
    ONE prepacked product of their weights (``jetspec.kernels.PackedLinear``, whose CPU kernels
    stream each weight once: a draft round is a few rows against every head weight, docs/design.md
    §6.3). Everything else is a plain ``nn.Linear`` call per child, the reference twin: training
    (the input or a parameter needs a gradient: the kernels have no backward), large batches,
    autocast, a dtype other than the weights', a child that is not exactly ``nn.Linear`` or carries
    forward hooks (both would be skipped), inference-mode weights (no version counter). The two
    paths differ only in the order of floating-point additions.

    The packed copy is this module's own cache. It is rebuilt when a weight is another tensor or was
    written in place (``WeightsIdentity``: an ``optim`` step with the default foreach or for-loop
    implementations, ``load_state_dict``, ``.to``), and dropped by ``drop_packed``, which the
    learned heads call when a sequence starts: like the target wrapper, a head drafts a sequence
    with the weights it holds when the sequence starts, so fused optimizer steps and writes through
    ``.data`` (which PyTorch does not count) are seen from the next sequence on. Changing weights in
    the middle of a sequence is not supported (the context cache holds the old weights' rows too).
    Functorch transforms and forward-mode AD need the plain path: call the module with grad enabled.
    """

    def __init__(self) -> None:
        super().__init__()
        self._packed: dict[tuple[str, ...], tuple[WeightsIdentity, PackedLinear]] = {}

    def drop_packed(self) -> None:
        """Forget the packed copies; the next drafting call packs the weights as they are then."""
        self._packed.clear()

    def __getstate__(self) -> dict:
        # A copy or a pickle carries the weights, not their packed copies (rebuilt at the next draft).
        return {**super().__getstate__(), "_packed": {}}

    def linears(self, x: Float[Tensor, "*B I"], *names: str) -> tuple[Tensor, ...]:
        """``x`` through the Linear children ``names`` (looked up now, so a replaced child is seen)."""
        mods = [getattr(self, n) for n in names]
        params = [p for m in mods for p in (m.weight, m.bias) if p is not None]
        if not self._packable(x, mods, params):
            return tuple(m(x) for m in mods)
        identity = WeightsIdentity(params, "auto")
        cached = self._packed.get(names)
        if cached is None or cached[0] != identity:
            cached = self._packed[names] = (identity, PackedLinear([m.weight for m in mods], [m.bias for m in mods]))
        return cached[1].split(cached[1](x))

    @staticmethod
    def _packable(x: Tensor, mods: list[nn.Module], params: list[Tensor]) -> bool:
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
            return False
        plain = all(type(m) is nn.Linear and not (m._forward_hooks or m._forward_pre_hooks) for m in mods)
        return (plain and x.numel() <= PACKED_MAX_ROWS * x.shape[-1] and not torch.is_autocast_enabled(x.device.type)
                and all(p.dtype == x.dtype and not p.is_inference() for p in params))


class Attention(PackedLinears):
    """Grouped-query attention whose keys/values can be prefixed with injected rows."""

    def __init__(self, shape: LayerShape) -> None:
        super().__init__()
        s = shape
        self.num_heads, self.num_kv_heads, self.head_dim = s.num_heads, s.num_kv_heads, s.head_dim
        self.q_proj = nn.Linear(s.hidden_size, s.num_heads * s.head_dim, bias=False)
        self.k_proj = nn.Linear(s.hidden_size, s.num_kv_heads * s.head_dim, bias=False)
        self.v_proj = nn.Linear(s.hidden_size, s.num_kv_heads * s.head_dim, bias=False)
        self.o_proj = nn.Linear(s.num_heads * s.head_dim, s.hidden_size, bias=False)
        self.q_norm = RMSNorm(s.head_dim, s.eps) if s.qk_norm else None
        self.k_norm = RMSNorm(s.head_dim, s.eps) if s.qk_norm else None

    def project_kv(self, x: Float[Tensor, "B N I"], cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """Keys (RoPE'd) and values [B, h_kv, N, K] of rows ``x`` (I: the layer's input width).

        Used both for the layer's own rows and for injected rows: injected context rows go through
        the same k/v projections, so one cache entry per layer is all the context costs.
        """
        return self._heads_kv(*self.linears(x, "k_proj", "v_proj"), cos, sin)

    def _heads_kv(self, k: Float[Tensor, "B N O"], v: Float[Tensor, "B N O"], cos: Tensor,
                  sin: Tensor) -> tuple[Tensor, Tensor]:
        """Projected keys and values as heads [B, h_kv, N, K], keys normed (Qwen3) and RoPE'd."""
        k = rearrange(k, "B N (h K) -> B h N K", K=self.head_dim)
        v = rearrange(v, "B N (h K) -> B h N K", K=self.head_dim)
        if self.k_norm is not None:
            k = self.k_norm(k)
        return apply_rope(k, cos[:, None], sin[:, None]), v

    def forward(self, x: Float[Tensor, "B N I"], cos: Tensor, sin: Tensor, mask: Optional[Tensor],
                prefix_kv: Optional[tuple[Tensor, Tensor]] = None,
                attention_fn=None) -> Float[Tensor, "B N H"]:
        """Attend from the rows of ``x`` to [prefix_kv rows, rows of x] under the additive ``mask``.

        ``x`` is ``[B, N, I]``: I = H, except EAGLE-3's layer, which reads [embedding, feature] (I = 2H).

        ``attention_fn(q, k, v)`` replaces the masked reference (``attend``) when given: the
        inference path passes a tree-attention kernel there.
        """
        q, k, v = self.linears(x, "q_proj", "k_proj", "v_proj")
        q = rearrange(q, "B N (h K) -> B h N K", K=self.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q)
        q = apply_rope(q, cos[:, None], sin[:, None])  # cos, sin [B, N, K]: the same for every head
        k, v = self._heads_kv(k, v, cos, sin)  # [B, h_kv, N, K]
        if prefix_kv is not None:
            k = torch.cat([prefix_kv[0], k], dim=2)  # [B, h_kv, P + N, K]
            v = torch.cat([prefix_kv[1], v], dim=2)
        out = attend(q, k, v, mask) if attention_fn is None else attention_fn(q, k, v)
        return self.linears(rearrange(out, "B h N K -> B N (h K)"), "o_proj")[0]


class SwiGLU(PackedLinears):
    """The gated MLP of Llama/Qwen: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.linears(x, "gate_proj", "up_proj")
        return self.linears(F.silu(gate) * up, "down_proj")[0]


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: x + attn(norm(x)), then x + mlp(norm(x)).

    Injected rows (``prefix_kv``) are already keys/values; they are not normalised or updated here,
    which is what makes them cacheable across rounds.
    """

    def __init__(self, shape: LayerShape) -> None:
        super().__init__()
        self.input_norm = RMSNorm(shape.hidden_size, shape.eps)
        self.attn = Attention(shape)
        self.post_attn_norm = RMSNorm(shape.hidden_size, shape.eps)
        self.mlp = SwiGLU(shape.hidden_size, shape.intermediate_size)

    def forward(self, x: Float[Tensor, "B N H"], cos: Tensor, sin: Tensor, mask: Optional[Tensor],
                prefix_kv: Optional[tuple[Tensor, Tensor]] = None,
                attention_fn=None) -> Float[Tensor, "B N H"]:
        x = x + self.attn(self.input_norm(x), cos, sin, mask, prefix_kv, attention_fn)
        return x + self.mlp(self.post_attn_norm(x))
