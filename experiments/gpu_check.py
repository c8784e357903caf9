"""Check and time jetspec's tree attention on a GPU; write results.md and results.json.

Made for one run on a lent H200 (torch 2.11, triton 3.6, transformers 5.17, no network), in
under 8 minutes. Four parts:

1. correctness: the Triton kernel vs an SDPA oracle in fp64 on CUDA, random trees, fp32/fp16/bf16,
   split-KV on and off; then the GPU-marked pytest tests, if pytest and hypothesis are installed;
2. kernel time: tree attention vs SDPA with a dense float mask (as transformers runs it: kv heads
   repeated, then SDPA) vs FlexAttention with a block mask built from the ancestor mask, for
   N in {16, 64, 256} tree nodes and P in {512, 2048, 8192} cached tokens, 32 query / 8 kv heads,
   head dim 128, bf16, batch 1;
3. one tree-verify forward of a random-weight Qwen3-0.6B-shaped target with each attention backend
   (sdpa, torch reference, triton kernel): time and agreement of the logits;
4. results.md / results.json under $OUT (default ./gpu_out).

    pip install --no-deps --no-build-isolation -e .   # once, in the repository root (offline is fine)
    python experiments/gpu_check.py                   # on the GPU machine
    python experiments/gpu_check.py --dry-run         # on a CPU: tiny shapes, Triton interpreter, same code

It imports jetspec as an installed package: ``jetspec.kernels`` & co. live in the repository's
top-level folders (``kernels/``, ...) and only an install applies that folder mapping, so the
``pip install`` line comes first (``--no-deps``: the machine brings torch, triton and transformers;
``--no-build-isolation``: no index is needed to build). The project's light dependencies (jaxtyping,
einops, lightning) must be importable too; put any that are missing on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 420  # stop starting new benchmark rows after 7 minutes: the run must end within 8


def bootstrap(dry_run: bool) -> None:
    """Select the Triton interpreter for a dry run and make sure jetspec is installed; exit if not."""
    if dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel is built
    try:
        import jetspec.kernels  # noqa: F401  (the folder mapping exists only in an install)
    except ImportError as err:
        raise SystemExit(f"jetspec is not importable ({err}): run `pip install --no-deps --no-build-isolation "
                         f"-e .` in {REPO} first") from err


# ----------------------------------------------------------------------------- helpers
def random_tree(n: int, gen):
    import torch

    from jetspec.kernels import ancestor_from_parents

    parents = [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]
    return ancestor_from_parents(parents)


def timer(device: str):
    """Median milliseconds of fn(): CUDA events on a GPU, perf_counter on a CPU."""
    import torch

    def bench(fn, reps: int = 30) -> float:
        fn()  # warm-up: compiles and caches
        times = []
        for _ in range(reps if device == "cuda" else 2):
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - t0))
        return sorted(times)[len(times) // 2]

    return bench


def sdpa_oracle(q, k, v, anc):
    """fp64 SDPA over an explicit [N, P + N] visibility matrix: independent of jetspec's math."""
    import torch

    n, t = q.shape[2], k.shape[2]
    visible = torch.cat([torch.ones(n, t - n, dtype=torch.bool, device=q.device), anc], dim=1)
    group = q.shape[1] // k.shape[1]
    kk, vv = k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    return torch.nn.functional.scaled_dot_product_attention(q.double(), kk, vv, attn_mask=visible)


# ----------------------------------------------------------------------------- 1. correctness
def check_correctness(device: str, dry_run: bool) -> list[dict]:
    import torch

    from jetspec.kernels import tree_attention_triton

    tol = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}
    shapes = [(3, 37, 4, 2, 32, None), (20, 5, 2, 1, 80, 1)] if dry_run else [
        (16, 2048, 32, 8, 128, None), (64, 517, 16, 8, 128, 1), (256, 8192, 32, 8, 128, None),
        (37, 1000, 8, 2, 80, 3), (8, 300, 4, 4, 256, None), (1, 4000, 32, 8, 128, None),
        (100, 0, 8, 8, 64, None)]
    rows, gen = [], torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for n, p, h, h_kv, d, splits in shapes:
            q = torch.randn(2, h, n, d, generator=gen).to(device, dtype)
            k = torch.randn(2, h_kv, p + n, d, generator=gen).to(device, dtype)
            v = torch.randn(2, h_kv, p + n, d, generator=gen).to(device, dtype)
            anc = random_tree(n, gen).to(device)
            out = torch.full_like(q, float("nan"))
            tree_attention_triton(q, k, v, anc, out=out, num_splits=splits)
            err = (out.double() - sdpa_oracle(q, k, v, anc)).abs().max().item()
            ok = not torch.isnan(out).any().item() and err <= tol[dtype]
            rows.append(dict(dtype=str(dtype).replace("torch.", ""), N=n, P=p, h=h, h_kv=h_kv, K=d,
                             splits="auto" if splits is None else splits, max_abs_err=err, ok=ok))
    return rows


def run_gpu_pytest() -> dict:
    """The GPU-marked kernel tests, compiled (not interpreted), if the test tools are installed."""
    missing = [m for m in ("pytest", "hypothesis") if importlib.util.find_spec(m) is None]
    if missing:
        return dict(ran=False, reason=f"not installed: {', '.join(missing)}")
    # TRITON_INTERPRET=0 explicitly: tests/conftest.py only sets it to 1 when it is unset.
    env = dict(os.environ, TRITON_INTERPRET="0")
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
           "tests/kernels/test_tree_attention.py"]
    try:
        res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired:
        return dict(ran=True, ok=False, summary="timed out after 150 s")
    summary = (res.stdout.strip().splitlines() or ["(no output)"])[-1]
    return dict(ran=True, ok=res.returncode == 0, summary=summary, tail=(res.stdout + res.stderr)[-3000:])


# ----------------------------------------------------------------------------- 2. kernel time
def benchmark_kernels(device: str, dry_run: bool, t_start: float) -> list[dict]:
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from jetspec.kernels import tree_attention_triton

    bench = timer(device)
    dtype = torch.float32 if dry_run else torch.bfloat16
    h, h_kv, d = (4, 2, 32) if dry_run else (32, 8, 128)
    grid = [(16, 32)] if dry_run else [(n, p) for n in (16, 64, 256) for p in (512, 2048, 8192)]
    # Compiled flex is what anyone would deploy; eager flex on a CPU only exercises the code path
    # (and warns that it is unfused, which we know).
    flex = flex_attention if dry_run else torch.compile(flex_attention)
    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
    rows, gen = [], torch.Generator().manual_seed(1)
    for n, p in grid:
        if time.time() - t_start > BUDGET_S:
            rows.append(dict(N=n, P=p, skipped="time budget"))
            continue
        q = torch.randn(1, h, n, d, generator=gen).to(device, dtype)
        k = torch.randn(1, h_kv, p + n, d, generator=gen).to(device, dtype)
        v = torch.randn(1, h_kv, p + n, d, generator=gen).to(device, dtype)
        anc = random_tree(n, gen).to(device)
        dense = torch.zeros(1, 1, n, p + n, dtype=dtype, device=device)
        dense[..., p:].masked_fill_(~anc, float("-inf"))

        def sdpa():  # what transformers' sdpa path does with a 4-D float mask under GQA
            group = h // h_kv
            return torch.nn.functional.scaled_dot_product_attention(
                q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), attn_mask=dense)

        def tree_mod(b, hh, qi, kv):  # key kv visible to query qi (flex's mask_mod convention)
            return (kv < p) | anc[qi, (kv - p).clamp(min=0)]

        row = dict(N=n, P=p)
        want = sdpa()
        row["sdpa_dense_ms"] = bench(sdpa)
        out = tree_attention_triton(q, k, v, anc)
        row["err_vs_sdpa"] = (out.float() - want.float()).abs().max().item()
        row["tree_ms"] = bench(lambda: tree_attention_triton(q, k, v, anc))
        row["tree_nosplit_ms"] = bench(lambda: tree_attention_triton(q, k, v, anc, num_splits=1))
        try:
            block_mask = create_block_mask(tree_mod, None, None, n, p + n, device=device)
            row["flex_ms"] = bench(lambda: flex(q, k, v, block_mask=block_mask, enable_gqa=True))
        except Exception as err:  # flex support differs across torch builds: report, do not crash
            row["flex_error"] = f"{type(err).__name__}: {str(err)[:200]}"
        rows.append(row)
        print(f"  N={n:4d} P={p:5d}  " + "  ".join(f"{key}={val:.4g}" for key, val in row.items()
                                                  if key.endswith("_ms")), flush=True)
    return rows


# ----------------------------------------------------------------------------- 3. a verify forward
def verify_forward(device: str, dry_run: bool) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache, Qwen3Config

    from jetspec.core.attention import attention_backend
    from jetspec.kernels import ancestor_from_parents

    if dry_run:
        shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     head_dim=16, intermediate_size=128, vocab_size=97)
        dtype, prefix, n = torch.float32, 12, 8
    else:  # Qwen3-0.6B's published shapes, random weights (no network, no checkpoint)
        shape = dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                     head_dim=128, intermediate_size=3072, vocab_size=151936)
        dtype, prefix, n = torch.bfloat16, 2048, 64
    config = Qwen3Config(max_position_embeddings=4096, tie_word_embeddings=True, **shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    gen = torch.Generator().manual_seed(2)
    parents = [-1] + [int(torch.randint(max(0, i - 4), i, (1,), generator=gen)) for i in range(1, n)]
    anc = ancestor_from_parents(parents)
    depth = anc.sum(1) - 1  # a node's depth = its number of strict ancestors
    tokens = torch.randint(0, config.vocab_size, (1, n), generator=gen).to(device)
    mask = torch.zeros(1, 1, n, prefix + n, dtype=dtype, device=device)
    mask[..., prefix:].masked_fill_(~anc.to(device), float("-inf"))
    positions = (prefix + depth)[None].to(device)
    with torch.no_grad():
        cache = DynamicCache(config=config)
        model(input_ids=torch.randint(0, config.vocab_size, (1, prefix), generator=gen).to(device),
              cache=cache, use_cache=True)
    bench = timer(device)
    result = dict(config=shape, dtype=str(dtype), P=prefix, N=n, backends={})
    logits = {}
    for backend in ("sdpa", "torch", "triton"):
        def forward():
            with torch.no_grad(), attention_backend(model, backend):
                out = model(input_ids=tokens, position_ids=positions, attention_mask=mask, cache=cache,
                            use_cache=True)
            cache.crop(-n)  # drop the tree rows again: every call sees the same prefix
            return out.logits
        logits[backend] = forward().float()
        entry = dict(ms=bench(forward, reps=10))
        if backend != "sdpa":
            diff = (logits[backend] - logits["sdpa"]).abs().max().item()
            agree = (logits[backend].argmax(-1) == logits["sdpa"].argmax(-1)).float().mean().item()
            entry.update(max_abs_logit_diff=diff, argmax_agreement=agree)
        result["backends"][backend] = entry
        print(f"  verify {backend}: {entry}", flush=True)
    return result


# ----------------------------------------------------------------------------- 4. report
def versions() -> dict:
    import torch
    import transformers

    info = dict(python=sys.version.split()[0], torch=torch.__version__, transformers=transformers.__version__)
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_report(out_dir: Path, results: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    lines = ["# Tree attention on the GPU" + (" (CPU dry run)" if results["dry_run"] else ""), "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()), "",
             f"Total time: {results['seconds']:.0f} s", "", "## Correctness (kernel vs fp64 SDPA oracle)", "",
             "| dtype | N | P | h | h_kv | K | splits | max abs err | ok |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["correctness"]:
        lines.append(f"| {r['dtype']} | {r['N']} | {r['P']} | {r['h']} | {r['h_kv']} | {r['K']} "
                     f"| {r['splits']} "
                     f"| {r['max_abs_err']:.2e} | {'yes' if r['ok'] else 'NO'} |")
    lines += ["", f"GPU pytest: {results['pytest']}", "", "## Kernel time (ms, median; batch 1, "
              "32 q / 8 kv heads, K 128, bf16)", "",
              "| N | P | tree (auto split) | tree (no split) | SDPA dense mask | Flex | err vs SDPA |",
              "|---|---|---|---|---|---|---|"]
    for r in results["benchmark"]:
        if "skipped" in r:
            lines.append(f"| {r['N']} | {r['P']} | skipped ({r['skipped']}) | | | | |")
            continue
        flex = f"{r['flex_ms']:.4f}" if "flex_ms" in r else r.get("flex_error", "-")
        lines.append(f"| {r['N']} | {r['P']} | {r['tree_ms']:.4f} | {r['tree_nosplit_ms']:.4f} "
                     f"| {r['sdpa_dense_ms']:.4f} | {flex} | {r['err_vs_sdpa']:.2e} |")
    v = results["verify"]
    lines += ["", f"## One verify forward: Qwen3-0.6B shapes, random weights, {v['dtype']}, P={v['P']}, "
              f"N={v['N']}", "", "| backend | ms | max abs logit diff vs sdpa | argmax agreement |",
              "|---|---|---|---|"]
    for name, e in v["backends"].items():
        lines.append(f"| {name} | {e['ms']:.2f} | {e.get('max_abs_logit_diff', 0):.3g} "
                     f"| {e.get('argmax_agreement', 1):.3f} |")
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, Triton interpreter")
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_out"),
                        help="output folder (default: $OUT, else ./gpu_out)")
    args = parser.parse_args(argv)
    bootstrap(args.dry_run)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run on a CPU", file=sys.stderr)
        return 2
    device = "cpu" if args.dry_run else "cuda"
    if args.dry_run:
        # Tiny CPU matmuls on a shared 2-core machine: a second OpenMP thread that has to wait for a
        # busy core made each small Linear ~100x slower in a measurement here (0.5 s vs 2 ms per forward).
        torch.set_num_threads(1)
    t_start = time.time()
    results = dict(dry_run=args.dry_run, versions=versions())
    print("correctness ...", flush=True)
    results["correctness"] = check_correctness(device, args.dry_run)
    results["pytest"] = dict(ran=False, reason="dry run") if args.dry_run else run_gpu_pytest()
    print("kernel benchmark ...", flush=True)
    results["benchmark"] = benchmark_kernels(device, args.dry_run, t_start)
    print("verify forward ...", flush=True)
    results["verify"] = verify_forward(device, args.dry_run)
    results["seconds"] = time.time() - t_start
    write_report(Path(args.out), results)
    ok = all(r["ok"] for r in results["correctness"]) and results["pytest"].get("ok", True)
    print(f"{'OK' if ok else 'FAILED'}: wrote {Path(args.out) / 'results.md'} in {results['seconds']:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
