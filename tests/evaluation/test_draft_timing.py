"""The draft-timing harness (experiments/draft_batch_timing.py) runs and reports; it asserts no speed.

Times are never asserted (performance claims come from experiments/draft_batch_timing.py); what is
checked is that both modes draft the same rows from the same inputs, and the report's shape.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama, tiny_tokenizer

from jetspec.core.interfaces import Drafter
from jetspec.drafters import JetSpecHead

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
from draft_batch_timing import (  # noqa: E402
    DraftTimingConfig,
    cost_lines,
    plain_step_ms,
    row_sequences,
    speedup_table,
    time_draft_rounds,
)


class Recorder(JetSpecHead):
    """A head that records which (row, length) it drafted, through either path."""

    def draft(self, inp):
        self.seen.append(("draft", inp.row, inp.tokens.shape[0], inp.taps.shape[0]))
        return super().draft(inp)

    def draft_batch(self, inputs):
        if len(inputs) > 1:
            self.seen += [("batch", i.row, i.tokens.shape[0], i.taps.shape[0]) for i in inputs]
        return super().draft_batch(inputs)


def test_both_modes_draft_the_same_rounds():
    model, tok = tiny_llama(), tiny_tokenizer()
    torch.manual_seed(0)
    head = Recorder(model, block_size=4)
    head.seen = []
    cfg = DraftTimingConfig(batch_sizes=(1, 3), rounds=2, growth=2, depth=3, width=2, budget=4, repeats=1)
    rows = time_draft_rounds(head, model, tok, cfg, label="jetspec")
    assert [(r["batch"], r["mode"]) for r in rows] == [(1, "batched"), (1, "per_row"), (3, "batched"),
                                                        (3, "per_row")]
    assert all(r["ms_per_round"] > 0 and r["ms_first_round"] > 0 for r in rows)
    batched = [s[1:] for s in head.seen if s[0] == "batch"]
    looped = [s[1:] for s in head.seen if s[0] == "draft"][-len(batched):]  # the B = 3 per-row run
    assert batched == looped and len(batched) == 3 * (cfg.rounds + 1)
    assert {t - 1 == taps for _, t, taps in batched} == {True}
    assert len({t for row, t, _ in batched[:3]}) == 3  # the rows' lengths differ
    table = speedup_table(rows)
    assert table.count("| jetspec |") == 2 and "x |" in table
    step = plain_step_ms(model, tok, steps=2, repeats=1)
    lines = cost_lines(rows, step).splitlines()
    assert step > 0 and len(lines) == 2 and lines[1].startswith("jetspec: one-row draft round")
    share = rows[0]["ms_per_round"] / step  # the B = 1 batched row over the plain step
    assert lines[1].endswith(f"= {share:.3f} of a plain step")


def test_config_errors_and_sequences():
    with pytest.raises(ValueError, match="batch_sizes"):
        DraftTimingConfig(batch_sizes=(0,))
    with pytest.raises(ValueError, match="rounds"):
        DraftTimingConfig(rounds=0)
    seqs = row_sequences(tiny_tokenizer(), 3, 25)
    assert [s.shape[0] for s in seqs] == [25, 25, 25]
    assert Drafter.draft_batch is not JetSpecHead.draft_batch
