"""PackedLinear: prepacked (oneDNN) products against F.linear, the reference twin."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from jetspec.kernels import PackedLinear, onednn_available
from jetspec.kernels.packed_linear import skinny_available

needs_onednn = pytest.mark.skipif(not onednn_available(torch.float32, "cpu"),
                                  reason="this PyTorch build has no oneDNN")
# The skinny kernel needs AVX-512 and a C++ compiler; the machines CI runs on have both, so there
# this mark never skips (test_auto_prefers_the_skinny_kernel_where_it_builds checks that it built).
needs_skinny = pytest.mark.skipif(not skinny_available(torch.float32, "cpu"),
                                  reason="no AVX-512 CPU or no C++ compiler: the skinny kernel cannot build")


@pytest.mark.parametrize("backend", ["torch", pytest.param("onednn", marks=needs_onednn),
                                     pytest.param("skinny", marks=needs_skinny)])
@given(rows=st.integers(1, 40), in_features=st.integers(1, 70), outs=st.lists(st.integers(1, 70), min_size=1,
       max_size=3), bias=st.booleans(), seed=st.integers(0, 1000))
def test_packed_backends_equal_separate_f_linear(backend, rows, in_features, outs, bias, seed):
    """Odd widths (the skinny kernel's partial 32-column panels), 1-40 rows (several of its 12-row
    passes), fused weights cut back apart by ``split``, biases."""
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o, in_features, generator=g) for o in outs]
    biases = [torch.randn(o, generator=g) if bias else None for o in outs]
    x = torch.randn(2, rows, in_features, generator=g)
    packed = PackedLinear(weights, biases, backend=backend)
    assert packed.backend == backend
    assert packed.weight.is_mkldnn == (backend == "onednn")
    y = packed(x)
    assert y.shape == (2, rows, sum(outs)) and y.dtype == torch.float32
    parts = packed.split(y)
    assert len(parts) == len(outs)
    for part, w, b in zip(parts, weights, biases):
        ref = F.linear(x.double(), w.double(), None if b is None else b.double())
        torch.testing.assert_close(part.double(), ref, atol=1e-4 * in_features ** 0.5, rtol=1e-4)


@needs_skinny
def test_skinny_rows_do_not_depend_on_the_other_rows():
    """Each output is one sequential sum over K: a row's result is the same bits at any M and thread count
    (so a tree row equals the same row decoded alone). BLAS F.linear does not promise this."""
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(200, 96, generator=g), torch.randn(40, 96, generator=g)
    packed = PackedLinear([w], backend="skinny")
    full = packed(x)
    for m in (1, 2, 11, 12, 13, 25, 39):
        assert torch.equal(packed(x[:m]), full[:m])
        assert torch.equal(packed(x[m - 1: m + 1]), full[m - 1: m + 1])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.equal(packed(x), full)
    finally:
        torch.set_num_threads(before)


def test_auto_prefers_the_skinny_kernel_where_it_builds():
    """Where the kernel can build (an AVX-512 CPU, a C++ compiler and ninja: this project's machines)
    auto must pick it; where it cannot, it must say why instead of failing silently."""
    import shutil

    from torch.utils.cpp_extension import is_ninja_available

    from jetspec.kernels.packed_linear import _skinny, skinny_kernel

    module = skinny_kernel()
    buildable = (torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX") and is_ninja_available()
                 and (shutil.which("c++") or shutil.which("g++")) is not None)
    if buildable:
        assert module is not None, _skinny.get("reason")
        assert PackedLinear([torch.randn(4, 4)]).backend == "skinny"
    else:
        assert module is None and _skinny["reason"]
        with pytest.raises(ValueError, match="'skinny' cannot run here"):
            PackedLinear([torch.randn(4, 4)], backend="skinny")
    assert PackedLinear([torch.randn(4, 4, dtype=torch.bfloat16)]).backend in ("onednn", "torch")


def test_an_arm_laptop_gets_f_linear_in_the_fast_engine(monkeypatch, caplog):
    """What a Mac on Apple silicon gets: no AVX-512 (the skinny kernel cannot build) and, on a PyTorch
    built without a usable oneDNN, no prepacking either; auto must then pick ``F.linear`` (the twin the
    fp64 equality tests run) and say once why, and the fast engine must decode as Hugging Face's forward.
    Simulated by reporting a CPU without AVX-512 and a oneDNN that refuses fp32."""
    from conftest import tiny_llama

    import jetspec.kernels.packed_linear as pl
    from jetspec import autoregressive_generate
    from jetspec.core.target import TargetModel

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    monkeypatch.setattr(pl, "_skinny", {})  # the kernel's build is decided afresh, as in a new process
    monkeypatch.setattr(pl, "_onednn_dtypes", {torch.float32: False})
    with caplog.at_level("WARNING", logger=pl.__name__):
        assert PackedLinear([torch.randn(4, 4)]).backend == "torch"
        assert PackedLinear([torch.randn(3, 4)]).backend == "torch"
    assert [r.getMessage() for r in caplog.records if r.name == pl.__name__] == [
        "jetspec skinny GEMM kernel unavailable (the CPU lacks AVX-512 (capability DEFAULT)); using oneDNN or torch"]
    model = tiny_llama(seed=7, dtype=torch.float32)  # new weights: no packed copy cached from another test
    fast = TargetModel(model, engine="fast")
    assert fast.linear_backend == "torch"
    prompt = torch.tensor([[1, 5, 9, 14, 3, 22]])
    got = autoregressive_generate(fast, prompt, 12).sequences
    want = autoregressive_generate(TargetModel(model, engine="hf"), prompt, 12).sequences
    assert torch.equal(got, want)


def test_torch_backend_is_f_linear_on_the_fused_weight():
    g = torch.Generator().manual_seed(0)
    w1, w2, b1 = (torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(3, 7, generator=g,
                  dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64))
    x = torch.randn(4, 7, generator=g, dtype=torch.float64)
    packed = PackedLinear([w1, w2], [b1, None], backend="auto")  # fp64: oneDNN does not apply
    assert packed.backend == "torch"
    y1, y2 = packed.split(packed(x))
    # Same products; BLAS may block the fused matrix differently, so equal to rounding only.
    torch.testing.assert_close(y1, F.linear(x, w1, b1), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(y2, F.linear(x, w2), atol=1e-12, rtol=1e-12)


def test_packed_weight_is_a_snapshot():
    """Packing copies: later in-place edits of the source weight are not seen (documented)."""
    w = torch.randn(6, 4)
    packed = PackedLinear([w, w.clone()], backend="auto")
    x = torch.randn(2, 4)
    before = packed(x)
    w.add_(1.0)
    assert torch.equal(packed(x), before)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="linear backend must be one of"):
        PackedLinear([torch.randn(2, 2)], backend="mkl")
    with pytest.raises(ValueError, match="'onednn' needs a CPU tensor"):
        PackedLinear([torch.randn(2, 2, dtype=torch.float64)], backend="onednn")
    with pytest.raises(ValueError, match="one I"):
        PackedLinear([torch.randn(2, 3), torch.randn(2, 4)])
    with pytest.raises(ValueError, match="at least one weight"):
        PackedLinear([])
    with pytest.raises(ValueError, match="2 biases for 1 weights"):
        PackedLinear([torch.randn(2, 3)], [torch.randn(2), torch.randn(2)])


@pytest.fixture
def fresh_compile(monkeypatch, tmp_path):
    """skinny_kernel() as in a new process whose first compile finds ``build`` (a temporary folder); the
    compiler is a stand-in that behaves as PyTorch's build lock does: it would wait forever on ``lock``."""
    import subprocess
    import sys

    from torch.utils import cpp_extension

    import jetspec.kernels.packed_linear as pl

    build = tmp_path / "jetspec_skinny_gemm"
    build.mkdir()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(pl, "_skinny", {})
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(pl.shutil, "which", lambda name: f"/usr/bin/{name}")
    built = object()

    def load(name, sources, build_directory=None, **kw):
        folder = Path(build_directory or cpp_extension._get_build_directory(name, False))
        if (folder / "lock").exists():
            raise AssertionError("would wait forever on the build lock")
        return built

    monkeypatch.setattr(cpp_extension, "load", load)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return pl, build, built, int(dead.stdout)


def test_a_killed_first_compile_does_not_hang_the_next_one(fresh_compile, caplog):
    pl, build, built, dead_pid = fresh_compile
    (build / "lock").write_text("")  # what a SIGKILLed compile leaves
    (build / "jetspec-compile.pid").write_text(str(dead_pid))
    with caplog.at_level("WARNING", logger="jetspec.kernels.packed_linear"):
        assert pl.skinny_kernel() is built
    text = caplog.text
    assert "compiling jetspec's skinny GEMM kernel (once per machine, ~50 s)" in text
    assert "stale" in text and not (build / "lock").exists() and not (build / "jetspec-compile.pid").exists()


def test_a_bare_stale_build_lock_is_removed(fresh_compile):
    pl, build, built, _ = fresh_compile
    (build / "lock").write_text("")  # killed before jetspec named its compiles' owner
    assert pl.skinny_kernel() is built


def test_a_live_compile_elsewhere_is_waited_for_then_skipped(fresh_compile, monkeypatch, caplog):
    pl, build, _, _ = fresh_compile
    monkeypatch.setattr(pl, "COMPILE_WAIT_S", 0.3)
    (build / "jetspec-compile.pid").write_text(str(os.getpid()))  # a running process holds it
    with caplog.at_level("WARNING", logger="jetspec.kernels.packed_linear"):
        assert pl.skinny_kernel() is None
    assert "compiling it for over" in pl._skinny["reason"] and (build / "jetspec-compile.pid").exists()
    assert caplog.text.count("skinny GEMM kernel unavailable") == 1
