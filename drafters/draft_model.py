"""Classic speculative decoding with a separate small draft LM (docs/design.md §4.7 and §3.4).

Greedy decoding: the draft LM follows its own greedy path for D steps and offers its top-W
tokens at every depth (a per-depth table, so any tree builder can branch on it).

Sampling: the draft LM *samples* a chain of D tokens from q, its distribution processed exactly
as the target's is (temperature, top-k, top-p); the q rows travel with the draft so the verifier
can accept with min(1, p/q). Using any other q here would silently break losslessness.

Batch rows (docs/design.md §4.9): one KV cache per row (``RowLMs``), and ``draft_batch`` runs one
draft-LM forward per depth for all rows.
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from jetspec.core.interfaces import Drafter, register_drafter
from jetspec.core.sampling import TorchRng, process_logits
from jetspec.core.types import DraftInput, DraftOutput
from jetspec.drafters.lm_runner import RowLMs


@register_drafter("draft_model")
class DraftModelDrafter(Drafter):
    """A separate Hugging Face causal LM sharing the target's tokenizer."""

    def __init__(self, draft_model: torch.nn.Module) -> None:
        self.lms = RowLMs(draft_model)  # one KV cache per batch row
        self.vocab_size = self.lms.vocab_size

    def reset_cache(self) -> None:
        """Forget every batch row's KV cache."""
        self.lms.reset()

    def draft(self, inp: DraftInput) -> DraftOutput:
        lm = self.lms[inp.row]
        chain = _Chain(inp)
        logits = lm.sync(inp.tokens.tolist())
        for d in range(inp.depth):
            token = chain.take(logits)
            if d + 1 < inp.depth:
                logits = lm.step(token)
        return chain.output()

    def draft_batch(self, inputs: Sequence[DraftInput]) -> list[DraftOutput]:
        """Every row's chain with ONE draft-LM forward per depth for all rows (docs/design.md §4.9).

        Sampling rows draw from their own ``rng`` in their own order, exactly as ``draft`` does;
        rows that share one random source (or use torch's global one) draft one after another
        instead, since interleaving their draws would change what each row draws.
        """
        rngs = [id(inp.rng) for inp in inputs if not inp.sampling.greedy]
        if len(inputs) <= 1 or None in [inp.rng for inp in inputs if not inp.sampling.greedy] \
                or len(set(rngs)) < len(rngs):
            return [self.draft(inp) for inp in inputs]
        chains = [_Chain(inp) for inp in inputs]
        rows = [inp.row for inp in inputs]
        logits = self.lms.feed_batch(rows, [self.lms[r].pending(inp.tokens.tolist()) for r, inp in zip(rows, inputs)])
        for d in range(max(inp.depth for inp in inputs)):
            going = [b for b, inp in enumerate(inputs) if d < inp.depth]
            tokens = {b: chains[b].take(logits[b]) for b in going}
            more = [b for b in going if d + 1 < inputs[b].depth]
            if more:
                stepped = self.lms.feed_batch([rows[b] for b in more], [[tokens[b]] for b in more])
                logits = dict(zip(more, stepped))
        return [chain.output() for chain in chains]


class _Chain:
    """One row's draft, depth by depth: greedy, its top-W table along its greedy path; sampling, a
    chain drawn from its processed q (the rows of q kept for the verifier)."""

    def __init__(self, inp: DraftInput) -> None:
        self.inp = inp
        self.rng = inp.rng if inp.rng is not None else TorchRng()
        self.toks: list = []
        self.lps: list = []
        self.q_rows: list[Tensor] = []

    def take(self, logits: Float[Tensor, " V"]) -> int:
        """Draft the next depth from the draft LM's ``logits``; return the token the chain continues with."""
        if self.inp.sampling.greedy:
            top = torch.topk(torch.log_softmax(logits.double(), -1), min(self.inp.width, logits.shape[-1]))
            self.toks.append(top.indices)
            self.lps.append(top.values.float())
            return int(top.indices[0])
        q = process_logits(logits, self.inp.sampling)  # [V] float64: the law the token is drawn from
        tok = self.rng.categorical(q)
        self.q_rows.append(q)
        self.toks.append(tok)
        self.lps.append(float(torch.log(q[tok])))
        return tok

    def output(self) -> DraftOutput:
        if self.inp.sampling.greedy:
            return DraftOutput(depth_tokens=torch.stack(self.toks), depth_logprobs=torch.stack(self.lps),
                               forwards=self.inp.depth)
        # The last drafted node has no children, so its q row is never read; zeros make that plain.
        q_rows = self.q_rows + [torch.zeros_like(self.q_rows[0])]
        d = len(self.toks)
        return DraftOutput(node_tokens=torch.tensor(self.toks, dtype=torch.long),
                           node_parents=torch.arange(-1, d - 1, dtype=torch.long),
                           node_logprobs=torch.tensor(self.lps, dtype=torch.float32),
                           node_q=torch.stack(q_rows), forwards=self.inp.depth)
