"""Benchmark drafters against plain decoding and Hugging Face, in one process, on the same prompts.

The numbers follow docs/design.md §7:

* tau = committed tokens per target verify forward (bonus included), pooled over all rounds;
  plain decoding has tau 1.0 by definition.
* tokens/s is *decode-only* (prefill excluded) and, separately, end-to-end (one whole generate
  call). Speedups are ratios to plain decoding with a KV cache in the *same harness* (``ar``), and
  to Hugging Face ``generate`` (``hf_greedy``; ``hf_sample`` at temperature > 0).
* Two outside anchors run in the same process: ``hf_greedy`` and ``hf_prompt_lookup`` (HF's own
  n-gram speculative decoding). If our ``ar`` is much slower than ``hf_greedy``, the harness, not
  the drafter, is the bottleneck.
* Every round's time is split into its five stages, draft / tree build / verify / accept / commit, in ms.

Measurement discipline. A shared 2-core machine is noisy (+-20 % run to run), so only ratios taken
in one run mean anything. Every method therefore runs on the same prompt back to back: the outer
loop is over prompts, the inner over methods, in an order rotated per prompt, so a noisy minute
hits all methods alike. A warm-up pass runs every method once before anything is timed.

How HF's decode-only time is measured: a streamer records when ``generate`` emits tokens. The first
emission ends HF's prefill (its prefill also yields the first token, so that token is left out);
each later emission is one target forward, which also gives HF prompt lookup's tau.

``run_bench`` returns (and writes to ``OUT/results.json``) ``{"machine", "config", "skipped",
"rows"}``; rows are aggregated per (drafter, tree, budget, prompt_set), plus prompt_set ``all``.
``OUT/results.md`` is the same as a Markdown table and ``OUT/runs.jsonl`` has every single run;
``jetspec.evaluation.bench_outputs`` writes these files (``jetspec.evaluation.plots`` draws the PNGs);
``jetspec.evaluation.bench_stats`` holds the bookkeeping (batches, the greedy check, summaries).

Batches (``batch_sizes``, docs/design.md §7.8). Batch size 1 is the measurement above, unchanged.
A size B > 1 groups the same prompts, in order, into left-padded batches of B (the last one may be
smaller) and times one batched generate call per batch and method: ``ar`` (batched
``autoregressive_generate``), HF ``generate`` on the same padded batch, and every drafter. Rows are
then aggregated per batch size as well, with total tokens/s (all rows' tokens over the call's
decode time), tokens/s per row (what one user's stream sees) and ``verify_ratio``, the verify
forward per round over ``ar``'s plain batched step at the same B. HF prompt lookup runs at batch 1
only (Hugging Face's assisted generation refuses larger batches).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import logging
import os
import platform
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from jetspec.core.batched import left_pad
from jetspec.core.config import ConfigError, check_at_least, check_distinct, check_registered, read_tuple_fields
from jetspec.core.decoding import SpeculativeDecoder, autoregressive_generate
from jetspec.core.generation import STAGES
from jetspec.core.interfaces import DRAFTERS, TREE_BUILDERS
from jetspec.core.loading import DEFAULT_HEAD_DIR
from jetspec.core.prompts import builtin_prompts, chat_ids, eos_ids, read_prompts
from jetspec.core.target import TargetModel
from jetspec.evaluation.bench_outputs import run_line, start_outputs, write_outputs
from jetspec.evaluation.bench_stats import ANCHORS, aggregate, batches_of, check_greedy, cut_at_eos, divergence
from jetspec.evaluation.drafter_specs import DrafterUnavailable, make_drafter, spec_label
from jetspec.evaluation.threads import choose_threads
from jetspec.trees import make_tree_builder

__all__ = ["ANCHORS", "BenchConfig", "aggregate", "divergence", "run_bench", "spec_label"]
log = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    """Everything ``jetspec bench`` can vary. The CLI flags are generated from these fields."""

    target: str = "smollm2-135m-instruct"
    """Target model: built-in name, local folder or Hub id."""
    prompts: Optional[str] = None
    """JSON-lines prompt file (rows with 'prompt' and optional 'set'); default: the built-in prompts."""
    limit: Optional[int] = None
    """Use at most this many prompts per prompt set."""
    drafters: tuple[str, ...] = ("ngram", "jetspec", "dflash", "eagle")
    """Registered drafter names (comma list); ar and the HF anchors always run as well."""
    head_dir: Optional[str] = None
    """Folder with trained heads in <dir>/<drafter name>; default: jetspec/assets/heads."""
    tree: str = "bestfirst"
    """Tree builder: a registered name (jetspec.TREE_BUILDERS: bestfirst, chain, fanout, entropy, hybrid)."""
    budgets: tuple[int, ...] = (8, 16, 32, 64)
    """Drafted nodes per round, root excluded (comma list). A chain's budget is its depth."""
    width: int = 4
    """Candidates per depth (per node) the tree builder may use."""
    node_costs: tuple[float, ...] = (0.0,)
    """Tree builder node_cost values (comma list; 0 = spend the whole budget). Each drafter runs at
    each; a drafter run with c > 0 is labelled 'name(c=...)'. See trees/best_first.py."""
    depth: int = 8
    """Deepest tree level (clamped to what a drafter can produce)."""
    temperature: float = 0.0
    """0 = greedy; > 0 samples (lossless verification)."""
    batch_sizes: tuple[int, ...] = (1,)
    """Prompts per generate call (comma list): each size groups the prompts, in order, into left-padded
    batches (the last may be smaller). 1 = one prompt at a time, the classic bench."""
    max_new_tokens: int = 128
    """New tokens per prompt (fewer if the target ends its answer)."""
    repeats: int = 1
    """Times every (prompt, method) pair is run."""
    prompt_lookup_tokens: int = 10
    """prompt_lookup_num_tokens of the hf_prompt_lookup anchor."""
    hf: bool = True
    """Run the Hugging Face anchors (hf_greedy / hf_sample and hf_prompt_lookup)."""
    warmup: bool = True
    """Run every method once, untimed, before measuring."""
    seed: int = 0
    """Seed of sampling (temperature > 0) and of the method order per prompt."""
    threads: Optional[int | str] = None
    """torch CPU threads: a number, or auto (measure 1 thread vs all cores at start, jetspec/evaluation/threads.py);
    default: torch's choice. Set by the jetspec bench command; run_bench itself leaves threads alone."""
    out: str = "runs/bench"
    """Output folder for results.json, results.md, runs.jsonl and the plots."""
    plots: bool = True
    """Draw the PNG plots."""

    def __post_init__(self) -> None:
        read_tuple_fields(self)
        check_at_least(self, ("budgets", "batch_sizes", "width", "depth", "max_new_tokens", "repeats",
                              "prompt_lookup_tokens"))
        check_at_least(self, ("node_costs", "temperature"), 0)
        check_distinct(self, "batch_sizes")
        check_registered("tree", [self.tree], TREE_BUILDERS, "tree builder")
        if self.threads is not None and str(self.threads).lower() != "auto":
            choose_threads(self.threads)  # a number is taken as given; anything else but auto raises
        if self.limit is not None:
            check_at_least(self, ("limit",))
        unknown = unknown_drafters(self.drafters)
        if unknown:  # an error, not a skip: a typo would otherwise time the baselines alone and exit 0
            raise ConfigError("drafters", f"unknown drafter(s) {unknown}; registered: {', '.join(sorted(DRAFTERS))} "
                                          f"(anchors: {', '.join(ANCHORS)}; 'label=folder' loads a saved head)")


def unknown_drafters(specs) -> list[str]:
    """The parts of drafter specs that name no registered drafter or anchor.

    ``label=folder`` parts are checked when loaded (a missing trained head is a skip, not an error:
    it depends on the machine, not on the command).
    """
    unknown = []
    for spec in specs:
        if spec in ANCHORS:  # always timed anyway; an anchor is no member of a composite
            continue
        for part in spec.split("+"):
            base = part.split(":", 1)[0]  # name:key=value options
            if "=" not in base and base not in DRAFTERS:
                unknown.append(base)
    return unknown


def machine_info() -> dict:
    """What the numbers were measured on (they mean little without it)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    import transformers

    info = {"cpu": cpu, "logical_cores": os.cpu_count(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "threads": torch.get_num_threads(),
            "device": "cpu", "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


def encode_prompts(rows: list[dict], tokenizer) -> list[dict]:
    """Attach ``ids`` (chat-templated) to every prompt row; rows may already carry token ids."""
    out = []
    for r in rows:
        p = r["prompt"]
        if isinstance(p, str):
            if tokenizer is None:
                raise ValueError("text prompts need a tokenizer; pass one or give prompts as token ids")
            ids = chat_ids(tokenizer, p)
        else:
            ids = [int(t) for t in p]
        out.append({**r, "ids": ids, "set": r.get("set") or "default"})
    return out


def _limit_per_set(rows: list[dict], limit: Optional[int]) -> list[dict]:
    if limit is None:
        return rows
    taken: dict[str, int] = defaultdict(int)
    kept = []
    for r in rows:
        s = r.get("set") or "default"
        if taken[s] < limit:
            taken[s] += 1
            kept.append(r)
    return kept


# ---------------------------------------------------------------------------- the methods
@dataclass
class Method:
    """One thing to time: a baseline, or a drafter with a tree builder at one budget."""

    drafter: str
    tree: str = "-"
    budget: Optional[int] = None
    width: Optional[int] = None
    depth: Optional[int] = None
    target: Optional[TargetModel] = None  # ar and speculative methods share one wrapper
    decoder: Optional[SpeculativeDecoder] = None

    def key(self) -> dict:
        return {"drafter": self.drafter, "tree": self.tree, "budget": self.budget, "width": self.width,
                "depth": self.depth}

    @property
    def label(self) -> str:
        return self.drafter if self.budget is None else f"{self.drafter}@{self.budget}"


def build_methods(cfg: BenchConfig, model, head_dir: Path) -> tuple[list[Method], list[dict]]:
    """The methods to time, and the drafters skipped (with the reason)."""
    target = TargetModel(model)
    methods = [Method("ar", target=target)]
    if cfg.hf:
        methods.append(Method("hf_greedy" if cfg.temperature == 0 else "hf_sample"))
        k = cfg.prompt_lookup_tokens
        methods.append(Method("hf_prompt_lookup", tree="chain", budget=k, width=1, depth=k))
    skipped = []
    for name in cfg.drafters:
        if name in ANCHORS:
            continue
        try:
            drafter = make_drafter(name, model, head_dir)
        except DrafterUnavailable as err:  # depends on the machine (a head not trained here): a skip
            skipped.append({"drafter": name, "reason": str(err)})
            continue
        depth = min(cfg.depth, drafter.max_depth or cfg.depth)
        # A builder that takes no budget (the chain) spends its depth: one budget, the depth.
        takes_budget = "budget" in inspect.signature(TREE_BUILDERS[cfg.tree]).parameters
        budgets = list(cfg.budgets) if takes_budget else [depth]
        label = spec_label(name)
        for b, c in itertools.product(budgets, cfg.node_costs):
            builder = make_tree_builder(cfg.tree, b, cfg.width, depth, c)
            try:
                dec = SpeculativeDecoder(target, drafter, builder)
            except ValueError as err:
                skipped.append({"drafter": name, "reason": str(err)})
                break
            shown = label if c == 0 else f"{label}(c={c:g})"
            methods.append(Method(shown, cfg.tree, b, builder.width, depth, target=target, decoder=dec))
    return methods, skipped


class _EmissionClock:
    """A ``generate`` streamer that only records when tokens come out and how many."""

    def __init__(self) -> None:
        self.emissions: list[tuple[float, int]] = []
        self.end_time = 0.0

    def put(self, value) -> None:
        self.emissions.append((time.perf_counter(), int(value.numel())))

    def end(self) -> None:
        self.end_time = time.perf_counter()


def run_method(m: Method, model, ids: list[int], max_new_tokens: int, cfg: BenchConfig, eos,
               seed: int) -> dict:
    """Generate once with method ``m``; return its counts and timings (seconds)."""
    prompt = torch.tensor([ids], dtype=torch.long)  # [1, T]
    gen = torch.Generator().manual_seed(seed)
    if m.drafter.startswith("hf_"):
        return _run_hf(m, model, prompt, max_new_tokens, cfg, eos, seed)
    t0 = time.perf_counter()
    if m.decoder is None:
        res = autoregressive_generate(m.target, prompt, max_new_tokens, temperature=cfg.temperature,
                                      eos_token_id=eos, generator=gen)
    else:
        res = m.decoder.generate(prompt, max_new_tokens, temperature=cfg.temperature, eos_token_id=eos,
                                 generator=gen)
    total = time.perf_counter() - t0
    return {"new_tokens": res.num_new_tokens, "decode_tokens": res.num_new_tokens,
            "rounds": len(res.accepted_lengths), "forwards": len(res.accepted_lengths), "rows": 1,
            "decode_s": res.decode_seconds, "total_s": total,
            "prefill_s": res.timings.get("prefill", 0.0),
            "stages": {s: res.timings.get(s, 0.0) for s in STAGES},
            "draft_forwards": sum(res.draft_forwards), "accepted_depths": list(res.accepted_depths),
            "tree_depths": list(res.tree_depths), "tree_nodes": sum(res.tree_sizes),
            "tokens": res.sequences[0, len(ids):].tolist()}


@torch.no_grad()
def _hf_kwargs(cfg: BenchConfig, max_new_tokens: int, eos, clock: "_EmissionClock") -> dict:
    """HF ``generate`` settings of the bench: our EOS ids, no top-k/top-p, greedy or the bench's temperature."""
    kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=(eos or [0])[0],
                  streamer=clock, top_k=None, top_p=None)
    if cfg.temperature > 0:
        kwargs.update(do_sample=True, temperature=cfg.temperature)
    else:
        kwargs.update(do_sample=False, temperature=None)
    return kwargs


def _run_hf(m: Method, model, prompt, max_new_tokens: int, cfg: BenchConfig, eos, seed: int) -> dict:
    clock = _EmissionClock()
    kwargs = _hf_kwargs(cfg, max_new_tokens, eos, clock)
    if m.drafter == "hf_prompt_lookup":
        kwargs["prompt_lookup_num_tokens"] = m.budget
    # HF generate samples from the global RNG only: seed a fork of it, so the caller's state is kept.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **kwargs)
        total = time.perf_counter() - t0
    new = out[0, prompt.shape[1]:].tolist()
    steps = clock.emissions[1:]  # the first put() is the prompt itself
    first_t, first_n = steps[0] if steps else (clock.end_time, 0)
    return {"new_tokens": len(new), "decode_tokens": len(new) - first_n, "rounds": len(steps),
            "forwards": len(steps), "rows": 1,
            "decode_s": max(clock.end_time - first_t, 0.0), "total_s": total, "prefill_s": first_t - t0,
            "stages": {s: None for s in STAGES}, "draft_forwards": 0, "accepted_depths": [],
            "tree_depths": [], "tree_nodes": 0, "tokens": new}


def run_method_batch(m: Method, model, prompts: list[list[int]], max_new_tokens: int, cfg: BenchConfig, eos,
                     seed: int) -> dict:
    """Generate once with method ``m`` on a left-padded batch of ``prompts``; counts and timings.

    The record has ``run_method``'s fields summed over the rows (``rounds``: the rows' rounds, for
    tau; ``forwards``: the batched target forwards, for the per-round split), ``rows`` = B and
    ``tokens`` = one list of new tokens per row.
    """
    pad = (eos or [0])[0]  # as HF generate pads finished rows when the model names no pad token
    ids, mask = left_pad(prompts, pad)
    if m.drafter.startswith("hf_"):
        return _run_hf_batch(m, model, ids, mask, max_new_tokens, cfg, eos, seed)
    gen = torch.Generator().manual_seed(seed)
    kwargs = dict(temperature=cfg.temperature, eos_token_id=eos, generator=gen, attention_mask=mask,
                  pad_token_id=pad)
    t0 = time.perf_counter()
    if m.decoder is None:
        res = autoregressive_generate(m.target, ids, max_new_tokens, **kwargs)
    else:
        res = m.decoder.generate(ids, max_new_tokens, **kwargs)
    total = time.perf_counter() - t0
    tokens = [row.sequences[0, len(p):].tolist() for row, p in zip(res.rows, prompts)]
    return {"new_tokens": res.num_new_tokens, "decode_tokens": res.num_new_tokens,
            "rounds": len(res.accepted_lengths), "forwards": len(res.rows_per_round), "rows": len(prompts),
            "decode_s": res.decode_seconds, "total_s": total, "prefill_s": res.timings.get("prefill", 0.0),
            "stages": {s: res.timings.get(s, 0.0) for s in STAGES},
            "draft_forwards": sum(res.draft_forwards), "accepted_depths": list(res.accepted_depths),
            "tree_depths": list(res.tree_depths), "tree_nodes": sum(res.tree_sizes), "tokens": tokens}


@torch.no_grad()
def _run_hf_batch(m: Method, model, ids, mask, max_new_tokens: int, cfg: BenchConfig, eos, seed: int) -> dict:
    """HF ``generate`` on the padded batch; decode time as in ``_run_hf`` (its first step is prefill)."""
    clock = _EmissionClock()
    kwargs = _hf_kwargs(cfg, max_new_tokens, eos, clock)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        total = time.perf_counter() - t0
    tokens = [cut_at_eos(row, eos) for row in out[:, ids.shape[1]:].tolist()]
    new = sum(len(t) for t in tokens)
    steps = clock.emissions[1:]  # the first put() is the prompt batch itself
    first_t = steps[0][0] if steps else clock.end_time
    # the prefill forward also yields every row's first token; each later step is one batched forward
    return {"new_tokens": new, "decode_tokens": new - sum(1 for t in tokens if t), "rounds": new,
            "forwards": len(steps), "rows": ids.shape[0], "decode_s": max(clock.end_time - first_t, 0.0),
            "total_s": total, "prefill_s": first_t - t0, "stages": {s: None for s in STAGES},
            "draft_forwards": 0, "accepted_depths": [], "tree_depths": [], "tree_nodes": 0, "tokens": tokens}


def _run_once(m: Method, model, rows_in: list[dict], b: int, idx: list[int], max_new_tokens: int,
              cfg: BenchConfig, eos, seed: int) -> dict:
    """One call of method ``m`` on the prompts ``idx``: at batch size ``b`` = 1 the classic one-prompt path,
    else one batched call (also for a last, smaller group: its record has the batch layout)."""
    if b == 1:
        return run_method(m, model, rows_in[idx[0]]["ids"], max_new_tokens, cfg, eos, seed=seed)
    return run_method_batch(m, model, [rows_in[i]["ids"] for i in idx], max_new_tokens, cfg, eos, seed=seed)


def _timed_runs(plan: list[tuple[int, list[Method], list[list[int]]]], rows_in: list[dict], model, cfg: BenchConfig,
                eos, progress: bool, log_file: Path) -> list[dict]:
    """Warm up every (batch size, method) once, then run the plan ``cfg.repeats`` times: one record per call,
    appended to ``log_file`` as soon as it is measured (an interrupted run keeps what it finished)."""
    if cfg.warmup:
        for b, ms, batches in plan:
            for m in ms:
                _run_once(m, model, rows_in, b, batches[0], min(8, cfg.max_new_tokens), cfg, eos, seed=cfg.seed)
    runs: list[dict] = []
    order_rng = torch.Generator().manual_seed(cfg.seed)
    total = cfg.repeats * sum(len(ms) * len(batches) for _, ms, batches in plan)
    with tqdm(total=total, disable=not progress, desc="bench", unit="run", dynamic_ncols=True) as bar, \
            open(log_file, "a") as runs_file:
        for rep in range(cfg.repeats):
            for b, ms, batches in plan:
                for idx in batches:
                    # A fresh random order per prompt (batch): no method always runs first (cold) or last.
                    for mi in torch.randperm(len(ms), generator=order_rng).tolist():
                        m = ms[mi]
                        rec = _run_once(m, model, rows_in, b, idx, cfg.max_new_tokens, cfg, eos,
                                        seed=cfg.seed + 1000 * rep + idx[0])
                        sets = {rows_in[i]["set"] for i in idx}
                        runs.append({**m.key(), "batch_size": b, "prompt_set": sets.pop() if len(sets) == 1
                                     else "mixed", "prompt_index": idx[0], "prompt_indices": idx, "repeat": rep,
                                     **rec})
                        runs_file.write(run_line(runs[-1]))
                        runs_file.flush()
                        bar.update(1)
                        bar.set_postfix(method=m.label, batch=b, refresh=False)
    return runs


def run_bench(config: Optional[BenchConfig] = None, model=None, tokenizer=None,
              prompts: Optional[list[dict]] = None, progress: bool = True,
              threads_reason: Optional[str] = None, **overrides) -> dict:
    """Run the benchmark and write its files; returns the ``results.json`` content.

    Args:
        config: a ``BenchConfig``; ``overrides`` replace single fields (``budgets=(8, 16)``).
        model, tokenizer: an already loaded target (else ``config.target`` is loaded).
        prompts: rows ``{"prompt": str | list[int], "set": str}`` (else ``config.prompts`` or the
            built-in prompts). Token-id prompts are used as they are (no chat template).
        progress: show a tqdm bar.
        threads_reason: how the caller chose the process's torch threads (recorded in ``machine``).

    Process settings (torch threads, denormal flushing, the global RNG) are left as the caller
    made them: ``jetspec bench`` and ``jetspec demo`` set threads and denormal flushing before
    calling this; seeds come from ``config.seed``. A given ``model`` must be in eval mode.
    """
    cfg = dataclasses.replace(config or BenchConfig(), **overrides)
    start_outputs(Path(cfg.out))  # before anything is loaded or measured: a bad --out fails now
    if model is None:
        from jetspec.core.loading import load_target

        model, tokenizer = load_target(cfg.target)
    if prompts is None:
        prompts = read_prompts(cfg.prompts) if cfg.prompts else builtin_prompts()
    rows_in = encode_prompts(_limit_per_set(prompts, cfg.limit), tokenizer)
    eos = eos_ids(tokenizer, model) or None

    head_dir = Path(cfg.head_dir) if cfg.head_dir else DEFAULT_HEAD_DIR
    methods, skipped = build_methods(cfg, model, head_dir)
    for reason in skipped:
        log.warning("skipped %s: %s", reason["drafter"], reason["reason"])
    machine = machine_info()
    machine["threads_choice"] = threads_reason or "as the caller set them"
    shared = methods[0].target  # ar's wrapper, which every jetspec method shares
    machine["engine"] = shared.engine + (f", products: {shared.linear_backend}" if shared.linear_backend else "")

    batched = [m for m in methods if m.drafter != "hf_prompt_lookup"]  # HF assisted generation: batch 1 only
    if cfg.hf and max(cfg.batch_sizes) > 1:
        skipped.append({"drafter": "hf_prompt_lookup", "reason": "batch sizes > 1: Hugging Face assisted "
                        "generation decodes one prompt at a time (measured at batch size 1 only)"})
    plan = [(b, methods if b == 1 else batched, batches_of(len(rows_in), b)) for b in cfg.batch_sizes]
    runs = _timed_runs(plan, rows_in, model, cfg, eos, progress, Path(cfg.out) / "runs.jsonl")
    if hasattr(os, "getloadavg"):
        machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    divergences = check_greedy(runs, rows_in, model) if cfg.temperature == 0 else []

    rows = aggregate(runs, cfg.temperature)
    config_dict = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}
    result = {"machine": machine, "config": config_dict, "skipped": skipped, "rows": rows,
              "divergences": divergences}
    write_outputs(result, runs, Path(cfg.out), cfg.plots)
    return result
