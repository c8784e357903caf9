"""The paper's training and tree ablations as one-line experiments with seeds and intervals.

    # loss weighting gamma (0 = uniform) for the causal and the bidirectional head, and the
    # objective (forward KL, reverse KL, SFT) of the causal head, in one queue of training runs:
    python experiments/paper_ablations.py gamma,objective --out runs/ablations \
        --data runs/abl/train.jsonl --refs runs/abl/refs.jsonl --teacher-cache runs/abl/tcache \
        --seeds 0,1,2 --steps 120 --budget 16 -- --block-size 16 --anchors 16 --batch-size 4
    # tree scoring rules at equal budget on the shipped heads (replay, no training):
    python experiments/paper_ablations.py tree-scoring --out runs/ablations --refs runs/abl/refs.jsonl

Training runs go through ``experiments/compare_heads.py`` (``run_all``, ``report``): every
(variant, seed) is one ``jetspec train`` on the same data, batch order and teacher cache, so the
variants differ only in the switch under test; reruns skip finished runs. The gamma and objective
ablations share their runs folder: the forward-KL causal head at gamma 0 is one run set serving
both. gamma 0 means *no* weighting (``--decay-gamma`` unset, every slot weight 1), the paper's
gamma = 0 column; gamma > 0 weights slot k by exp(-(k-1)/gamma) (docs/design.md §5.4).

Each ablation writes ``OUT/<name>.md`` (ours beside the paper's figure, then the seed-level
report with paired differences), ``<img>/ablation_<name>.png``, and merges its rows into
``--json`` (default docs/results/ablations.json; schema in ``merge_results``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_heads import markdown as seed_markdown  # noqa: E402  (a script beside this one)
from compare_heads import report, run_all  # noqa: E402

from jetspec.core.replay import mean_ci  # noqa: E402
from jetspec.evaluation.plots import plot_ablation  # noqa: E402

GAMMAS = (0, 3, 7, 15)
HEADS = ("jetspec", "dflash")  # causal, bidirectional
LOSSES = ("kl", "reverse_kl", "ce")
RULES = ("bestfirst", "entropy", "hybrid")
# The paper's figures (Qwen3-8B, MATH-500; approximate, read off the authors' pages).
PAPER_GAMMA = {"jetspec": (8.29, 8.50, 8.40, 8.41), "dflash": (5.46, 8.16, 8.36, 6.17)}
PAPER_OBJECTIVE = "forward KL about equal to SFT; reverse KL clearly worse"
PAPER_TREE = "cumulative log-prob best; entropy-guided far worse"


def run_name(head: str, loss: str, gamma: int) -> str:
    return f"{head}-{loss}-g{gamma}"


def gamma_variants(heads: tuple[str, ...] = HEADS) -> list[tuple[str, list[str]]]:
    return [(run_name(h, "kl", g), [f"--head={h}"] + ([f"--decay-gamma={g}"] if g else []))
            for h in heads for g in GAMMAS]


def objective_variants() -> list[tuple[str, list[str]]]:
    # The default loss adds no flag, so the forward-KL run is the very run gamma 0 trains.
    return [(run_name("jetspec", loss, 0), ["--head=jetspec"] + ([f"--loss={loss}"] if loss != "kl" else []))
            for loss in LOSSES]


def seed_args(a, seeds: list[int]) -> argparse.Namespace:
    """The namespace ``compare_heads.run_all`` / ``report`` read (one final budget, no mid-run replays)."""
    return argparse.Namespace(out=a.out, target=a.target, data=a.data, refs=a.refs, teacher_cache=a.teacher_cache,
                              seeds=seeds, steps=a.steps, eval_every=a.steps, budgets=str(a.budget),
                              curve_budgets=str(a.budget), parallel=a.parallel, baseline=None)


def finished_seeds(a, names: list[str]) -> list[int]:
    """Seeds whose runs of every named variant have finished (a partial batch reports these)."""
    return [s for s in a.seeds if all((Path(a.out) / f"{n}-s{s}" / "head" / "config.json").exists() for n in names)]


def seed_rows(a, variants: list, baseline: str) -> tuple[dict, list[int]]:
    seeds = finished_seeds(a, [n for n, _ in variants])
    if len(seeds) < 2:
        raise SystemExit(f"fewer than 2 seeds finished for {[n for n, _ in variants]}: no interval yet")
    ns = seed_args(a, seeds)
    ns.baseline = baseline
    return report(ns, variants), seeds


def gamma_ablation(a) -> tuple[list[dict], str]:
    rows, parts = [], []
    for head in a.heads:
        variants = gamma_variants((head,))
        rep, seeds = seed_rows(a, variants, run_name(head, "kl", 0))
        for g in GAMMAS:
            v = rep["variants"][run_name(head, "kl", g)][a.budget]
            rows.append({"head": head, "gamma": g, "tau_mean": v["mean"], "tau_ci": v["ci"],
                         "taus": v["per_seed"], "budget": a.budget, "steps": a.steps})
        parts.append(seed_markdown(rep, f"gamma, {head} head (seeds {seeds})"))
    lines = ["| head | gamma | our tau (budget %d) | paper MATH-500 speedup |" % a.budget, "|---|---|---|---|"]
    for r in rows:
        paper = PAPER_GAMMA[r["head"]][GAMMAS.index(r["gamma"])]
        lines.append(f"| {r['head']} | {r['gamma']}{' (uniform)' if r['gamma'] == 0 else ''} | "
                     f"{r['tau_mean']:.3f} +- {r['tau_ci']:.3f} | {paper:.2f} |")
    return rows, "\n".join(lines) + "\n\n" + "\n".join(parts)


def objective_ablation(a) -> tuple[list[dict], str]:
    variants = objective_variants()
    rep, seeds = seed_rows(a, variants, run_name("jetspec", "kl", 0))
    rows = []
    for loss in LOSSES:
        v = rep["variants"][run_name("jetspec", loss, 0)][a.budget]
        rows.append({"loss": loss, "head": "jetspec", "tau_mean": v["mean"], "tau_ci": v["ci"],
                     "taus": v["per_seed"], "budget": a.budget, "steps": a.steps})
    lines = [f"Paper: {PAPER_OBJECTIVE}.", "", f"| objective | our tau (budget {a.budget}) |", "|---|---|"]
    lines += [f"| {r['loss']} | {r['tau_mean']:.3f} +- {r['tau_ci']:.3f} |" for r in rows]
    return rows, "\n".join(lines) + "\n\n" + seed_markdown(rep, f"objective, jetspec head (seeds {seeds})")


def tree_scoring_ablation(a) -> tuple[list[dict], str]:
    """Replay the shipped heads with every scoring rule at equal budgets (no target forward per round)."""
    from jetspec import load_target
    from jetspec.core.interfaces import TREE_BUILDERS
    from jetspec.core.jsonl import read_jsonl
    from jetspec.core.replay import as_references, reference_taps, replay
    from jetspec.evaluation.drafter_specs import DEFAULT_HEAD_DIR, make_drafter

    model, _ = load_target(a.target)
    refs = as_references(read_jsonl(a.refs))
    budgets = [int(b) for b in (a.tree_budgets or str(a.budget)).split(",")]
    rows = []
    for spec in a.drafters.split(","):
        drafter = make_drafter(spec, model, DEFAULT_HEAD_DIR)
        taps = reference_taps(model, drafter.tap_layers, refs) if drafter.tap_layers else None
        depth = min(a.depth, drafter.max_depth or a.depth)
        for budget in budgets:
            for rule in RULES:
                rep = replay(drafter, TREE_BUILDERS[rule](budget=budget, width=a.width, depth=depth), refs, taps=taps)
                rows.append({"rule": rule, "drafter": spec, "budget": budget, "tau": rep.pooled_tau(),
                             "per_prompt": rep.taus(),
                             "nodes_per_round": sum(map(sum, rep.sizes)) / sum(map(len, rep.sizes))})
                print(f"{spec:10s} b={budget:<4d} {rule:10s} tau {rows[-1]['tau']:.3f}", flush=True)
    lines = [f"Paper: {PAPER_TREE}.", "",
             f"Replay of {len(refs)} references, width {a.width}, depth <= {a.depth}. Cells: pooled tau (drafted "
             "nodes per round); last columns: each rule minus cumulative log-prob (`bestfirst`), per prompt, "
             "mean +- 95% Student-t over prompts.", "",
             "| drafter | budget | " + " | ".join(RULES) + " | "
             + " | ".join(f"{r} - {RULES[0]}" for r in RULES[1:]) + " |", "|---|---|" + "---|" * (2 * len(RULES) - 1)]
    for spec in a.drafters.split(","):
        for budget in budgets:
            mine = {r["rule"]: r for r in rows if r["drafter"] == spec and r["budget"] == budget}
            cells = [f"{mine[rule]['tau']:.3f} ({mine[rule]['nodes_per_round']:.1f})" for rule in RULES]
            for rule in RULES[1:]:
                diff = mean_ci([x - y for x, y in zip(mine[rule]["per_prompt"], mine[RULES[0]]["per_prompt"])])
                cells.append(f"{diff[0]:+.3f} +- {diff[1]:.3f}")
            lines.append(f"| {spec} | {budget} | " + " | ".join(cells) + " |")
    return [{k: r[k] for k in ("rule", "drafter", "budget", "tau")} for r in rows], "\n".join(lines) + "\n"


def write_answer_data(prompts: str, out: Path, rows: int = 192, max_chars: int = 700) -> tuple[Path, Path]:
    """Small training and vocabulary sets from a ``jetspec prepare-data`` prompt file, with the datasets' answers.

    Training: the first ``rows`` prompts whose reference answer is shorter than ``max_chars``
    characters (a cheap teacher cache and short sequences on a CPU). Vocabulary counts: prompt
    file rows 1000..2999 (any answer length), which the training rows need not include.
    """
    from jetspec.core.jsonl import read_jsonl, write_jsonl

    src = list(read_jsonl(prompts))
    pairs = [{"prompt": r["prompt"], "response": r["reference"], "set": r.get("set", "")} for r in src]
    train = [r for r in pairs if len(r["response"]) < max_chars][:rows]
    if len(train) < rows or len(src) < 3000:
        raise SystemExit(f"{prompts}: needs >= 3000 rows and {rows} answers under {max_chars} characters")
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "vocab.jsonl", [{"prompt": r["prompt"], "response": r["response"]} for r in pairs[1000:3000]])
    return out / "train.jsonl", out / "vocab.jsonl"


def merge_results(path: Path, key: str, rows: list[dict], field: str | None = None) -> None:
    """Replace ``key`` in the results file, keeping the other ablations' rows.

    With ``field`` ("head" for gamma, "drafter" for tree scoring), only the old rows of ``key``
    whose ``field`` value this run produced are replaced: a run for some heads or drafters keeps
    the others' rows.

    Schema: {"gamma": [{head, gamma, tau_mean, tau_ci, taus, budget, steps}],
    "objective": [{loss, head, tau_mean, tau_ci, taus, budget, steps}],
    "tree_scoring": [{rule, drafter, budget, tau}]}.
    """
    data = json.loads(path.read_text()) if path.exists() else {}
    done = {r[field] for r in rows} if field else None
    data[key] = [r for r in data.get(key, []) if done is not None and r[field] not in done] + rows
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: data[k] for k in sorted(data)}, indent=1) + "\n")


def plot(name: str, rows: list[dict], img: Path) -> Path:
    if name == "gamma":
        groups = {h: [(str(r["gamma"]), r["tau_mean"], r["tau_ci"]) for r in rows if r["head"] == h]
                  for h in HEADS if any(r["head"] == h for r in rows)}
        return plot_ablation(groups, "gamma (0 = uniform)", "tau", f"Loss weighting gamma, {rows[0]['steps']} steps",
                             img / "ablation_gamma.png")
    if name == "objective":
        groups = {"jetspec": [(r["loss"], r["tau_mean"], r["tau_ci"]) for r in rows]}
        return plot_ablation(groups, "objective", "tau", f"Training objective, {rows[0]['steps']} steps",
                             img / "ablation_objective.png")
    groups: dict = {}
    for r in rows:
        groups.setdefault(f"{r['drafter']} b={r['budget']}", []).append((r["rule"], r["tau"], 0.0))
    return plot_ablation(groups, "tree scoring rule", "tau", "Tree scoring at equal budget",
                         img / "ablation_tree_scoring.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ablations", help="comma-separated: gamma, objective, tree-scoring")
    p.add_argument("--out", required=True, help="training runs and reports")
    p.add_argument("--target", default="smollm2-135m-instruct")
    p.add_argument("--data", help="training data (gamma, objective)")
    p.add_argument("--make-data", metavar="PROMPTS", help="write OUT/data/train.jsonl and vocab.jsonl from this "
                   "`jetspec prepare-data` prompt file (``write_answer_data``) and train on them")
    p.add_argument("--refs", required=True, help="replay references (jetspec references)")
    p.add_argument("--teacher-cache", help="one teacher cache shared by every run (gamma, objective)")
    p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--budget", type=int, default=16, help="tree budget of the replay")
    p.add_argument("--tree-budgets", default=None, help="tree-scoring: comma-separated budgets (default --budget)")
    p.add_argument("--width", type=int, default=4, help="tree-scoring: candidates per node")
    p.add_argument("--depth", type=int, default=8, help="tree-scoring: deepest level")
    p.add_argument("--drafters", default="jetspec,dflash,eagle", help="tree-scoring: drafter specs")
    p.add_argument("--heads", type=lambda t: tuple(t.split(",")), default=HEADS, help="gamma: heads to train")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--report-only", action="store_true", help="report the runs that finished; train nothing")
    p.add_argument("--json", default="docs/results/ablations.json")
    p.add_argument("--img", default="docs/results/img")
    a, extra = p.parse_known_args()
    extra = [e for e in extra if e != "--"]
    torch.set_num_threads(1)
    names = a.ablations.split(",")
    unknown = set(names) - {"gamma", "objective", "tree-scoring"}
    if unknown:
        raise SystemExit(f"unknown ablation(s) {sorted(unknown)}: choose from gamma, objective, tree-scoring")
    trained = [n for n in names if n != "tree-scoring"]
    if a.make_data:
        data, vocab = write_answer_data(a.make_data, Path(a.out) / "data")
        a.data = str(data)
        extra += ["--vocab-data", str(vocab)]
    if trained and not a.report_only:
        if not (a.data and a.teacher_cache):
            raise SystemExit("gamma and objective train heads: pass --data and --teacher-cache")
        variants = {v[0]: v for n in trained
                    for v in (gamma_variants(a.heads) if n == "gamma" else objective_variants())}
        run_all(seed_args(a, a.seeds), list(variants.values()), extra)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    for name in names:
        fn = {"gamma": gamma_ablation, "objective": objective_ablation, "tree-scoring": tree_scoring_ablation}[name]
        rows, text = fn(a)
        key = name.replace("-", "_")
        field = {"gamma": "head", "tree_scoring": "drafter"}.get(key)
        merge_results(Path(a.json), key, rows, field)
        png = plot(name, json.loads(Path(a.json).read_text())[key], Path(a.img))  # every row kept, not just this run's
        Path(a.out, f"{key}.md").write_text(text)
        print(text, f"\nplot: {png}", sep="\n")


if __name__ == "__main__":
    main()
