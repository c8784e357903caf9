"""What batching does to speculative decoding: the batch-size bench and the cost model with the batch.

``jetspec batching`` (``run_batching``) answers one practitioner's question with numbers from one
process (docs/design.md §7.8):

1. **The batch-size table.** ``jetspec.evaluation.bench.run_bench`` with several ``batch_sizes``:
   the same prompts grouped into left-padded batches, timed for plain decoding (``ar``), Hugging
   Face ``generate`` on the same padded batch and every drafter at every budget. Batch size 1 is
   the classic bench.
2. **The verify cost with the batch.** ``verify_costs`` times the fast engine's forward over B rows
   of k tree rows each (``BatchedTarget.verify``) after a cached prefix, against its plain batched
   step (k = 1) at the same B. A forward reads the weights once whatever B*k is, and does B*k rows
   of arithmetic; once B*k passes the machine's ridge point (BENCHMARKS.md, Roofline) the
   arithmetic dominates, so each drafted node costs more the larger the batch. ``node_cost`` fits
   the per-node cost c(B) (a verify over n drafted nodes per row costs about 1 + c(B)*n plain steps).
3. **The best budget and speedup per batch size**, ``best_budgets``: measured (the budget with the
   highest tokens/s, and its speedup over ``ar`` at the same B), and from the cost model: each
   budget's measured tau divided by its modelled verify cost 1 + c(B)*budget. The model leaves the
   drafting and bookkeeping out, so it is what the target's cost alone allows.

For cost-aware trees (trees/best_first.py, docs/design.md §2.6) the batch means: use c(B), not the
batch-1 c. A node is worth drafting when its path probability exceeds about c(B) (times the
tree's running gain ratio), and c(B) grows with B. ``run_batching`` reports c(B) per batch size
for ``--node-costs``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from jetspec.core.batched_target import BatchedTarget
from jetspec.core.config import ConfigError, check_at_least, check_distinct, read_tuple_fields
from jetspec.core.prompts import builtin_prompts, read_prompts
from jetspec.core.target import TargetModel
from jetspec.evaluation.bench import BenchConfig, run_bench
from jetspec.evaluation.roofline import median_ms, node_cost, verify_tree
from jetspec.evaluation.threads import choose_threads

__all__ = ["BatchingConfig", "batching_markdown", "best_budgets", "run_batching", "verify_costs"]


@dataclass
class BatchingConfig:
    """Everything ``jetspec batching`` can vary. The CLI flags are generated from these fields."""

    target: str = "smollm2-135m-instruct"
    """Target model: built-in name, local folder or Hub id."""
    prompts: Optional[str] = None
    """JSON-lines prompt file (rows with 'prompt' and optional 'set'); default: the built-in prompts,
    one set after the other in turn (math, code, chat, math, ...)."""
    n_prompts: int = 8
    """Prompts to decode (the same prompts at every batch size)."""
    max_new_tokens: int = 48
    """New tokens per prompt (fewer if the target ends its answer)."""
    drafters: tuple[str, ...] = ("ngram", "jetspec")
    """Drafter specs (comma list), as in `jetspec bench`; ar and HF generate always run."""
    budgets: tuple[int, ...] = (4, 8, 16, 32)
    """Drafted nodes per round, root excluded (comma list)."""
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    """Batch sizes (comma list); 1 is the classic one-prompt-at-a-time bench."""
    tree_rows: tuple[int, ...] = (1, 4, 8, 16, 32)
    """Tree rows k per batch row whose verify forward is timed (comma list; must start with 1, the plain step)."""
    prefix: int = 200
    """Cached tokens per row before each timed verify forward."""
    repeats: int = 5
    """Timed repetitions per verify-cost cell (the median is reported)."""
    threads: Optional[str] = None
    """torch CPU threads: a number, or auto (measured at start); default: torch's choice. Set by the command."""
    seed: int = 0
    """Seed of the method order and of the random prefixes and trees of the cost measurement."""
    out: str = "runs/batching"
    """Folder for the raw results (bench files and batching.json)."""
    md: str = "docs/results/batching.md"
    """The Markdown report to write."""
    img: str = "docs/results/img/batching.png"
    """The cost-model plot to write (the report links it)."""

    def __post_init__(self) -> None:
        read_tuple_fields(self)
        check_at_least(self, ("batch_sizes", "tree_rows", "n_prompts", "max_new_tokens", "prefix", "repeats"))
        check_distinct(self, "batch_sizes")
        if self.tree_rows[0] != 1:
            raise ConfigError("tree_rows", f"must start with 1 (the plain step every ratio uses), got {self.tree_rows}")
        if self.threads is not None and str(self.threads).lower() != "auto":
            choose_threads(self.threads)  # a number is taken as given; anything else but auto raises
        self.bench_config()  # the bench checks budgets, drafters (unknown names are errors here too)

    def bench_config(self) -> BenchConfig:
        """The ``jetspec bench`` configuration of step 1."""
        return BenchConfig(target=self.target, drafters=self.drafters, budgets=self.budgets,
                           batch_sizes=self.batch_sizes, max_new_tokens=self.max_new_tokens, seed=self.seed,
                           out=self.out, plots=True)

    def command(self) -> str:
        """The ``jetspec batching`` command line that reproduces this configuration."""
        def text(v):
            return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)

        parts = ["jetspec batching"]
        for f in dataclasses.fields(self):
            if text(getattr(self, f.name)) != text(f.default):
                parts.append(f"--{f.name.replace('_', '-')} {text(getattr(self, f.name))}")
        return " ".join(parts)


def interleaved_prompts(n: int) -> list[dict]:
    """The first ``n`` built-in prompts taking each set in turn, so every batch mixes kinds of text."""
    by_set: dict[str, list[dict]] = {}
    for row in builtin_prompts():
        by_set.setdefault(row["set"], []).append(row)
    columns = list(by_set.values())
    rows = [col[i] for i in range(max(map(len, columns))) for col in columns if i < len(col)]
    return rows[:n]


# ---------------------------------------------------------------------------- the verify cost with the batch
def verify_costs(model, batch_sizes, tree_rows, prefix: int = 200, repeats: int = 5, seed: int = 0,
                 progress: bool = True) -> dict[int, dict[int, float]]:
    """Median ms of one fast-engine verify forward over B rows x k tree rows, ``{B: {k: ms}}``.

    Every row holds ``prefix`` random cached tokens; each row verifies a random tree of k nodes (the
    cost depends on the row count, not the tree's shape) and commits its root only, so the cache
    grows by one column per forward. k = 1 is the plain batched step every ratio divides by.
    """
    target = TargetModel(model, engine="fast", min_rows=1)
    gen = torch.Generator().manual_seed(seed)
    out: dict[int, dict[int, float]] = {}
    cells = [(b, k) for b in batch_sizes for k in tree_rows]
    for b, k in tqdm(cells, disable=not progress, desc="verify cost", unit="cell", dynamic_ncols=True):
        bt = BatchedTarget(target)
        ids = torch.randint(0, target.vocab_size, (b, prefix + 1), generator=gen)
        bt.prefill(ids, torch.ones(b, prefix + 1, dtype=torch.bool))
        trees = [verify_tree(target, k, gen) for _ in range(b)]

        def once():
            bt.verify(trees)
            bt.commit([[0]] * b)

        try:
            out.setdefault(b, {})[k] = median_ms(once, repeats=repeats)
        finally:
            bt.reset()
    return out


def best_budgets(rows: list[dict], costs: dict[int, dict[int, float]]) -> list[dict]:
    """Per drafter and batch size: the best budget and its speedup over ``ar`` at the same B,
    measured and from the cost model (tau / (1 + c(B) * budget)); budget 0 = plain decoding wins.

    ``rows`` are a bench's rows (prompt set 'all' is used); ``costs`` come from ``verify_costs``.
    """
    fits = {b: node_cost(by_k) for b, by_k in costs.items()}
    pooled = [r for r in rows if r["prompt_set"] == "all" and r["budget"] is not None
              and r["drafter"] not in ("hf_prompt_lookup",) and r.get("speedup_vs_ar") is not None]
    out = []
    for name in dict.fromkeys(r["drafter"] for r in pooled):
        for b in sorted({r["batch_size"] for r in pooled if r["drafter"] == name}):
            mine = [r for r in pooled if r["drafter"] == name and r["batch_size"] == b]
            measured = max(mine, key=lambda r: r["speedup_vs_ar"])
            model = {r["budget"]: r["tau"] / (1.0 + fits[b] * r["budget"]) for r in mine} if b in fits else {}
            m_budget = max(model, key=model.get) if model else None
            out.append({"drafter": name, "batch_size": b, "node_cost": round(fits[b], 4) if b in fits else None,
                        "measured_budget": measured["budget"] if measured["speedup_vs_ar"] > 1 else 0,
                        "measured_speedup": max(1.0, measured["speedup_vs_ar"]),
                        "model_budget": (m_budget if model and model[m_budget] > 1 else 0) if model else None,
                        "model_speedup": round(max(1.0, model[m_budget]), 4) if model else None})
    return out


# ---------------------------------------------------------------------------- the report
def _cost_table(costs: dict[int, dict[int, float]]) -> list[str]:
    sizes = sorted(costs)
    ks = sorted(next(iter(costs.values())))
    step1 = costs[sizes[0]][1]
    lines = ["| B | plain step ms | step / B=%d step | " % sizes[0] + " | ".join(f"k = {k}" for k in ks[1:])
             + " | c(B) | B x k at k = %d |" % ks[-1], "|---" * (len(ks) + 4) + "|"]
    for b in sizes:
        by_k = costs[b]
        cells = [f"{by_k[k]:.1f} (x{by_k[k] / by_k[1]:.2f})" for k in ks[1:]]
        lines.append(f"| {b} | {by_k[1]:.1f} | x{by_k[1] / step1:.2f} | " + " | ".join(cells)
                     + f" | {node_cost(by_k):.3f} | {b * ks[-1]} |")
    return lines


def _best_table(best: list[dict]) -> list[str]:
    lines = ["| drafter | B | c(B) | best budget (measured) | speedup (measured) | best budget (tau x cost) | "
             "speedup (tau x cost) |", "|---|---|---|---|---|---|---|"]
    for r in best:
        lines.append(f"| {r['drafter']} | {r['batch_size']} | {r['node_cost']} | {r['measured_budget']} | "
                     f"{r['measured_speedup']:.2f} | {r['model_budget']} | {r['model_speedup']:.2f} |")
    return lines


def _trend(first: float, last: float, up: str, down: str, flat: str, tol: float = 0.05) -> str:
    """A word for how a measured value moved between two batch sizes (within ``tol``: ``flat``)."""
    if last > first * (1 + tol):
        return up
    return down if last < first * (1 - tol) else flat


def _explanation(costs: dict[int, dict[int, float]], best: list[dict]) -> list[str]:
    """The reading of the tables, with this run's numbers in it (the words follow the numbers)."""
    sizes = sorted(costs)
    lo, hi = sizes[0], sizes[-1]
    kmax = max(costs[lo])
    c_lo, c_hi = node_cost(costs[lo]), node_cost(costs[hi])
    step_ratio = costs[hi][1] / costs[lo][1]
    c_word = _trend(c_lo, c_hi, "grows", "falls", "stays")
    speed = []
    for name in dict.fromkeys(r["drafter"] for r in best):
        mine = sorted((r["batch_size"], r) for r in best if r["drafter"] == name)
        (b0, r0), (b1, r1) = mine[0], mine[-1]
        speed.append(f"`{name}`: x{r0['measured_speedup']:.2f} at budget {r0['measured_budget']} (B = {b0}) -> "
                     f"x{r1['measured_speedup']:.2f} at budget {r1['measured_budget']} (B = {b1})")
    return [
        "### Reading it", "",
        f"- **Throughput and latency.** One plain step over B = {hi} rows cost x{step_ratio:.2f} a step over "
        f"B = {lo} row(s) here. Below the ridge point the weights are read once per forward whatever the "
        "batch, so that factor stays far below B: plain decoding's total tokens/s grows with B, while each "
        "row's own stream (tokens/s per row, the latency one user sees) can only get slower.",
        f"- **Verify cost.** A tree of k rows per batch row makes the forward B x k rows wide. At B = {lo} a "
        f"{kmax}-row tree cost x{costs[lo][kmax] / costs[lo][1]:.2f} a plain step; at B = {hi}, "
        f"x{costs[hi][kmax] / costs[hi][1]:.2f} a plain step of the same batch. The fitted cost of one drafted "
        f"node {c_word} from c = {c_lo:.3f} (B = {lo}) to c = {c_hi:.3f} (B = {hi}). The roofline predicts "
        "growth: past the ridge point (about 13 rows on the 2-core CPU of the Roofline section) the forward is "
        "compute-bound and every row costs arithmetic, so a batch has already spent the spare compute a tree "
        "would use." + ("" if c_word == "grows" else " This run did not show it; on a shared machine, "
                        "rerun it quiet before reading more into it."),
        "- **The budget that pays.** The speedup over plain decoding at the same batch size is tau over the "
        "cost of a round in plain steps. tau does not depend on the batch (each row is decoded exactly as "
        "alone), the round's cost does, through c(B): where c(B) grows, the best budget and the speedup "
        "fall with B. Measured, best budget and speedup from the smallest to the largest batch: "
        + "; ".join(speed) + ". The tau x cost columns leave drafting out; the gap between them and the "
        "measured ones is what drafting and the per-row bookkeeping cost.",
        "- **Cost-aware trees with a batch** (trees/best_first.py, docs/design.md §2.6). The stop rule "
        "grows a tree while a node's path probability exceeds about c (times the tree's running gain "
        "ratio). With a batch, c must be c(B) of the batch being decoded, not the batch-1 value: where c "
        "grows with B, a node worth verifying alone is not worth it in a large batch. Pass the c(B) column "
        "above as `--node-costs` (or `BestFirstBuilder(node_cost=...)`) for that batch size. Two caveats: "
        "the verify forward pads every row's tree to the round's largest, so a node that does not enlarge "
        "the largest tree costs only masked work; and rows that finish leave the batch during a call, so a "
        "builder chosen per batch size errs towards small trees late in a call. The decoder keeps one "
        "builder per call; choosing `node_cost` per round from the number of running rows is the natural "
        "next step.", ""]


def batching_markdown(result: dict, costs: dict[int, dict[int, float]], best: list[dict], cfg: BatchingConfig,
                      img_link: Optional[str]) -> str:
    """docs/results/batching.md: the batch-size table, the verify-cost table, the plot and the reading."""
    from jetspec.evaluation.benchmarks_md import batch_size_table

    m = result["machine"]
    rows = [r for r in result["rows"] if r["prompt_set"] == "all"]
    out = ["## Batching: latency, throughput and the budget that pays", "",
           f"Command: `{cfg.command()}` ({m['cpu']}, {m['logical_cores']} logical cores, {m['threads']} torch "
           f"thread(s), threads: {m.get('threads_choice')}; load average {m.get('load_average')} at the start, "
           f"{m.get('load_average_end')} at the end of the bench). {cfg.n_prompts} prompts, {cfg.max_new_tokens} new "
           "tokens each, greedy, target in fp32 on the fast engine; the same prompts at every batch size, grouped "
           "in order into left-padded batches. Batch size 1 is the classic `jetspec bench` measurement.", "",
           "tok/s is all rows' decode tokens over the call's decode time (throughput); tok/s per row is what one "
           "row's stream sees (latency). x ar and x HF compare with plain decoding (`ar`) and Hugging Face "
           "`generate` on the same padded batch; 'verify / ar step' is a round's verify forward over the plain "
           "batched step at the same B. The per-round split is in ms per target forward (one forward serves all rows).",
           "", batch_size_table(rows), ""]
    if result["skipped"]:
        out += ["Not run: " + "; ".join(f"`{s['drafter']}` ({s['reason']})" for s in result["skipped"]), ""]
    if result.get("divergences"):
        out += [f"{len(result['divergences'])} greedy row(s) left plain decoding at an fp32 near-tie (logit gaps: "
                + ", ".join(f"{d['logit_gap']:.2g}" for d in result["divergences"] if d["logit_gap"] is not None)
                + ").", ""]
    out += ["### The verify forward over B rows x k tree rows", "",
            f"Fast engine, {cfg.prefix} cached tokens per row, median of {cfg.repeats}; ms (x = ratio to the plain "
            "step at the same B). c(B) is the per-node cost fitted through the origin (a verify over n drafted "
            "nodes per row costs about 1 + c(B) n plain batched steps).", ""]
    out += _cost_table(costs) + [""]
    out += ["### The best budget and the speedup per batch size", "",
            "Measured: the budget with the highest tokens/s and its speedup over `ar` at the same B (0 = no "
            "budget beat plain decoding). Tau x cost: each budget's measured tau over its modelled verify cost "
            "1 + c(B) budget, drafting excluded (what the target's cost alone allows).", ""]
    out += _best_table(best) + [""]
    if img_link:
        out += [f"![best budget and speedup vs batch size]({img_link})", ""]
    return "\n".join(out + _explanation(costs, best))


def image_link(img: str, md: Optional[str]) -> str:
    """How the report links its figure. A path relative to where the command runs (the repository
    root, e.g. the default ``docs/results/img/batching.png``) becomes a link from the root
    (``/docs/...``): it resolves the same where the report is written and where BENCHMARKS.md, at
    the root, includes it (and on the docs site). Any other path is linked relative to the report."""
    path = Path(img)
    if not path.is_absolute():
        return "/" + path.as_posix()
    return os.path.relpath(path, Path(md).parent if md else Path.cwd())


def run_batching(cfg: BatchingConfig, model, tokenizer, prompts: Optional[list[dict]] = None,
                 threads_reason: str = "torch's default", progress: bool = True) -> dict:
    """The bench at every batch size, the verify-cost grid, the plot and the report (see the module docstring).

    ``prompts``: rows as for ``run_bench`` (default: ``cfg.prompts`` or the interleaved built-in
    prompts); the first ``cfg.n_prompts`` are used. Thread count and denormal flushing are the
    caller's (the command sets them). Returns ``{"bench", "costs", "best", "markdown"}`` and writes
    ``cfg.out``/batching.json, ``cfg.md`` and ``cfg.img`` (an empty path skips that file).
    """
    if prompts is None:
        prompts = read_prompts(cfg.prompts) if cfg.prompts else interleaved_prompts(cfg.n_prompts)
    prompts = prompts[: cfg.n_prompts]
    bench = run_bench(cfg.bench_config(), model=model, tokenizer=tokenizer, prompts=prompts, progress=progress,
                      threads_reason=threads_reason)
    costs = verify_costs(model, cfg.batch_sizes, cfg.tree_rows, cfg.prefix, cfg.repeats, cfg.seed, progress)
    best = best_budgets(bench["rows"], costs)
    img_link = None
    if cfg.img:
        from jetspec.evaluation.plots import plot_batching

        Path(cfg.img).parent.mkdir(parents=True, exist_ok=True)
        plot_batching(costs, best, cfg.img)
        img_link = image_link(cfg.img, cfg.md)
    text = batching_markdown(bench, costs, best, cfg, img_link)
    if cfg.md:
        Path(cfg.md).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.md).write_text(text)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    result = {"bench": bench, "costs": {str(b): {str(k): v for k, v in by_k.items()} for b, by_k in costs.items()},
              "best": best}
    (Path(cfg.out) / "batching.json").write_text(json.dumps(result, indent=1) + "\n")
    return {"bench": bench, "costs": costs, "best": best, "markdown": text}
