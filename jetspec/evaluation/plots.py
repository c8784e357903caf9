"""The three pictures a benchmark (``jetspec.evaluation.bench``) draws; ``bench_outputs`` writes its files.

The plots tell the benchmark's story:

* ``tau_vs_budget.png``: committed tokens per target forward against the node budget, one line
  per drafter, one panel per prompt set. Does spending more nodes buy longer accepted prefixes?
* ``tokens_per_s_vs_budget.png``: the same axes in decode-only tokens/s, with the baselines (plain
  decoding, HF greedy, HF prompt lookup) as horizontal lines. A higher tau is worth nothing if the
  drafting and the wider verify cost more than they save.
* ``depth_acceptance.png``: for each drafter at its largest budget, the chance that depth d is
  accepted given the tree reached depth d. Where this falls off is where drafting stops paying.

Analyses draw here too: ``replay_plots`` (tau and per-depth acceptance against the budget
from ``jetspec replay-table`` rows, no timings) and ``gap_histogram`` (the rank-1 branch gaps of
``jetspec faithfulness``, one panel per drafter), ``plot_ablation`` (a setting against its replay
tau) and ``plot_tau_curves`` (replay tau during training, one line per run).

Only matplotlib's object API is used (``Figure`` + ``savefig``, no ``pyplot``): it writes PNGs on
a machine without a display and never changes the plotting backend of the caller's session.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

# Baselines drawn as horizontal reference lines, with their line style.
BASELINE_STYLES = {"ar": ("black", "-"), "hf_greedy": ("tab:gray", "--"), "hf_sample": ("tab:gray", "--"),
                   "hf_prompt_lookup": ("tab:brown", ":")}


def _sets(rows: list[dict]) -> list[str]:
    """'all' first, then the prompt sets in order of appearance."""
    names = []
    for r in rows:
        if r["prompt_set"] not in names:
            names.append(r["prompt_set"])
    return sorted(names, key=lambda s: s != "all")


def _drafter_curves(rows: list[dict], pset: str, metric: str) -> dict[str, list[tuple[int, float]]]:
    """drafter -> [(budget, metric)] sorted by budget, for the non-baseline drafters of one set."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r["prompt_set"] != pset or r["drafter"] in BASELINE_STYLES or r.get(metric) is None:
            continue
        curves.setdefault(r["drafter"], []).append((r["budget"], r[metric]))
    return {k: sorted(v) for k, v in curves.items()}


def _panels(n: int, title: str) -> tuple[Figure, list]:
    fig = Figure(figsize=(max(6.0, 4.2 * n), 3.6), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    fig.suptitle(title)
    return fig, list(axes)


def _budget_plot(rows: list[dict], metric: str, ylabel: str, title: str, path: Path) -> Path:
    sets = _sets(rows)
    fig, axes = _panels(len(sets), title)
    for ax, pset in zip(axes, sets):
        for name, pts in _drafter_curves(rows, pset, metric).items():
            ax.plot([b for b, _ in pts], [v for _, v in pts], marker="o", label=name)
        for r in rows:
            if r["prompt_set"] == pset and r["drafter"] in BASELINE_STYLES and r.get(metric) is not None:
                color, style = BASELINE_STYLES[r["drafter"]]
                ax.axhline(r[metric], color=color, linestyle=style, linewidth=1, label=r["drafter"])
        budgets = sorted({r["budget"] for r in rows if r["budget"] and r["drafter"] not in BASELINE_STYLES})
        if budgets:
            ax.set_xscale("log", base=2)
            ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_title(pset)
        ax.set_xlabel("budget (drafted nodes, root excluded)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path


def _depth_plot(rows: list[dict], path: Path) -> Path:
    fig, (ax,) = _panels(1, "per-depth acceptance (all prompts, largest budget)")
    best: dict[str, dict] = {}
    for r in rows:
        if r["prompt_set"] == "all" and r["drafter"] not in ("ar", "hf_greedy", "hf_sample") \
                and r.get("depth_acceptance"):
            if r["drafter"] not in best or (r["budget"] or 0) > (best[r["drafter"]]["budget"] or 0):
                best[r["drafter"]] = r
    for name, r in best.items():
        acc = r["depth_acceptance"]
        ax.plot(range(1, len(acc) + 1), acc, marker="o", label=f"{name} (budget {r['budget']})")
    ax.set_xlabel("depth d")
    ax.set_ylabel("P(accept d | reached d)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if best:
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path


def plot_results(rows: list[dict], out: str | Path) -> list[Path]:
    """Draw the three PNGs into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [
        _budget_plot(rows, "tau", "tau (tokens per target forward)", "tau vs budget",
                     out / "tau_vs_budget.png"),
        _budget_plot(rows, "tokens_per_s", "decode tokens/s", "decode speed vs budget",
                     out / "tokens_per_s_vs_budget.png"),
        _depth_plot(rows, out / "depth_acceptance.png"),
    ]


def replay_plots(rows: list[dict], out: str | Path) -> list[Path]:
    """``tau_vs_budget.png`` and ``depth_acceptance.png`` from replay-table rows (no speed plot: replay
    runs no target, so it has no tokens/s). Rows need drafter, budget, tau and depth_acceptance."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    as_bench = [{**r, "prompt_set": "all"} for r in rows]
    return [_budget_plot(as_bench, "tau", "tau (tokens per target forward)", "replay tau vs budget",
                         out / "tau_vs_budget.png"),
            _depth_plot(as_bench, out / "depth_acceptance.png")]


def gap_histogram(gaps: dict[str, list[float]], path: str | Path, marks: tuple[float, ...] = (5.0, 80.0)) -> Path:
    """One histogram panel per drafter of its rank-1 gaps (nats), with dashed lines at ``marks``."""
    names = list(gaps) or ["(none)"]
    fig, axes = _panels(len(names), "rank-1 branch gap: draft score - target log-prob (nats)")
    every = [g for v in gaps.values() for g in v]
    lo, hi = (min(every + [0.0]), max(every + [max(marks)])) if every else (0.0, max(marks))
    bins = [lo + (hi - lo) * i / 40 for i in range(41)] if hi > lo else 10
    for ax, name in zip(axes, names):
        values = gaps.get(name, [])
        ax.hist(values, bins=bins, color="tab:blue", alpha=0.8)
        for m in marks:
            ax.axvline(m, color="tab:red", linestyle="--", linewidth=1)
        ax.set_title(f"{name} ({len(values)} rounds)")
        ax.set_xlabel("gap (nats)")
        ax.set_ylabel("rounds")
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    return Path(path)


# ---------------------------------------------------------------------------- batch sizes (docs/design.md §7.8)
def _best_per_batch(rows: list[dict], metric: str) -> dict[str, list[tuple[int, float]]]:
    """method -> [(batch size, metric)], a drafter at its best budget for that batch size (by ``metric``)."""
    best: dict[tuple[str, int], float] = {}
    for r in rows:
        if r["prompt_set"] != "all" or r.get(metric) is None:
            continue
        key = (r["drafter"], r.get("batch_size", 1))
        best[key] = max(best.get(key, 0.0), r[metric])
    curves: dict[str, list[tuple[int, float]]] = {}
    for (name, b), v in sorted(best.items(), key=lambda kv: kv[0][1]):
        curves.setdefault(name, []).append((b, v))
    return curves


def _batch_axis(ax, sizes: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.set_xlabel("batch size B")
    ax.grid(alpha=0.3)


def plot_batch_sizes(rows: list[dict], path: str | Path) -> Path:
    """Decode tokens/s in total and per row against the batch size; a drafter at its best budget."""
    fig, axes = _panels(2, "decode speed vs batch size (a drafter at its best budget per B)")
    sizes = sorted({r.get("batch_size", 1) for r in rows})
    for ax, metric, label in ((axes[0], "tokens_per_s", "total tokens/s (all rows)"),
                              (axes[1], "tokens_per_s_per_row", "tokens/s per row")):
        for name, pts in _best_per_batch(rows, metric).items():
            color, style = BASELINE_STYLES.get(name, (None, "-"))
            ax.plot([b for b, _ in pts], [v for _, v in pts], marker="o", color=color, linestyle=style, label=name)
        _batch_axis(ax, sizes)
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_batching(costs: dict[int, dict[int, float]], best: list[dict], path: str | Path) -> Path:
    """The cost model with the batch, three panels: the verify forward over B rows x k tree rows
    relative to a plain batched step (k = 1) at the same B; the best budget; the speedup over plain
    decoding at the same B. ``best`` rows (``jetspec.evaluation.batching.best_budgets``) carry
    measured and modelled values; measured lines are solid, the cost model's dashed."""
    fig, axes = _panels(3, "what batching does to speculative decoding")
    for b, by_k in sorted(costs.items()):
        ks = sorted(by_k)
        axes[0].plot(ks, [by_k[k] / by_k[1] for k in ks], marker="o", label=f"B = {b}")
    axes[0].set_xscale("log", base=2)
    axes[0].set_xticks(sorted(next(iter(costs.values()))), [str(k) for k in sorted(next(iter(costs.values())))])
    axes[0].set_xlabel("tree rows per batch row k")
    axes[0].set_ylabel("verify / plain batched step")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    sizes = sorted({r["batch_size"] for r in best})
    colors: dict[str, str] = {}
    for ax, key, label in ((axes[1], "budget", "best budget (0 = do not speculate)"),
                           (axes[2], "speedup", "speedup over plain decoding at B")):
        for name in dict.fromkeys(r["drafter"] for r in best):
            pts = sorted((r["batch_size"], r) for r in best if r["drafter"] == name)
            line = ax.plot([b for b, _ in pts], [r[f"measured_{key}"] for _, r in pts], marker="o",
                           color=colors.get(name), label=f"{name} (measured)")[0]
            colors[name] = line.get_color()
            ax.plot([b for b, _ in pts], [r[f"model_{key}"] for _, r in pts], marker="x", linestyle="--",
                    color=colors[name], label=f"{name} (tau x cost model)")
        _batch_axis(ax, sizes)
        ax.set_ylabel(label)
    axes[2].axhline(1.0, color="black", linewidth=1)
    axes[2].legend(fontsize=7)
    fig.savefig(path, dpi=80)  # a small PNG: it is committed under docs/results/img
    return Path(path)


def plot_ablation(groups: dict[str, list[tuple[str, float, float]]], xlabel: str, ylabel: str, title: str,
                  path: str | Path) -> Path:
    """One ablation: per group (a head, a drafter) a line over the settings, mean +- interval bars.

    ``groups`` maps a label to ``[(setting, mean, half_width)]``; settings are categories (gamma
    values, objectives, scoring rules) drawn in the order given. A half-width of 0 or nan draws
    no bar (a replay of one fixed head has no seed interval). Groups are nudged apart sideways
    so overlapping intervals stay readable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(5.2, 3.4), layout="constrained")
    ax = fig.subplots()
    labels: list[str] = []
    for pts in groups.values():
        labels += [s for s, _, _ in pts if s not in labels]
    for i, (name, pts) in enumerate(groups.items()):
        shift = (i - (len(groups) - 1) / 2) * 0.08
        xs = [labels.index(s) + shift for s, _, _ in pts]
        errs = [h if h == h and h > 0 else 0.0 for _, _, h in pts]  # h == h: not nan
        ax.errorbar(xs, [m for _, m, _ in pts], yerr=errs, marker="o", capsize=3, label=name)
    ax.set_xticks(range(len(labels)), labels)
    return _finish(fig, ax, xlabel, ylabel, title, path)


def plot_tau_curves(curves: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, title: str,
                    path: str | Path) -> Path:
    """Replay tau during training (``jetspec.training.callbacks.TauCurve`` rows): one line per run.

    ``curves`` maps a run's label to ``[(x, tau)]``, x usually the training tokens seen, so runs
    of different lengths and batch sizes share one axis.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(5.2, 3.4), layout="constrained")
    ax = fig.subplots()
    for name, pts in curves.items():
        pts = sorted(pts)
        ax.plot([x for x, _ in pts], [t for _, t in pts], marker=".", label=name)
    return _finish(fig, ax, xlabel, ylabel, title, path)


def _finish(fig: Figure, ax, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    """Labels, grid and legend of a one-panel analysis plot, saved to ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return path
