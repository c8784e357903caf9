"""The target for a batch of rows: prefill, verify, commit and plain steps (docs/design.md §6.9).

``TargetModel`` (target.py) is the readable batch-1 reference; this wraps one and runs B rows in
every forward, on either engine. The rows share one cache length S, and each row keeps

    valid[b, j]  column j of the cache holds one of row b's committed tokens
    pos[b]       the RoPE position of row b's anchor (= how many of its tokens are cached)

so left-padded prompts and rows that accept different lengths fit in one rectangular cache:

* **prefill** caches every prompt minus its last token at columns 0..T-2; a left pad is an
  invalid column, and real tokens take positions 0, 1, ... from the attention mask.
* **verify** appends the round's trees at columns S .. S+N-1, every tree padded to the round's
  largest N with copies of its anchor that see only themselves. Row b's node i sits at position
  ``pos[b] + depth[i]`` and sees row b's valid columns and its own ancestors.
* **commit** gathers row b's kept nodes (root and accepted path) to S .. S+k_b-1, marks the
  columns S+k_b .. S+K-1 (K = max k_b) invalid (*holes*), and sets S += K.

Holes and pads are masked and never change a logit; they cost memory and attention columns only.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformers import DynamicCache

from jetspec.core.compact_engine import LayerKV, RowsKVBuffer
from jetspec.core.masks import additive_mask
from jetspec.core.target import TargetModel, capture_taps
from jetspec.core.target_support import hf_masks
from jetspec.core.types import DraftTree


class BatchedTarget:
    """B rows of a ``TargetModel``'s model in every forward (see the module docstring).

    Uses the wrapper's engine, taps and attention backend; the wrapper's own (batch-1) cache is not
    touched. Rows are numbered 0..B-1 in the current batch; ``select_rows`` drops finished ones.
    """

    def __init__(self, target: TargetModel) -> None:
        self.target = target
        self.cache: Optional[DynamicCache | RowsKVBuffer] = None
        self.valid: Bool[Tensor, "B T"] = torch.zeros(0, 0, dtype=torch.bool)
        self.pos: Int[Tensor, " B"] = torch.zeros(0, dtype=torch.long)
        self._pending = 0  # tree columns the last verify appended (0: nothing to commit)

    @property
    def length(self) -> int:
        """S: cache columns, shared by all rows (valid or not)."""
        return self.valid.shape[1]

    @property
    def batch(self) -> int:
        return self.valid.shape[0]

    def _forward(self, ids: Int[Tensor, "B N"], positions: Int[Tensor, "B N"], visible: Bool[Tensor, "B N T"],
                 logits: bool = True) -> tuple[Optional[Float[Tensor, "B N V"]], Optional[Float[Tensor, "B N F"]]]:
        """One forward of N new columns per row against the cache, appending them (``logits=False``: the
        fast engine skips the lm_head, as ``TargetModel._forward``)."""
        t = self.target
        dev = t.device
        if t._fast is not None:
            return t._fast.forward_rows(self.cache, ids.to(dev), positions.to(dev), visible, t.tap_layers,
                                        logits=logits)
        if t.sliding:  # windows by position: a cached column's position is its rank among the row's valid ones
            k_pos = torch.cat([self.valid.long().cumsum(1) - 1, positions], dim=1)
            mask = hf_masks(visible.to(dev), positions, k_pos, t.windows, t.dtype)
        else:
            mask = additive_mask(visible.to(dev), t.dtype)[:, None]  # [B, 1, N, S + N]
        with capture_taps(t.model, t.tap_layers) as captured, t._attention():
            out = t.model(input_ids=ids.to(dev), position_ids=positions.to(dev), attention_mask=mask,
                          cache=self.cache, use_cache=True)
        self.cache = out.cache
        taps = torch.cat([captured[i] for i in t.tap_layers], dim=-1) if t.tap_layers else None
        return out.logits, taps

    def prefill(self, ids: Int[Tensor, "B T"], mask: Bool[Tensor, "B T"]) -> Optional[list[Tensor]]:
        """Cache every row's prompt but its last token (the anchor). ``mask``: True at real tokens,
        left padding only. Returns each row's taps of its real cached tokens ``[T_b - 1, F]``."""
        b, n = ids.shape
        t = self.target
        t.refresh_weights()  # a sequence starts with the model's current weights, as TargetModel.prefill
        self.cache = t._fast.new_rows_cache(b) if t._fast is not None else t.new_hf_cache()
        ctx, valid = ids[:, :-1], mask[:, :-1].clone()
        self.pos = mask.long().sum(1) - 1
        self.valid = torch.zeros(b, 0, dtype=torch.bool)
        if n == 1:
            taps = None if not t.tap_layers else torch.zeros(b, 0, len(t.tap_layers) * t.hidden_size,
                                                              dtype=t.dtype, device=t.device)
        else:
            positions = (valid.long().cumsum(1) - 1).clamp_min(0)
            causal = torch.ones(n - 1, n - 1, dtype=torch.bool).tril()
            # a pad query sees only itself (a query seeing nothing would give NaN)
            visible = (causal & valid[:, None, :]) | torch.eye(n - 1, dtype=torch.bool)
            _, taps = self._forward(ctx, positions, visible, logits=False)
        self.valid = valid
        return None if taps is None else [taps[r, valid[r].to(taps.device)] for r in range(b)]

    def verify(self, trees: Sequence[DraftTree]) -> tuple[Float[Tensor, "B N V"], Optional[Float[Tensor, "B N F"]]]:
        """One forward over every row's tree (row b's tree is ``trees[b]``). Row b's logits and taps
        are ``[b, :trees[b].num_nodes]``; the rest is padding."""
        if len(trees) != self.batch:
            raise ValueError(f"verify: got {len(trees)} trees for a batch of {self.batch} rows")
        n = max(tree.num_nodes for tree in trees)
        if n > 1:  # the "hf" engine's small-tree rule of TargetModel.verify (docs/design.md §6.2)
            n = max(n, self.target.min_rows)
        b, s = self.batch, self.length
        ids = torch.empty(b, n, dtype=torch.long)
        positions = torch.empty(b, n, dtype=torch.long)
        tree_part = torch.eye(n, dtype=torch.bool).repeat(b, 1, 1)  # padding nodes see only themselves
        for r, tree in enumerate(trees):
            m = tree.num_nodes
            ids[r, :m], ids[r, m:] = tree.tokens, tree.tokens[0]
            positions[r, :m], positions[r, m:] = self.pos[r] + tree.depth, self.pos[r]
            tree_part[r, :m, :m] = tree.ancestor
        visible = torch.cat([self.valid[:, None, :].expand(b, n, s), tree_part], dim=2)
        logits, taps = self._forward(ids, positions, visible)
        self._pending = n
        return logits, taps

    def commit(self, keep: Sequence[Sequence[int]]) -> None:
        """After ``verify``: row b keeps the tree nodes ``keep[b]`` (root and accepted path, in
        order) at columns S .. S + len(keep[b]) - 1; shorter rows leave holes up to the longest."""
        n, s = self._pending, self.length
        if n == 0 or len(keep) != self.batch:
            raise ValueError(f"commit: needs one keep list per row ({self.batch}) right after a verify")
        width = max(len(k) for k in keep)
        cols = torch.zeros(self.batch, width, dtype=torch.long)
        valid = torch.zeros(self.batch, width, dtype=torch.bool)
        for r, k in enumerate(keep):
            if len(set(k)) != len(k) or any(not 0 <= int(i) < n for i in k):
                raise ValueError(f"commit: row {r} keeps {list(k)}: nodes must be distinct, in 0..{n - 1}")
            cols[r, : len(k)] = torch.tensor([int(i) for i in k], dtype=torch.long)
            valid[r, : len(k)] = True
        self._gather(s, cols)
        self.valid = torch.cat([self.valid, valid], dim=1)
        self.pos = self.pos + valid.long().sum(1)
        self._pending = 0

    def _gather(self, start: int, cols: Int[Tensor, "B R"]) -> None:
        if isinstance(self.cache, RowsKVBuffer):
            self.cache.gather(start, cols)
            return
        for layer in self.cache.layers:
            idx = (cols.to(layer.keys.device) + start)[:, None, :, None].expand(
                -1, layer.keys.shape[1], -1, layer.keys.shape[3])
            layer.keys = torch.cat([layer.keys[:, :, :start], layer.keys.gather(2, idx)], dim=2)
            layer.values = torch.cat([layer.values[:, :, :start], layer.values.gather(2, idx)], dim=2)

    def step(self, tokens: Int[Tensor, " B"]) -> Float[Tensor, "B V"]:
        """Plain decoding: forward one token per row at its next position, cache it, return its logits."""
        b = self.batch
        valid = torch.cat([self.valid, torch.ones(b, 1, dtype=torch.bool)], dim=1)  # the new token sees itself
        logits, _ = self._forward(tokens.reshape(b, 1), self.pos.reshape(b, 1), valid[:, None, :])
        self.valid = valid
        self.pos = self.pos + 1
        return logits[:, 0]

    def select_rows(self, rows: Sequence[int]) -> None:
        """Keep only the batch rows ``rows`` (finished rows leave the batch; their cache is freed)."""
        rows = [int(r) for r in rows]
        if isinstance(self.cache, RowsKVBuffer):
            self.cache.select_rows(rows)
        elif self.cache is not None:
            index = torch.tensor(rows, dtype=torch.long, device=self.target.device)
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
        self.valid, self.pos = self.valid[rows], self.pos[rows]

    def row_cache(self, row: int) -> list[LayerKV]:
        """Row ``row``'s cached K/V per layer ``[1, h_kv, P_b, K]``, valid columns only, in order: what
        a batch-1 prefill of the row's committed tokens (minus the anchor) would hold (tests compare)."""
        cols = self.valid[row].nonzero().flatten().to(self.target.device)
        if isinstance(self.cache, RowsKVBuffer):
            layers = self.cache.row_layers(row)
        else:
            layers = [LayerKV(x.keys[row: row + 1], x.values[row: row + 1]) for x in self.cache.layers]
        return [LayerKV(x.keys.index_select(2, cols), x.values.index_select(2, cols)) for x in layers]

    def reset(self) -> None:
        self.cache = None
        self.valid = torch.zeros(0, 0, dtype=torch.bool)
        self.pos = torch.zeros(0, dtype=torch.long)
        self._pending = 0
