"""A causal LM with a KV cache that follows the committed sequence across rounds.

Drafters that run a whole language model (the oracle, a separate draft LM) call ``sync`` with the
committed tokens each round: the cache is cropped back to the longest prefix it shares with them
(drafted-but-rejected tokens fall away) and only the new tokens are fed.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache


class CachedLM:
    """Runs ``model`` under ``torch.no_grad`` without changing it (it must already be in eval mode)."""

    def __init__(self, model: torch.nn.Module) -> None:
        if model.training:  # dropout would make the drafts random; switching modes is the caller's call
            raise ValueError("the drafting model is in training mode: call model.eval() first")
        self.model = model
        self.vocab_size: int = model.get_output_embeddings().weight.shape[0]
        self.cache: DynamicCache | None = None
        self.tokens: list[int] = []  # the tokens whose K/V are in the cache

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def _feed(self, new: list[int]) -> Tensor:
        ids = torch.tensor([new], device=self.device)
        out = self.model(input_ids=ids, cache=self.cache, use_cache=True)
        self.cache = out.cache
        self.tokens.extend(new)
        return out.logits[0, -1]

    def sync(self, tokens: list[int]) -> Tensor:
        """Logits [V] after ``tokens``, reusing the cached common prefix."""
        common = 0
        for a, b in zip(self.tokens, tokens):
            if a != b:
                break
            common += 1
        common = min(common, len(tokens) - 1)  # always feed at least one token to get logits
        if self.cache is None or common == 0:
            self.cache, self.tokens = DynamicCache(config=self.model.config), []
            return self._feed(tokens)
        if len(self.tokens) > common:
            self.cache.crop(-(len(self.tokens) - common))
        self.tokens = self.tokens[:common]
        return self._feed(tokens[common:])

    def step(self, token: int) -> Tensor:
        """Logits [V] after appending one token."""
        return self._feed([token])


class RowLMs:
    """One ``CachedLM`` per batch row over one shared model: ``lms[row]`` (created on first use).

    Rows of a batch follow different sequences; one shared cache would be cropped back and
    refilled every time the rows take turns (docs/design.md §4.9).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.rows: dict[int, CachedLM] = {0: CachedLM(model)}  # row 0 now: a model in training mode fails here
        self.vocab_size: int = self.rows[0].vocab_size

    def __getitem__(self, row: int) -> CachedLM:
        if row not in self.rows:
            self.rows[row] = CachedLM(self.model)
        return self.rows[row]

    def reset(self) -> None:
        """Forget every row's cache."""
        self.rows = {0: CachedLM(self.model)}
