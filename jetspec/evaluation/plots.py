"""The three pictures a benchmark (``jetspec.evaluation.bench``) draws; ``jetspec.evaluation.report`` writes its files.

The plots tell the benchmark's story:

* ``tau_vs_budget.png``: committed tokens per target forward against the node budget, one line
  per drafter, one panel per prompt set. Does spending more nodes buy longer accepted prefixes?
* ``tokens_per_s_vs_budget.png``: the same axes in decode-only tokens/s, with the baselines (plain
  decoding, HF greedy, HF prompt lookup) as horizontal lines. A higher tau is worth nothing if the
  drafting and the wider verify cost more than they save.
* ``depth_acceptance.png``: for each drafter at its largest budget, the chance that depth d is
  accepted given the tree reached depth d. Where this falls off is where drafting stops paying.

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
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return path
