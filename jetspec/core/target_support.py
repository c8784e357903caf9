"""Which Hugging Face targets verify exactly, and the masks sliding-window layers need (docs/design.md §6.10).

Verification is lossless only if every row of a tree forward computes what plain decoding computes
at the same position (§2.3). Two things a config can ask for put that in question.

**RoPE whose frequencies depend on the forward.** Hugging Face rotates a token by its position
times inverse frequencies. For the rope types of transformers 5.x the frequencies are fixed when
the model is built, so a token's rotation depends on its position alone and a tree verify rotates
it as a one-token step would: ``"default"``, ``"linear"``, ``"llama3"``, ``"yarn"`` and
``"proportional"`` (tests compare speculative, plain and Hugging Face decoding for each). Two types
recompute the frequencies inside every forward, from the largest position in that forward
(``dynamic_rope_update``): ``"longrope"`` switches from its short to its long factors once a forward
reaches ``original_max_position_embeddings``, and ``"dynamic"`` (NTK) rescales for the longest
position and keeps the largest it has seen across calls. A tree verify reaches further than a
one-token step and a prefill rotates its whole prompt for its last position, so the same token at
the same position gets different rotations: speculative output would differ from plain decoding.
Such targets are refused, with the reason (``unsupported_reason``).

**Sliding-window attention.** A query at position q sees only the keys at positions
``q - window < k <= q`` (Mistral; Qwen2/Qwen3 layers whose ``layer_types`` say
``"sliding_attention"``). Hugging Face's sliding cache layers keep only the last window of keys and
their own length, which a tree commit cannot compact. jetspec keeps every key instead (an ordinary
cache) and applies the window in its own masks, by position (``windowed``): the same keys are
visible to every query as in plain decoding, so the result is exact; a window longer than the
sequence changes nothing. Other attention layer types (chunked, linear, ...) are refused.
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from transformers import DynamicCache

from jetspec.core.masks import additive_mask

# rope types whose frequencies Hugging Face recomputes from the largest position of each forward
FORWARD_DEPENDENT_ROPE = ("dynamic", "longrope")
LAYER_TYPES = ("full_attention", "sliding_attention")


def rope_types(config) -> list[str]:
    """Every rope type ``config`` asks for (one per layer type when the parameters are per layer type)."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if not isinstance(params, dict):
        return ["default"]
    nested = [v for v in params.values() if isinstance(v, dict)]
    groups = nested if nested else [params]
    return [str(g.get("rope_type", g.get("type", "default"))) for g in groups]


def layer_types(config) -> list[str]:
    """The attention type of every decoder layer, as Hugging Face infers it."""
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)
    if getattr(config, "sliding_window", None) is not None:
        return ["sliding_attention"] * config.num_hidden_layers
    if getattr(config, "attention_chunk_size", None) is not None:
        return ["chunked_attention"] * config.num_hidden_layers
    return ["full_attention"] * config.num_hidden_layers


def unsupported_reason(config) -> Optional[str]:
    """None if jetspec's verification is exact for a model with ``config``, else why it is not."""
    for rope in rope_types(config):
        if "dynamic" in rope or rope == "longrope":
            return (f"rope_type {rope!r} recomputes its RoPE frequencies from the largest position of each "
                    "forward, so a tree verify (which reaches further than a one-token step) would rotate the "
                    "same token differently than plain decoding and change the output; jetspec refuses it "
                    "rather than differ silently (docs/design.md §6.10)")
    other = sorted(set(layer_types(config)) - set(LAYER_TYPES))
    if other:
        return (f"attention layer types {other} are not supported (jetspec verifies {list(LAYER_TYPES)} "
                "exactly; docs/design.md §6.10)")
    types = layer_types(config)
    if "sliding_attention" in types:
        window = getattr(config, "sliding_window", None)
        if not isinstance(window, int) or window < 1:
            return f"sliding-window layers need an integer sliding_window >= 1, got {window!r}"
    return None


def attention_windows(config) -> dict[str, Optional[int]]:
    """Layer type -> its window (None: full attention), for the types the model's layers use."""
    types = dict.fromkeys(layer_types(config))  # in order, once each
    return {t: (config.sliding_window if t == "sliding_attention" else None) for t in types}


def windowed(visible: Bool[Tensor, "B N T"], q_pos: Int[Tensor, "B N"], k_pos: Int[Tensor, "B T"],
             window: Optional[int]) -> Bool[Tensor, "B N T"]:
    """``visible`` restricted to keys within ``window`` positions of each query (Hugging Face's sliding
    rule ``q - window < k``); unchanged for ``window=None``. A query always keeps itself."""
    if window is None:
        return visible
    near = (q_pos[:, :, None] - k_pos[:, None, :]).to(visible.device) < window
    return visible & near


def hf_masks(visible: Bool[Tensor, "B N T"], q_pos: Int[Tensor, "B N"], k_pos: Int[Tensor, "B T"],
             windows: dict[str, Optional[int]], dtype: torch.dtype):
    """The additive mask(s) a Hugging Face forward takes: one ``[B, 1, N, T]`` tensor when every layer
    has the same window, else a dict layer type -> mask (what models with mixed layers accept)."""
    masks = {t: additive_mask(windowed(visible, q_pos, k_pos, w), dtype)[:, None] for t, w in windows.items()}
    return next(iter(masks.values())) if len(masks) == 1 else masks


def hf_cache(config) -> DynamicCache:
    """An empty Hugging Face cache in which every layer keeps all its keys. Hugging Face's sliding
    layers keep only the last window and their own length, which a commit cannot compact; the
    window is applied by the masks instead (``hf_masks``). Full-attention models get their usual cache."""
    sliding = any(w is not None for w in attention_windows(config).values())
    return DynamicCache() if sliding else DynamicCache(config=config)
