"""Rerun the benchmark on the held-out dev splits and render BENCHMARKS.md from the results.

What ``jetspec benchmarks`` runs: ``jetspec.evaluation.bench.run_bench`` on the dev prompts of
``jetspec prepare-data`` (math from GSM8K, code from Code Alpaca, chat from the Alpaca seed tasks:
prompts no head was trained on), once per temperature (greedy and temperature 1 by default), with
plain decoding (``ar``), Hugging Face greedy / sampling and Hugging Face prompt lookup measured in
the same process as the outside anchors (the measurement conventions of docs/design.md §7). The
target is loaded once and shared by all runs.

A reduced run (``quick``) says so at the top of the Markdown: its numbers show that the pipeline
works and roughly where things stand, not more. Raw results stay in ``out`` (git-ignored), one
folder per temperature, with plots.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from jetspec.core.config import check_at_least, read_tuple_fields
from jetspec.evaluation.bench import BenchConfig
from jetspec.evaluation.bench_stats import ANCHORS
from jetspec.evaluation.splits import SETS

_BENCH = BenchConfig()  # the bench defaults this command shares (one source of defaults)
# The reduced run: enough to exercise every method on every set in minutes, not hours.
QUICK = {"limit": 3, "max_new_tokens": 48}

MAIN_COLUMNS = [("drafter", "method"), ("tree", "tree"), ("budget", "budget"), ("tau", "tau"),
                ("tokens_per_s", "tok/s (decode)"), ("tokens_per_s_e2e", "tok/s (e2e)"),
                ("speedup_vs_ar", "x ar"), ("speedup_vs_hf", "x HF"),
                ("draft_forwards_per_round", "draft fwd/round"),
                ("draft_ms", "draft ms"), ("tree_ms", "tree ms"), ("verify_ms", "verify ms"),
                ("accept_ms", "accept ms"), ("commit_ms", "commit ms"), ("matches_ar", "= ar")]

# The batch-size table (docs/design.md §7.8): each method's rows at every batch size, side by side.
BATCH_SIZE_COLUMNS = [("drafter", "method"), ("budget", "budget"), ("batch_size", "B"), ("tau", "tau"),
                      ("tokens_per_s", "tok/s (total)"), ("tokens_per_s_per_row", "tok/s per row"),
                      ("speedup_vs_ar", "x ar"), ("speedup_vs_hf", "x HF"), ("verify_ratio", "verify / ar step"),
                      ("draft_ms", "draft ms"), ("tree_ms", "tree ms"), ("verify_ms", "verify ms"),
                      ("accept_ms", "accept ms"), ("commit_ms", "commit ms"), ("matches_ar", "= ar")]


def batch_size_table(rows: list[dict]) -> str:
    """One prompt set's rows as the batch-size table: per method and budget, one line per batch size."""
    from jetspec.evaluation.bench_outputs import markdown_table

    order = {name: i for i, name in enumerate(ANCHORS)}
    ranked = sorted(rows, key=lambda r: (order.get(r["drafter"], len(order)), r["drafter"], r["budget"] or 0,
                                         r.get("batch_size", 1)))
    return markdown_table(ranked, BATCH_SIZE_COLUMNS)


@dataclass
class BenchmarksConfig:
    """Everything ``jetspec benchmarks`` can vary. The CLI flags are generated from these fields."""

    data: str = "runs/data"
    """Folder with the dev splits (built with `jetspec prepare-data` defaults if missing)."""
    out: str = "runs/benchmarks"
    """Raw results folder (one sub-folder per temperature)."""
    write: str = "BENCHMARKS.md"
    """The Markdown file to (re)write."""
    temperatures: tuple[float, ...] = (0.0, 1.0)
    """Comma list; one benchmark run each."""
    quick: bool = False
    """Reduced run: 3 prompts per set, 48 new tokens."""
    target: str = _BENCH.target
    """Target model: built-in name, local folder or Hub id."""
    drafters: tuple[str, ...] = _BENCH.drafters
    """Drafter specs (comma list), as in `jetspec bench`."""
    head_dir: Optional[str] = _BENCH.head_dir
    """Folder with trained heads in <dir>/<drafter name>; default: jetspec/assets/heads."""
    budgets: tuple[int, ...] = _BENCH.budgets
    """Drafted nodes per round, root excluded (comma list)."""
    node_costs: tuple[float, ...] = (0.0,)
    """Tree node_cost values (comma list; 0 = whole budget): see trees/best_first.py."""
    limit: Optional[int] = None
    """Prompts per set (default: all; quick: 3)."""
    max_new_tokens: Optional[int] = None
    """New tokens per prompt (default: that of `jetspec bench`; quick: 48)."""
    repeats: int = _BENCH.repeats
    """Times every (prompt, method) pair is run."""
    threads: Optional[str] = _BENCH.threads
    """torch CPU threads: a number, or auto (measured at start)."""
    include: tuple[str, ...] = ()
    """Append this Markdown file (e.g. a `jetspec replay-table --md` or `jetspec roofline --out` report);
    repeatable."""
    render_only: bool = False
    """Decode nothing: rewrite the Markdown from the results.json files an earlier run with the same
    --out and --temperatures left (e.g. after an --include file changed)."""

    def __post_init__(self) -> None:
        read_tuple_fields(self)
        check_at_least(self, ("temperatures",), 0)

    def effective_limit(self) -> Optional[int]:
        return self.limit if self.limit is not None else (QUICK["limit"] if self.quick else None)

    def effective_max_new_tokens(self) -> int:
        return self.max_new_tokens or (QUICK["max_new_tokens"] if self.quick else _BENCH.max_new_tokens)

    def bench_config(self, temperature: float) -> BenchConfig:
        """The ``jetspec bench`` configuration of the run at one temperature."""
        return BenchConfig(target=self.target, drafters=self.drafters, head_dir=self.head_dir,
                           budgets=self.budgets, node_costs=self.node_costs, temperature=temperature,
                           max_new_tokens=self.effective_max_new_tokens(), repeats=self.repeats,
                           threads=self.threads, limit=self.effective_limit(),
                           out=str(Path(self.out) / f"t{temperature:g}"))

    def command(self) -> str:
        """The ``jetspec benchmarks`` command line that reproduces this configuration."""
        parts = ["jetspec benchmarks"]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            flag = f"--{f.name.replace('_', '-')}"
            if value == f.default or f.name == "render_only":  # the command of the run, not of a re-render
                continue
            if isinstance(value, bool):
                parts.append(flag)
            elif f.name == "include":  # the one repeatable flag: one file each
                parts += [f"{flag} {v}" for v in value]
            elif isinstance(value, tuple):  # a comma list
                parts.append(f"{flag} " + ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value))
            else:
                parts.append(f"{flag} {value}")
        return " ".join(parts)


def dev_prompts(data: Path, limit: Optional[int]) -> list[dict]:
    """The three dev splits, building them first (``jetspec.evaluation.splits.prepare_data``) if they are missing."""
    from jetspec.core.prompts import read_prompts
    from jetspec.evaluation.splits import PrepareDataConfig, prepare_data

    missing = [f"dev_{s}.jsonl" for s in SETS if not (data / f"dev_{s}.jsonl").is_file()]
    if missing:
        try:
            prepare_data(PrepareDataConfig(out=str(data)))
        except ValueError as err:
            raise ValueError(f"--data {data} lacks {', '.join(missing)} and they could not be built ({err}): "
                             f"build them with `jetspec prepare-data --data-dir <source files> --out {data}`, or "
                             "pass --data with a folder that holds them") from None
    rows = []
    for s in SETS:
        split = read_prompts(data / f"dev_{s}.jsonl", limit=limit)
        rows += [{"prompt": r["prompt"], "set": s} for r in split]
    return rows


def run_benchmarks(cfg: BenchmarksConfig, model, tokenizer, prompts: Optional[list[dict]] = None,
                   threads_reason: str = "torch's default") -> dict[float, dict]:
    """One ``run_bench`` per temperature on ``prompts`` (default: the dev prompts); {temperature: results}.

    Thread count and denormal flushing are the caller's (the command sets them); ``threads_reason``
    says how the count was chosen, for the report.
    """
    from jetspec.evaluation.bench import run_bench

    if prompts is None:
        prompts = dev_prompts(Path(cfg.data), cfg.effective_limit())
    return {t: run_bench(cfg.bench_config(t), model=model, tokenizer=tokenizer, prompts=prompts,
                         threads_reason=threads_reason)
            for t in cfg.temperatures}


def load_results(cfg: BenchmarksConfig) -> dict[float, dict]:
    """The ``results.json`` of an earlier run, one per temperature of ``cfg`` (``--render-only``).

    The run must be the one ``cfg`` describes: the report's command line and setup come from ``cfg``,
    its tables from the files, so a flag that differs from the run's is refused by name.
    """
    results = {}
    for t in cfg.temperatures:
        path = Path(cfg.bench_config(t).out) / "results.json"
        if not path.is_file():
            raise ValueError(f"--render-only: no {path}; pass the --out and --temperatures of the earlier run")
        try:
            res = json.loads(path.read_text())
            ran = res["config"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"--render-only: {path} is not a results file of `jetspec benchmarks` ({err})") from None
        asked = json.loads(json.dumps(dataclasses.asdict(cfg.bench_config(t))))  # tuples as lists, like the file
        differ = [f"--{k.replace('_', '-')} (the run: {ran.get(k)!r}, asked: {v!r})" for k, v in asked.items()
                  if k in ran and ran[k] != v]
        if differ:
            raise ValueError(f"--render-only: {path} was written with other flags: " + "; ".join(differ))
        results[t] = res
    return results


def per_set_table(rows: list[dict]) -> str:
    """tau and speedup over ar of every method on each prompt set, side by side."""
    keys = []
    for r in rows:
        k = (r["drafter"], r["tree"], r["budget"])
        if k not in keys:
            keys.append(k)
    cell = {(r["drafter"], r["tree"], r["budget"], r["prompt_set"]): r for r in rows}
    head = ["method", "budget"] + [f"{s} tau" for s in SETS] + [f"{s} x ar" for s in SETS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d, t, b in keys:
        vals = []
        for metric in ("tau", "speedup_vs_ar"):
            for s in SETS:
                v = cell.get((d, t, b, s), {}).get(metric)
                vals.append("-" if v is None else f"{v:.2f}")
        lines.append("| " + " | ".join([d, "-" if b is None else str(b)] + vals) + " |")
    return "\n".join(lines)


def _setup(first: dict, cfg: BenchmarksConfig) -> list[str]:
    """The header and the Setup section: machine, engine, target, prompts, tree, anchors, command."""
    m, c = first["machine"], first["config"]
    out = ["# jetspec benchmarks", ""]
    if cfg.quick:
        out += [f"> **This is a REDUCED run** (`--quick`): {c['limit']} prompts per set, at most "
                f"{c['max_new_tokens']} new tokens each, one repeat, on a shared and busy 2-core "
                "machine. It proves that the pipeline runs end to end and shows the rough picture; "
                "it is not a measurement to quote. Run `jetspec benchmarks` without "
                "`--quick` for the full benchmark.", ""]
    budgets = ", ".join(map(str, c["budgets"]))
    return out + [
        "## Setup", "",
        f"- Machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['threads']} torch "
        f"thread(s), no GPU; torch {m['torch']}, transformers {m['transformers']}, Python "
        f"{m['python']}. Load average at the start of the greedy run: {m.get('load_average')}. "
        f"Threads: {m.get('threads_choice', m['threads'])}.",
        f"- Engine of `ar` and the speculative methods: {m.get('engine', 'hf')} (`TargetModel`; "
        "the `hf_*` anchors run Hugging Face `generate` on the same model).",
        f"- Target: `{c['target']}` in fp32, batch 1.",
        f"- Prompts: the held-out dev splits of `jetspec prepare-data` ({', '.join(SETS)}), "
        "chat template applied; no head was trained on them.",
        f"- Tree: `{c['tree']}`, width {c['width']}, depth {c['depth']}, budgets {budgets} "
        f"(drafted nodes, root excluded); max_new_tokens {c['max_new_tokens']}; {c['repeats']} "
        "repeat(s); methods interleaved per prompt in a random order."
        + ("" if list(c.get("node_costs", [0.0])) == [0.0] else
           " A label `name(c=x)` is that drafter with a cost-aware tree (node_cost x: the tree "
           "stops growing where one more node would not pay for its verify cost, "
           "`trees/best_first.py`); the budget is then a cap."),
        "- Anchors measured in the same process: `ar` (plain decoding with a KV cache in "
        "jetspec's harness), `hf_greedy` / `hf_sample` (Hugging Face `generate`) and "
        f"`hf_prompt_lookup` (`prompt_lookup_num_tokens={c['prompt_lookup_tokens']}`).",
        f"- Command: `{cfg.command()}`", "",
        "tau = committed tokens per target forward (bonus included; plain decoding 1.0). "
        "tok/s (decode) excludes prefill; e2e is one whole generate call. x ar / x HF are "
        "decode-speed ratios to `ar` and to HF `generate` on the same prompts. Per-round time "
        "split in ms. '= ar' (greedy only) is the share of outputs identical to plain decoding. "
        "Run-to-run noise on this machine is about +-20 %: compare methods only within one table.",
        ""]


def _temperature_section(temp: float, res: dict) -> list[str]:
    """One temperature's tables, divergences, skipped methods and where its raw files are."""
    from jetspec.evaluation.bench_outputs import divergence_note, markdown_table

    title = "Greedy (temperature 0)" if temp == 0 else f"Sampling (temperature {temp:g})"
    rows = res["rows"]
    out = [f"## {title}", "", "All prompt sets pooled:", "",
           markdown_table([r for r in rows if r["prompt_set"] == "all"], MAIN_COLUMNS), "",
           "Per prompt set:", "", per_set_table(rows), ""]
    if res.get("divergences"):
        out += ["Greedy outputs that differ from plain decoding (a logit gap near 1e-5 or below is an "
                "fp32 near-tie: a many-node verify forward rounds differently from a one-token "
                "forward; a large gap would be a bug):", ""]
        out += [divergence_note(d) for d in res["divergences"]] + [""]
    if res["skipped"]:
        out += ["Not run: " + "; ".join(f"`{s['drafter']}` ({s['reason']})" for s in res["skipped"]), ""]
    out += [f"Raw results and plots: `{Path(res['config']['out'])}/` (results.json, runs.jsonl, "
            "tau_vs_budget.png, tokens_per_s_vs_budget.png, depth_acceptance.png).", ""]
    return out


def render(results: dict[float, dict], cfg: BenchmarksConfig) -> str:
    """BENCHMARKS.md: setup, one section per temperature, then the included Markdown files."""
    out = _setup(next(iter(results.values())), cfg)
    for temp, res in results.items():
        out += _temperature_section(temp, res)
    for path in cfg.include:  # sections written by other commands (roofline, head comparison, replay tables)
        out += [Path(path).read_text().rstrip(), ""]
    return "\n".join(out)
