"""What a k-row target forward costs on this machine, next to what the hardware allows.

A verify forward over k rows (the anchor plus k - 1 drafted nodes) reads every weight once, like a
one-token step, and does k times the arithmetic. Its floor on a given machine is therefore

    floor(k) = max(weight bytes / memory bandwidth,  2 * k * weight count / peak FLOP rate)

and a drafter pays off on that machine only as far as the measured forward comes near it. This
module measures the two ceilings (streaming a large tensor; a large matrix product on both
product backends), the target's own product shapes at skinny row counts, and each engine's
forward split into components by ``torch.profiler``:

* ``attn proj`` (q/k/v and o products), ``mlp`` (gate/up and down), ``lm_head``: the products,
  told apart by their weight shapes;
* ``attention``: the attention kernel itself;
* ``other ops``: every other operator (norms, RoPE, cache writes, masks, embedding);
* ``python``: wall time no operator accounts for (the interpreter and the framework).

Everything runs in one process with the caller's thread settings (the CLI sets them), so the
numbers are comparable as ratios. ``jetspec roofline`` prints the tables; BENCHMARKS.md keeps them.

Design: docs/design.md §6.6.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from jetspec.core.config import ConfigError, check_at_least, check_registered, read_tuple_fields
from jetspec.core.target import ENGINES, TargetModel
from jetspec.core.types import DraftTree
from jetspec.kernels import PackedLinear, onednn_available
from jetspec.kernels.packed_linear import SKINNY_EVENT, skinny_available

COMPONENTS = ("attn proj", "mlp", "lm_head", "attention", "other ops", "python")


def median_ms(fn: Callable[[], object], repeats: int = 7, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


@dataclass
class Ceilings:
    """The machine's two ceilings, as measured here."""

    bandwidth_gbs: dict[str, float]  # streaming read of a large tensor, per method (see measure_ceilings)
    sgemm_gflops: dict[str, float]  # large square product per product backend ("torch", "onednn", ...)

    @property
    def peak_gbs(self) -> float:
        return max(self.bandwidth_gbs.values())

    @property
    def peak_gflops(self) -> float:
        return max(self.sgemm_gflops.values())


def measure_ceilings(stream_mb: int = 512, gemm: int = 2048) -> Ceilings:
    """Read bandwidth and matrix throughput, each the best of the ways this machine offers.

    Bandwidth: ``x.sum()`` over a tensor far larger than the caches, and a one-row product through
    the skinny kernel against a weight of the same size (it reads every weight byte once, so its
    rate is a read rate too; on the 2-core EPYC of BENCHMARKS.md it streamed faster than ``sum``).
    Throughput: a large square product on each product backend.
    """
    n = stream_mb * 1024 * 1024 // 4
    x = torch.randn(n)
    bandwidth = {"sum": n * 4 / median_ms(x.sum, repeats=5) / 1e6}
    if skinny_available(torch.float32, "cpu"):
        big = PackedLinear([x.view(-1, 1024)], backend="skinny")
        row = torch.randn(1, 1024)
        bandwidth["skinny 1-row product"] = n * 4 / median_ms(lambda: big(row), repeats=5) / 1e6
        del big
    a, w = torch.randn(gemm, gemm), torch.randn(gemm, gemm)
    flops = {"torch": 2 * gemm ** 3 / median_ms(lambda: F.linear(a, w), repeats=5) / 1e6}
    for backend, ok in (("onednn", onednn_available(torch.float32, "cpu")),
                        ("skinny", skinny_available(torch.float32, "cpu"))):
        if ok:
            packed = PackedLinear([w], backend=backend)
            flops[backend] = 2 * gemm ** 3 / median_ms(lambda: packed(a), repeats=5) / 1e6
    return Ceilings(bandwidth, flops)


def weight_groups(model: torch.nn.Module) -> dict[str, list[torch.Tensor]]:
    """The target's product weights by component (the shapes a forward multiplies against)."""
    groups: dict[str, list[torch.Tensor]] = {"attn proj": [], "mlp": [], "lm_head": []}
    for layer in model.get_decoder().layers:
        for mod in layer.self_attn.children():
            if isinstance(mod, torch.nn.Linear):
                groups["attn proj"].append(mod.weight)
        for mod in layer.mlp.children():
            if isinstance(mod, torch.nn.Linear):
                groups["mlp"].append(mod.weight)
    groups["lm_head"].append(model.get_output_embeddings().weight)
    return groups


def floor_ms(weights: Sequence[torch.Tensor], rows: int, ceilings: Ceilings) -> float:
    """The roofline floor of multiplying ``rows`` rows against ``weights``: traffic or arithmetic."""
    count = sum(w.numel() for w in weights)
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    return max(nbytes / ceilings.peak_gbs / 1e6, 2 * rows * count / ceilings.peak_gflops / 1e6)


def skinny_products(model: torch.nn.Module, rows: Sequence[int], backend: str) -> dict[int, float]:
    """ms for all of the target's products (one call per weight) at each row count."""
    weights = [w for group in weight_groups(model).values() for w in group]
    packed = [PackedLinear([w], backend=backend) for w in weights]
    out = {}
    for m in rows:
        inputs = {w.shape[1]: torch.randn(m, w.shape[1], dtype=w.dtype) for w in weights}
        out[m] = median_ms(lambda: [p(inputs[p.in_features]) for p in packed], repeats=5)
    return out


def verify_tree(target: TargetModel, rows: int, generator: torch.Generator) -> DraftTree:
    """A random tree of ``rows`` nodes (the verify cost depends on the row count, not the shape)."""
    parents = [-1] + [int(torch.randint(0, i, (1,), generator=generator)) for i in range(1, rows)]
    depth = [0] * rows
    for i in range(1, rows):
        depth[i] = depth[parents[i]] + 1
    tokens = torch.randint(0, target.vocab_size, (rows,), generator=generator)
    return DraftTree(tokens=tokens, parents=torch.tensor(parents), depth=torch.tensor(depth), score=torch.zeros(rows))


def forward_ms(target: TargetModel, prefix: torch.Tensor, rows: int, repeats: int = 7) -> float:
    """Median ms of one k-row verify forward after ``prefix`` (k = 1: a plain ``step``)."""
    target.prefill(prefix)
    tree = verify_tree(target, rows, torch.Generator().manual_seed(rows))

    def once():
        target.verify(tree)
        target.commit([0], rows)

    ms = median_ms(once, repeats=repeats)
    target.reset()
    return ms


def _component(name: str, shapes, sizes: dict[str, set[tuple[int, int]]]) -> str:
    """Which component a profiled operator belongs to (products are told apart by weight shape)."""
    if "attention" in name:
        return "attention"
    if name.startswith(SKINNY_EVENT):  # "jetspec::skinny_matmul[O,I]"
        shapes = [[int(v) for v in name[len(SKINNY_EVENT) + 1: -1].split(",")]]
        name = "aten::mm"
    if name in ("mkldnn::_linear_pointwise", "aten::mm", "aten::addmm") and shapes:
        dims = {tuple(s) for s in shapes if isinstance(s, list) and len(s) == 2}
        for comp, known in sizes.items():
            if dims & known:
                return comp
    return "other ops"


def forward_split(target: TargetModel, prefix: torch.Tensor, rows: int, repeats: int = 5) -> dict[str, float]:
    """ms per component (``COMPONENTS``) of one k-row verify forward, from ``torch.profiler``."""
    from torch.profiler import ProfilerActivity, profile

    sizes: dict[str, set[tuple[int, int]]] = {}
    for comp, ws in weight_groups(target.model).items():
        sizes[comp] = {tuple(w.shape) for w in ws} | {tuple(w.shape)[::-1] for w in ws}  # [O, I] and W^T
    # The fast engine multiplies against fused q/k/v and gate/up weights: add those shapes too.
    layer = target.model.get_decoder().layers[0]
    a, m = layer.self_attn, layer.mlp
    sizes["attn proj"].add((a.q_proj.out_features + a.k_proj.out_features + a.v_proj.out_features,
                            a.q_proj.in_features))
    sizes["mlp"].add((m.gate_proj.out_features + m.up_proj.out_features, m.gate_proj.in_features))
    target.prefill(prefix)
    tree = verify_tree(target, rows, torch.Generator().manual_seed(rows))
    for _ in range(2):
        target.verify(tree)
        target.commit([0], rows)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        for _ in range(repeats):
            target.verify(tree)
            target.commit([0], rows)
        wall = 1000 * (time.perf_counter() - t0) / repeats
    target.reset()
    split = dict.fromkeys(COMPONENTS, 0.0)
    for ev in prof.key_averages(group_by_input_shape=True):
        if ev.key.startswith("ProfilerStep") or ev.self_cpu_time_total <= 0:
            continue
        split[_component(ev.key, ev.input_shapes, sizes)] += ev.self_cpu_time_total / 1000 / repeats
    split["python"] = max(0.0, wall - sum(split.values()))
    return split


def component_floors(model: torch.nn.Module, rows: int, ceilings: Ceilings) -> dict[str, float]:
    """The roofline floor of each product component at ``rows`` rows (the other parts have ~0 floor)."""
    return {comp: floor_ms(ws, rows, ceilings) for comp, ws in weight_groups(model).items()}



# ----------------------------------------------------------------------------- the whole report
@dataclass
class RooflineConfig:
    target: str = "smollm2-135m-instruct"
    """target model: a built-in name, a local folder or a Hub id"""
    rows: tuple[int, ...] = (1, 4, 17, 33, 65)
    """forward sizes to measure: 1 = a plain decoding step, k = a tree of k - 1 drafted nodes plus the anchor"""
    engines: tuple[str, ...] = ("fast", "hf")
    """TargetModel engines to compare"""
    product_levers: bool = True
    """also time the fast engine with each other product backend (the levers measured one at a time)"""
    prefix: int = 300
    """cached prefix length (tokens) before each measured forward"""
    repeats: int = 9
    """timed repetitions per measurement (the median is reported)"""
    split_rows: tuple[int, ...] = (1, 17, 33)
    """forward sizes whose time is split into components with torch.profiler"""
    competing: bool = True
    """also measure the first engine's ratios at 1 and N threads while one other CPU-bound process runs"""
    threads: str = "2"
    """torch CPU threads: a number, or auto (measured at start; set by the command, not the library)"""
    out: str | None = None
    """also write the Markdown report to this file"""

    def __post_init__(self) -> None:
        read_tuple_fields(self)
        check_at_least(self, ("rows", "prefix", "repeats"))
        if not self.engines:
            raise ConfigError("engines", "needs at least one engine")
        # The measured engines are TargetModel's concrete ones ("auto" picks one of them).
        check_registered("engines", self.engines, [e for e in ENGINES if e != "auto"], "engine")
        if not set(self.split_rows) <= set(self.rows) or self.rows[0] != 1:
            raise ConfigError("rows", "must start with 1 (the plain step every ratio uses) and include split_rows")


# The competing process stops by itself: after 10 minutes, or as soon as its parent is gone.
BURNER = ("import os, time, torch\ntorch.set_num_threads(2)\na = torch.randn(1024, 1024)\nparent, t0 = os.getppid(), "
          "time.time()\nwhile os.getppid() == parent and time.time() - t0 < 600:\n    a @ a\n")


def run_roofline(cfg: RooflineConfig, model) -> dict:
    """Measure everything the report shows; returns plain data (``roofline_markdown`` formats it)."""
    import subprocess
    import sys

    ceilings = measure_ceilings()
    backends = ["torch"] + (["onednn"] if onednn_available(model.dtype, "cpu") else []) + (
        ["skinny"] if skinny_available(model.dtype, "cpu") else [])
    products = {b: skinny_products(model, cfg.rows, b) for b in backends}
    groups = weight_groups(model)
    all_weights = [w for ws in groups.values() for w in ws]
    floors = {k: floor_ms(all_weights, k, ceilings) for k in cfg.rows}
    prefix = torch.randint(0, model.config.vocab_size, (cfg.prefix + 1,), generator=torch.Generator().manual_seed(0))
    forwards, splits = {}, {}
    for engine in cfg.engines:
        target = TargetModel(model, engine=engine, min_rows=1)
        forwards[engine] = {k: forward_ms(target, prefix, k, cfg.repeats) for k in cfg.rows}
        splits[engine] = {k: forward_split(target, prefix, k) for k in cfg.split_rows}
        if engine == "fast" and cfg.product_levers:  # each product backend alone, same engine otherwise
            for backend in [b for b in backends if b != target.linear_backend]:
                other = TargetModel(model, engine="fast", min_rows=1, linear_backend=backend)
                forwards[f"fast, {backend} products"] = {k: forward_ms(other, prefix, k, cfg.repeats) for k in cfg.rows}
    comp_floors = {k: component_floors(model, k, ceilings) for k in cfg.split_rows}
    busy = {}
    if cfg.competing:
        target = TargetModel(model, engine=cfg.engines[0], min_rows=1)
        threads = torch.get_num_threads()
        burner = subprocess.Popen([sys.executable, "-c", BURNER])
        try:
            time.sleep(1.0)  # let it reach full speed
            for n in sorted({1, threads}):
                torch.set_num_threads(n)
                busy[n] = {k: forward_ms(target, prefix, k, cfg.repeats) for k in cfg.rows}
        finally:
            burner.kill()
            burner.wait()
            torch.set_num_threads(threads)
    return dict(ceilings=ceilings, products=products, floors=floors, forwards=forwards, splits=splits,
                component_floors=comp_floors, busy=busy, threads=torch.get_num_threads(),
                weight_mb=sum(w.numel() * w.element_size() for w in all_weights) / 1e6)


def node_cost(forward_ms: dict[int, float]) -> float:
    """The ``node_cost`` c of cost-aware trees: the slope of (verify / step - 1) over n = k - 1 nodes,
    fitted through the origin (a one-row forward is the step itself)."""
    step = forward_ms[1]
    pairs = [(k - 1, ms / step - 1) for k, ms in forward_ms.items() if k > 1]
    return sum(n * r for n, r in pairs) / max(1e-9, sum(n * n for n, _ in pairs))


def roofline_markdown(r: dict, cfg: RooflineConfig) -> str:
    c: Ceilings = r["ceilings"]
    rows = cfg.rows
    lines = [f"Ceilings ({r['threads']} threads): streaming read "
             + ", ".join(f"{b} {g:.1f} GB/s" for b, g in c.bandwidth_gbs.items()) + "; large product "
             + ", ".join(f"{b} {g:.0f} GFLOP/s" for b, g in c.sgemm_gflops.items())
             + f". The target's products read {r['weight_mb']:.0f} MB of weights per forward; the floors use "
             f"the best of each ({c.peak_gbs:.1f} GB/s, {c.peak_gflops:.0f} GFLOP/s).", "",
             "All of the target's products, one call per weight (ms):", "",
             "| backend | " + " | ".join(f"M = {k}" for k in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for b, by_rows in r["products"].items():
        lines.append(f"| {b} | " + " | ".join(f"{by_rows[k]:.1f}" for k in rows) + " |")
    lines.append("| roofline floor | " + " | ".join(f"{r['floors'][k]:.1f}" for k in rows) + " |")
    lines += ["", "Target forward over k rows after a cached prefix of "
              f"{cfg.prefix} tokens (ms; x = ratio to the same engine's one-row step):", "",
              "| engine | " + " | ".join(f"k = {k}" for k in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for engine, by_rows in r["forwards"].items():
        base = by_rows[rows[0]]
        lines.append(f"| {engine} | " + " | ".join(f"{by_rows[k]:.1f} (x{by_rows[k] / base:.2f})" for k in rows) + " |")
    fl = r["floors"]
    lines.append("| roofline floor | " + " | ".join(f"{fl[k]:.1f} (x{fl[k] / fl[rows[0]]:.2f})" for k in rows) + " |")
    lines.append("")
    for engine in cfg.engines:
        by_rows = r["forwards"][engine]
        lines.append(f"- Cost per drafted node for cost-aware trees ({engine} engine): c = {node_cost(by_rows):.3f} "
                     "(a verify over n drafted nodes costs about 1 + c * n plain steps; fit over the k above).")
    if cfg.split_rows:
        lines += ["", "The splits below come from torch.profiler, which adds a few microseconds to every operator "
                  "(most of it lands in 'other ops' and 'python'), so their totals exceed the times above; "
                  "compare components with each other and with their floors."]
    for k in cfg.split_rows:
        lines += ["", f"Where a {k}-row forward's time goes (ms, torch.profiler; floor = roofline of that part):", "",
                  "| engine | " + " | ".join(COMPONENTS) + " | total |", "|---" * (len(COMPONENTS) + 2) + "|"]
        for engine, by_rows in r["splits"].items():
            s = by_rows[k]
            cells = " | ".join(f"{s[x]:.1f}" for x in COMPONENTS)
            lines.append(f"| {engine} | {cells} | {sum(s.values()):.1f} |")
        f = r["component_floors"][k]
        lines.append("| floor | " + " | ".join(f"{f[x]:.1f}" if x in f else "~0" for x in COMPONENTS)
                     + f" | {sum(f.values()):.1f} |")
    if r["busy"]:
        lines += ["", f"With one other CPU-bound process running ({cfg.engines[0]} engine; ms and x its own step):",
                  "", "| threads | " + " | ".join(f"k = {k}" for k in rows) + " |", "|---" * (len(rows) + 1) + "|"]
        for n, by_rows in r["busy"].items():
            base = by_rows[rows[0]]
            lines.append(f"| {n} | " + " | ".join(f"{by_rows[k]:.1f} (x{by_rows[k] / base:.2f})" for k in rows) + " |")
    return "\n".join(lines) + "\n"
