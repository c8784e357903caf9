"""Replay: the exact greedy tau of a drafter, without running the target once per round.

Greedy speculative decoding is lossless, so the tokens it commits are the target's greedy
continuation, known in advance once plain decoding has produced it. What a round accepts depends
only on the committed prefix: the drafter sees tokens x[0..a] and the target's tapped features of
x[0..a-1], builds its tree, and the target accepts the longest root path that spells
x[a+1], x[a+2], ... . Replay walks a *reference* sequence (prompt + the target's greedy answer)
round by round exactly like that, with the taps of one teacher forward over the whole sequence.

The accepted lengths it returns are the ones ``SpeculativeDecoder.generate`` would report on that
prompt (a test checks equality in float64), at the cost of the drafter's forwards only: it is how
training curves and the seed-level causal-vs-bidirectional comparison measure tau on CPU. Its
only assumption is the one greedy equality already needs: no exact ties in the target's argmax.

Shapes use the glossary of ``jetspec`` (docs/design.md §8).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from jetspec.core.checks import run_drafter
from jetspec.core.decoding import autoregressive_generate
from jetspec.core.generation import depth_acceptance
from jetspec.core.interfaces import Drafter, TreeBuilder
from jetspec.core.types import DraftInput, DraftTree
from jetspec.verifiers.greedy import greedy_accept


@dataclass
class Reference:
    """A prompt and the target's greedy continuation of it (plain decoding, no drafting)."""

    input_ids: list[int]  # prompt + greedy response
    response_start: int  # index of the first generated token
    set: str = "default"

    def to_row(self) -> dict:
        return {"input_ids": self.input_ids, "response_start": self.response_start, "set": self.set}


def make_references(target, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                    sets: Optional[Sequence[str]] = None, eos_token_id=None,
                    progress: bool = True) -> list[Reference]:
    """Greedy continuations of ``prompts`` (token ids) by plain decoding in jetspec's harness."""
    rows = []
    it = enumerate(prompts)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(prompts), desc="references", unit="prompt")
    for i, ids in it:
        res = autoregressive_generate(target, torch.tensor([list(ids)]), max_new_tokens,
                                      eos_token_id=eos_token_id)
        rows.append(Reference(res.sequences[0].tolist(), len(ids), sets[i] if sets else "default"))
    return rows


def accepted_path(tree: DraftTree, truth: Sequence[int]) -> list[int]:
    """Nodes the greedy verifier accepts when the target's argmax along the path is ``truth``.

    ``truth[d]`` is the target's greedy token after depth d of the path (the reference
    continuation), so every node at depth d has "argmax" ``truth[d]``; the match itself is the
    greedy verifier's own ``greedy_accept``, so replay and decoding cannot disagree on a verdict.
    """
    depth = tree.depth.tolist()
    argmax = torch.tensor([truth[d] if d < len(truth) else -1 for d in depth], dtype=torch.long)
    return greedy_accept(tree.tokens, tree.parents, argmax)


def replay_sequence(drafter: Drafter, builder: TreeBuilder, tokens: Int[Tensor, " T"], response_start: int,
                    taps: Optional[Tensor] = None, max_new_tokens: Optional[int] = None,
                    sizes: Optional[list[int]] = None,
                    on_round: Optional[Callable[[int, DraftTree, list[int]], None]] = None) -> list[int]:
    """Committed tokens per round (accepted drafts + 1) of greedy decoding along a reference.

    ``taps``: [T, F] target features of every token (needed iff ``drafter.tap_layers``).
    ``max_new_tokens`` cuts the walk like ``generate(max_new_tokens=...)`` would.
    ``sizes``: if given, each round's drafted node count (root excluded) is appended to it.
    ``on_round(a, tree, path)``: called every round with the anchor index ``a``, the built tree and
    its accepted nodes, so analyses of the trees (per-depth acceptance, branch faithfulness) walk
    exactly the rounds replay walks instead of re-implementing the walk.
    """
    tokens = tokens.cpu()
    end = tokens.shape[0] if max_new_tokens is None else min(tokens.shape[0], response_start + max_new_tokens)
    if not 1 <= response_start < end:
        raise ValueError(f"response_start {response_start} must leave at least one token to replay "
                         f"(sequence of {tokens.shape[0]} tokens)")
    if drafter.tap_layers and (taps is None or taps.shape[0] < end - 1):
        raise ValueError("this drafter reads target taps: pass the [T, F] taps of the reference")
    a, r, lengths = response_start - 1, 0, []
    while a + 1 < end:
        inp = DraftInput(tokens=tokens[: a + 1], depth=builder.depth, width=builder.width, budget=builder.budget,
                         taps=None if not drafter.tap_layers else taps[:a], round_index=r)
        tree = builder.build(run_drafter(drafter, inp, drafter.vocab_size), int(tokens[a]))  # as generate does
        path = accepted_path(tree, tokens[a + 1: end].tolist())
        if sizes is not None:
            sizes.append(tree.budget)
        if on_round is not None:
            on_round(a, tree, path)
        n = min(len(path) + 1, end - a - 1)  # the bonus token, unless the reference ends first
        lengths.append(n)
        a += n
        r += 1
    return lengths


@dataclass
class ReplayReport:
    """Per-sequence replay results and their summary."""

    lengths: list[list[int]] = field(default_factory=list)  # committed tokens per round, per sequence
    sets: list[str] = field(default_factory=list)
    sizes: list[list[int]] = field(default_factory=list)  # drafted nodes per round, per sequence
    accepted_depths: list[list[int]] = field(default_factory=list)  # accepted drafts per round, per sequence
    tree_depths: list[list[int]] = field(default_factory=list)  # depth of each round's tree, per sequence

    def depth_acceptance(self) -> list[float]:
        """P(depth d accepted | the tree reached depth d), pooled over all rounds (docs/design.md §7.1).

        As decoding counts it, except in a reference's last round: a draft past the reference's end
        counts as rejected here, where decoding would accept it and then cut it at max_new_tokens.
        """
        return depth_acceptance([d for x in self.accepted_depths for d in x],
                                [d for x in self.tree_depths for d in x])

    def taus(self) -> list[float]:
        return [sum(x) / len(x) for x in self.lengths]

    def pooled_tau(self, set_name: Optional[str] = None) -> float:
        """Total tokens / total rounds (the benchmark's convention), over one set or all."""
        rows = [x for x, s in zip(self.lengths, self.sets) if set_name in (None, s)]
        rounds = sum(len(x) for x in rows)
        return sum(sum(x) for x in rows) / rounds if rounds else float("nan")

    def modelled_speedup(self, node_cost: float, draft_cost: float = 0.0,
                         set_name: Optional[str] = None) -> float:
        """Speed vs plain decoding if a round costs 1 + draft_cost + node_cost * nodes forwards.

        A cost model, not a measurement: ``node_cost`` is the verify slope per drafted node and
        ``draft_cost`` the drafter's time per round, both in units of one plain decoding step
        (``jetspec roofline`` fits the first, ``jetspec replay-table`` times the second). It ranks
        tree settings before timing them.
        """
        pick = [i for i, s in enumerate(self.sets) if set_name in (None, s)]
        tokens = sum(sum(self.lengths[i]) for i in pick)
        cost = sum(len(self.lengths[i]) * (1.0 + draft_cost) + node_cost * sum(self.sizes[i]) for i in pick)
        return tokens / cost if cost else float("nan")


def reference_taps(model, tap_layers: Sequence[int], references: Sequence[Reference]) -> list[Tensor]:
    """The [T, F] taps of every reference (one teacher forward each); reuse them across evaluations."""
    from jetspec.core.target import Teacher

    teacher = Teacher(model, tap_layers)
    dev = next(model.parameters()).device
    return [teacher(torch.tensor([r.input_ids], device=dev)).taps[0].cpu() for r in references]


def drafter_taps(drafter: Drafter, model, references: Sequence[Reference],
                 cache: dict[tuple[int, ...], list[Tensor]]) -> Optional[list[Tensor]]:
    """The references' taps for ``drafter`` (None if it reads none), computed once per set of tap
    layers: drafters that read the same layers share ``cache``'s entry."""
    if not drafter.tap_layers:
        return None
    key = tuple(drafter.tap_layers)
    if key not in cache:
        cache[key] = reference_taps(model, key, references)
    return cache[key]


def read_references(path, vocab_size: Optional[int] = None) -> list[Reference]:
    """The references of a file written by ``jetspec references``, checked row by row: each a JSON
    object with ``input_ids`` (token ids, below ``vocab_size`` if given), an integer ``response_start``
    with at least one prompt and one response token, and an optional string ``set``. Errors name
    ``path:line``; a file without references is an error too."""
    from jetspec.core.jsonl import numbered_rows

    refs = []
    for line, row in numbered_rows(path):
        where = f"{path}:{line}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: a reference must be a JSON object, got {type(row).__name__}")
        ids, start, name = row.get("input_ids"), row.get("response_start"), row.get("set", "default")
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise ValueError(f"{where}: input_ids must be a list of token ids, got {ids!r:.80}")
        if vocab_size is not None and any(not 0 <= t < vocab_size for t in ids):
            raise ValueError(f"{where}: input_ids hold ids outside the target's vocabulary [0, {vocab_size})")
        if not isinstance(start, int) or isinstance(start, bool) or not 1 <= start < len(ids):
            raise ValueError(f"{where}: response_start must be an integer in 1..{len(ids) - 1} (at least one prompt "
                             f"and one response token), got {start!r}")
        if not isinstance(name, str):
            raise ValueError(f"{where}: set must be a string, got {name!r}")
        refs.append(Reference(ids, start, name))
    if not refs:
        raise ValueError(f"{path}: no references in the file")
    return refs


def as_references(rows: Iterable[Reference | dict]) -> list[Reference]:
    keys = ("input_ids", "response_start", "set")
    return [r if isinstance(r, Reference) else Reference(**{k: r[k] for k in keys if k in r}) for r in rows]


def replay(drafter: Drafter, builder: TreeBuilder, references: Iterable[Reference | dict], model=None,
           taps: Optional[Sequence[Tensor]] = None, max_new_tokens: Optional[int] = None) -> ReplayReport:
    """Replay every reference. A drafter that reads taps needs ``taps`` (from ``reference_taps``) or
    the target ``model`` to compute them."""
    refs = as_references(references)
    if drafter.tap_layers and taps is None:
        if model is None:
            raise ValueError("this drafter reads target taps: pass the target model or the references' taps")
        taps = reference_taps(model, drafter.tap_layers, refs)
    report = ReplayReport()
    with torch.no_grad():
        for i, ref in enumerate(refs):
            ids = torch.tensor(ref.input_ids, dtype=torch.long)
            t = taps[i] if drafter.tap_layers else None
            sizes: list[int] = []
            accepted: list[int] = []
            depths: list[int] = []

            def note(_a: int, tree: DraftTree, path: list[int]) -> None:
                accepted.append(len(path))
                depths.append(tree.max_depth)

            report.lengths.append(replay_sequence(drafter, builder, ids, ref.response_start, t, max_new_tokens,
                                                  sizes, note))
            report.sets.append(ref.set)
            report.sizes.append(sizes)
            report.accepted_depths.append(accepted)
            report.tree_depths.append(depths)
    return report


# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (standard tables); the normal
# value 1.96 is used beyond. Seeds come in threes here, where 1.96 would understate the interval 2x.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """t_{0.975} with ``df`` degrees of freedom (the 95% two-sided multiplier)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t confidence interval (t * s / sqrt(n)); nan if n < 2."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = statistics.fmean(values)
    if n == 1:
        return mean, float("nan")
    return mean, t_quantile_975(n - 1) * statistics.stdev(values) / math.sqrt(n)
