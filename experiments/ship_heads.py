"""Copy trained SmolLM2 heads into the package and write their model card.

    python experiments/ship_heads.py --runs runs/heads --heads jetspec,dflash,eagle \
        --run jetspec=runs/compare/jetspec-s0 --run dflash=runs/compare/dflash-s0

Reads ``RUN/head`` (written by ``jetspec train``; RUN is ``RUNS/<head>`` unless ``--run`` names
another folder), the Lightning CSV log (``RUN/logs/version_*/metrics.csv``), the replay tau curve
(``RUN/tau_curve.jsonl``, if any) and the training command (``RUN/cmd.txt`` or ``RUNS/<head>.cmd``);
copies the head folders to ``jetspec/assets/heads/<head>``, draws the loss curves and writes
``jetspec/assets/heads/MODEL_CARD.md`` (data, sizes, steps, seeds, loss curves, commit).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
from pathlib import Path

from jetspec.drafters.head_format import seal_head_folder

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/heads")
    ap.add_argument("--heads", default="jetspec,dflash,eagle")
    ap.add_argument("--run", action="append", default=[], metavar="HEAD=FOLDER",
                    help="take this head from FOLDER instead of RUNS/HEAD")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = Path(args.runs)
    DEST.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    lines = []
    chosen = dict(spec.split("=", 1) for spec in args.run)
    for name in args.heads.split(","):
        run = Path(chosen[name]) if name in chosen else runs / name
        src = run / "head"
        if not src.is_dir():
            print(f"skip {name}: no {src}")
            continue
        shutil.rmtree(DEST / name, ignore_errors=True)
        shutil.copytree(src, DEST / name)
        seal_head_folder(DEST / name)  # heads saved before checksums existed get their integrity record
        size = sum(p.stat().st_size for p in (DEST / name).iterdir()) / 2**20
        rows = read_metrics(run)
        xs, ys = series(rows, "train/loss")
        if xs:
            ax.plot(xs, ys, label=name)
        val = {k: v for r in rows for k, v in r.items() if k.startswith("val/") and v}
        cmd_file = run / "cmd.txt" if (run / "cmd.txt").exists() else runs / f"{name}.cmd"
        cmd = cmd_file.read_text().strip() if cmd_file.exists() else "(not recorded)"
        curve = []
        if (run / "tau_curve.jsonl").exists():
            curve = [json.loads(x) for x in (run / "tau_curve.jsonl").read_text().splitlines() if x.strip()]
        taus = {k: v for k, v in (curve[-1] if curve else {}).items() if k.startswith("tau_b")}
        cfg = json.loads((DEST / name / "config.json").read_text())
        steps = max(xs) + 1 if xs else "?"
        lines.append(f"### {name}\n\n- files: `jetspec/assets/heads/{name}/` ({size:.1f} MiB, fp16 safetensors)\n"
                     f"- steps logged: {steps}; final train loss: {ys[-1] if ys else float('nan'):.3f}\n"
                     f"- last validation metrics: {json.dumps(val) if val else '(none logged)'}\n"
                     f"- replay tau on held-out references at the end: {json.dumps(taus) if taus else '(not run)'}\n"
                     f"- config: `{json.dumps(cfg)[:600]}`\n- command:\n\n```\n{cmd}\n```\n")
    ax.set(xlabel="step", ylabel="train loss (forward KL, top-64)", title="SmolLM2 head training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(DEST / "loss_curves.png", dpi=90)
    card = (Path(__file__).parent / "model_card_template.md").read_text()
    text = card.replace("{{COMMIT}}", commit).replace("{{HEADS}}", "\n".join(lines))
    (DEST / "MODEL_CARD.md").write_text(text)
    print(f"wrote {DEST / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
