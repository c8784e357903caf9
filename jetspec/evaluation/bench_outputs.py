"""The files a benchmark (``jetspec.evaluation.bench``) leaves behind, and its Markdown tables.

    results.json   {"machine", "config", "skipped", "divergences", "rows"}: what the bench returns
    runs.jsonl     one line per single generate call, for noise analysis
    results.md     the rows as a Markdown table, with the machine and settings above it
    *.png          three pictures, drawn by ``jetspec.evaluation.plots``

``start_outputs`` runs before anything is measured: it refuses an ``out`` that is a file, and moves
an earlier run's files into ``out/earlier/<time>/`` (a second run never replaces the first one's
results). ``runs.jsonl`` is then written line by line as the runs are measured, so an interrupted
benchmark keeps every run it finished; ``write_outputs`` writes the rest at the end.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)
OUTPUT_FILES = ("results.json", "results.md", "runs.jsonl")  # and the PNGs beside them

COLUMNS = [("drafter", "drafter"), ("tree", "tree"), ("budget", "budget"), ("prompt_set", "set"),
           ("n_prompts", "prompts"), ("tau", "tau"), ("tokens_per_s", "tok/s"),
           ("tokens_per_s_e2e", "tok/s e2e"), ("speedup_vs_ar", "x ar"), ("speedup_vs_hf", "x hf"),
           ("draft_forwards_per_round", "draft fwd/round"), ("draft_ms", "draft ms"), ("tree_ms", "tree ms"),
           ("verify_ms", "verify ms"), ("accept_ms", "accept ms"), ("commit_ms", "commit ms"),
           ("matches_ar", "= ar")]
# With several batch sizes (docs/design.md §7.8): the batch size, per-row speed and the verify ratio join in.
BATCH_COLUMNS = [c for col in COLUMNS for c in {
    "budget": [col, ("batch_size", "batch")], "tokens_per_s": [col, ("tokens_per_s_per_row", "tok/s per row")],
    "verify_ms": [col, ("verify_ratio", "verify / ar step")]}.get(col[0], [col])]


def columns_for(rows: list[dict]) -> list[tuple[str, str]]:
    """``COLUMNS``, or ``BATCH_COLUMNS`` when the rows hold batch sizes other than 1."""
    return BATCH_COLUMNS if any(r.get("batch_size", 1) != 1 for r in rows) else COLUMNS


def markdown_table(rows: list[dict], columns=COLUMNS) -> str:
    """Rows as a Markdown table; ``columns`` = [(row key, header)]; missing values print as '-'."""
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def start_outputs(out: Path) -> None:
    """Before measuring: ``out`` must be a folder (created if missing); an earlier run's files in it
    move to ``out/earlier/<time>/``. Raises ``ValueError`` naming ``--out`` for a file."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder: pass a folder for the benchmark's files")
    out.mkdir(parents=True, exist_ok=True)
    earlier = [f for f in out.iterdir() if f.is_file() and (f.name in OUTPUT_FILES or f.suffix == ".png")]
    if earlier:
        keep = out / "earlier" / time.strftime("%Y%m%d-%H%M%S", time.localtime(max(f.stat().st_mtime for f in earlier)))
        keep.mkdir(parents=True, exist_ok=True)
        for f in earlier:
            f.rename(keep / f.name)
        log.warning("%s held an earlier run's results: moved them to %s", out, keep)
    (out / "runs.jsonl").write_text("")


def run_line(run: dict) -> str:
    """One measured run as a line of runs.jsonl (the generated tokens left out)."""
    return json.dumps({k: v for k, v in run.items() if k != "tokens"}) + "\n"


def write_outputs(result: dict, runs: list[dict], out: Path, plots: bool = True) -> None:
    """Write results.json, runs.jsonl (again, complete), results.md and (if ``plots``) the PNGs into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    with open(out / "runs.jsonl", "w") as f:
        for r in runs:
            f.write(run_line(r))
    m, c = result["machine"], result["config"]
    head = [f"# jetspec bench: {c['target']}", "",
            f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['threads']} torch threads, "
            f"torch {m['torch']}, transformers {m['transformers']}; load average {m.get('load_average')} "
            f"at start, {m.get('load_average_end')} at the end.", "",
            f"Tree {c['tree']}, width {c['width']}, depth {c['depth']}, temperature {c['temperature']}, "
            f"max_new_tokens {c['max_new_tokens']}, repeats {c['repeats']}. tok/s is decode-only "
            f"(prefill excluded); x ar / x hf are speedups over plain decoding in this harness and over "
            f"HF generate; '= ar' is the share of outputs identical to plain greedy decoding.", ""]
    notes = [f"- skipped {s['drafter']}: {s['reason']}" for s in result["skipped"]]
    notes += [divergence_note(d) for d in result.get("divergences", [])]
    (out / "results.md").write_text("\n".join(head + notes + ([""] if notes else [])
                                              + [markdown_table(result["rows"], columns_for(result["rows"])), ""]))
    if plots:
        from jetspec.evaluation.plots import plot_batch_sizes, plot_results  # matplotlib only when asked for

        smallest = min(c.get("batch_sizes") or [1])  # the budget plots show one batch size
        plot_results([r for r in result["rows"] if r.get("batch_size", 1) == smallest], out)
        if len(c.get("batch_sizes") or [1]) > 1:
            plot_batch_sizes(result["rows"], out / "tokens_per_s_vs_batch.png")


def divergence_note(d: dict) -> str:
    """One line on a greedy output that left plain decoding (see ``jetspec.evaluation.bench.divergence``)."""
    gap = "n/a" if d["logit_gap"] is None else f"{d['logit_gap']:.2g}"
    return (f"- {d['drafter']} (budget {d['budget']}) left plain greedy decoding on {d['prompt_set']} prompt "
            f"{d['prompt_index']} at new token {d['position']}; the target's logit gap between the two "
            f"tokens there: {gap}")
