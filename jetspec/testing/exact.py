"""Exact laws by enumeration: run a randomized procedure down every branch of its random choices.

Used by the property tests and tutorial 7.

A procedure draws only through ``jetspec.core.sampling.Rng``. ``enumerate_law(fn)`` replays ``fn`` with a
scripted Rng; whenever the script runs out at a new random choice, the run stops and is restarted
once per possible outcome of that choice. Each finished run contributes the product of the
probabilities of its choices to the law of its result. On vocabularies of a handful of tokens this
gives output probabilities exact to rounding (docs/design.md §3.6).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Hashable

from jetspec.core.sampling import Rng


class _NeedChoice(Exception):
    pass


class ScriptedRng(Rng):
    def __init__(self, script: list[int]) -> None:
        self.script, self.pos, self.prob = script, 0, 1.0
        self.pending: list | None = None

    def _choose(self, options: list[tuple[object, float]]):
        if self.pos < len(self.script):
            value, p = options[self.script[self.pos]]
            self.pos += 1
            self.prob *= p
            return value
        self.pending = options
        raise _NeedChoice

    def categorical(self, probs) -> int:
        return self._choose([(i, float(p)) for i, p in enumerate(probs.tolist()) if p > 0])

    def bernoulli(self, prob: float) -> bool:
        prob = min(1.0, max(0.0, float(prob)))
        return self._choose([(v, p) for v, p in ((True, prob), (False, 1.0 - prob)) if p > 0])


def enumerate_law(fn: Callable[[Rng], Hashable], max_runs: int = 200_000) -> dict:
    """The exact distribution of ``fn(rng)`` over all of its random choices."""
    law: dict = defaultdict(float)
    stack: list[list[int]] = [[]]
    runs = 0
    while stack:
        script = stack.pop()
        runs += 1
        if runs > max_runs:
            raise RuntimeError("too many branches to enumerate; shrink the vocabulary or tree")
        rng = ScriptedRng(script)
        try:
            out = fn(rng)
        except _NeedChoice:
            stack.extend(script + [i] for i in range(len(rng.pending)))
            continue
        law[out] += rng.prob
    return dict(law)
