"""Sampling configuration, logits processing and the randomness interface.

The processed target distribution p is what every lossless verifier must reproduce. Its
definition follows Hugging Face ``generate``: temperature first, then top-k, then top-p.

Verifiers and drafters never call ``torch.multinomial`` directly: they draw through an ``Rng``
with two primitives (a categorical draw and a coin flip). The production ``TorchRng`` wraps a
``torch.Generator``; the tests swap in an enumerating Rng that walks every random choice, which
is how exactness is *proved* on small vocabularies (docs/design.md §3.6).
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional, no_type_check

import torch
from jaxtyping import Float
from torch import Tensor


# Validates its own arguments with errors that name them: not re-checked by the test hook (jetspec/__init__.py).
@no_type_check
@dataclass(frozen=True)
class SamplingConfig:
    """How the target's logits become a distribution. temperature == 0 means greedy."""

    temperature: float = 0.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None

    def __post_init__(self) -> None:
        # Types and values are checked here, not at the first sampling step; numpy scalars are
        # stored as plain Python numbers. Strings, bools and non-integral top_k are refused.
        t, k, p = self.temperature, self.top_k, self.top_p
        if not _is_real(t) or not 0 <= t < math.inf:
            raise ValueError(f"temperature must be a finite number >= 0, got {t!r}")
        if k is not None and (not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1):
            raise ValueError(f"top_k must be an integer >= 1 (or None), got {k!r}")
        if p is not None and (not _is_real(p) or not 0.0 < p <= 1.0):
            raise ValueError(f"top_p must be a number in (0, 1] (or None), got {p!r}")
        object.__setattr__(self, "temperature", float(t))
        object.__setattr__(self, "top_k", None if k is None else int(k))
        object.__setattr__(self, "top_p", None if p is None else float(p))

    @property
    def greedy(self) -> bool:
        """True at temperature 0: argmax decoding, no random draws."""
        return self.temperature == 0.0


def _is_real(x) -> bool:
    """A real number (Python or numpy), not a bool and not a string."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def process_logits(logits: Float[Tensor, "... V"], cfg: SamplingConfig) -> Float[Tensor, "... V"]:
    """The processed distribution p (probabilities, float64) for each row of ``logits``.

    Greedy (temperature 0) gives the one-hot of the argmax, so a sampling verifier run at
    temperature 0 reduces exactly to greedy verification.
    """
    logits = logits.double()
    if cfg.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).double()
    logits = logits / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if cfg.top_p is not None and cfg.top_p < 1.0:
        # Keep the smallest set of most likely tokens whose mass reaches top_p: a token stays if
        # the mass strictly before it (in descending order) is still below top_p.
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        mass_before = torch.cumsum(sorted_p, dim=-1) - sorted_p
        keep_sorted = mass_before < cfg.top_p
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def residual(p: Float[Tensor, " V"], q: Float[Tensor, " V"]) -> Float[Tensor, " V"]:
    """normalize(max(p - q, 0)): the law to sample from after a draft from q is rejected."""
    r = (p - q).clamp_min(0)
    total = r.sum()
    # p == q up to rounding means rejection had probability ~0; keep p rather than divide by 0.
    return p if total <= 1e-12 else r / total


#: How far from 1 a row of q may sum. float32 softmax over a 150k vocabulary stays near 1e-5; a q
#: further off is not the law the drafts were drawn from, and min(1, p/q) would then be biased.
Q_SUM_TOL = 1e-4


def check_child_laws(q: Float[Tensor, "R V"], parent_rows: Tensor, child_tokens: Tensor, who: str,
                     error: type[ValueError] = ValueError) -> None:
    """Refuse a q that cannot be the law the drafted children were drawn from.

    Candidate m carries token ``child_tokens[m]`` and was drawn from row ``parent_rows[m]`` of q.
    Each such row must be finite, >= 0 and sum to 1 (within ``Q_SUM_TOL``), and give its drawn
    token positive mass. Anything else makes rejection sampling accept with the wrong probability
    (q = 0 at a draft used to read as "always accept"), so it raises ``error`` naming ``who``
    instead. Rows no candidate was drawn from are never read by the verifier and are not checked.
    """
    if not isinstance(q, Tensor) or q.dim() != 2 or not q.is_floating_point():
        got = f"{tuple(q.shape)} {q.dtype}" if isinstance(q, Tensor) else type(q).__name__
        raise error(f"{who} must be a float tensor [rows, V], got {got}")
    if child_tokens.numel() == 0:
        return
    rows, toks = parent_rows.to(q.device), child_tokens.to(q.device)
    outside = (toks < 0) | (toks >= q.shape[1])
    if bool(outside.any()):
        m = int(outside.nonzero()[0, 0])
        raise error(f"{who} has {q.shape[1]} columns, but candidate {m} is token {int(toks[m])}: q must "
                    "cover the target's whole vocabulary")
    used = torch.unique(rows)
    laws = q[used].double()
    checks = (("holds NaN or inf", ~torch.isfinite(laws).all(-1)),
              ("has negative entries", (laws < 0).any(-1)),
              (f"does not sum to 1 (tolerance {Q_SUM_TOL:g})", (laws.sum(-1) - 1).abs() > Q_SUM_TOL))
    for what, bad in checks:
        if bool(bad.any()):
            r = int(used[bad.nonzero()[0, 0]])
            raise error(f"{who} row {r} {what} (it sums to {float(q[r].double().sum()):.6g}); it must be the "
                        "normalised law the candidates under it were drawn from")
    mass = q[rows, toks]
    if bool((mass <= 0).any()):
        m = int((mass <= 0).nonzero()[0, 0])
        raise error(f"{who} row {int(rows[m])} gives probability 0 to token {int(toks[m])}, yet candidate {m} "
                    "was drawn from that row with it: a drawn token has positive mass under its q")


class Rng(ABC):
    """The two random primitives verifiers and samplers use."""

    @abstractmethod
    def categorical(self, probs: Float[Tensor, " V"]) -> int:
        """Draw an index with the given probabilities."""

    @abstractmethod
    def bernoulli(self, prob: float) -> bool:
        """True with probability ``prob``."""


class TorchRng(Rng):
    """Randomness from a ``torch.Generator`` (seeded by the user for reproducibility)."""

    def __init__(self, generator: Optional[torch.Generator] = None) -> None:
        self.generator = generator

    def categorical(self, probs: Float[Tensor, " V"]) -> int:
        return int(torch.multinomial(probs.double(), 1, generator=self.generator))

    def bernoulli(self, prob: float) -> bool:
        if prob >= 1.0:
            return True
        u = torch.rand((), dtype=torch.float64, generator=self.generator)
        return bool(u < prob)
