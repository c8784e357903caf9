"""Best-first tree growth on cumulative draft log-prob (docs/design.md §2.5).

One routine grows every tree shape jetspec ships. It keeps a max-heap of candidate children
keyed by cumulative log q, seeded with the anchor's children; it pops the best, adds it to the
tree, and pushes that node's own candidates, until the budget (drafted nodes, root excluded) is
spent or nothing is left above depth D. Builders differ only in how many children a node may
have (``fanout``):

* chain:      1 child per node                        -> the top-1 path
* best-first: W children per node                     -> DDTree-style trees
* fan-out cap: W * sigmoid(-beta * (gap - gap0))      -> chains where the drafter is sure

The routine works on both proposal forms of ``DraftOutput`` without knowing which drafter made
them: per-depth tables (every node at depth d shares row d's candidates) and candidate trees
(each candidate has its own children). Sampled proposals (with q) are never re-ranked: choosing
among random draws by their values would bias the output, so their structure is kept as drafted,
cut to depth D and the budget in parent-before-child order.

Cost-aware size (``node_cost`` c > 0). A verify forward over n drafted nodes costs about
1 + c*n one-token forwards on a CPU (``jetspec roofline`` fits c), and if q is
calibrated the expected number of committed tokens is 1 + sum_i q(path_i). The ratio

    (1 + sum_{i<=n} q_i) / (1 + c*n)

grows with one more node iff its path probability q_{n+1} > c * (1 + sum q_i) / (1 + c*n). Nodes
pop in decreasing q, so growth stops at the first node that fails the test: the tree is large
where the drafter is sure and shrinks to the bare root where it is not. ``budget`` stays the cap.
The stop rule only chooses which nodes to verify, so it cannot change what is committed.
"""

from __future__ import annotations

import heapq
import math
from typing import Callable

import torch

from jetspec.core.types import DraftOutput, DraftTree, node_depths

# fanout(candidate_logprobs_sorted_desc) -> how many of them a node may take as children
Fanout = Callable[[list[float]], int]


def check_shape_args(budget: object, width: object, depth: object) -> None:
    """Clear errors for impossible trees (the argument is named, as the CLI flag is); any value may come in."""
    for name, value in (("budget", budget), ("width", width), ("depth", depth)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_finite(name: str, value: object, low: float = -math.inf) -> None:
    """A finite real number >= ``low`` (bools and strings refused), named in the error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < math.inf:
        at_least = "" if low == -math.inf else f" >= {low:g}"
        raise ValueError(f"{name} must be a finite number{at_least}, got {value!r}")


def check_node_cost(node_cost: object) -> None:
    check_finite("node_cost", node_cost, 0.0)


def grow_tree(draft: DraftOutput, anchor: int, budget: int, depth: int, fanout: Fanout,
              node_cost: float = 0.0, breadth_first: bool = False) -> DraftTree:
    """Grow a tree of at most ``budget`` drafted nodes and depth ``depth`` from ``draft``.

    ``node_cost`` > 0 also stops growth where one more node would lower the expected tokens per
    unit of verify cost (module docstring); 0 spends the whole budget, the paper's design.
    Sampled drafts ignore it: cutting random draws by their values would bias the output.
    ``breadth_first`` pops candidates shallowest first (cumulative score only breaks ties within a
    depth): the budget fills level after level instead of following the most probable paths
    (the entropy-guided rule of ``trees/scoring.py``); it cannot be combined with ``node_cost``,
    whose stop test needs candidates in decreasing path probability.
    """
    if breadth_first and node_cost > 0:
        raise ValueError("node_cost needs the best-first order: use breadth_first=False with it")
    if draft.sampled:
        return _keep_sampled(draft, anchor, budget, depth)
    children_of = _table_children if draft.depth_tokens is not None else _node_children
    kids_cache: dict = {}

    tokens, parents, depths, scores, keys = [anchor], [-1], [0], [0.0], [None]
    heap: list = []  # ((level or 0, -cumulative score), tie-break counter, parent, candidate key, token, score)
    counter = 0

    def push_children(node: int) -> None:
        nonlocal counter
        if depths[node] >= depth:
            return
        cands = children_of(draft, keys[node], depths[node], kids_cache)
        allowed = fanout([lp for _, lp, _ in cands])
        for tok, lp, key in cands[:allowed]:
            if lp == float("-inf"):
                continue
            s = scores[node] + lp
            first = depths[node] + 1 if breadth_first else 0  # the level, then the score
            heapq.heappush(heap, ((first, -s), counter, node, key, tok, s))
            counter += 1

    push_children(0)
    seen: set[tuple[int, int]] = set()  # (parent, token): siblings must carry distinct tokens
    gain = 1.0  # 1 + sum of the path probabilities of the nodes taken so far
    while heap and len(tokens) - 1 < budget:
        _, _, parent, key, tok, s = heapq.heappop(heap)
        if (parent, tok) in seen:
            continue
        if node_cost > 0:
            q, n = math.exp(s), len(tokens) - 1
            if q <= node_cost * gain / (1.0 + node_cost * n):
                break  # every later candidate has a lower score: none of them pays either
            gain += q
        seen.add((parent, tok))
        tokens.append(tok)
        parents.append(parent)
        depths.append(depths[parent] + 1)
        scores.append(s)
        keys.append(key)
        push_children(len(tokens) - 1)

    return DraftTree(
        tokens=torch.tensor(tokens, dtype=torch.long),
        parents=torch.tensor(parents, dtype=torch.long),
        depth=torch.tensor(depths, dtype=torch.long),
        score=torch.tensor(scores, dtype=torch.float64),  # sums of log q, kept exact
    )


def _table_children(draft: DraftOutput, key, node_depth: int, cache: dict) -> list:
    """Per-depth table: every node at depth d offers row d (candidates for depth d+1)."""
    if node_depth not in cache:
        if node_depth >= draft.depth_tokens.shape[0]:
            cache[node_depth] = []
        else:
            toks = draft.depth_tokens[node_depth].tolist()
            lps = draft.depth_logprobs[node_depth].tolist()
            pairs = sorted(zip(toks, lps), key=lambda x: -x[1])
            cache[node_depth] = [(t, lp, None) for t, lp in pairs]
    return cache[node_depth]


def _node_children(draft: DraftOutput, key, node_depth: int, cache: dict) -> list:
    """Candidate tree: the children proposed for this very candidate (key -1 = the anchor)."""
    if not cache:
        lists: dict[int, list] = {}
        toks = draft.node_tokens.tolist()
        lps = draft.node_logprobs.tolist()
        for m, p in enumerate(draft.node_parents.tolist()):
            lists.setdefault(p, []).append((toks[m], lps[m], m))
        for p in lists:
            lists[p].sort(key=lambda x: -x[1])
        cache.update(lists)
    return cache.get(-1 if key is None else key, [])


def _keep_sampled(draft: DraftOutput, anchor: int, budget: int, depth: int) -> DraftTree:
    """Sampled drafts: keep the drafted structure, cut to depth and budget in drafted order."""
    cand_depth = node_depths(draft.node_parents)
    index_of = {-1: 0}
    tokens, parents, depths, scores, q_rows = [anchor], [-1], [0], [0.0], [0]
    toks = draft.node_tokens.tolist()
    lps = draft.node_logprobs.tolist()
    for m, p in enumerate(draft.node_parents.tolist()):
        if len(tokens) - 1 >= budget:
            break
        if cand_depth[m] > depth or p not in index_of:
            continue
        index_of[m] = len(tokens)
        tokens.append(toks[m])
        parents.append(index_of[p])
        depths.append(int(cand_depth[m]))
        scores.append(scores[index_of[p]] + lps[m])
        q_rows.append(m + 1)
    return DraftTree(
        tokens=torch.tensor(tokens, dtype=torch.long),
        parents=torch.tensor(parents, dtype=torch.long),
        depth=torch.tensor(depths, dtype=torch.long),
        score=torch.tensor(scores, dtype=torch.float64),  # sums of log q, kept exact
        q=draft.node_q[q_rows],
    )


def capped_fanout(width: int, beta: float, gap0: float) -> Fanout:
    """Children allowed = max(1, round(W * sigmoid(-beta * (g - gap0)))), g = top-2 log-prob gap.

    A confident position (large gap) gets one child and the tree becomes a chain there; an
    uncertain one (small gap) fans out towards W.
    """

    def fanout(logprobs: list[float]) -> int:
        if len(logprobs) < 2:
            return min(width, len(logprobs))
        gap = logprobs[0] - logprobs[1]
        if math.isinf(gap):
            return 1
        n = round(width / (1.0 + math.exp(beta * (gap - gap0))))
        return max(1, min(width, n))

    return fanout
