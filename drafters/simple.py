"""Test drafters used as correctness gates (docs/design.md §4.7).

* ``RandomDrafter`` proposes arbitrary tokens: almost nothing is accepted, and the output must
  still equal plain decoding. Each batch row draws from its own random stream.
* ``OracleDrafter`` proposes the target's own greedy continuation: under greedy verification
  every drafted token must be accepted. It keeps one KV cache per batch row.
"""

from __future__ import annotations

import torch

from jetspec.core.interfaces import Drafter, register_drafter
from jetspec.core.target import TargetModel
from jetspec.core.types import DraftInput, DraftOutput
from jetspec.drafters.lm_runner import RowLMs


@register_drafter("random")
class RandomDrafter(Drafter):
    """Per-depth tables of ``width`` distinct random tokens with random (sorted) log-probs."""

    def __init__(self, vocab_size: int, seed: int = 0) -> None:
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        self.vocab_size = vocab_size
        self.seed = seed
        self.generators: dict[int, torch.Generator] = {}  # batch row -> its own stream (row r: seed + r)

    def draft(self, inp: DraftInput) -> DraftOutput:
        if inp.row not in self.generators:  # one stream per row, so interleaved rows draw what each would alone
            self.generators[inp.row] = torch.Generator().manual_seed(self.seed + inp.row)
        gen = self.generators[inp.row]
        w = min(inp.width, self.vocab_size)
        toks = torch.stack([torch.randperm(self.vocab_size, generator=gen)[:w]
                            for _ in range(inp.depth)])  # [D, W]
        lps = torch.log_softmax(torch.randn(inp.depth, w, generator=gen), -1)
        lps = lps.sort(-1, descending=True).values
        return DraftOutput(depth_tokens=toks, depth_logprobs=lps, forwards=0)


@register_drafter("oracle")
class OracleDrafter(Drafter):
    """The target's own greedy continuation, with its top-W alternatives at every depth.

    It runs the target itself (D forwards a round), so it is a correctness gate, not a speedup.
    """

    def __init__(self, target) -> None:
        model = target.model if isinstance(target, TargetModel) else target
        self.lms = RowLMs(model)
        self.vocab_size = self.lms.vocab_size

    def draft(self, inp: DraftInput) -> DraftOutput:
        lm = self.lms[inp.row]
        logits = lm.sync(inp.tokens.tolist())
        toks, lps = [], []
        for d in range(inp.depth):
            logp = torch.log_softmax(logits.double(), -1)
            top = torch.topk(logp, min(inp.width, logp.shape[-1]))
            toks.append(top.indices)
            lps.append(top.values)
            if d + 1 < inp.depth:
                logits = lm.step(int(top.indices[0]))
        return DraftOutput(depth_tokens=torch.stack(toks), depth_logprobs=torch.stack(lps).float(),
                           forwards=inp.depth)
