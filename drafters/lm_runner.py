"""A causal LM with a KV cache that follows the committed sequence across rounds.

Drafters that run a whole language model (the oracle, a separate draft LM) call ``sync`` with the
committed tokens each round: the cache is cropped back to the longest prefix it shares with them
(drafted-but-rejected tokens fall away) and only the new tokens are fed. ``RowLMs`` keeps one such
cache per batch row and can feed several rows in one forward (docs/design.md §4.9).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from transformers import DynamicCache

from jetspec.core.masks import chain_ancestor, padded_visibility, stack_kv, tree_visibility
from jetspec.core.target_support import attention_windows, hf_cache, hf_masks


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

    def pending(self, tokens: list[int]) -> list[int]:
        """Crop the cache to the longest prefix it shares with ``tokens``; return the tokens left to feed."""
        common = 0
        for a, b in zip(self.tokens, tokens):
            if a != b:
                break
            common += 1
        common = min(common, len(tokens) - 1)  # always feed at least one token to get logits
        if self.cache is None or common == 0:
            self.cache, self.tokens = hf_cache(self.model.config), []
            return list(tokens)
        if len(self.tokens) > common:
            self.cache.crop(-(len(self.tokens) - common))
        self.tokens = self.tokens[:common]
        return tokens[common:]

    def sync(self, tokens: list[int]) -> Tensor:
        """Logits [V] after ``tokens``, reusing the cached common prefix."""
        return self._feed(self.pending(tokens))

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

    @torch.no_grad()
    def feed_batch(self, rows: Sequence[int], new: Sequence[list[int]]) -> list[Tensor]:
        """Append ``new[b]`` to row ``rows[b]``'s cache for every b in ONE forward; each row's logits [V] after them.

        The rows' caches are padded to the longest and their new tokens to the most numerous, under
        a 4-D additive mask that hides the padding (``padded_visibility``) and explicit positions,
        so each row computes what ``CachedLM._feed`` computes for it alone; its new K/V are then
        appended to its own cache. The padded copy costs one pass over the caches per call.
        """
        lms = [self[r] for r in rows]
        if len(lms) == 1:
            return [lms[0]._feed(list(new[0]))]
        lens, sizes = [len(lm.tokens) for lm in lms], [len(n) for n in new]
        p, dev = max(lens), lms[0].device
        layers = self.model.config.num_hidden_layers
        batch = hf_cache(self.model.config)
        if p:
            shape = next(lm.cache.layers[0].keys for lm in lms if lm.tokens).shape
            empty = [(torch.zeros(1, shape[1], 0, shape[3], dtype=self.model.dtype, device=dev),) * 2] * layers
            kv = stack_kv([[(lay.keys, lay.values) for lay in lm.cache.layers] if lm.tokens else empty
                           for lm in lms], p)
            for i, (k, v) in enumerate(kv):
                batch.update(k, v, i)
        visible = padded_visibility([tree_visibility(chain_ancestor(n, device=dev), c) for n, c in zip(sizes, lens)],
                                    lens)
        ids = pad_sequence([torch.tensor(n, device=dev) for n in new], batch_first=True)
        positions = torch.stack([torch.arange(c, c + ids.shape[1], device=dev) for c in lens])
        # key positions: row b's cached prefix at 0..lens[b]-1, its new tokens where `positions` puts them
        k_pos = torch.cat([torch.arange(p, device=dev).expand(len(lms), p), positions], dim=1)
        mask = hf_masks(visible, positions, k_pos, attention_windows(self.model.config), self.model.dtype)
        out = self.model(input_ids=ids, position_ids=positions, cache=batch, use_cache=True, attention_mask=mask)
        for b, lm in enumerate(lms):
            for i in range(layers):
                lay = out.cache.layers[i]
                lm.cache.update(lay.keys[b: b + 1, :, p: p + sizes[b]], lay.values[b: b + 1, :, p: p + sizes[b]], i)
            lm.tokens.extend(new[b])
        return [out.logits[b, n - 1] for b, n in enumerate(sizes)]
