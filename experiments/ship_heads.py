"""Copy trained SmolLM2 heads into the package and write their model card.

    python experiments/ship_heads.py --heads jetspec,dflash,eagle \
        --run jetspec=runs/curve/jetspec-l2g3-n4624 --run dflash=runs/curve/dflash-l2g3-n4624

Reads ``RUN/head`` (written by ``jetspec train``; RUN is ``RUNS/<head>`` unless ``--run`` names
another folder), the Lightning CSV log (``RUN/logs/version_*/metrics.csv``), the replay tau curve
(``RUN/tau_curve.jsonl``, if any) and the training command (``RUN/cmd.txt``, ``RUN.cmd.txt`` beside
the folder as ``experiments/data_scaling.py`` writes it, or ``RUNS/<head>.cmd``); copies the head
folders to ``jetspec/assets/heads/<head>``, draws the loss curves and writes
``jetspec/assets/heads/MODEL_CARD.md`` (data, sizes, steps, seeds, loss curves, commit).

A head of ``--heads`` whose run folder is not on this machine keeps its shipped files and its
section of the current model card (``### <head>``) unchanged, so heads can be reshipped one at a
time; the loss-curve plot then shows the reshipped heads only and says so.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
from pathlib import Path

from jetspec.drafters.head_format import seal_head_folder
from jetspec.training.callbacks import load_curve

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "jetspec" / "assets" / "heads"


def read_metrics(run: Path) -> list[dict]:
    rows = []
    for path in sorted(run.glob("logs/version_*/metrics.csv")):
        with open(path) as f:
            rows += list(csv.DictReader(f))
    return rows


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        if r.get(key) not in (None, ""):
            xs.append(int(r["step"]))
            ys.append(float(r[key]))
    return xs, ys


def card_sections(card: str) -> dict[str, str]:
    """The ``### <head>`` sections of a model card, by head name (up to the next heading or figure)."""
    sections, name, lines = {}, None, []
    for line in card.splitlines(keepends=True):
        if line.startswith("### ") or line.startswith("## ") or line.startswith("!["):
            if name:
                sections[name] = "".join(lines).rstrip() + "\n"
            name, lines = (line[4:].strip(), [line]) if line.startswith("### ") else (None, [])
        elif name:
            lines.append(line)
    if name:
        sections[name] = "".join(lines).rstrip() + "\n"
    return sections


def command_of(run: Path, runs: Path, name: str) -> str:
    for path in (run / "cmd.txt", run.parent / f"{run.name}.cmd.txt", runs / f"{name}.cmd"):
        if path.exists():  # the checkout's absolute path says nothing to a reader of the card
            prefix = f"{ROOT}/"
            words = path.read_text().strip().split(" ")
            return " ".join(w[len(prefix):] if w.startswith(prefix) else w for w in words)
    return "(not recorded)"


def plan(names: list[str], chosen: dict[str, str], runs: Path, dest: Path, previous: dict[str, str]) -> dict:
    """{head: run folder to ship, or None to keep its shipped files and card section}; every problem
    is found before anything is copied, so a refused call leaves the package as it was."""
    unknown = set(chosen) - set(names)
    if unknown:
        raise SystemExit(f"--run names heads not in --heads: {', '.join(sorted(unknown))}")
    todo = {}
    for name in names:
        run = Path(chosen[name]) if name in chosen else runs / name
        if (run / "head").is_dir():
            todo[name] = run
        elif name in chosen:  # asked for by name: a typo or an unfinished run must not keep the old head
            raise SystemExit(f"--run {name}={chosen[name]}: no {run / 'head'} (is the run finished?)")
        elif name in previous and (dest / name).is_dir():
            todo[name] = None
        else:
            raise SystemExit(f"--heads {name}: no {run / 'head'} and no shipped head to keep")
    for name in previous:  # shipped heads left out of --heads keep their section too
        if name not in todo and (dest / name).is_dir():
            todo[name] = None
    return todo


def ship_one(name: str, run: Path, runs: Path, dest: Path, commit: str, ax) -> str:
    """Copy and seal one head, plot its loss; its model-card section."""
    shutil.rmtree(dest / name, ignore_errors=True)
    shutil.copytree(run / "head", dest / name)
    seal_head_folder(dest / name)  # heads saved before checksums existed get their integrity record
    size = sum(p.stat().st_size for p in (dest / name).iterdir()) / 2**20
    rows = read_metrics(run)
    xs, ys = series(rows, "train/loss")
    if xs:
        ax.plot(xs, ys, label=name)
    val = {k: v for r in rows for k, v in r.items() if k.startswith("val/") and v}
    curve = load_curve(run / "tau_curve.jsonl") if (run / "tau_curve.jsonl").exists() else []
    taus = {k: v for k, v in (curve[-1] if curve else {}).items() if k.startswith("tau_b")}
    cfg = json.loads((dest / name / "config.json").read_text())
    steps = max([x + 1 for x in xs] + [int(c["step"]) for c in curve if "step" in c], default="?")
    return (f"### {name}\n\n- shipped on top of commit {commit}; files: `jetspec/assets/heads/{name}/` "
            f"({size:.1f} MiB, fp16 safetensors)\n"
            f"- steps: {steps}; last logged train loss: {ys[-1] if ys else float('nan'):.3f}\n"
            f"- last validation metrics: {json.dumps(val) if val else '(none logged)'}\n"
            f"- replay tau on held-out references at the end: {json.dumps(taus) if taus else '(not run)'}\n"
            f"- config: `{json.dumps(cfg)[:600]}`\n- command:\n\n```\n{command_of(run, runs, name)}\n```\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/heads")
    ap.add_argument("--heads", default="jetspec,dflash,eagle")
    ap.add_argument("--run", action="append", default=[], metavar="HEAD=FOLDER",
                    help="take this head from FOLDER instead of RUNS/HEAD")
    ap.add_argument("--dest", default=str(DEST), help="the shipped heads' folder (default: the package's)")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, dest = Path(args.runs), Path(args.dest)
    old_card = dest / "MODEL_CARD.md"
    previous = card_sections(old_card.read_text()) if old_card.exists() else {}
    todo = plan(args.heads.split(","), dict(spec.split("=", 1) for spec in args.run), runs, dest, previous)
    dest.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    lines = [previous[name] if run is None else ship_one(name, run, runs, dest, commit, ax)
             for name, run in todo.items()]
    for name, run in todo.items():
        print(f"keep the shipped {name}" if run is None else f"shipped {name} from {run}")
    kept = [name for name, run in todo.items() if run is None]
    title = "SmolLM2 head training" + (f" (not shown: {', '.join(kept)}, kept from before)" if kept else "")
    ax.set(xlabel="step", ylabel="train loss (forward KL, top-64)", title=title)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    fig.savefig(dest / "loss_curves.png", dpi=90)
    card = (Path(__file__).parent / "model_card_template.md").read_text()
    (dest / "MODEL_CARD.md").write_text(card.replace("{{HEADS}}", "\n".join(lines)))
    print(f"wrote {dest / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
