"""Parallel draft heads: JetSpec (causal block) and DFlash (bidirectional block), one implementation.

A parallel head drafts every depth of the tree in ONE forward (docs/design.md §4.3 and §4.4):

    taps of committed tokens [T, k*H] --Linear, RMSNorm--> context rows [T, H_d]
    block = [anchor, MASK, ..., MASK] (S slots) --target embedding--> [S, H]
    a few decoder layers; in each, keys/values = [proj(context rows), proj(block)] and queries
    come only from the block (KV injection); final RMSNorm; the target's frozen lm_head
    slot k (1..S-1) -> the distribution of the token at depth k

The two heads differ in ONE switch, the class attribute ``causal``: slot i of a JetSpec block sees
slots <= i (so its depth-k distribution is conditioned like the target's), slot i of a DFlash
block sees every slot (branch-agnostic marginals).

Batch rows (docs/design.md §4.9): the head keeps one ``RowContext`` per ``DraftInput.row``, and
``draft_batch`` runs the blocks of all rows in ONE forward, each row's context padded to the
longest and masked (``jetspec.core.masks.padded_visibility``). One row drafts through ``draft``.

Each head is a ``jetspec.drafters.learned_head.LearnedHead``: a ``jetspec.core.interfaces.Drafter``
(``draft``) and a ``lightning.LightningModule`` whose training recipe is the base class's. The
network and its architecture (``ParallelDraftNet``, ``HeadConfig``) are ``jetspec.drafters.parallel_net``'s;
this module lays out its input: every anchor's block packed for training, one block per batch row
for drafting. The target's
embedding table and lm_head are *used*, never copied: the target is held through a plain Python
object, so it is not a sub-module, not a parameter the optimizer sees, and not in any checkpoint.

Shapes use the glossary of ``jetspec`` (docs/design.md §8).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

import jetspec.drafters.conditioned as conditioned
from jetspec.core.interfaces import register_drafter
from jetspec.core.masks import chain_ancestor, full_ancestor, padded_visibility, stack_kv, tree_visibility
from jetspec.core.types import DraftInput, DraftOutput
from jetspec.drafters.context_cache import RowContext
from jetspec.drafters.learned_head import LearnedHead
from jetspec.drafters.parallel_net import HeadConfig, ParallelDraftNet, default_tap_layers
from jetspec.kernels import masked_attention, tree_attention
from jetspec.training.recipe import TrainConfig, block_positions, packed_block_mask

# HeadConfig and default_tap_layers are imported from here by users; their home is parallel_net.
__all__ = ["DFlashHead", "HeadConfig", "JetSpecHead", "ParallelDraftNet", "ParallelHead", "default_tap_layers"]


class ParallelHead(LearnedHead):
    """A parallel draft head over a frozen target (use ``JetSpecHead`` or ``DFlashHead``).

    The training recipe, Lightning hooks and persistence are ``LearnedHead``'s; this class adds
    the network (``ParallelDraftNet``), its packed training forward and its one-forward drafting.

    Args:
        target: a Hugging Face causal LM or a ``jetspec.core.target.TargetModel`` (frozen, not copied).
        config: architecture; fields of ``HeadConfig`` may also be given as keyword options.
        training: optimisation and loss; fields of ``TrainConfig`` may also be keyword options.
        draft_vocab: token ids of a reduced draft vocabulary (``drafters/draft_vocab.py``).

    Example::

        head = JetSpecHead(target, num_layers=1, block_size=16, lr=3e-4)
        lightning.Trainer(max_steps=200).fit(head, datamodule=TokenDataModule(seqs))
        SpeculativeDecoder(target, head, BestFirstBuilder(budget=32)).generate(ids)
    """

    config_class = HeadConfig
    causal: bool = True  # THE difference between JetSpec (True) and DFlash (False)

    def __init__(self, target, config: Optional[HeadConfig] = None, training: Optional[TrainConfig] = None,
                 draft_vocab: Optional[Tensor] = None, **options) -> None:
        if draft_vocab is not None:
            draft_vocab = torch.as_tensor(draft_vocab, dtype=torch.long).flatten()
            options["draft_vocab_size"] = draft_vocab.numel()
        super().__init__(target, config, training, **options)
        if self.config.draft_vocab_size is not None and draft_vocab is None:
            raise ValueError("draft_vocab_size needs the ids: pass draft_vocab=<token ids>, e.g. from "
                             "jetspec.drafters.draft_vocab.frequent_tokens(token_counts(data, V), size)")
        if self.config.conditioned and not self.causal:
            raise ValueError("conditioned drafting needs a causal head (JetSpecHead): a bidirectional block "
                             "would let teacher-forced tokens leak into earlier slots")
        dtype = self.target_model.get_output_embeddings().weight.dtype
        self.net = ParallelDraftNet(self.config, draft_vocab).to(dtype)
        if self.config.init_from_target:
            self.net.copy_target_layers(self.target_model.get_decoder())
        self.max_depth = self.config.block_size - 1

    @classmethod
    def for_saved_weights(cls, target, config: HeadConfig, training: TrainConfig,
                          state: dict[str, Tensor]) -> "ParallelHead":
        return cls(target, config=config, training=training, draft_vocab=state.get("vocab.ids"))

    def block_embeddings(self, anchor_ids: Int[Tensor, "B A"], slots: int) -> Float[Tensor, "B A S H"]:
        """[embed(anchor), MASK, ..., MASK] for every anchor (``slots`` = S, or fewer at inference)."""
        embed = self.target_model.get_input_embeddings()
        first = embed(anchor_ids)  # [B, A, H]
        if self.net.mask_embedding is not None:
            mask = self.net.mask_embedding.to(first.dtype)
        else:
            mask = embed.weight[self.config.mask_token_id]
        rest = mask.expand(*anchor_ids.shape, slots - 1, first.shape[-1])  # [B, A, S-1, H]
        return torch.cat([first[:, :, None].to(rest.dtype), rest], dim=2)

    # ------------------------------------------------------------------ training forward (packed)
    def packed_hidden(self, input_ids: Int[Tensor, "B T"], taps: Float[Tensor, "B T F"],
                      anchors: Int[Tensor, "B A"]) -> Float[Tensor, "B A S H"]:
        """Every anchor's block in one forward, under the block-sparse mask of ``jetspec.training.recipe``.

        A conditioned head teacher-forces every second block (``drafters/conditioned.py``) and
        returns its rows shifted so that row k still predicts depth k.
        """
        b, t = input_ids.shape
        a, s = anchors.shape[1], self.config.block_size
        ctx = self.net.fuse_taps(taps)  # [B, T, H_d]
        ctx_kv = self.net.project_context(ctx, torch.arange(t, device=input_ids.device).expand(b, t))
        emb = self.block_embeddings(input_ids.gather(1, anchors), s)  # [B, A, S, H]
        direct = self.net.packed_direct(emb[:, :, 0], ctx, anchors, s)
        forced: Optional[Bool[Tensor, "1 A 1 1"]] = None
        if self.config.conditioned:
            forced = conditioned.teacher_forced(a, anchors.device)[None, :, None, None]
            tokens = conditioned.forced_block_tokens(input_ids, anchors, s)  # [B, A, S]
            real = self.target_model.get_input_embeddings()(tokens)
            emb = torch.where(forced, real.to(emb.dtype), emb)
        emb = emb.flatten(1, 2)  # [B, A*S, H]
        mask = packed_block_mask(anchors, t, s, self.causal, emb.dtype)  # [B, 1, A*S, T + A*S]
        hidden = self.net(emb, block_positions(anchors, s), ctx_kv, mask, direct=direct).view(b, a, s, -1)
        return hidden if forced is None else conditioned.depth_aligned(hidden, forced)

    # ------------------------------------------------------------------ inference (Drafter)
    def _sync_context(self, taps: Float[Tensor, "P F"], round_index: int, row: int) -> RowContext:
        """Bring ``row``'s cache up to ``taps``: restart it on a new sequence, else project only new rows."""
        cache = self.start_context(row, round_index, at_most=taps.shape[0])
        new = taps[cache.length:]
        if new.shape[0] == 0 and cache.kv is not None:
            return cache
        pos = torch.arange(cache.length, taps.shape[0], device=new.device)[None]
        ctx = self.net.fuse_taps(new[None])  # [1, T_new, H_d]
        if ctx.shape[1]:
            cache.last = ctx[:, -1]
        cache.append(self.net.project_context(ctx, pos), taps.shape[0])  # per layer [1, h_kv, T_new, K]
        return cache

    def _start_round(self, tokens: Int[Tensor, " T"], taps: Optional[Float[Tensor, "T-1 F"]], round_index: int,
                     depth: Optional[int], row: int) -> tuple[int, Float[Tensor, "1 N H"], Int[Tensor, "1 N"]]:
        """Check one row's input, sync its cache; return the depth and its block's embeddings and positions."""
        depth = self.max_depth if depth is None else depth
        if not 1 <= depth <= self.max_depth:
            raise ValueError(f"depth {depth} is outside 1..{self.max_depth} (block_size - 1)")
        t = self.committed_before_anchor(tokens, taps)
        dev = self.net.fuse.weight.device
        self._sync_context(taps.to(dev), round_index, row)
        # A causal block's slots 1..D never see later slots, so the block can stop at D + 1 slots;
        # a bidirectional block must be run whole, since every slot sees every MASK.
        n = depth + 1 if self.causal else self.config.block_size
        emb = self.block_embeddings(tokens[-1:].to(dev)[None], n)[:, 0]  # [1, n, H]
        return depth, emb, torch.arange(t, t + n, device=dev)[None]

    def block_ancestor(self, n: int) -> Bool[Tensor, "N N"]:
        """Which of a block's ``n`` slots each slot sees: earlier ones only (causal head) or all of them
        (bidirectional head), docs/design.md §4.1."""
        return (chain_ancestor if self.causal else full_ancestor)(n, device=self.net.fuse.weight.device)

    @torch.no_grad()
    def draft_logits(self, tokens: Int[Tensor, " T"], taps: Optional[Float[Tensor, "T-1 F"]], round_index: int = 0,
                     depth: Optional[int] = None, row: int = 0) -> Float[Tensor, "D Vd"]:
        """Logits of depths 1..D for the anchor ``tokens[-1]``, reusing batch row ``row``'s context cache."""
        depth, emb, positions = self._start_round(tokens, taps, round_index, depth, row)
        hidden = self.over_context(emb, positions, self.block_ancestor(emb.shape[1]), row)
        return self.lm_head(hidden[0, 1: depth + 1])  # [D, V']

    @torch.no_grad()
    def draft_logits_batch(self, inputs: Sequence[DraftInput]) -> list[Float[Tensor, "D Vd"]]:
        """``draft_logits`` of every input's row, all blocks in ONE head forward (docs/design.md §4.9)."""
        rounds = [self._start_round(i.tokens, i.taps, i.round_index, i.depth, i.row) for i in inputs]
        hidden = self.over_contexts([emb[0] for _, emb, _ in rounds], [pos[0] for _, _, pos in rounds],
                                    [self.block_ancestor(emb.shape[1]) for _, emb, _ in rounds],
                                    [i.row for i in inputs])
        return self.lm_head_rows([h[1: d + 1] for h, (d, _, _) in zip(hidden, rounds)])

    def lm_head_rows(self, hidden: Sequence[Tensor]) -> list[Tensor]:
        """``lm_head`` of several rows' hidden states ``[N_b, H]`` in one product (the weights are read once)."""
        logits = self.lm_head(torch.cat(list(hidden)))
        return list(logits.split([h.shape[0] for h in hidden]))

    def over_context(self, emb: Float[Tensor, "1 N H"], positions: Int[Tensor, "1 N"],
                     ancestor: Bool[Tensor, "N N"], row: int = 0) -> Float[Tensor, "1 N H"]:
        """Rows over ``row``'s cached context: row i sees every context row and its ancestors.

        Row 0 must be the anchor (its embedding feeds the direct path). The rows' K/V exist only
        inside this call: they are dropped after the round.
        """
        cache = self._rows[row]
        direct = self.net.round_direct(emb[:, :1], emb.shape[1], cache.last)
        return self.net(emb, positions, cache.kv, None, direct=direct,
                        attention_fn=lambda q, k, v: tree_attention(q, k, v, ancestor))

    def over_contexts(self, embs: Sequence[Tensor], positions: Sequence[Tensor], ancestors: Sequence[Tensor],
                      rows: Sequence[int]) -> list[Tensor]:
        """``over_context`` of several batch rows in ONE forward; row b's result is ``[N_b, H]``.

        The rows' contexts are padded to the longest and their node rows to the most numerous,
        under a mask that hides every padding key (``padded_visibility``), so each row computes
        what ``over_context`` computes for it alone.
        """
        caches = [self._rows[r] for r in rows]
        lens = [c.length for c in caches]
        visible = padded_visibility([tree_visibility(a, p) for a, p in zip(ancestors, lens)], lens)
        direct = None
        if self.net.direct is not None:
            direct = pad_sequence([self.net.round_direct(e[None, :1], e.shape[0], c.last)[0]
                                   for e, c in zip(embs, caches)], batch_first=True)
        hidden = self.net(pad_sequence(list(embs), batch_first=True), pad_sequence(list(positions), batch_first=True),
                          stack_kv([c.kv for c in caches], max(lens)), None, direct=direct,
                          attention_fn=lambda q, k, v: masked_attention(q, k, v, visible[:, None]))
        return [hidden[b, : e.shape[0]] for b, e in enumerate(embs)]

    def draft(self, inp: DraftInput) -> DraftOutput:
        if self.config.conditioned:  # one-pass tree, then one branch-conditioned forward over it
            return conditioned.draft(self, inp)
        return self.depth_table(self.draft_logits(inp.tokens, inp.taps, inp.round_index, inp.depth, inp.row), inp.width)

    def draft_batch(self, inputs: Sequence[DraftInput]) -> list[DraftOutput]:
        """Every row's proposal from ONE head forward (two for a conditioned head); one row drafts as ``draft``."""
        if len(inputs) <= 1:
            return [self.draft(inp) for inp in inputs]
        if self.config.conditioned:
            return conditioned.draft_batch(self, inputs)
        return [self.depth_table(logits, inp.width) for logits, inp in zip(self.draft_logits_batch(inputs), inputs)]

    def depth_table(self, logits: Float[Tensor, "D Vd"], width: int) -> DraftOutput:
        """The top-``width`` tokens of every depth, sorted, as target ids: a per-depth table (one forward)."""
        logq = torch.log_softmax(logits.double(), -1)
        top = torch.topk(logq, min(width, logq.shape[-1]), dim=-1)  # sorted descending
        return DraftOutput(depth_tokens=self.to_target_ids(top.indices).cpu(),
                           depth_logprobs=top.values.float().cpu(), forwards=1)


@register_drafter("jetspec")
class JetSpecHead(ParallelHead):
    """Causal parallel head: slot i sees context and block slots <= i (docs/design.md §4.3)."""

    causal = True


@register_drafter("dflash")
class DFlashHead(ParallelHead):
    """Bidirectional block-diffusion head: every slot sees every slot (docs/design.md §4.4)."""

    causal = False
