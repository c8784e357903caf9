"""An EAGLE head's drafting state: one round's candidate tree, and batches of them.

``EagleHead`` (``drafters/eagle_head.py``) drafts one depth per forward (docs/design.md §4.5). Its
state lives here so that the head's file reads in one sitting:

* ``DraftingTree``: the candidate tree of one round of one row, with the head's K/V of the nodes
  it expanded (tree attention inside the head's own cache).
* ``expand_batch``: one head forward over the frontiers of several rows' trees, their contexts
  and trees padded to the longest under a mask that hides the padding, so each row gets what
  ``DraftingTree.expand`` gives it alone.

Shapes use the glossary of ``jetspec`` (docs/design.md §8).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from jetspec.core.masks import additive_mask, padded_visibility, stack_kv
from jetspec.core.types import DraftOutput
from jetspec.drafters.context_cache import KV, RowContext, concat_kv


def row_of(kv: list[KV], b: int, n: int) -> list[KV]:
    """Batch row ``b``'s first ``n`` rows of a batched forward's K/V, as a one-row cache."""
    return [(k[b: b + 1, :, :n], v[b: b + 1, :, :n]) for k, v in kv]


class DraftingTree:
    """The candidate tree of one drafting round of one row, and the head's K/V of its expanded nodes.

    Candidates are numbered in the order they are offered (parents before children). A
    candidate is *expanded* when its own row has run: it then has a row in ``kv`` (per layer),
    an output feature, and a distribution over its children.
    """

    def __init__(self, head, root_hidden: Float[Tensor, " H"], t: int, context: RowContext,
                 root_logq: Optional[Float[Tensor, " Vd"]] = None) -> None:
        self.head, self.t, self.context = head, t, context
        self.root_hidden = root_hidden
        if root_logq is None:
            root_logq = torch.log_softmax(head.logits(root_hidden).double(), -1)
        self.root_logq = root_logq  # [V]
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.logprobs: list[float] = []
        self.score: list[float] = []  # cumulative log q from the root
        self.depth: list[int] = []
        self.hidden: dict[int, Tensor] = {}  # expanded candidate -> output feature [H]
        self.row: dict[int, int] = {}  # expanded candidate -> its row in kv
        self.kv: Optional[list[KV]] = None  # per layer [1, h_kv, R, K]: the expanded tree rows
        self.forwards = 1  # the context forward that produced the root

    def add(self, parent: int, token: int, logprob: float) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.logprobs.append(logprob)
        self.score.append(logprob + (self.score[parent] if parent >= 0 else 0.0))
        self.depth.append(1 + (self.depth[parent] if parent >= 0 else 0))
        return len(self.tokens) - 1

    def offer(self, parent: int, logq: Float[Tensor, " Vd"], width: int) -> list[int]:
        """Add ``parent``'s top-``width`` children as candidates; return their indices."""
        top = torch.topk(logq, width)
        tokens = self.head.to_target_ids(top.indices).tolist()  # draft-vocabulary ids -> target ids
        return [self.add(parent, tok, lp) for tok, lp in zip(tokens, top.values.tolist())]

    def ancestors(self, m: int) -> list[int]:
        path = []
        while m >= 0:
            path.append(m)
            m = self.parents[m]
        return path

    def frontier_rows(self, frontier: list[int]) -> tuple[Tensor, Tensor, Tensor, Bool[Tensor, "N T"], list[KV]]:
        """The frontier's inputs: features and embeddings [N, H], positions [N], visibility and keys.

        Keys are the context rows, then the expanded tree rows (together the prefix), then the
        frontier itself; a frontier row sees every context row, its expanded ancestors and itself.
        """
        dev = self.head.net.fc.weight.device
        feat = torch.stack([self.root_hidden if self.parents[m] < 0 else self.hidden[self.parents[m]]
                            for m in frontier])  # [N, H]
        emb = self.head.embed(torch.tensor([self.tokens[m] for m in frontier], device=dev))
        positions = torch.tensor([self.t - 1 + self.depth[m] for m in frontier], device=dev)
        p, e, f = self.context.length, len(self.row), len(frontier)
        ok = torch.zeros(f, p + e + f, dtype=torch.bool)
        ok[:, :p] = True
        for i, m in enumerate(frontier):
            for a in self.ancestors(self.parents[m]):
                ok[i, p + self.row[a]] = True
            ok[i, p + e + i] = True
        prefix = self.context.kv if self.kv is None else concat_kv(self.context.kv, self.kv)
        return feat, emb, positions, ok.to(dev), prefix

    def absorb(self, frontier: list[int], out: Float[Tensor, "N H"], kv: list[KV]) -> None:
        """Record the frontier's outputs and K/V (per layer [1, h_kv, N, K]): its nodes are now expanded."""
        e = len(self.row)
        self.kv = kv if self.kv is None else concat_kv(self.kv, kv)
        for i, m in enumerate(frontier):
            self.row[m] = e + i
            self.hidden[m] = out[i]
        self.forwards += 1

    def expand(self, frontier: list[int]) -> Float[Tensor, "N Vd"]:
        """One head forward over the frontier rows; returns each one's children log-probs."""
        feat, emb, positions, ok, prefix = self.frontier_rows(frontier)
        out, kv = self.head.net(feat[None], emb[None], positions[None], additive_mask(ok, feat.dtype)[None, None],
                                prefix)
        self.absorb(frontier, out[0], kv)
        return torch.log_softmax(self.head.logits(out[0]).double(), -1)

    def output(self) -> DraftOutput:
        return DraftOutput(node_tokens=torch.tensor(self.tokens, dtype=torch.long),
                           node_parents=torch.tensor(self.parents, dtype=torch.long),
                           node_logprobs=torch.tensor(self.logprobs, dtype=torch.float32),
                           forwards=self.forwards)


def expand_batch(trees: Sequence[DraftingTree], frontiers: Sequence[list[int]]) -> list[Tensor]:
    """``tree.expand(frontier)`` for several rows' trees in ONE head forward; row b's log-probs [N_b, Vd]."""
    if len(trees) == 1:
        return [trees[0].expand(frontiers[0])]
    head = trees[0].head
    rows = [tree.frontier_rows(f) for tree, f in zip(trees, frontiers)]
    lens = [ok.shape[1] - ok.shape[0] for _, _, _, ok, _ in rows]  # each row's prefix: context + tree
    feat = pad_sequence([r[0] for r in rows], batch_first=True)
    mask = additive_mask(padded_visibility([r[3] for r in rows], lens)[:, None], feat.dtype)
    out, kv = head.net(feat, pad_sequence([r[1] for r in rows], batch_first=True),
                       pad_sequence([r[2] for r in rows], batch_first=True), mask,
                       stack_kv([r[4] for r in rows], max(lens)))
    sizes = [len(f) for f in frontiers]
    for b, (tree, f) in enumerate(zip(trees, frontiers)):
        tree.absorb(f, out[b, : sizes[b]], row_of(kv, b, sizes[b]))
    logq = torch.log_softmax(head.logits(torch.cat([out[b, :n] for b, n in enumerate(sizes)])).double(), -1)
    return list(logq.split(sizes))
