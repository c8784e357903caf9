"""Seed-level comparison of head variants: same data, same steps, several seeds, replay tau with intervals.

    python experiments/compare_heads.py --out runs/compare --data runs/data/train_v2.jsonl \
        --refs runs/data/dev_refs.jsonl --teacher-cache runs/v2/teacher_cache \
        --variant jetspec:--head=jetspec --variant dflash:--head=dflash --seeds 0,1,2 --steps 300 \
        -- --draft-vocab 8192 --vocab-data runs/data/vocab_counts.jsonl

Every (variant, seed) is one ``jetspec train`` run (``--data-seed 0`` for all, so the split and the
batch order are identical; ``--seed`` changes the initialisation and the anchors). Runs go
``--parallel`` at a time, one thread each; a finished run is never redone, an unfinished one is
started over when the script is rerun.
Each run replays the references at the end (``TauCurve``), also every ``--eval-every`` steps for
the tau curve. The report (``OUT/report.md`` and ``report.json``) gives, per variant and budget,
the mean pooled tau over seeds with a 95% Student-t interval over seeds, and for every pair of
variants the paired difference: over seeds (the run-to-run noise) and over prompts (averaged over
seeds first; what the prompt sample leaves uncertain).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

from jetspec.core.replay import mean_ci
from jetspec.training.callbacks import load_curve


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, flags = text.partition(":")
    return name, [f for f in flags.split(",") if f]


def train_command(a, name: str, flags: list[str], seed: int, extra: list[str]) -> list[str]:
    run = Path(a.out) / f"{name}-s{seed}"
    cmd = [sys.executable, "-m", "jetspec.cli", "train", "--target", a.target, "--data", a.data, "--out", str(run),
           "--max-steps", str(a.steps), "--seed", str(seed), "--data-seed", "0", "--eval-data", a.refs,
           "--eval-every", str(a.eval_every), "--eval-budgets", a.curve_budgets,
           "--eval-final-budgets", a.budgets, "--logger", "csv",
           "--checkpoint-every", str(a.steps), "--teacher-cache", a.teacher_cache, "--kl-topk", "64",
           "--overwrite"]  # an unfinished run starts over (its log and cmd.txt are kept)
    flag_args = [part for f in flags for part in f.split("=", 1)]
    return cmd + extra + flag_args  # a variant's own flags come last, so they win over the shared ones


def run_commands(commands: list[tuple[list[str], Path, Path]], parallel: int, check: bool = False) -> None:
    """Run each (command, log file, command file) with one thread, ``parallel`` at a time, in the order
    given; the log is appended to, the command line written to the command file. ``check``: stop at
    the first failure."""
    pending, running = list(commands), []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    while pending or running:
        while pending and len(running) < parallel:
            cmd, log_path, cmd_path = pending.pop(0)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            cmd_path.write_text(" ".join(cmd) + "\n")
            with open(log_path, "a") as log:
                running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log_path))
            print(f"started {log_path}", flush=True)
        time.sleep(5)
        for proc, log_path in list(running):
            if proc.poll() is not None:
                running.remove((proc, log_path))
                print(f"finished {log_path} (exit {proc.returncode})", flush=True)
                if check and proc.returncode != 0:
                    raise SystemExit(f"failed: see {log_path}")


def run_all(a, variants, extra) -> None:
    # Seed-major: every variant's seed 0 first, so an interrupted batch still holds paired runs.
    jobs = [(n, f, s) for s in a.seeds for n, f in variants]
    runs = [(Path(a.out) / f"{n}-s{s}", n, f, s) for n, f, s in jobs]
    run_commands([(train_command(a, n, f, s, extra), run / "train.log", run / "cmd.txt") for run, n, f, s in runs
                  if not (run / "head" / "config.json").exists()], a.parallel)


def final_row(run: Path, steps: int) -> dict:
    """The replay row written when the run ended; refuses runs that did not finish."""
    curve = run / "tau_curve.jsonl"
    if not (run / "head" / "config.json").exists() or not curve.exists():
        raise SystemExit(f"{run} did not finish (no saved head or no tau curve): rerun to train it")
    row = load_curve(curve)[-1]
    if row["step"] != steps:
        raise SystemExit(f"{run} stopped at step {row['step']}, not {steps}")
    return row


def curve_summary(curves: list[list[dict]], budgets: str) -> list[dict]:
    """Per logged step: tokens seen, wall time and tau at the curve budgets, mean over seeds."""
    keys = [f"tau_b{b}" for b in budgets.split(",")]
    steps = sorted({r["step"] for c in curves for r in c if all(k in r for k in keys)})
    rows = []
    for step in steps:
        at = [r for c in curves for r in c if r["step"] == step and all(k in r for k in keys)]
        rows.append({"step": step, "tokens_seen": at[0]["tokens_seen"],
                     "wall_s": sum(r["wall_s"] for r in at) / len(at),
                     **{k: mean_ci([r[k] for r in at]) for k in keys}})
    return rows


def report(a, variants) -> dict:
    budgets = [int(b) for b in a.budgets.split(",")]
    out: dict = {"steps": a.steps, "seeds": a.seeds, "budgets": budgets, "variants": {}, "pairs": {}}
    per_ref: dict = {}
    out["curves"] = {}
    for name, _ in variants:
        finals = [final_row(Path(a.out) / f"{name}-s{s}", a.steps) for s in a.seeds]
        curves = [load_curve(Path(a.out) / f"{name}-s{s}" / "tau_curve.jsonl") for s in a.seeds]
        out["curves"][name] = curve_summary(curves, a.curve_budgets)
        v = out["variants"][name] = {}
        for b in budgets:
            mean, half = mean_ci([f[f"tau_b{b}"] for f in finals])
            sets = sorted({k.split("_", 2)[2] for f in finals for k in f if k.startswith(f"tau_b{b}_")})
            v[b] = {"mean": mean, "ci": half, "per_seed": [f[f"tau_b{b}"] for f in finals],
                    "sets": {s: mean_ci([f[f"tau_b{b}_{s}"] for f in finals]) for s in sets}}
            per_ref[(name, b)] = [f[f"taus_b{b}"] for f in finals]
    pairs = list(combinations(variants, 2))
    if a.baseline:  # only "variant minus baseline", one row per variant
        base = next(v for v in variants if v[0] == a.baseline)
        pairs = [(v, base) for v in variants if v[0] != a.baseline]
    for (x, _), (y, _) in pairs:
        for b in budgets:
            seeds_x, seeds_y = per_ref[(x, b)], per_ref[(y, b)]
            by_seed = [out["variants"][x][b]["per_seed"][i] - out["variants"][y][b]["per_seed"][i]
                       for i in range(len(a.seeds))]
            n_ref = len(seeds_x[0])
            by_prompt = [sum(sx[j] - sy[j] for sx, sy in zip(seeds_x, seeds_y)) / len(seeds_x) for j in range(n_ref)]
            out["pairs"][f"{x} - {y} @ {b}"] = {"over_seeds": mean_ci(by_seed), "over_prompts": mean_ci(by_prompt),
                                                "prompts_better": sum(d > 0 for d in by_prompt),
                                                "prompts_worse": sum(d < 0 for d in by_prompt), "prompts": n_ref}
    return out


def markdown(rep: dict, title: str) -> str:
    lines = [f"### {title}", "",
             f"Replay tau (greedy, best-first trees, width 4), {rep['steps']} steps, seeds {rep['seeds']}: "
             "mean over seeds +- 95% Student-t half-width over seeds.", "",
             "| variant | " + " | ".join(f"budget {b}" for b in rep["budgets"]) + " |",
             "|---|" + "---|" * len(rep["budgets"])]
    for name, v in rep["variants"].items():
        cells = [f"{v[b]['mean']:.3f} +- {v[b]['ci']:.3f}" for b in rep["budgets"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences (first minus second). Over seeds: of the pooled tau (tokens / rounds) of "
              "each seed's run. Over prompts: of each prompt's own tau, averaged over seeds first.", "",
              "| pair @ budget | over seeds | over prompts | prompts better / worse |", "|---|---|---|---|"]
    for key, p in rep["pairs"].items():
        (ms, hs), (mp, hp) = p["over_seeds"], p["over_prompts"]
        lines.append(f"| {key} | {ms:+.3f} +- {hs:.3f} | {mp:+.3f} +- {hp:.3f} | "
                     f"{p['prompts_better']} / {p['prompts_worse']} of {p['prompts']} |")
    lines += ["", "Tau curve during training (replay, mean over seeds; tokens = training tokens seen, "
              "wall = training time of one run sharing 2 cores with another):", ""]
    for name, rows in rep["curves"].items():
        keys = [k for k in rows[0] if k.startswith("tau_b")] if rows else []
        cells = "; ".join(f"step {r['step']} ({r['tokens_seen'] / 1000:.0f}k tok, {r['wall_s'] / 60:.0f} min): "
                          + ", ".join(f"{r[k][0]:.3f}" for k in keys) for r in rows)
        lines.append(f"- {name}: {cells}")
    return "\n".join(lines) + "\n"


def add_run_flags(p: argparse.ArgumentParser, eval_every: int, budgets: str) -> None:
    """The flags every head-training experiment here shares: where runs go, the target, the replay
    references and teacher cache, the tau curve, how many runs at a time, report only."""
    p.add_argument("--out", required=True)
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--refs", required=True, help="replay references (jetspec references)")
    p.add_argument("--teacher-cache", required=True)
    p.add_argument("--eval-every", type=int, default=eval_every)
    p.add_argument("--budgets", default=budgets, help="budgets of the final replay (the report)")
    p.add_argument("--curve-budgets", default="16", help="budgets of the replays during training")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--report-only", action="store_true")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_flags(p, eval_every=100, budgets="8,16,32")
    p.add_argument("--data", required=True)
    p.add_argument("--variant", action="append", required=True, metavar="NAME:--flag=value,...")
    p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--baseline", default=None, help="report only the differences to this variant")
    p.add_argument("--title", default="Head variants, several seeds")
    p.add_argument("--report-name", default=None, help="OUT/<name>.md and .json (default: report)")
    a, extra = p.parse_known_args()
    extra = [e for e in extra if e != "--"]
    variants = [parse_variant(v) for v in a.variant]
    if not a.report_only:
        run_all(a, variants, extra)
    rep = report(a, variants)
    name = "report" if a.report_name is None else a.report_name
    Path(a.out, f"{name}.json").write_text(json.dumps(rep, indent=1, default=str))
    Path(a.out, f"{name}.md").write_text(markdown(rep, a.title))
    print(markdown(rep, a.title))


if __name__ == "__main__":
    main()
