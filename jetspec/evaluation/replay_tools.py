"""Replay reference sets and replay tables: what ``jetspec references`` and ``jetspec replay-table`` run.

A reference set holds prompts and the target's greedy answers (plain decoding), as token ids;
``write_references`` makes one. The rows (``input_ids``, ``response_start``, ``set``) feed
``jetspec.core.replay.replay``, ``replay_rows`` below and ``jetspec train --eval-data``. Writing is
resumable: prompts whose reference is already in the output file are skipped, and every reference
is appended as soon as it is made, so an interrupted run keeps what it finished.

A replay table (``replay_rows``, ``replay_markdown``) gives the replay tau of several drafters per
prompt set and budget, with no target forward per round. Drafter specs are those of ``jetspec
bench`` (registered names, heads from the head folder, ``label=folder`` for any saved head, ``a+b``
composites). Greedy, best-first trees of ``width`` x ``depth`` (clamped to what each drafter can
draft). Each row holds the pooled tau, tau per prompt set, the per-reference taus, the draft+tree
time per round, a modelled speedup (``ReplayReport.modelled_speedup``), the per-depth acceptance
and the mean tree depth. Budget scaling (``scaling_markdown``, ``jetspec.evaluation.plots.replay_plots``)
is the same rows over many budgets: tau against the budget and where acceptance falls off with depth.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from jetspec.core.config import ConfigError, check_at_least, read_tuple_fields
from jetspec.core.jsonl import check_not_input
from jetspec.core.prompts import chat_ids, eos_ids, read_jsonl, read_prompts

log = logging.getLogger(__name__)


@dataclass
class ReferencesConfig:
    """Everything ``jetspec references`` can vary. The CLI flags are generated from these fields."""

    prompts: str
    """Prompt file (JSON lines with 'prompt' and optional 'set'), e.g. runs/data/dev.jsonl."""
    out: str
    """Reference file to write (JSON lines); existing rows are kept and their prompts skipped."""
    target: str = "smollm2-135m-instruct"
    """Target model: built-in name, local folder or Hub id."""
    per_set: int = 8
    """First N prompts of every prompt set."""
    max_new_tokens: int = 128
    """Longest greedy answer per prompt (fewer if the target ends its answer)."""
    threads: int = 1
    """torch CPU threads (set by the command, not by the library)."""

    def __post_init__(self) -> None:
        for name in ("per_set", "max_new_tokens", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        check_not_input(self.out, self.prompts, "--out", "--prompts")


def pick_prompts(rows: list[dict], per_set: int) -> list[dict]:
    """The first ``per_set`` rows of every set, in file order; a row without a set is in 'default'."""
    taken: dict[str, int] = {}
    picked = []
    for r in rows:
        s = r.get("set") or "default"
        if taken.get(s, 0) < per_set:
            taken[s] = taken.get(s, 0) + 1
            picked.append({**r, "set": s})
    return picked


def write_references(model, tokenizer, cfg: ReferencesConfig) -> int:
    """Append the missing references of ``cfg.prompts`` to ``cfg.out``; returns how many were written."""
    from jetspec.core.replay import make_references

    rows = [{**r, "ids": chat_ids(tokenizer, r["prompt"])} for r in pick_prompts(read_prompts(cfg.prompts),
                                                                                   cfg.per_set)]
    out = Path(cfg.out)
    done = {tuple(x["input_ids"][: x["response_start"]]) for x in read_jsonl(out)} if out.exists() else set()
    rows = [r for r in rows if tuple(r["ids"]) not in done]
    eos = eos_ids(tokenizer, model)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for r in rows:  # one at a time so an interrupted run keeps what it finished
            ref = make_references(model, [r["ids"]], cfg.max_new_tokens, [r["set"]], eos, progress=False)[0]
            f.write(json.dumps(ref.to_row()) + "\n")
            f.flush()
            log.info("%s: %d tokens", ref.set, len(ref.input_ids) - ref.response_start)
    return len(rows)


@dataclass
class ReplayTableConfig:
    """Everything ``jetspec replay-table`` can vary. The CLI flags are generated from these fields."""

    refs: str
    """Reference file (``jetspec references``)."""
    drafters: tuple[str, ...]
    """Drafter specs, comma list: names, label=folder, a+b composites, name:key=value options."""
    target: str = "smollm2-135m-instruct"
    """Target model: built-in name, local folder or Hub id."""
    head_dir: Optional[str] = None
    """Folder with trained heads in <dir>/<drafter name>; default: jetspec/assets/heads."""
    budgets: tuple[int, ...] = (8, 16, 32)
    """Drafted nodes per round, root excluded (comma list)."""
    width: int = 4
    """Candidates per depth the best-first tree may use."""
    depth: int = 8
    """Deepest tree level (clamped to what a drafter can produce)."""
    threads: int = 1
    """torch CPU threads (set by the command, not by the library)."""
    node_costs: tuple[float, ...] = (0.0,)
    """Tree node_cost values to replay (comma list; 0 = whole budget)."""
    verify_slope: float = 0.035
    """Verify cost per drafted node in plain-decoding steps, for the modelled speedup (`jetspec roofline`
    fits it; 0.035 on the 2-core CPU of the earlier replay tables)."""
    forward_ms: float = 71.2
    """One plain decoding step in ms, to turn draft time into steps (`jetspec roofline` measures it)."""
    out: Optional[str] = None
    """JSON file with the rows and per-reference taus."""
    md: Optional[str] = None
    """Write the Markdown table here (for `jetspec benchmarks --include`)."""
    title: str = "Replay tau per drafter (greedy, held-out references)"
    """Heading of the Markdown table."""
    plots: Optional[str] = None
    """Folder for tau_vs_budget.png and depth_acceptance.png (per-depth acceptance at each drafter's largest
    budget)."""
    scaling: bool = False
    """Also render a drafter x budget tau table and each drafter's per-depth acceptance (budget scaling)."""

    def __post_init__(self) -> None:
        read_tuple_fields(self)
        check_at_least(self, ("budgets", "threads"))
        check_at_least(self, ("node_costs",), 0)
        if not self.drafters:
            raise ConfigError("drafters", "names no drafter")


def _row(rep, label: str, spec: str, budget: int, cost: float, sets: list[str], seconds: float,
         cfg: ReplayTableConfig) -> dict:
    """One table row from a ``Replay``: taus, time and tree size per round, modelled speedup."""
    row = {"drafter": label if cost == 0 else f"{label}(c={cost:g})", "spec": spec, "budget": budget,
           "node_cost": cost, "tau": rep.pooled_tau(), **{f"tau_{s}": rep.pooled_tau(s) for s in sets},
           "taus": rep.taus(), "sets": rep.sets, "rounds": sum(len(x) for x in rep.lengths), "seconds": seconds,
           "depth_acceptance": rep.depth_acceptance()}
    row["tree_depth_mean"] = sum(map(sum, rep.tree_depths)) / max(1, row["rounds"])
    row["draft_ms_per_round"] = 1000 * seconds / row["rounds"]
    row["nodes_per_round"] = sum(map(sum, rep.sizes)) / row["rounds"]
    row["modelled_speedup"] = rep.modelled_speedup(cfg.verify_slope, row["draft_ms_per_round"] / cfg.forward_ms)
    return row


def replay_rows(cfg: ReplayTableConfig, model, refs) -> list[dict]:
    """Replay every drafter of ``cfg`` at every budget and node cost; returns the rows.

    Every drafter is built before any replay runs: one that cannot run here (unknown name, a head
    for another target, ...) raises ``DrafterUnavailable`` naming all such specs, rather than
    leaving it out of the table. Taps are captured once per set of tap layers and shared by the
    drafters that read them.
    """
    from jetspec.core.replay import drafter_taps, replay
    from jetspec.evaluation.drafter_specs import DEFAULT_HEAD_DIR, DrafterUnavailable, make_drafter, spec_label
    from jetspec.trees import BestFirstBuilder

    sets = sorted({r.set for r in refs})
    head_dir = Path(cfg.head_dir) if cfg.head_dir else DEFAULT_HEAD_DIR
    taps_by_layers: dict = {}
    drafters, unavailable = {}, []
    for spec in cfg.drafters:
        try:
            drafters[spec] = make_drafter(spec, model, head_dir)
        except DrafterUnavailable as err:
            unavailable.append(f"'{spec}': {err}")
    if unavailable:
        raise DrafterUnavailable("cannot use drafter " + "; ".join(unavailable))
    rows = []
    for spec, drafter in drafters.items():
        taps = drafter_taps(drafter, model, refs, taps_by_layers)
        depth = min(cfg.depth, drafter.max_depth or cfg.depth)
        for b, c in itertools.product(cfg.budgets, cfg.node_costs):
            t0 = time.perf_counter()
            rep = replay(drafter, BestFirstBuilder(budget=b, width=cfg.width, depth=depth, node_cost=c), refs,
                         taps=taps)
            row = _row(rep, spec_label(spec), spec, b, c, sets, time.perf_counter() - t0, cfg)
            rows.append(row)
            log.info("%-28s b=%3d tau %.3f %s  (%.1f ms/round incl. tree, %.1f nodes, modelled x%.2f)",
                     row["drafter"], b, row["tau"], " ".join(f"{s} {row[f'tau_{s}']:.3f}" for s in sets),
                     row["draft_ms_per_round"], row["nodes_per_round"], row["modelled_speedup"])
    return rows


def replay_markdown(rows: list[dict], cfg: ReplayTableConfig, n_refs: int, sets: list[str]) -> str:
    """The rows as a Markdown section (a heading, what was measured, one table row per result)."""
    md = [f"### {cfg.title}", "",
          f"{n_refs} references ({', '.join(sets)}), best-first trees of width {cfg.width}, depth <= {cfg.depth}, "
          f"{cfg.threads} thread(s); tau pooled over references; draft+tree time per round from the replay. "
          f"Modelled x ar = tokens / sum over rounds of (1 + draft ms / {cfg.forward_ms:g} + {cfg.verify_slope:g} * "
          "drafted nodes): a cost model for ranking settings, not a timing. `name(c=x)`: cost-aware tree "
          "with node_cost x (`trees/best_first.py`).", "",
          "| drafter | budget | tau (all) | " + " | ".join(sets) + " | draft+tree ms/round | nodes/round "
          "| modelled x ar |",
          "|---|---|---|" + "---|" * len(sets) + "---|---|---|"]
    for r in rows:
        md.append(f"| {r['drafter']} | {r['budget']} | {r['tau']:.3f} | " +
                  " | ".join(f"{r[f'tau_{s}']:.3f}" for s in sets) +
                  f" | {r['draft_ms_per_round']:.1f} | {r['nodes_per_round']:.1f} | {r['modelled_speedup']:.2f} |")
    return "\n".join(md)


def scaling_markdown(rows: list[dict], title: str = "Replay tau against the budget") -> str:
    """A drafter x budget table of tau (mean tree depth in brackets), then each drafter's per-depth
    acceptance at its largest budget: how far spending more nodes turns into longer accepted prefixes."""
    budgets = sorted({r["budget"] for r in rows})
    names = list(dict.fromkeys(r["drafter"] for r in rows))
    cell = {(r["drafter"], r["budget"]): r for r in rows}
    md = [f"### {title}", "", "tau (committed tokens per round), mean tree depth in brackets.", "",
          "| drafter | " + " | ".join(f"budget {b}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for n in names:
        md.append(f"| {n} | " + " | ".join(
            f"{cell[n, b]['tau']:.3f} ({cell[n, b]['tree_depth_mean']:.1f})" if (n, b) in cell else "-"
            for b in budgets) + " |")
    deepest = max((len(r["depth_acceptance"]) for r in rows), default=0)
    md += ["", "Per-depth acceptance P(depth d accepted | the tree reached d) at each drafter's largest budget.", "",
           "| drafter | budget | " + " | ".join(f"d={d}" for d in range(1, deepest + 1)) + " |",
           "|---|---|" + "---|" * deepest]
    for n in names:
        r = max((x for x in rows if x["drafter"] == n), key=lambda x: x["budget"])
        acc = r["depth_acceptance"] + [None] * (deepest - len(r["depth_acceptance"]))
        md.append(f"| {n} | {r['budget']} | " + " | ".join("-" if a is None else f"{a:.2f}" for a in acc) + " |")
    return "\n".join(md)
