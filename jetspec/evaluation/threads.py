"""How many CPU threads a run should use: a number, or ``"auto"``, decided by a short measurement.

A verify forward over many rows is a set of multi-threaded products. When another CPU-bound
program shares the cores, every thread of ours that waits for a core stalls the others at the
next barrier: on the 2-core machine of BENCHMARKS.md, with one other busy process, a 17-row
verify took 3x a plain step with 2 threads but 2.2x with 1, and a plain step itself ran 1.9x
slower with 2 threads than with 1. An idle machine is the other way round. No fixed number is
right for both, and a load average reacts a minute late, so ``"auto"`` measures: it times a
17-row product against 56 MB of weights (larger than the caches, like a target's layers) with
each candidate thread count and keeps the fastest.

Library code never calls this; the command-line entry points do (``jetspec demo``, ``bench``,
``roofline``, ``generate``), set the count, and print the choice with its reason.

Design: docs/design.md §6.7.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ThreadChoice:
    count: int
    reason: str  # one line: what was asked and what was measured


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def probe_ms(threads: int, repeats: int = 5) -> float:
    """Best-of-``repeats`` ms of a 17-row product against 56 MB of weights with ``threads`` threads
    (restores the caller's thread count)."""
    from jetspec.kernels import PackedLinear, onednn_available

    # oneDNN (or F.linear) rather than the skinny kernel: as multi-threaded, and nothing to compile.
    backend = "onednn" if onednn_available(torch.float32, "cpu") else "torch"
    g = torch.Generator().manual_seed(0)
    weights = [PackedLinear([torch.randn(3072, 576, generator=g)], backend=backend) for _ in range(8)]
    x = torch.randn(17, 576, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best = float("inf")
        for _ in range(repeats + 1):  # the first pass warms caches and thread pools
            t0 = time.perf_counter()
            for w in weights:
                w(x)
            best = min(best, time.perf_counter() - t0)
        return 1000 * best
    finally:
        torch.set_num_threads(before)


def choose_threads(spec: int | str | None) -> ThreadChoice:
    """Resolve ``--threads``: a positive number is taken as given; ``"auto"`` or None measures.

    ``"auto"`` tries 1 and the available core count (and half of it, with more than 4 cores) and
    keeps the fastest; a multi-thread count must beat one thread by 10% to be kept, since one
    thread degrades least when the machine gets busy later.
    """
    if spec is not None and str(spec).strip().lower() != "auto":
        try:
            count = int(spec)
        except (TypeError, ValueError):
            raise ValueError(f"--threads takes a positive number or 'auto', got {spec!r}") from None
        if count < 1 or count != float(spec):
            raise ValueError(f"--threads takes a positive number or 'auto', got {spec!r}")
        return ThreadChoice(count, f"{count} (as asked)")
    cores = available_cores()
    candidates = sorted({1, cores} | ({cores // 2} if cores > 4 else set()))
    times = {n: probe_ms(n) for n in candidates}
    best = min(times, key=lambda n: times[n] if n == 1 else times[n] * 1.1)
    shown = ", ".join(f"{n}: {ms:.1f} ms" for n, ms in times.items())
    return ThreadChoice(best, f"{best} (auto: probe product {shown} on {cores} available cores)")
