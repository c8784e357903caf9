"""The speculative decoding loop and the plain autoregressive baseline.

One round (docs/design.md §1) is five named stages, each timed:

    draft  ->  build tree  ->  verify (one target forward)  ->  accept  ->  commit

The loop knows only the three interfaces (Drafter, TreeBuilder, Verifier) and the target
wrapper; any drafter works with any builder and any verifier.
"""

from __future__ import annotations

from typing import Optional, Sequence, no_type_check

import torch
from torch import Tensor

from jetspec.core.batched import autoregressive_batch, generate_batch
from jetspec.core.checks import check_drafter_target, check_prompt_ids, run_drafter
from jetspec.core.generation import STAGES, GenerationResult, StageTimer, cut_round, depth_acceptance, eos_ids
from jetspec.core.interfaces import Drafter, TreeBuilder, Verifier
from jetspec.core.sampling import SamplingConfig, TorchRng, process_logits
from jetspec.core.target import TargetModel, as_target
from jetspec.core.types import Acceptance, DraftInput, DraftOutput, DraftTree, VerifyInput

# Re-exported: the public names of a decoding call's result live in jetspec.core.generation.
__all__ = ["STAGES", "GenerationResult", "SpeculativeDecoder", "autoregressive_generate", "depth_acceptance"]


class SpeculativeDecoder:
    """Lossless tree speculative decoding with a swappable drafter, tree builder and verifier.

    Example::

        dec = SpeculativeDecoder(model, NGramDrafter(), BestFirstBuilder(budget=32, width=4, depth=8))
        res = dec.generate(input_ids, max_new_tokens=64)
        res.sequences, res.tau
    """

    def __init__(self, target, drafter: Drafter, tree_builder: Optional[TreeBuilder] = None,
                 verifier: Optional[Verifier] = None, attn_backend: Optional[str] = None) -> None:
        from jetspec.trees import BestFirstBuilder

        self.target: TargetModel = as_target(target, attn_backend)
        if not isinstance(drafter, Drafter):
            raise TypeError(f"drafter must be a jetspec Drafter, got {type(drafter).__name__}")
        self.drafter = drafter
        self.tree_builder = tree_builder if tree_builder is not None else BestFirstBuilder()
        self.verifier = verifier
        if drafter.vocab_size is not None and drafter.vocab_size != self.target.vocab_size:
            raise ValueError(f"drafter vocabulary ({drafter.vocab_size}) differs from the target's "
                             f"({self.target.vocab_size})")
        check_drafter_target(drafter, self.target)
        if drafter.max_depth is not None and self.tree_builder.depth > drafter.max_depth:
            raise ValueError(f"tree depth {self.tree_builder.depth} is larger than the drafter can "
                             f"produce ({drafter.max_depth}); lower depth")

    def _verifier_for(self, cfg: SamplingConfig) -> Verifier:
        from jetspec.verifiers import GreedyVerifier, SamplingVerifier

        if self.verifier is None:
            return GreedyVerifier() if cfg.greedy else SamplingVerifier()
        if self.verifier.greedy_only and not cfg.greedy:
            raise ValueError(f"{type(self.verifier).__name__} cannot verify at temperature "
                             f"{cfg.temperature}; pass SamplingVerifier() (never a silent greedy fallback)")
        return self.verifier

    # ------------------------------------------------------------------ the five stages
    def draft(self, tokens: Tensor, taps, cfg, rng, round_index: int) -> DraftOutput:
        """Stage 1: ask the drafter for a proposal (it gets a copy of ``tokens``; its answer is checked)."""
        b = self.tree_builder
        # run_drafter: the drafter gets a copy of tokens, and its proposal is checked (jetspec.core.checks).
        return run_drafter(self.drafter, DraftInput(tokens=tokens, depth=b.depth, width=b.width, budget=b.budget,
                                                    taps=taps, sampling=cfg, rng=rng, round_index=round_index),
                           self.target.vocab_size)

    def build_tree(self, proposal: DraftOutput, anchor: int) -> DraftTree:
        """Stage 2: turn the proposal into a tree rooted at the anchor token, within the builder's budget."""
        return self.tree_builder.build(proposal, anchor)

    def verify(self, tree: DraftTree):
        """Stage 3: one target forward over every node of the tree (its logits, and taps when set)."""
        return self.target.verify(tree)

    def accept(self, verifier: Verifier, tree: DraftTree, logits: Tensor, cfg, rng) -> Acceptance:
        """Stage 4: the verifier picks the accepted path and the bonus token from the target's logits."""
        return verifier.verify(VerifyInput(tree=tree, logits=logits, sampling=cfg, rng=rng))

    def commit(self, tree: DraftTree, acc: Acceptance, node_taps):
        """Compact the target cache; return the taps of the newly cached tokens (root + path)."""
        keep = [0] + acc.accepted_nodes
        self.target.commit(keep, tree.num_nodes)
        return None if node_taps is None else node_taps[keep]

    # ------------------------------------------------------------------ the loop
    # Validates its own arguments with errors that name them: not re-checked by the test hook (jetspec/__init__.py).
    @no_type_check
    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int = 64, temperature: float = 0.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None,
                 eos_token_id: Optional[int | list[int]] = None,
                 generator: Optional[torch.Generator] = None, attention_mask: Optional[Tensor] = None,
                 pad_token_id: Optional[int] = None) -> GenerationResult:
        """Generate up to ``max_new_tokens`` tokens after each prompt of ``input_ids`` [B, T].

        Args:
            input_ids: the prompts, [B, T] (or one prompt [T]); shorter prompts padded on the left.
            max_new_tokens: new tokens at most per row (fewer if an EOS id is committed).
            temperature: 0 = greedy; > 0 samples, verified losslessly.
            top_k: sample only among the k most likely tokens (None: all).
            top_p: sample only from the smallest set with this much probability (None: all).
            eos_token_id: a row stops after committing this id (or any of these ids).
            generator: the random source of sampling (None: torch's global one).
            attention_mask: [B, T], 1 at real tokens and 0 at left padding (None: all real).
            pad_token_id: fills rows that stopped early; required for B > 1 with an ``eos_token_id``.

        One prompt runs the single-row loop below; a batch (B > 1, or a padded prompt) runs
        ``jetspec.core.batched`` (docs/design.md §1.6), whose rows each equal their prompt decoded
        alone. The target is reset afterwards, also when a stage raises.
        """
        cfg = SamplingConfig(temperature, top_k, top_p)
        verifier = self._verifier_for(cfg)
        rng = TorchRng(generator)
        if _is_batch(input_ids, attention_mask):
            return generate_batch(self, input_ids, attention_mask, max_new_tokens, cfg, verifier, rng,
                                  eos_token_id, pad_token_id)
        input_ids = check_prompt_ids(input_ids, max_new_tokens, self.target.vocab_size, "[1, T]")
        eos = eos_ids(eos_token_id)
        res = GenerationResult(sequences=input_ids)
        timer = StageTimer(res.timings)

        self.target.set_taps(self.drafter.tap_layers)
        try:  # an exception anywhere (a drafter's, say) must not leave a stale cache behind
            tokens = self._rounds(input_ids[0].cpu(), max_new_tokens, cfg, verifier, rng, eos, res, timer)
        finally:
            self.target.reset()
        res.sequences = tokens[None]
        return _with_rows(res)

    def _rounds(self, tokens: Tensor, max_new_tokens: int, cfg: SamplingConfig, verifier: Verifier, rng,
                eos: set[int], res: GenerationResult, timer: StageTimer) -> Tensor:
        """Prefill, then run rounds until ``max_new_tokens`` or EOS; returns prompt + new tokens.

        Fills ``res``'s per-round records and timings; the caller resets the target afterwards.
        """
        with timer("prefill"):
            taps = self.target.prefill(tokens)
        out: list[int] = []
        round_index = 0
        while len(out) < max_new_tokens:
            with timer("draft"):
                proposal = self.draft(tokens, taps, cfg, rng, round_index)
            with timer("tree"):
                tree = self.build_tree(proposal, int(tokens[-1]))
            with timer("verify"):
                tout = self.verify(tree)
            with timer("accept"):
                acc = self.accept(verifier, tree, tout.logits, cfg, rng)
            with timer("commit"):
                new_taps = self.commit(tree, acc, tout.taps)
                new = cut_round(acc.tokens, max_new_tokens - len(out), eos)
                out.extend(new)
                tokens = torch.cat([tokens, torch.tensor(new, dtype=torch.long)])
                if taps is not None and new_taps is not None:
                    taps = torch.cat([taps, new_taps])
            res.accepted_lengths.append(len(new))
            res.draft_forwards.append(proposal.forwards)
            res.tree_sizes.append(tree.budget)
            res.accepted_depths.append(len(acc.accepted_nodes))
            res.tree_depths.append(tree.max_depth)
            round_index += 1
            if eos and new and new[-1] in eos:
                break
        return tokens


def _is_batch(input_ids, attention_mask) -> bool:
    """True when the batched loop must run: several rows, or an attention mask that pads a prompt."""
    if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 and input_ids.shape[0] != 1:
        return True
    return attention_mask is not None and not (isinstance(attention_mask, torch.Tensor)
                                               and attention_mask.shape == input_ids.shape
                                               and bool((attention_mask == 1).all()))


def _with_rows(res: GenerationResult) -> GenerationResult:
    """A single prompt's result, with ``rows`` = [its own records] like a batch's (timings stay pooled)."""
    res.rows_per_round = [1] * len(res.accepted_lengths)
    res.rows = [GenerationResult(sequences=res.sequences, accepted_lengths=list(res.accepted_lengths),
                                 draft_forwards=list(res.draft_forwards), tree_sizes=list(res.tree_sizes),
                                 accepted_depths=list(res.accepted_depths), tree_depths=list(res.tree_depths),
                                 rows_per_round=list(res.rows_per_round))]
    return res


def _row_rngs(generator, input_ids) -> list[TorchRng]:
    """One random source per row: ``generator`` for every row, or the list's ``generator[b]`` for row b."""
    rows = input_ids.shape[0] if isinstance(input_ids, Tensor) and input_ids.dim() == 2 else 1
    if not isinstance(generator, (list, tuple)):
        return [TorchRng(generator)] * rows
    if len(generator) != rows or not all(isinstance(g, torch.Generator) for g in generator):
        raise ValueError(f"generator: a list of generators needs one torch.Generator per row ({rows}), "
                         f"got {len(generator)} items")
    return [TorchRng(g) for g in generator]


@no_type_check  # validates its own arguments, like generate
@torch.no_grad()
def autoregressive_generate(target, input_ids: Tensor, max_new_tokens: int, temperature: float = 0.0,
                            top_k: Optional[int] = None, top_p: Optional[float] = None,
                            eos_token_id: Optional[int | list[int]] = None,
                            generator: Optional[torch.Generator | Sequence[torch.Generator]] = None,
                            attention_mask: Optional[Tensor] = None,
                            pad_token_id: Optional[int] = None) -> GenerationResult:
    """Plain decoding with a KV cache in the same harness: one target forward per token.

    The baseline every speedup is measured against (docs/design.md §7.2); tau is 1.0 by definition.
    Batches (``attention_mask``, ``pad_token_id``) as in ``SpeculativeDecoder.generate``: one forward
    per step covers every running row. ``generator`` is one ``torch.Generator`` that the rows draw
    from in row order, or a list with one per row: then a row's text depends only on its own
    generator, not on its batch neighbours (what resumable data writing needs).
    """
    tgt = as_target(target)
    cfg = SamplingConfig(temperature, top_k, top_p)
    rng = _row_rngs(generator, input_ids)
    if _is_batch(input_ids, attention_mask):
        return autoregressive_batch(tgt, input_ids, attention_mask, max_new_tokens, cfg, rng, eos_token_id,
                                    pad_token_id)
    input_ids = check_prompt_ids(input_ids, max_new_tokens, tgt.vocab_size, "[1, T]")
    eos = eos_ids(eos_token_id)
    res = GenerationResult(sequences=input_ids)
    timer = StageTimer(res.timings)
    tgt.set_taps(())
    tokens = input_ids[0].cpu().tolist()
    try:
        with timer("prefill"):
            tgt.prefill(input_ids[0].cpu())
        for _ in range(max_new_tokens):
            with timer("verify"):
                logits = tgt.step(tokens[-1])
            with timer("accept"):
                nxt = int(logits.argmax()) if cfg.greedy else rng[0].categorical(process_logits(logits, cfg))
            with timer("commit"):  # the step already cached the token; commit is only the bookkeeping
                tokens.append(nxt)
                res.accepted_lengths.append(1)
                res.draft_forwards.append(0)
            if nxt in eos:
                break
    finally:
        tgt.reset()
    res.sequences = torch.tensor(tokens, dtype=torch.long)[None]
    return _with_rows(res)
