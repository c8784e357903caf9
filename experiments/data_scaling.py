"""The data-scaling curve: replay tau of a head against the number of target-written rows it trained on.

    python experiments/data_scaling.py --regen runs/regen/greedy.jsonl --sizes 1156,2312,4624 \\
        --variant jetspec:--head=jetspec --variant dflash:--head=dflash --only dflash=4624 \\
        --out runs/curve --refs runs/data/dev_refs.jsonl --teacher-cache runs/curve/teacher_cache \\
        --epochs 2 -- --draft-vocab 8192 --block-size 8 --lr 1e-3 --anchors 48 --on-policy --direct-path

Every point trains on the first N rows (in prompt-id order) of one ``jetspec regenerate`` file, so
a smaller set is a prefix of every larger one and a single teacher cache serves them all (fill it
for the largest set with ``jetspec train --cache-only``). Every point sees the same number of
epochs: its steps are ``ceil(epochs * train rows / batch)``, so the learning-rate schedule ends
after the same number of passes over the data whatever its size. A point is one ``jetspec train``
run in ``OUT/<variant>-n<N>`` (its command and log beside it, ``.cmd.txt`` and ``.log``), started with
``--resume last`` once it has a checkpoint: rerunning the script continues an interrupted run exactly
and leaves a finished one alone.

A variant (``NAME:--flag=value,...``, as in ``compare_heads.py``) is a head and its own flags, which
come after the shared ones; a variant's ``--epochs=E`` is this script's (its points see E epochs, the
steps-against-rows control); ``--only NAME=N+N`` trains that variant at those sizes only (a lever
compared at one size, DFlash at the largest). The first variant is the baseline of the paired
differences.

The report (``OUT/report.md``, ``report.json`` and two PNGs) gives, per point, the pooled replay
tau at each final budget with the 95% Student-t interval over prompts, per set, and the mean
last validation loss with the training loss just before it. Their gap answers the question the curve is for: a head
whose validation loss sits on its training loss has not yet used up its data (more steps or a
larger head help before more rows do); a growing gap means the rows run out first. The second PNG
is each run's replay tau during training against the training tokens seen.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_heads import add_run_flags, parse_variant, run_commands  # noqa: E402  (a script beside this one)
from ship_heads import read_metrics  # noqa: E402  (the Lightning CSV logs of a run)

from jetspec.core.jsonl import read_jsonl, write_jsonl  # noqa: E402
from jetspec.core.replay import mean_ci  # noqa: E402
from jetspec.evaluation.plots import plot_ablation, plot_tau_curves  # noqa: E402
from jetspec.training.callbacks import load_curve  # noqa: E402


def prefix_files(regen: Path, sizes: list[int], out: Path) -> dict[int, Path]:
    """``OUT/rows-N.jsonl``: the first N rows by prompt id of ``regen`` (written once, then reused)."""
    paths = {n: out / f"rows-{n}.jsonl" for n in sizes}
    if all(p.exists() for p in paths.values()):
        return paths
    rows = sorted(read_jsonl(regen), key=lambda r: int(r["id"]))
    if len(rows) < max(sizes):
        raise SystemExit(f"--regen {regen} holds {len(rows)} rows, fewer than the largest size {max(sizes)}")
    out.mkdir(parents=True, exist_ok=True)
    for n, path in paths.items():
        write_jsonl(path, rows[:n])
    return paths


def steps_for(rows: int, epochs: float, batch_size: int, val_fraction: float) -> int:
    """Optimizer steps for ``epochs`` passes over the training share of ``rows`` rows."""
    train = rows - int(round(rows * val_fraction))  # TokenDataModule's split
    return max(1, math.ceil(epochs * train / batch_size))


def variant_epochs(a, flags: list[str]) -> tuple[float, list[str]]:
    """A variant's own ``--epochs=E`` (else the script's ``--epochs``) and the flags left for ``jetspec train``."""
    own = [f for f in flags if f.startswith("--epochs=")]
    epochs = float(own[-1].split("=", 1)[1]) if own else a.epochs
    return epochs, [f for f in flags if not f.startswith("--epochs=")]


def run_name(variant: str, rows: int) -> str:
    return f"{variant}-n{rows}"


def train_command(a, name: str, flags: list[str], rows: int, data: Path, extra: list[str]) -> list[str]:
    run = Path(a.out) / run_name(name, rows)
    epochs, flags = variant_epochs(a, flags)
    steps = steps_for(rows, epochs, a.batch_size, a.val_fraction)
    # A run with a checkpoint continues exactly; one killed before its first checkpoint starts over.
    start = ["--resume", "last"] if (run / "checkpoints" / "last.ckpt").exists() else ["--overwrite"]
    return [sys.executable, "-m", "jetspec.cli", "train", "--target", a.target,
            "--data", str(data), "--out", str(run), *start, "--max-steps", str(steps),
            "--seed", str(a.seed), "--data-seed", "0", "--batch-size", str(a.batch_size),
            "--max-length", str(a.max_length), "--val-fraction", str(a.val_fraction),
            "--val-every", str(a.val_every), "--eval-data", a.refs, "--eval-every", str(a.eval_every),
            "--eval-budgets", a.curve_budgets, "--eval-final-budgets", a.budgets, "--logger", "csv",
            "--checkpoint-every", str(a.checkpoint_every), "--teacher-cache", a.teacher_cache,
            "--kl-topk", "64", "--save-dtype", "float16", *extra, *[x for f in flags for x in f.split("=", 1)]]


def finished(run: Path) -> bool:
    return (run / "head" / "config.json").exists()


def run_all(a, jobs: list[tuple[str, list[str], int, Path]], extra: list[str]) -> None:
    """Run the unfinished points, ``--parallel`` at a time, one thread each; largest first (longest).
    A point's command and log lie beside its run folder (``--overwrite`` would remove them inside it)."""
    todo = sorted((j for j in jobs if not finished(Path(a.out) / run_name(j[0], j[2]))), key=lambda j: -j[2])
    out = Path(a.out)
    run_commands([(train_command(a, n, f, rows, data, extra), out / f"{run_name(n, rows)}.log",
                   out / f"{run_name(n, rows)}.cmd.txt") for n, f, rows, data in todo], a.parallel, check=True)


def losses_at_end(run: Path, window: int = 200) -> dict:
    """The last validation (loss and depth-1 top-1 agreement) and the mean training loss over the
    ``window`` steps before it, so the two losses compare the head at the same point (CSV logs)."""
    rows = read_metrics(run)
    val = [(int(r["step"]), float(r["val/loss"]), float(r.get("val/agree_d1") or "nan"))
           for r in rows if r.get("val/loss")]
    if not val:
        return {"val_step": None, "train_loss": None, "val_loss": None, "val_agree_d1": None}
    step, loss, agree = max(val)
    train = [float(r["train/loss"]) for r in rows if r.get("train/loss") and step - window < int(r["step"]) <= step]
    return {"val_step": step, "train_loss": sum(train) / len(train) if train else None, "val_loss": loss,
            "val_agree_d1": agree}


def point(a, name: str, flags: list[str], rows: int, data: Path) -> dict:
    """One point of the curve from its finished run (refused when the run did not reach its steps)."""
    run = Path(a.out) / run_name(name, rows)
    epochs, _ = variant_epochs(a, flags)
    steps = steps_for(rows, epochs, a.batch_size, a.val_fraction)
    curve = load_curve(run / "tau_curve.jsonl") if (run / "tau_curve.jsonl").exists() else []
    if not finished(run) or not curve or curve[-1]["step"] != steps:
        raise SystemExit(f"{run} has not finished its {steps} steps: rerun without --report-only")
    final = curve[-1]
    tokens = sum(len(r["input_ids"]) - int(r["response_start"]) for r in read_jsonl(data))
    budgets = [int(b) for b in a.budgets.split(",")]
    sets = sorted({k.split("_", 2)[2] for k in final if k.startswith(f"tau_b{budgets[0]}_")})
    return {"variant": name, "rows": rows, "response_tokens": tokens, "epochs": epochs, "steps": steps,
            "tokens_seen": final["tokens_seen"], "wall_s": final["wall_s"], **losses_at_end(run),
            "tau": {b: {"pooled": final[f"tau_b{b}"], "prompt_ci": mean_ci(final[f"taus_b{b}"])[1],
                        "per_prompt": final[f"taus_b{b}"],
                        "sets": {s: final[f"tau_b{b}_{s}"] for s in sets}} for b in budgets},
            "curve": [{"tokens_seen": r["tokens_seen"], **{k: v for k, v in r.items() if k.startswith("tau_b")
                                                              and not k.startswith("taus")}} for r in curve]}


def pairs(points: list[dict], budgets: list[int]) -> list[dict]:
    """Every variant minus the first (the baseline) at each size both have, and a variant with epochs
    of its own minus the baseline point of as many steps on other rows (steps against rows): the mean
    per-prompt difference of tau with its 95% interval over prompts, and the prompts better / worse."""
    first = [p for p in points if p["variant"] == points[0]["variant"]]
    base, by_steps = {p["rows"]: p for p in first}, {p["steps"]: p for p in first}
    out = []
    for p in points:
        matches = [base.get(p["rows"])]
        if p["epochs"] != points[0]["epochs"] and by_steps.get(p["steps"]) not in (None, matches[0]):
            matches.append(by_steps[p["steps"]])
        for q in matches:
            if q is None or q is p:
                continue
            label = f"{p['variant']} - {q['variant']}" if q["rows"] == p["rows"] else (
                f"{p['variant']} ({p['rows']:,} rows) - {q['variant']} ({q['rows']:,} rows), {p['steps']:,} steps each")
            for b in budgets:
                diffs = [x - y for x, y in zip(p["tau"][b]["per_prompt"], q["tau"][b]["per_prompt"])]
                mean, half = mean_ci(diffs)
                out.append({"pair": label, "rows": p["rows"], "budget": b, "mean": mean, "ci": half,
                            "better": sum(d > 0 for d in diffs), "worse": sum(d < 0 for d in diffs)})
    return out


def markdown(rep: dict) -> str:
    budgets = rep["budgets"]
    lines = [f"Replay tau (greedy, best-first trees of width 4) on {rep['refs']} held-out references after "
             f"{rep['epochs']:g} epochs (unless the row says) over the first N target-written rows; "
             "+- is the 95% Student-t "
             "half-width over prompts (of the per-prompt tau). The last validation (2% of the rows held "
             "out; at step `val step`) gives the validation loss and the depth-1 top-1 agreement; the "
             "training loss is the mean over the 200 steps before it.", "",
             "| variant | rows | response tokens | epochs | steps | " + " | ".join(f"tau @ {b}" for b in budgets)
             + " | per set @ " + str(budgets[0]) + " | val step | train loss | val loss | val depth-1 agreement |",
             "|---|---|---|---|---|" + "---|" * len(budgets) + "---|---|---|---|---|"]
    fmt = (lambda x: "-" if x is None else f"{x:.3f}")
    for p in rep["points"]:
        taus = " | ".join(f"{p['tau'][b]['pooled']:.3f} +- {p['tau'][b]['prompt_ci']:.3f}" for b in budgets)
        sets = ", ".join(f"{s} {v:.2f}" for s, v in p["tau"][budgets[0]]["sets"].items())
        lines.append(f"| {p['variant']} | {p['rows']:,} | {p['response_tokens']:,} | {p['epochs']:g} | "
                     f"{p['steps']:,} | {taus} | "
                     f"{sets} | {p['val_step']} | {fmt(p['train_loss'])} | {fmt(p['val_loss'])} | "
                     f"{fmt(p['val_agree_d1'])} |")
    if rep["pairs"]:
        lines += ["", "Paired over prompts (per-prompt tau, first minus second, 95% interval):", "",
                  "| pair | rows | budget | difference | prompts better / worse |", "|---|---|---|---|---|"]
        lines += [f"| {d['pair']} | {d['rows']:,} | {d['budget']} | {d['mean']:+.3f} +- {d['ci']:.3f} | "
                  f"{d['better']} / {d['worse']} |" for d in rep["pairs"]]
    return "\n".join(lines) + "\n"


def report(a, jobs: list[tuple[str, list[str], int, Path]]) -> dict:
    budgets = [int(b) for b in a.budgets.split(",")]
    refs = sum(1 for _ in read_jsonl(a.refs))
    points = [point(a, name, flags, rows, data) for name, flags, rows, data in jobs]
    rep = {"epochs": a.epochs, "budgets": budgets, "refs": refs, "points": points,
           "pairs": pairs(points, budgets)}
    out = Path(a.out)
    (out / "report.json").write_text(json.dumps(rep, indent=1))
    (out / "report.md").write_text(markdown(rep))
    names = dict.fromkeys(p["variant"] for p in points)
    # the baseline at every budget, each lever at the first only (more groups than colours would repeat them)
    groups = {f"{n} @ {b}": [(f"{p['rows']:,}", p["tau"][b]["pooled"], p["tau"][b]["prompt_ci"])
                             for p in points if p["variant"] == n]
              for n in names for b in (budgets if n == points[0]["variant"] else budgets[:1])}
    img = Path(a.img_dir)
    plot_ablation(groups, "target-written rows", "replay tau", f"Data scaling ({a.epochs:g} epochs)",
                  img / "data_scaling.png")
    key = f"tau_b{a.curve_budgets.split(',')[0]}"
    curves = {run_name(p["variant"], p["rows"]): [(r["tokens_seen"], r[key]) for r in p["curve"] if key in r]
              for p in points}
    plot_tau_curves(curves, "training tokens seen", f"replay tau @ {key[5:]}", "Tau during training",
                    img / "data_scaling_curves.png")
    return rep


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--regen", required=True, help="jetspec regenerate output (rows with an id)")
    p.add_argument("--sizes", required=True, type=lambda t: sorted(int(x) for x in t.split(",")))
    p.add_argument("--variant", action="append", default=None, metavar="NAME:--flag=value,...",
                   help="a head and its flags (default: jetspec:--head=jetspec); the first is the baseline")
    p.add_argument("--only", default=None, metavar="NAME=N+N,...", help="train that variant at these sizes only")
    add_run_flags(p, eval_every=250, budgets="16,64")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--val-fraction", type=float, default=0.02)
    p.add_argument("--val-every", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--img-dir", default="docs/results/img")
    p.add_argument("--prefixes-only", action="store_true",
                   help="write OUT/rows-N.jsonl and stop (to fill the teacher cache for the largest first)")
    a, extra = p.parse_known_args()
    extra = [e for e in extra if e != "--"]
    if a.prefixes_only:
        print("\n".join(str(path) for path in prefix_files(Path(a.regen), a.sizes, Path(a.out)).values()))
        return
    variants = [parse_variant(v) for v in (a.variant or ["jetspec:--head=jetspec"])]
    only = {k: {int(n) for n in v.split("+")} for k, v in (kv.split("=") for kv in a.only.split(","))} if a.only else {}
    unknown = set(only) - {n for n, _ in variants}
    if unknown:
        raise SystemExit(f"--only names no variant: {', '.join(sorted(unknown))}")
    data = prefix_files(Path(a.regen), a.sizes, Path(a.out))
    jobs = [(n, f, rows, data[rows]) for n, f in variants for rows in a.sizes if rows in only.get(n, a.sizes)]
    if not a.report_only:
        run_all(a, jobs, extra)
    print(markdown(report(a, jobs)))


if __name__ == "__main__":
    main()
