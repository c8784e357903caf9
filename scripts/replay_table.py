"""Replay tau of several drafters on one reference set, per prompt set and budget (no target per round).

    python scripts/replay_table.py --refs runs/data/dev_refs.jsonl --budgets 8,16,32 \
        --drafters "ngram,jetspec=runs/compare/jetspec-s0/head,jetspec=runs/compare/jetspec-s0/head+ngram" \
        --out runs/replay_table.json

Drafter specs are those of ``jetspec bench`` (registered names, heads from ``--head-dir``,
``label=folder`` for any saved head, ``a+b`` composites). Greedy, best-first trees of ``--width``
x ``--depth`` (clamped to what each drafter can draft). Prints a markdown table; ``--out`` keeps the
per-reference taus as JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from jetspec.drafter_specs import DEFAULT_HEAD_DIR, DrafterUnavailable, make_drafter, spec_label
from jetspec.loading import load_target
from jetspec.prompts import read_jsonl
from jetspec.replay import as_references, reference_taps, replay
from jetspec.trees import BestFirstBuilder


def split_specs(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--refs", required=True)
    p.add_argument("--drafters", required=True)
    p.add_argument("--head-dir", default=str(DEFAULT_HEAD_DIR))
    p.add_argument("--budgets", default="8,16,32")
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--node-costs", default="0",
                   help="tree node_cost values to replay (comma list; 0 = whole budget)")
    p.add_argument("--verify-slope", type=float, default=0.035,
                   help="verify cost per drafted node in plain-decoding steps, for the modelled speedup "
                        "(scripts/profile_round.py; 0.035 on the 2-core CPU of BENCHMARKS.md)")
    p.add_argument("--forward-ms", type=float, default=71.2,
                   help="one plain decoding step in ms, to turn draft time into steps (profile_round.py)")
    p.add_argument("--out", default=None, help="JSON with per-reference taus")
    p.add_argument("--md", default=None, help="write the Markdown table here (for make_benchmarks --include)")
    p.add_argument("--title", default="Replay tau per drafter (greedy, held-out references)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    model, _ = load_target(a.target)
    refs = as_references(read_jsonl(a.refs))
    sets = sorted({r.set for r in refs})
    budgets = [int(b) for b in a.budgets.split(",")]
    costs = [float(c) for c in a.node_costs.split(",")]
    taps_by_layers: dict = {}
    results = []
    for spec in split_specs(a.drafters):
        label = spec_label(spec)
        try:
            drafter = make_drafter(spec, model, Path(a.head_dir))
        except DrafterUnavailable as err:
            print(f"skip {spec}: {err}")
            continue
        taps = None
        if drafter.tap_layers:
            key = tuple(drafter.tap_layers)
            if key not in taps_by_layers:
                taps_by_layers[key] = reference_taps(model, key, refs)
            taps = taps_by_layers[key]
        depth = min(a.depth, drafter.max_depth or a.depth)
        for b, c in itertools.product(budgets, costs):
            t0 = time.perf_counter()
            rep = replay(drafter, BestFirstBuilder(budget=b, width=a.width, depth=depth, node_cost=c), refs,
                         taps=taps)
            row = {"drafter": label if c == 0 else f"{label}(c={c:g})", "spec": spec, "budget": b,
                   "node_cost": c, "tau": rep.pooled_tau(),
                   **{f"tau_{s}": rep.pooled_tau(s) for s in sets}, "taus": rep.taus(), "sets": rep.sets,
                   "rounds": sum(len(x) for x in rep.lengths), "seconds": time.perf_counter() - t0}
            row["draft_ms_per_round"] = 1000 * row["seconds"] / row["rounds"]
            row["nodes_per_round"] = sum(map(sum, rep.sizes)) / row["rounds"]
            row["modelled_speedup"] = rep.modelled_speedup(a.verify_slope, row["draft_ms_per_round"] / a.forward_ms)
            results.append(row)
            print(f"{row['drafter']:28s} b={b:3d} tau {row['tau']:.3f} " +
                  " ".join(f"{s} {row[f'tau_{s}']:.3f}" for s in sets) +
                  f"  ({row['draft_ms_per_round']:.1f} ms/round incl. tree, {row['nodes_per_round']:.1f} nodes, "
                  f"modelled x{row['modelled_speedup']:.2f})", flush=True)
    md = [f"### {a.title}", "",
          f"{len(refs)} references ({', '.join(sets)}), best-first trees of width {a.width}, depth <= {a.depth}, "
          f"{a.threads} thread(s); tau pooled over references; draft+tree time per round from the replay. "
          f"Modelled x ar = tokens / sum over rounds of (1 + draft ms / {a.forward_ms:g} + {a.verify_slope:g} * "
          "drafted nodes): a cost model for ranking settings, not a timing. `name(c=x)`: cost-aware tree "
          "with node_cost x (`trees/best_first.py`).", "",
          "| drafter | budget | tau (all) | " + " | ".join(sets) + " | draft+tree ms/round | nodes/round "
          "| modelled x ar |",
          "|---|---|---|" + "---|" * len(sets) + "---|---|---|"]
    for r in results:
        md.append(f"| {r['drafter']} | {r['budget']} | {r['tau']:.3f} | " +
                  " | ".join(f"{r[f'tau_{s}']:.3f}" for s in sets) +
                  f" | {r['draft_ms_per_round']:.1f} | {r['nodes_per_round']:.1f} | {r['modelled_speedup']:.2f} |")
    print("\n" + "\n".join(md))
    if a.md:
        Path(a.md).write_text("\n".join(md) + "\n")
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
