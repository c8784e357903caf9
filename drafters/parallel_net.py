"""The parallel heads' architecture (``HeadConfig``) and network (``ParallelDraftNet``).

The network is the head's own weights, nothing of the target (docs/design.md §4.3):

    taps of committed tokens [T, k*H] --fuse (Linear), RMSNorm--> context rows [T, H_d]
    block rows (target embeddings [N, H]) --in_proj if H_d != H--> decoder layers, whose keys/values
    are [projected context rows, block rows] (KV injection) --> RMSNorm --out_proj--> [N, H]

``jetspec.drafters.parallel_head`` lays out the block rows and masks, for training (every anchor
packed) and for drafting (one block per batch row). The ablation switches that change the network
live here too: the direct path (``direct_path``: one more input term per block, computed by
``packed_direct`` / ``round_direct``) and the reduced draft vocabulary (``draft_vocab_size``).

Shapes use the glossary of ``jetspec`` (docs/design.md §8).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from jetspec.core.config import read_tuple_fields
from jetspec.drafters.draft_vocab import DraftVocabulary
from jetspec.drafters.head_config import default_tap_layers, from_target
from jetspec.drafters.head_layers import DecoderLayer, LayerShape, PackedLinears, RMSNorm, RotaryEmbedding

__all__ = ["HeadConfig", "ParallelDraftNet", "default_tap_layers"]


@dataclass
class HeadConfig:
    """Architecture of a parallel head. ``None`` = take it from the target (see ``resolved``)."""

    num_layers: int = 1  # decoder layers (1 for small targets; the paper uses 5 for 8B)
    block_size: int = 16  # S: anchor + S-1 MASK slots -> max_depth = S - 1
    tap_layers: Optional[tuple[int, ...]] = None  # target layers read (None: default_tap_layers)
    hidden_size: Optional[int] = None  # H_d, default the target's H
    num_heads: Optional[int] = None
    num_kv_heads: Optional[int] = None
    head_dim: Optional[int] = None
    intermediate_size: Optional[int] = None
    mask_token_id: Optional[int] = None  # None: a learned mask embedding; else that token's embedding
    qk_norm: Optional[bool] = None  # per-head q/k RMSNorm; default: whether the target has it (Qwen3)
    rms_norm_eps: Optional[float] = None
    rope_theta: Optional[float] = None
    conditioned: bool = False  # causal heads: re-score the tree in a 2nd forward (drafters/conditioned.py)
    # Ablation switches (docs/design.md §4.3); the defaults are the paper's design.
    direct_path: bool = False  # add proj([embed(anchor), last context row]) to every block slot
    init_from_target: bool = False  # start the decoder layers and final norm as the target's last ones
    draft_vocab_size: Optional[int] = None  # V': score only these many target tokens (drafters/draft_vocab.py)
    # The target the head was built for; filled by ``resolved`` and checked on load.
    target_hidden_size: Optional[int] = None
    target_vocab_size: Optional[int] = None
    target_num_layers: Optional[int] = None

    def __post_init__(self) -> None:
        read_tuple_fields(self)
        if self.block_size < 2:
            raise ValueError(f"block_size must be >= 2 (anchor + at least one MASK), got {self.block_size}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.draft_vocab_size is not None and self.draft_vocab_size < 1:
            raise ValueError(f"draft_vocab_size must be >= 1, got {self.draft_vocab_size}")

    def resolved(self, model: nn.Module) -> "HeadConfig":
        """A copy with every ``None`` filled from the target, checked against it (``head_config.from_target``)."""
        taps = self.tap_layers if self.tap_layers is not None else default_tap_layers(model.config.num_hidden_layers)
        filled = from_target(self, model, taps, self.hidden_size)
        v = filled["target_vocab_size"]
        if self.mask_token_id is not None and not 0 <= self.mask_token_id < v:
            raise ValueError(f"mask_token_id {self.mask_token_id} is outside the vocabulary of {v}")
        if self.init_from_target and filled["hidden_size"] != filled["target_hidden_size"]:
            raise ValueError(f"init_from_target copies the target's layers: it needs hidden_size = the target's "
                             f"{filled['target_hidden_size']}, got {filled['hidden_size']}")
        if self.init_from_target and self.num_layers > filled["target_num_layers"]:
            raise ValueError(f"init_from_target copies the target's last {self.num_layers} layers, but it has "
                             f"{filled['target_num_layers']}")
        if self.draft_vocab_size is not None and self.draft_vocab_size > v:
            raise ValueError(f"draft_vocab_size {self.draft_vocab_size} is larger than the target's vocabulary {v}")
        return replace(self, **filled)

    def layer_shape(self) -> LayerShape:
        """The shape of one draft decoder layer, as ``head_layers`` builds it."""
        return LayerShape(self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim,
                          self.intermediate_size, self.qk_norm, self.rms_norm_eps)


class ParallelDraftNet(PackedLinears):
    """The head's own weights (all of them; nothing of the target). Takes a resolved config.

    Its own Linear layers, like its decoder layers', run prepacked while drafting (``PackedLinears``)."""

    def __init__(self, cfg: HeadConfig, draft_ids: Optional[Tensor] = None) -> None:
        super().__init__()
        h, hd = cfg.target_hidden_size, cfg.hidden_size
        self.fuse = nn.Linear(len(cfg.tap_layers) * h, hd, bias=False)  # k*H -> H_d
        self.fuse_norm = RMSNorm(hd, cfg.rms_norm_eps)
        # The learned MASK lives in the target's embedding space, like the anchor's embedding.
        self.mask_embedding = nn.Parameter(torch.randn(h) * 0.02) if cfg.mask_token_id is None else None
        # Only when the head is narrower/wider than the target: map embeddings in and states out.
        self.in_proj = nn.Linear(h, hd, bias=False) if hd != h else None
        self.out_proj = nn.Linear(hd, h, bias=False) if hd != h else None
        self.layers = nn.ModuleList(DecoderLayer(cfg.layer_shape()) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(hd, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        # Direct path: [embed(anchor) (H), last context row (H_d)] -> H_d, added to every slot.
        self.direct = nn.Linear(h + hd, hd, bias=False) if cfg.direct_path else None
        # Reduced draft vocabulary (the ids are a buffer, so they are saved with the weights).
        self.vocab = None
        if cfg.draft_vocab_size is not None:
            ids = torch.arange(cfg.draft_vocab_size) if draft_ids is None else draft_ids
            if ids.numel() != cfg.draft_vocab_size:
                raise ValueError(f"{ids.numel()} draft vocabulary ids given for draft_vocab_size "
                                 f"{cfg.draft_vocab_size}")
            self.vocab = DraftVocabulary(ids, cfg.target_vocab_size)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)  # the HF initializer range
        if self.direct is not None:
            # Zero: a fresh head with the direct path computes exactly what the paper's design does.
            nn.init.zeros_(self.direct.weight)

    # The head layer's submodules named as in a Hugging Face (Llama / Qwen) decoder layer; the rest
    # (q/k/v/o_proj, q/k_norm, mlp.*) have the same names below them.
    TARGET_MODULE_NAMES = {"input_norm": "input_layernorm", "attn": "self_attn",
                           "post_attn_norm": "post_attention_layernorm"}

    @torch.no_grad()
    def copy_target_layers(self, decoder: nn.Module) -> None:
        """Start the decoder layers as copies of the target's last ``len(self.layers)`` layers (in order) and
        the final norm as the target's (``HeadConfig.init_from_target``; a later release of the paper's
        heads starts its draft decoder this way). ``decoder``: the target's ``get_decoder()``; it is read,
        never changed. Raises ``ValueError`` naming a parameter the target lacks or shapes that differ."""
        source = list(decoder.layers)[-len(self.layers):]
        for i, (mine, theirs) in enumerate(zip(self.layers, source)):
            given = dict(theirs.named_parameters())
            for name, param in mine.named_parameters():
                first, _, rest = name.partition(".")
                other = given.get(f"{self.TARGET_MODULE_NAMES.get(first, first)}.{rest}")
                if other is None or other.shape != param.shape:
                    got = "missing" if other is None else tuple(other.shape)
                    raise ValueError(f"init_from_target: head layer {i} {name} {tuple(param.shape)} has no "
                                     f"counterpart in the target's layer ({got})")
                param.copy_(other)
        self.norm.weight.copy_(decoder.norm.weight)

    def fuse_taps(self, taps: Float[Tensor, "B T F"]) -> Float[Tensor, "B T Hd"]:
        """Context rows: the fused, normalised target features."""
        return self.fuse_norm(self.linears(taps.to(self.fuse.weight.dtype), "fuse")[0])

    def project_context(self, ctx: Float[Tensor, "B T Hd"],
                        positions: Int[Tensor, "B T"]) -> list[tuple[Tensor, Tensor]]:
        """Per layer, the keys/values [B, h_kv, T, K] of the context rows (cacheable: no block input)."""
        cos, sin = self.rotary(positions, ctx.dtype)
        return [layer.attn.project_kv(ctx, cos, sin) for layer in self.layers]

    def context_kv(self, taps: Float[Tensor, "B T F"],
                   positions: Int[Tensor, "B T"]) -> list[tuple[Tensor, Tensor]]:
        return self.project_context(self.fuse_taps(taps), positions)

    def direct_input(self, anchor_emb: Float[Tensor, "B A H"], last_ctx: Float[Tensor, "B A Hd"]
                     ) -> Optional[Float[Tensor, "B A Hd"]]:
        """The direct path's term for each anchor's block (None when the switch is off)."""
        if self.direct is None:
            return None
        return self.linears(torch.cat([anchor_emb.to(last_ctx.dtype), last_ctx], dim=-1), "direct")[0]

    def packed_direct(self, anchor_emb: Float[Tensor, "B A H"], ctx: Float[Tensor, "B T Hd"],
                      anchors: Int[Tensor, "B A"], slots: int) -> Optional[Float[Tensor, "B N Hd"]]:
        """The direct path's term for every packed training slot: block a reads context row a-1 (none for a = 0)."""
        if self.direct is None:
            return None
        rows = (anchors - 1).clamp_min(0)[..., None].expand(*anchors.shape, ctx.shape[-1])  # [B, A, H_d]
        last = ctx.gather(1, rows) * (anchors > 0)[..., None].to(ctx.dtype)
        d = self.direct_input(anchor_emb, last)  # [B, A, H_d]
        return d[:, :, None].expand(*d.shape[:2], slots, d.shape[-1]).flatten(1, 2)

    def round_direct(self, anchor_emb: Float[Tensor, "1 1 H"], rows: int,
                     last: Optional[Float[Tensor, "1 Hd"]]) -> Optional[Float[Tensor, "1 N Hd"]]:
        """One drafting round's direct-path term (anchor + the row's newest context row ``last``, zeros
        before any), repeated over the block's ``rows`` rows."""
        if self.direct is None:
            return None
        last = last if last is not None else self.fuse.weight.new_zeros(1, self.fuse.out_features)
        d = self.direct_input(anchor_emb, last[:, None])  # [1, 1, H_d]
        return d.expand(1, rows, d.shape[-1])

    def forward(self, block_emb: Float[Tensor, "B N H"], positions: Int[Tensor, "B N"],
                context_kv: list[tuple[Tensor, Tensor]], mask: Optional[Tensor],
                attention_fn=None, direct: Optional[Float[Tensor, "B N Hd"]] = None) -> Float[Tensor, "B N H"]:
        """Final hidden states of the block rows, in the target's hidden size (ready for lm_head).

        ``direct``: the direct path's term of each row's block, repeated over its rows.
        """
        x = block_emb.to(self.fuse.weight.dtype)
        if self.in_proj is not None:
            x = self.linears(x, "in_proj")[0]
        if direct is not None:
            x = x + direct
        cos, sin = self.rotary(positions, x.dtype)
        for layer, kv in zip(self.layers, context_kv):
            x = layer(x, cos, sin, mask, kv, attention_fn)
        x = self.norm(x)
        return self.linears(x, "out_proj")[0] if self.out_proj is not None else x
