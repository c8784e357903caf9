"""Prompt lookup: reuse continuations already seen in the context (docs/design.md §4.7).

Find earlier places where the last n tokens occurred (longest n first, from ``max_ngram`` down to
``min_ngram``), take what followed each of them, and merge those continuations into a trie. A
trie node's log-prob is log(count of the child / (count of the parent + s)), so the most frequently
repeated continuation ranks first and best-first builders keep the alternatives as branches.

``smoothing`` s is a pseudo-count for "the target writes something else here". With s = 0 a lone
match scores q = 1 at every depth, yet on the held-out answers of BENCHMARKS.md such nodes were
accepted 30-60% of the time at depth 1 and under 10% at depth 3; s = 1 gives a lone match 1/2 per
step (1/8 by depth 3), close to those rates. Ranking within one trie is unchanged; what changes is
how n-gram nodes compare with other drafters' (composites) and the cost-aware stop rule
(``node_cost``), which needs calibrated q to know when a node pays.
"""

from __future__ import annotations

import math

import torch

from jetspec.core.interfaces import Drafter, register_drafter
from jetspec.core.types import DraftInput, DraftOutput


@register_drafter("ngram")
class NGramDrafter(Drafter):
    """Continuations of the most recent matches of the context's tail, merged into a trie."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1, max_matches: int = 8,
                 smoothing: float = 0.0) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        if max_matches < 1:
            raise ValueError(f"max_matches must be >= 1, got {max_matches}")
        if not 0 <= smoothing < float("inf"):
            raise ValueError(f"smoothing must be a finite number >= 0, got {smoothing}")
        self.max_ngram, self.min_ngram, self.max_matches = max_ngram, min_ngram, max_matches
        self.smoothing = smoothing

    def find_continuations(self, tokens: torch.Tensor, depth: int) -> list[list[int]]:
        """Up to ``max_matches`` continuations (most recent first) of the longest matching n-gram."""
        t = tokens.shape[0]
        for n in range(min(self.max_ngram, t - 1), self.min_ngram - 1, -1):
            tail = tokens[t - n:]
            windows = tokens[: t - 1].unfold(0, n, 1)  # [T - n, n]; excludes the tail itself
            hits = (windows == tail).all(-1).nonzero().flatten().tolist()
            conts = []
            for start in reversed(hits):  # most recent first
                cont = tokens[start + n: start + n + depth].tolist()
                if cont:
                    conts.append(cont)
                if len(conts) == self.max_matches:
                    break
            if conts:
                return conts
        return []

    def draft(self, inp: DraftInput) -> DraftOutput:
        conts = self.find_continuations(inp.tokens, inp.depth)
        # Build the trie: key (parent node, token) -> node; counts per node.
        index: dict[tuple[int, int], int] = {}
        tokens, parents, counts = [], [], []
        root_count = len(conts)
        for cont in conts:
            parent = -1
            for tok in cont:
                key = (parent, tok)
                if key not in index:
                    index[key] = len(tokens)
                    tokens.append(tok)
                    parents.append(parent)
                    counts.append(0)
                node = index[key]
                counts[node] += 1
                parent = node
        s = self.smoothing
        logprobs = [math.log(c / ((root_count if p < 0 else counts[p]) + s)) for c, p in zip(counts, parents)]
        return DraftOutput(node_tokens=torch.tensor(tokens, dtype=torch.long),
                           node_parents=torch.tensor(parents, dtype=torch.long),
                           node_logprobs=torch.tensor(logprobs, dtype=torch.float32), forwards=0)
