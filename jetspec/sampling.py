"""Sampling configuration, logits processing and the randomness interface.

The processed target distribution p is what every lossless verifier must reproduce. Its
definition follows Hugging Face ``generate``: temperature first, then top-k, then top-p.

Verifiers and drafters never call ``torch.multinomial`` directly: they draw through an ``Rng``
with two primitives (a categorical draw and a coin flip). The production ``TorchRng`` wraps a
``torch.Generator``; the tests swap in an enumerating Rng that walks every random choice, which
is how exactness is *proved* on small vocabularies (METHOD.md section 4).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass(frozen=True)
class SamplingConfig:
    """How the target's logits become a distribution. temperature == 0 means greedy."""

    temperature: float = 0.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.temperature != self.temperature:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 (or None), got {self.top_k}")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] (or None), got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


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
