"""A learned head's drafting cache of committed context rows, one per batch row (docs/design.md §4.9).

Both kinds of head (``ParallelHead``, ``EagleHead``) project the rows of the committed text once
and keep their per-layer keys and values; each round only the rows that are new since the last
round run. ``LearnedHead`` keeps one ``RowContext`` per ``DraftInput.row``, so interleaved rows never
see each other's context, and ``round_index == 0`` restarts only its own row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

KV = tuple[Tensor, Tensor]  # keys, values [B, h_kv, N, K] of one layer


def concat_kv(first: list[KV], second: list[KV]) -> list[KV]:
    """Per layer, the rows of ``second`` appended after those of ``first``."""
    return [(torch.cat([k0, k1], 2), torch.cat([v0, v1], 2)) for (k0, v0), (k1, v1) in zip(first, second)]


@dataclass
class RowContext:
    """One batch row's cache: per layer the K/V [1, h_kv, P, K] of its context rows, P, and (for a
    parallel head's direct path) the newest context row [1, Hd]."""

    kv: Optional[list[KV]] = None
    length: int = 0  # P: context rows projected so far
    last: Optional[Tensor] = None

    def append(self, kv: list[KV], length: int) -> None:
        """Add the K/V of the rows that were new this round; the row now holds ``length`` rows."""
        self.kv = kv if self.kv is None else concat_kv(self.kv, kv)
        self.length = length
