"""Draft time per round for B rows, batched (one head forward per step) vs one call per row.

    .venv/bin/python experiments/draft_batch_timing.py                       # ~5 minutes on one thread
    .venv/bin/python experiments/draft_batch_timing.py --drafters jetspec --batch-sizes 1,8 --out timing.jsonl

A batched decoder drafts every running row each round. A learned head can do that in ONE forward
per drafting step (docs/design.md §4.9): the weights are read once for all rows, and the target's
lm_head, the largest product of a small head, runs over all rows' slots together. This script
measures what that buys, separately from the target, so the numbers hold for any verify cost. The
shipped SmolLM2-135M-Instruct heads (``jetspec``, ``dflash``, ``eagle``) draft the rounds; the
target only supplies the taps:

* every row is a different prompt of the built-in sets (``jetspec.core.prompts``), so the rows'
  context lengths differ, as they do in a real batch;
* round k of row b drafts after ``len(prompt_b) + k * growth`` committed tokens (``growth`` plays
  tau), with the target's real taps of those tokens, computed once up front;
* each batch size runs twice on the same drafter, cache reset in between: ``batched``
  (``drafter.draft_batch``) and ``per_row`` (``drafter.draft`` row after row, the default
  ``Drafter.draft_batch``). Round 0 fills the heads' context caches and is reported apart.

Draft time depends on the shapes only, not on which tokens are drafted, so the proposals are
not verified. Prints a markdown table (ms per round, the per-row loop vs the batched call), then
one plain decoding step of the target (one row, ``TargetModel.step``) and each drafter's one-row
round as a share of it (the drafting cost a speculative round adds, whatever its tau), and
writes every measurement as JSON lines to ``--out`` if given. Wall-clock numbers: take them on a
quiet machine. The test ``tests/evaluation/test_draft_timing.py`` runs the harness on a tiny target.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from jetspec import load_target
from jetspec.commands.flags import add_config_flags, config_from_args
from jetspec.core.config import check_at_least, read_tuple_fields
from jetspec.core.interfaces import Drafter
from jetspec.core.jsonl import write_jsonl
from jetspec.core.prompts import builtin_prompts, chat_ids
from jetspec.core.target import TargetModel, Teacher
from jetspec.core.types import DraftInput
from jetspec.evaluation.drafter_specs import make_drafter


@dataclass
class DraftTimingConfig:
    """What ``time_draft_rounds`` measures."""

    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    """Rows drafting together."""
    rounds: int = 8
    """Rounds timed per batch size and mode (round 0, which fills the caches, is reported apart)."""
    growth: int = 4
    """Tokens each row commits per round (a typical tau)."""
    depth: int = 6
    """Tree depth D the drafter is asked for."""
    width: int = 4
    """Candidates per depth (or per node) W."""
    budget: int = 32
    """Drafted nodes the builder keeps (EAGLE stops expanding at min(depth, budget) levels)."""
    repeats: int = 3
    """Times each (batch size, mode) is run; the median round time is reported."""

    def __post_init__(self) -> None:
        read_tuple_fields(self)
        check_at_least(self, ("batch_sizes", "rounds", "growth", "depth", "width", "budget", "repeats"))


def row_sequences(tokenizer, rows: int, length: int) -> list[torch.Tensor]:
    """``rows`` token sequences of ``length`` tokens: a different built-in prompt opens each one,
    and the prompts that follow fill it up (their content does not change a draft's cost)."""
    prompts = [chat_ids(tokenizer, p["prompt"]) for p in builtin_prompts()]
    out = []
    for b in range(rows):
        ids: list[int] = []
        k = b
        while len(ids) < length:
            ids += prompts[k % len(prompts)]
            k += 1
        out.append(torch.tensor(ids[:length]))
    return out


def _round_inputs(drafter: Drafter, seqs, taps, starts, k: int, cfg: DraftTimingConfig) -> list[DraftInput]:
    inputs = []
    for b, (seq, start) in enumerate(zip(seqs, starts)):
        t = start + k * cfg.growth
        inputs.append(DraftInput(tokens=seq[:t].clone(), depth=cfg.depth, width=cfg.width, budget=cfg.budget,
                                 taps=None if taps is None else taps[b][: t - 1], round_index=k, row=b))
    return inputs


def _run(drafter: Drafter, seqs, taps, starts, cfg: DraftTimingConfig, batched: bool) -> list[float]:
    """Seconds of each round's drafting call(s), from a reset cache."""
    if hasattr(drafter, "reset_cache"):
        drafter.reset_cache()
    times = []
    for k in range(cfg.rounds + 1):
        inputs = _round_inputs(drafter, seqs, taps, starts, k, cfg)
        t0 = time.perf_counter()
        if batched:
            drafter.draft_batch(inputs)
        else:
            Drafter.draft_batch(drafter, inputs)  # the default: one draft call per row
        times.append(time.perf_counter() - t0)
    return times


@torch.no_grad()
def time_draft_rounds(drafter: Drafter, model, tokenizer, cfg: DraftTimingConfig, label: str = "") -> list[dict]:
    """One dict per (batch size, mode): ms per round (median over repeats of the mean over rounds 1..),
    ms of round 0, and ms per row-round. ``model`` is the Hugging Face target the drafter reads."""
    rows = max(cfg.batch_sizes)
    prompts_len = [len(chat_ids(tokenizer, p["prompt"])) for p in builtin_prompts()]
    starts = [prompts_len[b % len(prompts_len)] for b in range(rows)]
    length = max(starts) + cfg.rounds * cfg.growth + 1
    seqs = row_sequences(tokenizer, rows, length)
    taps = None
    if drafter.tap_layers:
        teacher = Teacher(model, drafter.tap_layers)
        taps = [teacher(s[None]).taps[0] for s in seqs]  # [length, F] per row
    out = []
    jobs = [(b, mode) for b in cfg.batch_sizes for mode in ("batched", "per_row")]
    for b, mode in tqdm(jobs, desc=f"draft timing {label}".strip(), leave=False):
        runs = [_run(drafter, seqs[:b], None if taps is None else taps[:b], starts[:b], cfg, mode == "batched")
                for _ in range(cfg.repeats)]
        steady = statistics.median(statistics.mean(r[1:]) for r in runs) if cfg.rounds else float("nan")
        first = statistics.median(r[0] for r in runs)
        out.append({"drafter": label, "batch": b, "mode": mode, "ms_per_round": 1e3 * steady,
                    "ms_per_row_round": 1e3 * steady / b, "ms_first_round": 1e3 * first,
                    "rounds": cfg.rounds, "repeats": cfg.repeats, "threads": torch.get_num_threads()})
    return out


@torch.no_grad()
def plain_step_ms(model, tokenizer, steps: int = 16, repeats: int = 3) -> float:
    """Median ms of one plain decoding step (one row, one token; the engine ``TargetModel`` picks)
    after the first built-in prompt: the cost every speculative round is compared with."""
    seq = row_sequences(tokenizer, 1, len(chat_ids(tokenizer, builtin_prompts()[0]["prompt"])) + steps)[0]
    target, times = TargetModel(model), []
    for _ in range(repeats):
        target.prefill(seq[:-steps])
        for token in seq[-steps:].tolist():
            t0 = time.perf_counter()
            target.step(token)
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def cost_lines(rows: list[dict], step_ms: float) -> str:
    """The plain step and each drafter's one-row round (the batched call at B = 1) as a share of it."""
    ones = [r for r in rows if r["batch"] == 1 and r["mode"] == "batched"]
    return "\n".join([f"plain decoding step (1 row): {step_ms:.2f} ms"] +
                     [f"{r['drafter']}: one-row draft round {r['ms_per_round']:.2f} ms = "
                      f"{r['ms_per_round'] / step_ms:.3f} of a plain step" for r in ones])


def speedup_table(rows: list[dict]) -> str:
    """A markdown table: per drafter and batch size, ms per round batched vs per row, and the ratio."""
    key = {(r["drafter"], r["batch"], r["mode"]): r for r in rows}
    lines = ["| drafter | batch | per-row loop ms/round | batched ms/round | batched ms/row | speedup |",
             "|---|---:|---:|---:|---:|---:|"]
    for (name, b, mode), r in key.items():
        if mode != "batched" or (name, b, "per_row") not in key:
            continue
        loop = key[name, b, "per_row"]["ms_per_round"]
        lines.append(f"| {name} | {b} | {loop:.1f} | {r['ms_per_round']:.1f} | {r['ms_per_row_round']:.1f} "
                     f"| {loop / r['ms_per_round']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drafters", default="jetspec,dflash,eagle", help="comma list of drafter specs")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0, help="torch seed (drafting is deterministic; kept for form)")
    parser.add_argument("--out", default=None, help="JSON lines file for the measurements")
    add_config_flags(parser, DraftTimingConfig)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = config_from_args(DraftTimingConfig, args)
    model, tokenizer = load_target("smollm2-135m-instruct")
    rows = []
    for spec in args.drafters.split(","):
        rows += time_draft_rounds(make_drafter(spec, model), model, tokenizer, cfg, label=spec)
    print(speedup_table(rows))
    step_ms = plain_step_ms(model, tokenizer, repeats=cfg.repeats)
    print(cost_lines(rows, step_ms))
    if args.out:
        write_jsonl(args.out, rows + [{"drafter": "plain step", "batch": 1, "ms_per_round": step_ms,
                                       "threads": torch.get_num_threads()}])


if __name__ == "__main__":
    main()
