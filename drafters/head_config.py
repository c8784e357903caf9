"""What every learned head's architecture takes from its target: the rules both head kinds share.

A head config (``jetspec.drafters.parallel_net.HeadConfig`` for the parallel heads,
``jetspec.drafters.eagle_head.EagleConfig`` for EAGLE) leaves a field ``None`` to mean "as the
target has it". ``from_target`` fills those fields in one way for both kinds of head, so they agree
on attention heads, head dim, RoPE base, tap checks and the errors for a head loaded onto another
target (docs/design.md §4.3). Each config adds only its own rules (default taps, block, vocabulary).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from torch import nn


def default_tap_layers(num_layers: int) -> tuple[int, ...]:
    """Up to 5 layers evenly spaced from layer 1 to L-3 ([1, 9, 17, 25, 33] for L = 36).

    Tiny targets (L < 8) have no room for that rule, so they tap from layer 1 (layer 0 if L < 3)
    to the last layer: 2 layers -> (0, 1), 4 layers -> (1, 2, 3).
    """
    lo = 1 if num_layers >= 3 else 0
    hi = num_layers - 3 if num_layers >= 8 else num_layers - 1
    k = min(5, hi - lo + 1)
    if k == 1:
        return (lo,)
    return tuple(int(math.floor(lo + (hi - lo) * j / (k - 1) + 0.5)) for j in range(k))


def from_target(config: Any, model: nn.Module, tap_layers: tuple[int, ...],
                hidden_size: Optional[int]) -> dict[str, Any]:
    """The fields both head configs share, with every ``None`` of ``config`` filled from ``model``.

    Returned as keywords for ``dataclasses.replace``: ``tap_layers``, ``hidden_size``, ``num_heads``,
    ``num_kv_heads``, ``head_dim``, ``intermediate_size``, ``qk_norm``, ``rms_norm_eps``, ``rope_theta``
    and the ``target_*`` sizes (EAGLE keeps all but ``hidden_size``: its width is always the target's).

    Args:
        config: a head config; its ``target_*`` fields (if set) must match ``model``, its other
            shared fields override what the target has.
        model: the Hugging Face target.
        tap_layers: the taps to use (the config's own, or its head kind's default rule).
        hidden_size: the head's width H_d; ``None`` = the target's H.

    Raises ``ValueError`` naming the mismatched size, or the taps outside the target's layers.
    """
    c = model.config
    h, v, n = c.hidden_size, model.get_output_embeddings().weight.shape[0], c.num_hidden_layers
    for name, want, got in (("hidden size", config.target_hidden_size, h),
                            ("vocab size", config.target_vocab_size, v),
                            ("number of layers", config.target_num_layers, n)):
        if want is not None and want != got:
            raise ValueError(f"target mismatch: the head was built for a target with {name} {want}, "
                             f"this target has {name} {got}")
    if not tap_layers or any(not 0 <= i < n for i in tap_layers):
        raise ValueError(f"tap_layers {tap_layers} must be non-empty and within the target's {n} layers")
    hd = hidden_size or h
    heads = config.num_heads or c.num_attention_heads
    head_dim = config.head_dim or (getattr(c, "head_dim", None) if hd == h else None) or hd // heads
    inter = config.intermediate_size or max(1, c.intermediate_size * hd // h)
    attn = model.get_decoder().layers[0].self_attn
    qk = config.qk_norm if config.qk_norm is not None else hasattr(attn, "q_norm")
    rope = getattr(c, "rope_parameters", None) or {}
    theta = config.rope_theta or rope.get("rope_theta") or getattr(c, "rope_theta", None) or 10000.0
    return dict(tap_layers=tuple(tap_layers), hidden_size=hd, num_heads=heads,
                num_kv_heads=config.num_kv_heads or c.num_key_value_heads or heads, head_dim=head_dim,
                intermediate_size=inter, qk_norm=bool(qk), rms_norm_eps=config.rms_norm_eps or c.rms_norm_eps,
                rope_theta=float(theta), target_hidden_size=h, target_vocab_size=v, target_num_layers=n)
