"""Branch-conditioned parallel drafting: a JetSpec head's one-pass tree, re-scored in ONE more forward.

A parallel head's per-depth table is shared by every node at a depth: the candidates for depth 3
are the same whether the tree went "the cat" or "a dog" at depths 1-2. EAGLE fixes that with one
forward per depth. This module fixes it with exactly one extra forward, whatever the depth
(``JetSpecHead(target, conditioned=True)``):

1. **One-pass draft.** The causal block [anchor, MASK, ...] gives per-depth distributions, as usual.
2. **First tree.** Best-first growth on those tables with the builder's budget, width and depth
   (``DraftInput`` carries them): the tree the head would have proposed without this module.
3. **Tree forward.** The head runs once more over that tree, now with the *real node tokens* as
   inputs (embedded with the target's table): node i sits at position t + depth(i) and sees the
   cached context, its ancestors and itself (tree attention, ``jetspec.kernels``). The output of
   node i is the head's distribution of i's children given the whole branch root..i, just as a
   target's row i in tree verification is its next-token distribution after that branch.
   Nodes at the maximum depth are left out: their children could not be used.
4. **Re-scored candidates.** Every node of the first tree offers as children the top-W tokens of
   its own new distribution, scored by it; an offered token that is also a first-tree child
   keeps that child's subtree. A new token was not in the forward, so it has no distribution of
   its own: below it the one-pass table of each depth is used, as a one-pass head would. Grown
   best-first to the budget, this is a candidate tree in node form that the tree builder
   re-ranks: first-tree nodes survive only where the branch-conditioned scores still like them.

``forwards`` = 2 per round. Losslessness is untouched: the verifier decides what is emitted.

Training (step 3 asks the head for something the one-pass objective never taught it: a real token
in a non-anchor slot predicting the *next* token). A conditioned head trains on the same recipe,
anchors and teacher as the one-pass head, but every second anchor's block is *teacher-forced*:
[x_a, x_{a+1}, ..., x_{a+S-1}] instead of [x_a, MASK, ...], under the same causal block mask, and
its slot k-1 learns the depth-k distribution that a MASK block's slot k learns. So both modes see
the same targets, the same number of blocks and the same compute per step as a one-pass head;
the one-pass mode simply gets half of the anchors. (A block's real tokens are visible only to its
own later slots, so teacher forcing leaks nothing.)

Shapes use the glossary of ``jetspec`` (docs/design.md §8).
"""

from __future__ import annotations

import heapq
import itertools

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from jetspec.core.types import DraftInput, DraftOutput, DraftTree
from jetspec.trees.best_first import grow_tree


# ---------------------------------------------------------------------------------------- training
def teacher_forced(num_anchors: int, device=None) -> Bool[Tensor, " A"]:
    """Which anchor slots of a batch get teacher-forced blocks: every second one (1, 3, 5, ...)."""
    return torch.arange(num_anchors, device=device) % 2 == 1


def forced_block_tokens(input_ids: Int[Tensor, "B T"], anchors: Int[Tensor, "B A"],
                        block_size: int) -> Int[Tensor, "B A S"]:
    """The inputs x_a..x_{a+S-1} of every anchor's teacher-forced block.

    Tokens past the end of a sequence are clamped: they only feed unsupervised later slots.
    """
    b, t = input_ids.shape
    slots = (anchors[..., None] + torch.arange(block_size, device=anchors.device)).clamp(max=t - 1)  # [B, A, S]
    return input_ids.gather(1, slots.flatten(1)).view(*anchors.shape, block_size)


def depth_aligned(hidden: Float[Tensor, "B A S H"], forced: Bool[Tensor, "1 A 1 1"]) -> Float[Tensor, "B A S H"]:
    """Output rows aligned by target: row k of every block predicts depth k.

    For a MASK block that is slot k itself; for a teacher-forced block it is slot k-1 (whose input
    is x_{a+k-1}). The recipe (``LearnedHead.slot_batch``) then supervises both kinds identically.
    """
    shifted = torch.cat([hidden[:, :, :1], hidden[:, :, :-1]], dim=2)  # slot k <- slot k-1
    return torch.where(forced, shifted, hidden)


# ---------------------------------------------------------------------------------------- drafting
def branch_inputs(head, tree: DraftTree, t: int, depth: int) -> tuple[list[int], Tensor, Tensor, Tensor]:
    """The tree forward's rows: the nodes above ``depth`` (parents first), their embeddings [R, H],
    positions [R] and ancestor mask [R, R]."""
    rows = (tree.depth < depth).nonzero().flatten()  # closed under parents: depth grows downwards
    dev = head.net.fuse.weight.device
    ancestor = tree.ancestor[rows][:, rows].to(dev)  # [R, R]
    emb = head.target_model.get_input_embeddings()(tree.tokens[rows].to(dev))  # [R, H]
    return rows.tolist(), emb, (t + tree.depth[rows]).to(dev), ancestor


@torch.no_grad()
def branch_logprobs(head, tree: DraftTree, t: int, depth: int, row: int = 0) -> tuple[list[int], Float[Tensor, "R Vd"]]:
    """One head forward over the tree's nodes above ``depth``: each node's children log-probs.

    Uses the context K/V the head cached for batch row ``row`` while drafting this round (t rows).
    Returns the node indices that were run (parents before children) and their rows of log-probs.
    """
    rows, emb, positions, ancestor = branch_inputs(head, tree, t, depth)
    hidden = head.over_context(emb[None], positions[None], ancestor, row)  # row 0 is the root, i.e. the anchor
    return rows, torch.log_softmax(head.lm_head(hidden[0]).double(), -1)


def rescored_candidates(tree: DraftTree, rows: list[int], logq: Float[Tensor, "R Vd"], table: DraftOutput,
                        width: int, budget: int, depth: int, to_target=None) -> DraftOutput:
    """The candidate tree of step 4, grown best-first on the re-scored log-probs.

    A node that ran in the tree forward offers the top-W tokens of its own distribution (those
    that are also first-tree children keep their subtrees); any other node (a new token, hence
    never run) falls back to the one-pass table of its depth, the best it has. Growth stops
    after ``budget`` nodes; the children those nodes were offered but did not take are added as
    leaves, so that the builder sees every node's complete candidate list (a fan-out cap reads
    the top-2 gap from it). ``to_target`` maps columns of ``logq`` to token ids (a reduced draft
    vocabulary); by default column j is token j.
    """
    dist = dict(zip(rows, logq.cpu()))
    kids = tree.children()
    toks = tree.tokens.tolist()
    table_rows = list(zip(table.depth_tokens.tolist(), table.depth_logprobs.tolist()))
    out_tok: list[int] = []
    out_par: list[int] = []
    out_lp: list[float] = []
    heap: list = []  # (-cumulative score, counter, parent candidate, token, log-prob, first-tree node, depth)

    def offer(cand: int, score: float, node, d: int) -> None:
        if d >= depth:
            return
        if node in dist:  # ran in the tree forward: its own branch-conditioned distribution
            first = {toks[c]: c for c in kids[node]}
            top = torch.topk(dist[node], width)
            ids = top.indices if to_target is None else to_target(top.indices)
            pairs = [(tok, lp, first.get(tok)) for tok, lp in zip(ids.tolist(), top.values.tolist())]
        else:  # a new token: the one-pass table of depth d + 1
            pairs = [(tok, lp, None) for tok, lp in zip(*table_rows[d])]
        for tok, lp, child in pairs:
            if lp > float("-inf"):
                heapq.heappush(heap, (-(score + lp), next(counter), cand, tok, lp,
                                      child, d + 1))

    counter = itertools.count()
    offer(-1, 0.0, 0, 0)
    while heap and len(out_tok) < budget:
        neg, _, parent, tok, lp, node, d = heapq.heappop(heap)
        out_tok.append(tok)
        out_par.append(parent)
        out_lp.append(lp)
        offer(len(out_tok) - 1, -neg, node, d)
    for _, _, parent, tok, lp, _, _ in sorted(heap):  # the untaken offers, as leaves
        out_tok.append(tok)
        out_par.append(parent)
        out_lp.append(lp)
    return DraftOutput(node_tokens=torch.tensor(out_tok, dtype=torch.long),
                       node_parents=torch.tensor(out_par, dtype=torch.long),
                       node_logprobs=torch.tensor(out_lp, dtype=torch.float32), forwards=2)


def first_tree(head, inp: DraftInput, logits: Float[Tensor, "D Vd"]) -> tuple[DraftOutput, DraftTree, int]:
    """Steps 1-2: the one-pass table (top-W per depth) and the best-first tree grown on it."""
    table = head.depth_table(logits, inp.width)
    w = table.depth_tokens.shape[1]  # the width, at most the draft vocabulary
    first = grow_tree(table, int(inp.tokens[-1]), inp.budget, inp.depth, fanout=lambda lps: min(w, len(lps)))
    return table, first, w


def _rescored(head, inp: DraftInput, table: DraftOutput, first: DraftTree, w: int, rows: list[int],
              node_logq: Float[Tensor, "R Vd"]) -> DraftOutput:
    return rescored_candidates(first, rows, node_logq, table, w, inp.budget, inp.depth,
                               to_target=lambda ids: head.to_target_ids(ids.to(head.net.fuse.weight.device)).cpu())


@torch.no_grad()
def draft(head, inp: DraftInput) -> DraftOutput:
    """Steps 1-4 of the module docstring for one round of batch row ``inp.row``."""
    logits = head.draft_logits(inp.tokens, inp.taps, inp.round_index, inp.depth, inp.row)
    table, first, w = first_tree(head, inp, logits)
    rows, node_logq = branch_logprobs(head, first, inp.tokens.shape[0] - 1, inp.depth, inp.row)
    return _rescored(head, inp, table, first, w, rows, node_logq)


@torch.no_grad()
def draft_batch(head, inputs) -> list[DraftOutput]:
    """``draft`` for several batch rows: steps 1 and 3 each run as ONE head forward over all rows."""
    firsts = [first_tree(head, inp, logits) for inp, logits in zip(inputs, head.draft_logits_batch(inputs))]
    branches = [branch_inputs(head, first, inp.tokens.shape[0] - 1, inp.depth)
                for inp, (_, first, _) in zip(inputs, firsts)]
    hidden = head.over_contexts([b[1] for b in branches], [b[2] for b in branches], [b[3] for b in branches],
                                [inp.row for inp in inputs])
    logits = head.lm_head_rows(hidden)
    return [_rescored(head, inp, table, first, w, rows, torch.log_softmax(lg.double(), -1))
            for inp, (table, first, w), (rows, *_), lg in zip(inputs, firsts, branches, logits)]
