"""Prompt lookup: reuse continuations already seen in the context (METHOD.md section 2.4).

Find earlier places where the last n tokens occurred (longest n first, from ``max_ngram`` down to
``min_ngram``), take what followed each of them, and merge those continuations into a trie. A
trie node's log-prob is log(count of the child / count of the parent), so the most frequently
repeated continuation ranks first and best-first builders keep the alternatives as branches.
"""

from __future__ import annotations

import math

import torch

from jetspec.interfaces import Drafter, register_drafter
from jetspec.types import DraftInput, DraftOutput


@register_drafter("ngram")
class NGramDrafter(Drafter):
    """Continuations of the most recent matches of the context's tail, merged into a trie."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1, max_matches: int = 8) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        if max_matches < 1:
            raise ValueError(f"max_matches must be >= 1, got {max_matches}")
        self.max_ngram, self.min_ngram, self.max_matches = max_ngram, min_ngram, max_matches

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
        logprobs = [math.log(c / (root_count if p < 0 else counts[p])) for c, p in zip(counts, parents)]
        return DraftOutput(node_tokens=torch.tensor(tokens, dtype=torch.long),
                           node_parents=torch.tensor(parents, dtype=torch.long),
                           node_logprobs=torch.tensor(logprobs, dtype=torch.float32), forwards=0)
