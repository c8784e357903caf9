"""Speculative and plain decoding of a batch of prompts (docs/design.md §1.6).

``SpeculativeDecoder.generate`` and ``autoregressive_generate`` come here when ``input_ids`` has
more than one row or its ``attention_mask`` pads a prompt; the single-row loop of decoding.py stays
the readable reference. A batched round is the same five stages, each over the rows still running:

    draft (one draft_batch call) -> build trees (per row) -> verify (ONE target forward for all
    rows' trees) -> accept (the verifier, per row, in row order) -> commit (per row, one gather)

Rows are independent sequences that happen to share target forwards: each row's tokens depend only
on its own prompt (and, when sampling, on its own draws from the shared generator, taken in a fixed
row order), so a row's output has exactly the law of that prompt decoded alone. A row that stops
(EOS or ``max_new_tokens``) leaves the batch before the next round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor

from jetspec.core.batched_target import BatchedTarget
from jetspec.core.checks import check_prompt_ids, run_drafter_batch
from jetspec.core.generation import GenerationResult, StageTimer, cut_round, eos_ids
from jetspec.core.sampling import Rng, SamplingConfig, process_logits
from jetspec.core.types import Acceptance, DraftInput, DraftOutput, DraftTree, VerifyInput


def left_pad(prompts: Sequence[Sequence[int] | Tensor], pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Prompts of any lengths as ``(input_ids [B, T], attention_mask [B, T])``, padded on the left
    with ``pad_token_id``: the form ``generate`` takes (and Hugging Face's tokenizers give)."""
    rows = [torch.as_tensor(p, dtype=torch.long).flatten() for p in prompts]
    if not rows or min(r.numel() for r in rows) < 1:
        raise ValueError("left_pad needs at least one prompt, each with at least one token")
    t = max(r.numel() for r in rows)
    ids = torch.full((len(rows), t), int(pad_token_id), dtype=torch.long)
    mask = torch.zeros(len(rows), t, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, t - r.numel():], mask[b, t - r.numel():] = r, 1
    return ids, mask


def check_batch_args(input_ids, attention_mask, max_new_tokens, vocab_size: int, eos: set[int],
                     pad_token_id) -> tuple[Tensor, Tensor]:
    """``(input_ids [B, T], mask [B, T] bool)`` after checking them, with errors naming the argument
    and the row. Hugging Face conventions: 1 = real token, prompts padded on the left only."""
    input_ids = check_prompt_ids(input_ids, max_new_tokens, vocab_size, "[B, T]")
    mask = _check_mask(input_ids, attention_mask)
    if pad_token_id is not None and (not isinstance(pad_token_id, int) or isinstance(pad_token_id, bool)
                                     or pad_token_id < 0):
        raise ValueError(f"pad_token_id must be a token id (an integer >= 0) or None, got {pad_token_id!r}")
    if pad_token_id is None and eos and input_ids.shape[0] > 1:
        raise ValueError("pad_token_id is required when input_ids has several rows and eos_token_id is set: "
                         "a row that stops early is padded with it, as Hugging Face generate does")
    return input_ids.long(), mask


def _check_mask(input_ids: Tensor, attention_mask) -> Tensor:
    if attention_mask is None:
        return torch.ones(input_ids.shape, dtype=torch.bool)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must be a tensor of input_ids' shape {tuple(input_ids.shape)}, got {got}")
    if attention_mask.is_floating_point() or attention_mask.is_complex():
        raise ValueError(f"attention_mask must hold 0 and 1 (bool or integer), got dtype {attention_mask.dtype}")
    m = attention_mask.cpu().long()
    for r in range(m.shape[0]):
        row = m[r]
        if bool(((row != 0) & (row != 1)).any()):
            raise ValueError(f"attention_mask row {r} holds values other than 0 and 1: {row.tolist()}")
        if int(row.sum()) == 0:
            raise ValueError(f"attention_mask row {r} masks every token: each prompt needs at least one")
        if bool((row[1:] < row[:-1]).any()):
            raise ValueError(f"attention_mask row {r} is not left-padded (a 0 after a 1): pad prompts on the "
                             "left, as for Hugging Face generate of decoder-only models")
    return m.bool()


@dataclass
class _Row:
    """A running row: its committed tokens (unpadded), taps and records."""

    index: int  # the row of input_ids
    tokens: Tensor
    taps: Optional[Tensor]
    result: GenerationResult
    new: list[int] = field(default_factory=list)
    rounds: int = 0


def _start_rows(ids: Tensor, mask: Tensor, taps: Optional[list[Tensor]]) -> list[_Row]:
    rows = []
    for r in range(ids.shape[0]):
        tokens = ids[r][mask[r]].cpu()
        rows.append(_Row(r, tokens, None if taps is None else taps[r],
                         GenerationResult(sequences=tokens[None])))
    return rows


def _finish(ids: Tensor, mask: Tensor, rows: list[_Row], pad_token_id, res: GenerationResult) -> GenerationResult:
    """sequences [B, T + L] (L = the longest row's new tokens; shorter rows padded on the right),
    per-row results in ``res.rows`` and the pooled records (rows' records concatenated)."""
    width = max(len(row.new) for row in rows)
    # Without pad_token_id no row can stop early (check_batch_args), so every row fills its width.
    out = torch.full((ids.shape[0], width), -1 if pad_token_id is None else pad_token_id, dtype=torch.long)
    for row in rows:
        out[row.index, : len(row.new)] = torch.tensor(row.new, dtype=torch.long)
        row.result.sequences = row.tokens[None]
    res.sequences = torch.cat([ids.cpu(), out], dim=1)
    res.rows = [row.result for row in sorted(rows, key=lambda x: x.index)]
    for name in ("accepted_lengths", "draft_forwards", "tree_sizes", "accepted_depths", "tree_depths"):
        setattr(res, name, [v for r in res.rows for v in getattr(r, name)])
    return res


def _commit_tokens(row: _Row, tokens: list[int], max_new_tokens: int, eos: set[int]) -> bool:
    """Append a round's tokens (cut at max_new_tokens and after EOS); True if the row is done."""
    new = cut_round(tokens, max_new_tokens - len(row.new), eos)
    row.new.extend(new)
    row.tokens = torch.cat([row.tokens, torch.tensor(new, dtype=torch.long)])
    row.result.accepted_lengths.append(len(new))
    return len(row.new) >= max_new_tokens or bool(eos and new and new[-1] in eos)


class BatchedRounds:
    """The batched round loop of one ``SpeculativeDecoder`` (its drafter, builder and target)."""

    def __init__(self, decoder, verifier, cfg: SamplingConfig, rng: Rng) -> None:
        self.dec, self.verifier, self.cfg, self.rng = decoder, verifier, cfg, rng
        self.target = BatchedTarget(decoder.target)

    # ------------------------------------------------------------------ the five stages, over rows
    def draft(self, rows: list[_Row]) -> list[DraftOutput]:
        b = self.dec.tree_builder
        inputs = [DraftInput(tokens=row.tokens, depth=b.depth, width=b.width, budget=b.budget, taps=row.taps,
                             sampling=self.cfg, rng=self.rng, round_index=row.rounds, row=row.index)
                  for row in rows]
        return run_drafter_batch(self.dec.drafter, inputs, self.dec.target.vocab_size)

    def build_trees(self, proposals: list[DraftOutput], rows: list[_Row]) -> list[DraftTree]:
        return [self.dec.build_tree(p, int(row.tokens[-1])) for p, row in zip(proposals, rows)]

    def verify(self, trees: list[DraftTree]):
        return self.target.verify(trees)

    def accept(self, trees: list[DraftTree], logits: Tensor) -> list[Acceptance]:
        # One verifier call per row, in row order: rows draw independently from the shared rng.
        return [self.verifier.verify(VerifyInput(tree=tree, logits=logits[r, : tree.num_nodes], sampling=self.cfg,
                                                 rng=self.rng)) for r, tree in enumerate(trees)]

    def commit(self, rows: list[_Row], trees: list[DraftTree], accs: list[Acceptance], taps, max_new_tokens: int,
               eos: set[int]) -> list[int]:
        """Compact every row's cache, append its tokens and taps; return the positions in ``rows``
        of the rows still running."""
        keeps = [[0] + acc.accepted_nodes for acc in accs]
        self.target.commit(keeps)
        running = []
        for r, (row, tree, acc, keep) in enumerate(zip(rows, trees, accs, keeps)):
            if row.taps is not None and taps is not None:
                row.taps = torch.cat([row.taps, taps[r, keep]])
            done = _commit_tokens(row, acc.tokens, max_new_tokens, eos)
            rec = row.result
            rec.tree_sizes.append(tree.budget)
            rec.accepted_depths.append(len(acc.accepted_nodes))
            rec.tree_depths.append(tree.max_depth)
            row.rounds += 1
            if not done:
                running.append(r)
        return running

    # ------------------------------------------------------------------ the loop
    def run(self, ids: Tensor, mask: Tensor, max_new_tokens: int, eos: set[int], res: GenerationResult) -> list[_Row]:
        timer = StageTimer(res.timings)
        with timer("prefill"):
            taps = self.target.prefill(ids, mask)
        rows = _start_rows(ids, mask, taps)
        live = list(rows)
        while live:
            with timer("draft"):
                proposals = self.draft(live)
            with timer("tree"):
                trees = self.build_trees(proposals, live)
            with timer("verify"):
                logits, node_taps = self.verify(trees)
            with timer("accept"):
                accs = self.accept(trees, logits)
            with timer("commit"):
                running = self.commit(live, trees, accs, node_taps, max_new_tokens, eos)
                if len(running) < len(live):
                    self.target.select_rows(running)
            for row, p in zip(live, proposals):
                row.result.draft_forwards.append(p.forwards)
            res.rows_per_round.append(len(live))
            live = [live[r] for r in running]
        return rows


def generate_batch(decoder, input_ids: Tensor, attention_mask: Optional[Tensor], max_new_tokens: int,
                   cfg: SamplingConfig, verifier, rng: Rng, eos_token_id, pad_token_id,
                   rounds: type = BatchedRounds) -> GenerationResult:
    """``SpeculativeDecoder.generate`` for a batch (its docstring has the arguments); ``rng`` is any
    ``jetspec.core.sampling.Rng`` (tests pass a scripted one to enumerate the law exactly), and
    ``rounds`` the loop class (a subclass may check or alter a stage, as the tests' do)."""
    eos = eos_ids(eos_token_id)
    ids, mask = check_batch_args(input_ids, attention_mask, max_new_tokens, decoder.target.vocab_size, eos,
                                 pad_token_id)
    res = GenerationResult(sequences=ids)
    loop = rounds(decoder, verifier, cfg, rng)
    decoder.target.set_taps(decoder.drafter.tap_layers)
    try:  # a failing stage must not leave a stale cache behind
        rows = loop.run(ids, mask, max_new_tokens, eos, res)
    finally:
        loop.target.reset()
    return _finish(ids, mask, rows, pad_token_id, res)


def autoregressive_batch(target, input_ids: Tensor, attention_mask: Optional[Tensor], max_new_tokens: int,
                         cfg: SamplingConfig, rngs: Sequence[Rng], eos_token_id, pad_token_id) -> GenerationResult:
    """``autoregressive_generate`` for a batch: one target forward per step covers every running row;
    row b draws from ``rngs[b]`` (the same object for every row when the caller gave one generator)."""
    eos = eos_ids(eos_token_id)
    ids, mask = check_batch_args(input_ids, attention_mask, max_new_tokens, target.vocab_size, eos, pad_token_id)
    res = GenerationResult(sequences=ids)
    timer = StageTimer(res.timings)
    bt = BatchedTarget(target)
    target.set_taps(())
    try:
        with timer("prefill"):
            bt.prefill(ids, mask)
        rows = _start_rows(ids, mask, None)
        live = list(rows)
        while live:
            with timer("verify"):
                logits = bt.step(torch.stack([row.tokens[-1] for row in live]))
            with timer("accept"):  # rows draw in row order
                nxt = [int(lg.argmax()) if cfg.greedy else rngs[row.index].categorical(process_logits(lg, cfg))
                       for row, lg in zip(live, logits)]
            with timer("commit"):
                running = [r for r, (row, t) in enumerate(zip(live, nxt))
                           if not _commit_tokens(row, [t], max_new_tokens, eos)]
                for row in live:
                    row.result.draft_forwards.append(0)
                if len(running) < len(live):
                    bt.select_rows(running)
            res.rows_per_round.append(len(live))
            live = [live[r] for r in running]
    finally:
        bt.reset()
    return _finish(ids, mask, rows, pad_token_id, res)
