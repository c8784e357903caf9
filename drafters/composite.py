"""A drafter that merges the proposals of several drafters into one candidate tree.

Why: different drafters are right in different places. Prompt lookup is nearly free and wins on
text that repeats the context (code edits, quoting, lists); a learned head wins on fresh text. A
composite lets one tree, under one budget, hold both kinds of guess, and the tree builder spends
the budget wherever the combined score is highest.

How: each member's proposal is first grown into its own tree with best-first search (the same
routine every builder uses, so a per-depth table becomes explicit branches), then the trees are
merged as a trie keyed by token paths. A node's score on the common scale is

    log q(node | parent) = log( sum_m  w_m * q_m(node | parent) )

i.e. the mixture of the members' conditional laws with weights w_m (a path proposed by only one
member keeps that member's weighted probability). The result is an ordinary candidate tree, so any
tree builder works on it unchanged; it is deterministic, so verification stays lossless.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional, Sequence

import torch

from jetspec.core.interfaces import Drafter, register_drafter
from jetspec.core.types import DraftInput, DraftOutput, DraftTree
from jetspec.trees.best_first import grow_tree


@register_drafter("composite")
class CompositeDrafter(Drafter):
    """Union of several drafters' trees, scored by a weighted mixture of their laws."""

    def __init__(self, drafters: Sequence[Drafter], weights: Optional[Sequence[float]] = None) -> None:
        if not drafters:
            raise ValueError("CompositeDrafter needs at least one drafter")
        weights = [1.0] * len(drafters) if weights is None else list(weights)
        if len(weights) != len(drafters) or min(weights) <= 0:
            raise ValueError("weights must be positive, one per drafter")
        vocabs = {d.vocab_size for d in drafters if d.vocab_size is not None}
        if len(vocabs) > 1:
            raise ValueError(f"drafters disagree on the vocabulary size: {sorted(vocabs)}")
        self.drafters = list(drafters)
        total = sum(weights)
        self.weights = [w / total for w in weights]
        self.vocab_size = vocabs.pop() if vocabs else None
        self.tap_layers = tuple(sorted({i for d in drafters for i in d.tap_layers}))
        depths = [d.max_depth for d in drafters if d.max_depth is not None]
        self.max_depth = max(depths) if depths else None

    def _member_input(self, inp: DraftInput, drafter: Drafter) -> DraftInput:
        """Give each member the taps of its own layers (the composite asks for the union); same row."""
        taps = inp.taps
        if taps is not None and drafter.tap_layers and drafter.tap_layers != self.tap_layers:
            h = taps.shape[-1] // len(self.tap_layers)
            cols = [self.tap_layers.index(i) for i in drafter.tap_layers]
            taps = torch.cat([taps[:, c * h:(c + 1) * h] for c in cols], dim=-1)  # [T-1, k_m * H]
        depth = inp.depth if drafter.max_depth is None else min(inp.depth, drafter.max_depth)
        return replace(inp, taps=taps, depth=depth)

    def draft(self, inp: DraftInput) -> DraftOutput:
        subs = [self._member_input(inp, drafter) for drafter in self.drafters]
        return self._merge(inp, subs, [drafter.draft(sub) for drafter, sub in zip(self.drafters, subs)])

    def draft_batch(self, inputs: Sequence[DraftInput]) -> list[DraftOutput]:
        """Each member drafts all rows with its own ``draft_batch`` (one forward for a learned head)."""
        subs = [[self._member_input(inp, drafter) for drafter in self.drafters] for inp in inputs]
        by_member = [drafter.draft_batch([row[m] for row in subs]) for m, drafter in enumerate(self.drafters)]
        return [self._merge(inp, row, [props[b] for props in by_member])
                for b, (inp, row) in enumerate(zip(inputs, subs))]

    def _merge(self, inp: DraftInput, subs: list[DraftInput], proposals: list[DraftOutput]) -> DraftOutput:
        """The members' proposals for one row, grown into trees and merged as a trie under the mixture."""
        anchor = int(inp.tokens[-1])
        # trie: path (tuple of tokens) -> mixture probability of its last step given its parent
        mix: dict[tuple, float] = {}
        forwards = 0
        for proposal, sub, w in zip(proposals, subs, self.weights):
            if proposal.sampled:
                raise ValueError("CompositeDrafter merges deterministic drafts only (no sampled q)")
            forwards += proposal.forwards
            tree = grow_tree(proposal, anchor, inp.budget, sub.depth, fanout=lambda lps: min(inp.width, len(lps)))
            for path, step_logprob in _paths(tree):
                mix[path] = mix.get(path, 0.0) + w * math.exp(step_logprob)
        paths = sorted(mix, key=len)  # parents (shorter paths) before children
        index = {(): -1}
        tokens, parents, logprobs = [], [], []
        for path in paths:
            index[path] = len(tokens)
            tokens.append(path[-1])
            parents.append(index[path[:-1]])
            logprobs.append(math.log(mix[path]))
        return DraftOutput(node_tokens=torch.tensor(tokens, dtype=torch.long),
                           node_parents=torch.tensor(parents, dtype=torch.long),
                           node_logprobs=torch.tensor(logprobs, dtype=torch.float32), forwards=forwards)


def _paths(tree: DraftTree):
    """(token path from the anchor, conditional log-prob of its last step) for every drafted node."""
    toks = tree.tokens.tolist()
    score = tree.score.tolist()
    par = tree.parents.tolist()
    path_of = {0: ()}
    for i in range(1, tree.num_nodes):
        path_of[i] = path_of[par[i]] + (toks[i],)
        yield path_of[i], score[i] - score[par[i]]
