"""EAGLE-style autoregressive draft head, drafting a dynamic tree one depth per forward (docs/design.md §4.5).

What the head reads at row j (the row of committed token x_j):

    feature  f_j = fc(concat of k tapped target layer outputs at x_j)     Linear(k*H -> H), no bias
    token    e_j = embedding of the NEXT token x_{j+1}                    the target's frozen table

and its output at row j is the distribution of x_{j+2}. How the two are combined is EAGLE-3's
choice, kept so the head exports to that layout unchanged (``jetspec.drafters.engine_layouts``): the
first decoder layer's attention reads concat(RMSNorm(e_j), RMSNorm(f_j)) (2H wide, so its q/k/v
projections take 2H inputs) while the residual stream carries f_j; an ordinary SwiGLU MLP follows.
More layers (``num_layers > 1``) are ordinary decoder layers from ``head_layers``. A final RMSNorm
and the target's frozen lm_head give the logits. The head's output *before* the final norm is its
own "feature" of the next token: deeper tree nodes read their parent's output instead of f_j,
because the target has not seen drafted tokens yet (this is what makes EAGLE autoregressive).

One drafting round, anchor x_t with t committed tokens before it (taps of x_0..x_{t-1} given):

    forward 1   the context rows that are new since the last round (the head caches the K/V of
                committed rows, like the parallel heads, one ``RowContext`` per batch row). The
                last one, row t-1 (feature of x_{t-1}, embedding of the anchor), is the *root*:
                its output gives depth 1.
    forward d   (d = 2..D) the *frontier*: the ``width`` best nodes of depth d-1 by cumulative
                log-prob. Node m's row reads its parent's output and the embedding of its own
                token, sits at position t-1+d-1, and attends to every context row, the rows of
                its ancestors and itself (tree attention inside the head's own cache).
    after each forward every frontier node offers its top-``width`` children, so every expanded
    node carries its own conditional distribution (unlike a parallel head's shared per-depth
    table). The result is a candidate tree (``DraftOutput`` in node form) that the tree builders
    re-rank under their budget; ``forwards`` = D (or the budget, if smaller: no tree of B nodes
    is deeper than B).

Batch rows (docs/design.md §4.9): ``draft_batch`` runs forward 1 and every deeper forward once
for all rows, their contexts and trees padded to the longest and masked
(``jetspec.drafters.eagle_drafting``); the rows' trees stay separate.

Positions: row j sits at RoPE position j (EAGLE's and vLLM's convention; only differences matter).

Training (``jetspec.drafters.eagle_training``) uses the parallel heads' recipe, data module and
teacher unchanged, with EAGLE-3's *training-time test*: ``ttt_steps`` depths are unrolled, each
step feeding the head's own output hidden states back in.

Shapes use the glossary of ``jetspec`` (docs/design.md §8).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

import jetspec.drafters.eagle_training as ttt
from jetspec.core.config import read_tuple_fields
from jetspec.core.interfaces import register_drafter
from jetspec.core.masks import additive_mask, chain_ancestor, padded_visibility, stack_kv, tree_visibility
from jetspec.core.types import DraftInput, DraftOutput
from jetspec.drafters.context_cache import KV, RowContext
from jetspec.drafters.draft_vocab import saved_vocabulary
from jetspec.drafters.eagle_drafting import DraftingTree, expand_batch, row_of
from jetspec.drafters.head_config import default_tap_layers, from_target
from jetspec.drafters.head_layers import (
    Attention,
    DecoderLayer,
    LayerShape,
    PackedLinears,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    attend,
)
from jetspec.drafters.learned_head import LearnedHead
from jetspec.training.recipe import TrainConfig


def eagle_tap_layers(num_layers: int) -> tuple[int, ...]:
    """Low, middle and high taps: outputs of layers 1, L/2 - 1 and L - 4 (L >= 8).

    In EAGLE-3's own numbering these are the *inputs* of layers 2, L/2 and L-3, the default that
    vLLM and SGLang capture, so an exported head needs no extra configuration. Tiny targets
    (L < 8) take up to three evenly spaced layers of ``default_tap_layers``.
    """
    if num_layers >= 8:
        return (1, num_layers // 2 - 1, num_layers - 4)
    taps = default_tap_layers(num_layers)
    if len(taps) <= 3:
        return taps
    return (taps[0], taps[len(taps) // 2], taps[-1])


@dataclass
class EagleConfig:
    """Architecture of an EAGLE head. ``None`` = take it from the target (see ``resolved``).

    The head's hidden size is always the target's: it reads the target's embeddings and writes
    into the target's lm_head, both H wide.
    """

    num_layers: int = 1  # decoder layers; the first fuses token embedding and feature (EAGLE-3: 1)
    ttt_steps: int = 7  # depths unrolled in training-time test (EAGLE-3 unrolls 7)
    tap_layers: Optional[tuple[int, ...]] = None  # target layers read (None: eagle_tap_layers)
    num_heads: Optional[int] = None
    num_kv_heads: Optional[int] = None
    head_dim: Optional[int] = None
    intermediate_size: Optional[int] = None
    qk_norm: bool = False  # per-head q/k RMSNorm; off: the EAGLE-3 layout is Llama-style
    rms_norm_eps: Optional[float] = None
    rope_theta: Optional[float] = None
    # The target the head was built for; filled by ``resolved`` and checked on load.
    target_hidden_size: Optional[int] = None
    target_vocab_size: Optional[int] = None
    target_num_layers: Optional[int] = None

    def __post_init__(self) -> None:
        read_tuple_fields(self)
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.ttt_steps < 1:
            raise ValueError(f"ttt_steps must be >= 1 (1 = no training-time test), got {self.ttt_steps}")

    @property
    def block_size(self) -> int:
        """The training recipe's "block": the anchor slot plus one slot per unrolled depth."""
        return self.ttt_steps + 1

    def resolved(self, model: nn.Module) -> "EagleConfig":
        """A copy with every ``None`` filled from the target, checked against it.

        The filling rules are the parallel heads' (``head_config.from_target``), so both kinds of head
        agree on heads, head dim, RoPE base and the target-mismatch errors. The width is always the
        target's, and ``qk_norm`` is this config's own (off by default: the EAGLE-3 layout).
        """
        taps = self.tap_layers if self.tap_layers is not None else eagle_tap_layers(model.config.num_hidden_layers)
        filled = from_target(self, model, taps, hidden_size=None)
        return replace(self, **{k: v for k, v in filled.items() if k not in ("hidden_size", "qk_norm")})

    def layer_shape(self) -> LayerShape:
        """The shape of one draft decoder layer, as ``head_layers`` builds it."""
        return LayerShape(self.target_hidden_size, self.num_heads, self.num_kv_heads, self.head_dim,
                          self.intermediate_size, self.qk_norm, self.rms_norm_eps)


class FusionLayer(nn.Module):
    """The first decoder layer: attention over [RMSNorm(token embedding) ; RMSNorm(feature)].

    Pre-norm like every Llama layer, with two input norms instead of one; the residual stream
    is the feature, so with zero attention and MLP the row would pass its feature through.
    """

    def __init__(self, shape: LayerShape) -> None:
        super().__init__()
        h = shape.hidden_size
        self.input_norm = RMSNorm(h, shape.eps)  # on the token embedding
        self.hidden_norm = RMSNorm(h, shape.eps)  # on the feature
        self.attn = Attention(shape)
        # q/k/v read 2H features; o_proj still writes H.
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(self.attn, name, nn.Linear(2 * h, getattr(self.attn, name).out_features, bias=False))
        self.post_attn_norm = RMSNorm(h, shape.eps)
        self.mlp = SwiGLU(h, shape.intermediate_size)

    def forward(self, emb: Float[Tensor, "B N H"], feat: Float[Tensor, "B N H"], cos: Tensor, sin: Tensor,
                mask: Tensor, prefix_kv: Optional[KV], attention_fn) -> Float[Tensor, "B N H"]:
        x = torch.cat([self.input_norm(emb), self.hidden_norm(feat)], dim=-1)  # [B, N, 2H]
        h = feat + self.attn(x, cos, sin, mask, prefix_kv, attention_fn)
        return h + self.mlp(self.post_attn_norm(h))


class EagleDraftNet(PackedLinears):
    """The head's own weights: fc, the decoder layers and the final norm (nothing of the target);
    its Linear layers run prepacked while drafting (``PackedLinears``)."""

    def __init__(self, cfg: EagleConfig) -> None:
        super().__init__()
        h = cfg.target_hidden_size
        self.fc = nn.Linear(len(cfg.tap_layers) * h, h, bias=False)  # k*H -> H
        shape = cfg.layer_shape()
        rest = [DecoderLayer(shape) for _ in range(cfg.num_layers - 1)]
        self.layers = nn.ModuleList([FusionLayer(shape)] + rest)
        self.norm = RMSNorm(h, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)  # the HF initializer range

    def forward(self, feat: Float[Tensor, "B N H"], emb: Float[Tensor, "B N H"],
                positions: Int[Tensor, "B N"], mask: Float[Tensor, "#B 1 N T"],
                prefix_kv: Optional[list[KV]] = None) -> tuple[Float[Tensor, "B N H"], list[KV]]:
        """Run N rows over ``prefix_kv`` (per layer, may be None) under the additive ``mask``.

        Returns the rows' outputs *before* the final norm (the features their children read) and,
        per layer, the K/V [B, h_kv, N, K] of these rows, for the caller to cache.
        """
        x = emb.to(self.fc.weight.dtype)
        feat = feat.to(x.dtype)
        cos, sin = self.rotary(positions, x.dtype)
        new_kv: list[KV] = []
        for i, layer in enumerate(self.layers):
            kv = None if prefix_kv is None else prefix_kv[i]
            record = _RecordingAttention(mask, new_kv)
            if i == 0:
                feat = layer(x, feat, cos, sin, mask, kv, record)
            else:
                feat = layer(feat, cos, sin, mask, kv, record)
        return feat, new_kv


class _RecordingAttention:
    """The masked reference attention that also keeps the K/V of the query rows themselves.

    ``Attention`` projects and concatenates [prefix K/V, own K/V] before calling its attention
    function; the own rows are the last N, and they are what a cache must append.
    """

    def __init__(self, mask: Tensor, store: list) -> None:
        self.mask, self.store = mask, store

    def __call__(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        m = q.shape[2]
        self.store.append((k[:, :, -m:], v[:, :, -m:]))
        return attend(q, k, v, self.mask)


@register_drafter("eagle")
class EagleHead(LearnedHead):
    """An EAGLE-style autoregressive head over a frozen target (a Drafter and a LightningModule).

    The training recipe, Lightning hooks and persistence are ``LearnedHead``'s; this class adds
    the network (``EagleDraftNet``), its unrolled training forward and its depth-by-depth drafting.

    Args:
        target: a Hugging Face causal LM or a ``jetspec.core.target.TargetModel`` (frozen, not copied).
        num_layers: decoder layers, the first fusing token and feature (default: EagleConfig's 1).
        config: an ``EagleConfig``; its fields may also be given as keyword options, which override it.
        training: a ``TrainConfig``; likewise overridden by keyword options.

    Example::

        head = EagleHead(target, num_layers=1, ttt_steps=7, lr=3e-4)
        lightning.Trainer(max_steps=300).fit(head, datamodule=TokenDataModule(rows))
        SpeculativeDecoder(target, head, BestFirstBuilder(budget=32, width=4, depth=6)).generate(ids)
    """

    config_class = EagleConfig
    kind = "EAGLE head"
    min_anchor = 1  # an anchor's root is the context row before it (eagle_training)

    def __init__(self, target, num_layers: Optional[int] = None, config: Optional[EagleConfig] = None,
                 training: Optional[TrainConfig] = None, **options) -> None:
        if num_layers is not None:
            options["num_layers"] = num_layers
        super().__init__(target, config, training, **options)
        if self.train_config.on_policy:
            raise ValueError("on_policy masks parallel-head block slots; EAGLE's training-time test "
                             "feeds its own drafts back and has no such slots")
        self.net = EagleDraftNet(self.config).to(self.target_model.get_output_embeddings().weight.dtype)
        self.max_depth = None  # unlimited: one forward per depth

    @classmethod
    def for_saved_weights(cls, target, config: EagleConfig, training: TrainConfig,
                          state: dict[str, Tensor]) -> "EagleHead":
        head = cls(target, config=config, training=training)
        if "vocab.ids" in state:  # an imported head's own output vocabulary (drafters/engine_layouts.py)
            head.net.vocab = saved_vocabulary(state, head.vocab_size)
        return head

    def embed(self, ids: Int[Tensor, "..."]) -> Float[Tensor, "... H"]:
        """The target's input embedding of ``ids``, in the head's dtype."""
        return self.target_model.get_input_embeddings()(ids).to(self.net.fc.weight.dtype)

    def logits(self, hidden: Float[Tensor, "... H"]) -> Float[Tensor, "... V"]:
        """Final norm, then the target's lm_head."""
        return self.lm_head(self.net.norm(hidden))

    # ------------------------------------------------------------------ training (see eagle_training)
    def packed_hidden(self, input_ids: Int[Tensor, "B T"], taps: Float[Tensor, "B T F"],
                      anchors: Int[Tensor, "B A"]) -> Float[Tensor, "B A S H"]:
        """Normed outputs of every anchor's unrolled chain, laid out like a parallel head's block."""
        return ttt.unrolled_hidden(self, input_ids, taps, anchors)

    # ------------------------------------------------------------------ the head's context caches
    def _new_context_rows(self, tokens: Int[Tensor, " T"], taps: Optional[Float[Tensor, "T-1 F"]], round_index: int,
                          row: int) -> tuple[RowContext, Float[Tensor, "N H"], Float[Tensor, "N H"], Int[Tensor, " N"]]:
        """``row``'s cache (restarted on a new sequence) and the inputs of its context rows new this round.

        Row j needs the taps of x_j and the token x_{j+1}, both committed, so a row's K/V never
        change once computed: only rows [cached, t) run, and every round has at least one new
        row (the root, t-1), since t grows by at least one token per round.
        """
        t = self.committed_before_anchor(tokens, taps)
        dev = self.net.fc.weight.device
        # at most t - 1 rows kept: the root row t - 1 runs every round
        cache = self.start_context(row, round_index, at_most=t - 1)
        p = cache.length
        feat = self.net.linears(taps[p:].to(dev, self.net.fc.weight.dtype), "fc")[0]  # [N, H]
        return cache, feat, self.embed(tokens[p + 1:].to(dev)), torch.arange(p, t, device=dev)

    def _sync_context(self, tokens: Int[Tensor, " T"], taps: Optional[Float[Tensor, "T-1 F"]],
                      round_index: int, row: int = 0) -> tuple[Float[Tensor, " H"], RowContext]:
        """Run ``row``'s context rows that are new since its last round; return the root row's output."""
        cache, feat, emb, positions = self._new_context_rows(tokens, taps, round_index, row)
        mask = ttt.causal_mask(feat.shape[0], cache.length, feat.dtype, feat.device)  # [1, 1, N, P + N]
        out, kv = self.net(feat[None], emb[None], positions[None], mask, cache.kv)
        cache.append(kv, tokens.shape[0] - 1)
        return out[0, -1], cache

    def _sync_contexts(self, inputs: Sequence[DraftInput]) -> list[tuple[Tensor, RowContext]]:
        """``_sync_context`` of several rows in ONE forward: their contexts and new rows padded and masked."""
        rows = [self._new_context_rows(i.tokens, i.taps, i.round_index, i.row) for i in inputs]
        lens = [cache.length for cache, *_ in rows]
        sizes = [feat.shape[0] for _, feat, _, _ in rows]
        dev, dtype = self.net.fc.weight.device, self.net.fc.weight.dtype
        visible = padded_visibility([tree_visibility(chain_ancestor(n, device=dev), p) for n, p in zip(sizes, lens)],
                                    lens)
        prefix = stack_kv([cache.kv if cache.kv is not None else self._empty_kv() for cache, *_ in rows], max(lens))
        feat, emb, positions = (pad_sequence([r[i] for r in rows], batch_first=True) for i in (1, 2, 3))
        out, kv = self.net(feat, emb, positions, additive_mask(visible[:, None], dtype), prefix)  # [B, N, H]
        for b, (inp, (cache, *_)) in enumerate(zip(inputs, rows)):
            cache.append(row_of(kv, b, sizes[b]), inp.tokens.shape[0] - 1)
        return [(out[b, n - 1], cache) for b, (n, (cache, *_)) in enumerate(zip(sizes, rows))]

    def _empty_kv(self) -> list[KV]:
        """Per layer, the K/V of no rows at all (a row whose context is still empty)."""
        w = self.net.fc.weight
        return [(w.new_zeros(1, layer.attn.num_kv_heads, 0, layer.attn.head_dim),) * 2 for layer in self.net.layers]

    # ------------------------------------------------------------------ drafting (Drafter)
    @torch.no_grad()
    def draft(self, inp: DraftInput) -> DraftOutput:
        t = inp.tokens.shape[0] - 1
        if t == 0:  # a one-token prompt: no context row, hence no root to draft from
            self._rows.pop(inp.row, None)
            return _empty_draft()
        root, cache = self._sync_context(inp.tokens, inp.taps, inp.round_index, inp.row)
        tree = DraftingTree(self, root, t, cache)
        w = min(inp.width, tree.root_logq.shape[-1])  # the draft vocabulary may be smaller
        frontier = tree.offer(-1, tree.root_logq, w)
        # A tree of `budget` nodes is at most that deep: deeper forwards could never be used.
        for _ in range(2, min(inp.depth, inp.budget) + 1):
            if not frontier:
                break
            logq = tree.expand(frontier)  # [F, V]: one head forward
            new = []
            for m, row in zip(frontier, logq):
                new += tree.offer(m, row, w)
            frontier = sorted(new, key=lambda m: -tree.score[m])[:w]
        return tree.output()

    @torch.no_grad()
    def draft_batch(self, inputs: Sequence[DraftInput]) -> list[DraftOutput]:
        """``draft`` for several batch rows, one head forward per depth for all of them (docs/design.md §4.9)."""
        if len(inputs) <= 1:
            return [self.draft(inp) for inp in inputs]
        outs: list[Optional[DraftOutput]] = [None] * len(inputs)
        live = [i for i, inp in enumerate(inputs) if inp.tokens.shape[0] > 1]
        for i in set(range(len(inputs))) - set(live):  # one-token prompts: nothing to draft from
            self._rows.pop(inputs[i].row, None)
            outs[i] = _empty_draft()
        synced = self._sync_contexts([inputs[i] for i in live]) if live else []
        roots = torch.log_softmax(self.logits(torch.stack([h for h, _ in synced])).double(), -1) if live else None
        trees = {i: DraftingTree(self, h, inputs[i].tokens.shape[0] - 1, cache, root_logq=roots[j])
                 for j, (i, (h, cache)) in enumerate(zip(live, synced))}
        width = {i: min(inputs[i].width, tree.root_logq.shape[-1]) for i, tree in trees.items()}
        frontier = {i: tree.offer(-1, tree.root_logq, width[i]) for i, tree in trees.items()}
        steps = {i: min(inputs[i].depth, inputs[i].budget) for i in live}
        for d in range(2, max(steps.values(), default=1) + 1):
            active = [i for i in live if d <= steps[i] and frontier[i]]
            if not active:
                break
            for i, logq in zip(active, expand_batch([trees[i] for i in active], [frontier[i] for i in active])):
                new = []
                for m, row in zip(frontier[i], logq):
                    new += trees[i].offer(m, row, width[i])
                frontier[i] = sorted(new, key=lambda m: -trees[i].score[m])[:width[i]]
        for i, tree in trees.items():
            outs[i] = tree.output()
        return outs

    @torch.no_grad()
    def tree_logprobs(self, tokens: Int[Tensor, " T"], taps: Float[Tensor, "T-1 F"],
                      node_tokens: Int[Tensor, " M"], node_parents: Int[Tensor, " M"],
                      round_index: int = 0) -> Float[Tensor, "M+1 V"]:
        """Children log-probs of the root and of every node of a given tree (row 0 = the root).

        The same forwards as ``draft`` (one per depth) with the nodes prescribed instead of
        chosen; tests compare it with the packed training forward.
        """
        root, cache = self._sync_context(tokens, taps, round_index)
        tree = DraftingTree(self, root, tokens.shape[0] - 1, cache)
        for tok, p in zip(node_tokens.tolist(), node_parents.tolist()):
            tree.add(p, tok, 0.0)
        rows = [tree.root_logq] + [None] * len(tree.tokens)
        for d in range(1, max(tree.depth, default=0) + 1):  # expand level by level, as draft does
            level = [m for m, dm in enumerate(tree.depth) if dm == d]
            for m, row in zip(level, tree.expand(level)):
                rows[m + 1] = row
        return torch.stack(rows)


def _empty_draft() -> DraftOutput:
    empty = torch.zeros(0, dtype=torch.long)
    return DraftOutput(node_tokens=empty, node_parents=empty, node_logprobs=torch.zeros(0), forwards=0)
