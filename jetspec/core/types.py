"""Typed values that flow between the stages of one speculative round.

Every stage of a round (docs/design.md §1.2) takes one of these and returns one of these:

    DraftInput --Drafter--> DraftOutput --TreeBuilder--> DraftTree
    DraftTree + target logits --(VerifyInput)--Verifier--> Acceptance

They live in the core and import nothing above them, so drafters, tree builders and verifiers can
depend on them without depending on each other. Shapes use the glossary of ``jetspec``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, no_type_check

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from jetspec.core.masks import ancestor_from_parents
from jetspec.core.sampling import Rng, SamplingConfig, check_child_laws


class MalformedDraft(ValueError):
    """A ``DraftOutput`` that breaks its contract; the decoding loop re-raises it naming the drafter."""


@dataclass
class DraftInput:
    """Everything a drafter may look at to propose continuations of the anchor.

    The drafter is handed the whole committed state each round; a stateful drafter (a head with a
    KV cache, a draft LM) keeps its own caches, one per batch ``row``, and uses ``round_index == 0``
    to know that row's sequence has started anew.
    """

    tokens: Int[Tensor, " T"]  # committed sequence x[0..t]; tokens[-1] is the anchor (tree root)
    depth: int  # D: how many levels the tree builder will ask for
    width: int  # W: how many candidates per level (or per node) the builder can use
    budget: int  # drafted nodes the builder will keep, root excluded
    taps: Optional[Float[Tensor, "T-1 F"]] = None  # target features of tokens[:-1] (F = k*H), if asked
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rng: Optional[Rng] = None  # randomness for drafters that sample their drafts
    round_index: int = 0  # 0 on the first round of a generate() call
    row: int = 0  # the batch row this input belongs to: a stateful drafter keeps one state per row


# Validates its own arguments with errors that name them: not re-checked by the test hook (jetspec/__init__.py).
@no_type_check
@dataclass
class DraftOutput:
    """A drafter's proposal, in one of two forms (exactly one is set).

    * Per-depth tables (parallel heads, chains): ``depth_tokens[d]`` are candidates for depth d+1,
      shared by every node at depth d (docs/design.md §4.1).
    * A candidate tree (autoregressive heads, n-gram tries, sampled draft models): node m proposes
      ``node_tokens[m]`` as a child of ``node_parents[m]`` (-1 = the anchor) with conditional
      log-prob ``node_logprobs[m]``; parents come before children.

    Sampled drafts (children drawn at random from q) set ``node_q``: row 0 is the distribution the
    anchor's children were drawn from, row m+1 the one for candidate m's children. A tree builder
    must not select among sampled children by their values, and the verifier then uses rejection
    sampling (docs/design.md §3.4).
    """

    depth_tokens: Optional[Int[Tensor, "D W"]] = None
    depth_logprobs: Optional[Float[Tensor, "D W"]] = None  # log q, each row sorted descending
    node_tokens: Optional[Int[Tensor, " M"]] = None
    node_parents: Optional[Int[Tensor, " M"]] = None
    node_logprobs: Optional[Float[Tensor, " M"]] = None
    node_q: Optional[Float[Tensor, "M+1 V"]] = None  # sampled drafts only: the anchor's row, then one per candidate
    forwards: int = 0  # draft-model forwards spent this round (reported by the benchmark)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``MalformedDraft`` (a ValueError naming the field) unless the proposal is well formed.

        Run on construction and again by the decoding loop after every ``draft`` (fields can be
        reassigned in between). Shapes and dtypes, parents before children, and a ``node_q`` that is
        a probability law wherever a candidate was drawn from it (``check_child_laws``). Token ids
        are checked against the target's vocabulary by the loop, which knows it.
        """
        has_table = self.depth_tokens is not None
        has_nodes = self.node_tokens is not None
        if has_table == has_nodes:
            raise MalformedDraft("DraftOutput needs exactly one of depth_tokens or node_tokens")
        if not isinstance(self.forwards, int) or self.forwards < 0:
            raise MalformedDraft(f"forwards must be an integer >= 0, got {self.forwards!r}")
        if has_table:
            _need_ids("depth_tokens", self.depth_tokens, "[D, W]")
            _need_floats("depth_logprobs", self.depth_logprobs, self.depth_tokens.shape, "[D, W]")
            return
        _need_ids("node_tokens", self.node_tokens, "[M]")
        m = self.node_tokens.shape[0]
        _need_ids("node_parents", self.node_parents, "[M]")
        if self.node_parents.shape != (m,):
            raise MalformedDraft(f"node_parents must be [M] = [{m}] like node_tokens, got "
                                 f"{tuple(self.node_parents.shape)}")
        _need_floats("node_logprobs", self.node_logprobs, (m,), "[M]")
        ok = (self.node_parents >= -1) & (self.node_parents < torch.arange(m, device=self.node_parents.device))
        if not bool(ok.all()):
            i = int((~ok).nonzero()[0, 0])
            raise MalformedDraft(f"node_parents[{i}] = {int(self.node_parents[i])}: each parent must be -1 "
                                 "(the anchor) or an earlier candidate")
        if self.node_q is not None:
            _need_floats("node_q", self.node_q, None, "[M + 1, V]")
            if self.node_q.dim() != 2 or self.node_q.shape[0] != m + 1:
                raise MalformedDraft(f"node_q must be [M + 1, V] with M + 1 = {m + 1} rows, got "
                                     f"{tuple(self.node_q.shape)}")
            # Row 0 is the anchor's children's law, row m + 1 candidate m's: parent + 1.
            check_child_laws(self.node_q, self.node_parents + 1, self.node_tokens, "node_q", MalformedDraft)

    @property
    def sampled(self) -> bool:
        """True when the candidates were sampled from q (``node_q`` given); see docs/design.md §3.4."""
        return self.node_q is not None

    @property
    def max_depth(self) -> int:
        """How deep a tree this proposal can support."""
        if self.depth_tokens is not None:
            return self.depth_tokens.shape[0]
        if self.node_tokens.numel() == 0:
            return 0
        depth = node_depths(self.node_parents)
        return int(depth.max())


def _describe(t) -> str:
    return f"{tuple(t.shape)} {t.dtype}" if isinstance(t, Tensor) else type(t).__name__


def _need_ids(name: str, t, shape: str) -> None:
    """An integer tensor with as many dimensions as ``shape`` names."""
    dims = shape.count(",") + 1
    if (not isinstance(t, Tensor) or t.dim() != dims or t.is_floating_point() or t.is_complex()
            or t.dtype == torch.bool):
        raise MalformedDraft(f"{name} must be an integer tensor {shape}, got {_describe(t)}")


def _need_floats(name: str, t, shape, form: str) -> None:
    """A floating-point tensor, of exactly ``shape`` when one is given."""
    if not isinstance(t, Tensor) or not t.is_floating_point() or (shape is not None and t.shape != shape):
        want = f"{form} = {list(shape)}" if shape is not None else form
        raise MalformedDraft(f"{name} must be a float tensor {want}, got {_describe(t)}")


def node_depths(parents: Int[Tensor, " M"]) -> Int[Tensor, " M"]:
    """Depth of each candidate node (children of the anchor have depth 1); parents precede children."""
    depth = torch.zeros(parents.shape[0], dtype=torch.long)
    par = parents.tolist()
    for m, p in enumerate(par):
        depth[m] = 1 if p < 0 else depth[p] + 1
    return depth


@dataclass
class DraftTree:
    """A draft tree in flat parent-before-child arrays (docs/design.md §2.1).

    Node 0 is the root: the anchor, the last committed token, which is not yet in the target's
    cache. Node i sits at RoPE position ``P + depth[i]`` where P is the cached prefix length.
    """

    tokens: Int[Tensor, " N"]  # token of each node; tokens[0] is the anchor
    parents: Int[Tensor, " N"]  # parent index, -1 for the root; parents[i] < i
    depth: Int[Tensor, " N"]  # root 0; depth[i] = depth[parents[i]] + 1
    score: Float[Tensor, " N"]  # cumulative draft log-prob along the path (root 0)
    q: Optional[Float[Tensor, "N V"]] = None  # sampled drafts: row i = law of node i's children

    def __post_init__(self) -> None:
        self.ancestor = ancestor_mask(self.parents)

    @property
    def num_nodes(self) -> int:
        """Nodes of the tree, root included (N)."""
        return self.tokens.shape[0]

    @property
    def budget(self) -> int:
        """Drafted nodes, root excluded."""
        return self.num_nodes - 1

    @property
    def max_depth(self) -> int:
        """The deepest node's depth (0 for a root-only tree)."""
        return int(self.depth.max())

    def position_offsets(self) -> Int[Tensor, " N"]:
        """Offset of each node's position from the cached prefix length (= depth)."""
        return self.depth

    def children(self) -> list[list[int]]:
        """Child lists in node order (the order verifiers try siblings in)."""
        kids: list[list[int]] = [[] for _ in range(self.num_nodes)]
        for i, p in enumerate(self.parents.tolist()):
            if p >= 0:
                kids[p].append(i)
        return kids

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root's first child down to ``node`` (root excluded)."""
        path = []
        par = self.parents.tolist()
        while node > 0:
            path.append(node)
            node = par[node]
        return path[::-1]


def ancestor_mask(parents: Int[Tensor, " N"]) -> Bool[Tensor, "N N"]:
    """Ancestor mask of a draft tree, self included: A[i, j] iff j is i or an ancestor of i.

    The closure itself is ``jetspec.kernels.ancestor_from_parents`` (it accepts forests); this adds
    the draft tree's rule for roots: exactly one, node 0 (the anchor), and parents before children.
    """
    for i, p in enumerate(parents.tolist()):
        if p < 0 and i != 0:
            raise ValueError(f"only node 0 may be the root, but parents[{i}] = {p}")
    return ancestor_from_parents(parents)


@dataclass
class VerifyInput:
    """What a verifier decides from: the tree and the target's logits at every node."""

    tree: DraftTree
    logits: Float[Tensor, "N V"]  # row i: target's next-token logits after the path root..i
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rng: Optional[Rng] = None


@dataclass
class Acceptance:
    """A verifier's verdict for one round (docs/design.md §1.2, steps 4-5)."""

    accepted_nodes: list[int]  # tree node indices on the accepted path, root excluded, root-to-leaf
    bonus_token: int  # the token emitted after the accepted path (from the target)
    draft_tokens: list[int] = field(default_factory=list)  # tokens of accepted_nodes

    @property
    def tokens(self) -> list[int]:
        """Tokens committed this round: accepted drafts, then the bonus token."""
        return self.draft_tokens + [self.bonus_token]

    @property
    def num_committed(self) -> int:
        """Tokens this round commits: the accepted drafted nodes plus the bonus token."""
        return len(self.accepted_nodes) + 1
