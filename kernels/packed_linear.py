"""Linear layers of a frozen model with prepacked weights: the CPU verify forward's main cost.

On a CPU, a target forward over a few rows is almost all matrix products against the weights
(``y = x @ W^T``). PyTorch's default CPU path hands each product to a BLAS ``sgemm`` that re-packs
``W`` into its blocked layout on every call and picks kernels tuned for large matrices. For the
skinny shapes of decoding (1 to 65 rows against 576 x 1536 weights) that wastes most of the
machine (the roofline table in BENCHMARKS.md has the measured times).

``PackedLinear`` packs one or more weights that read the same input (q/k/v, or gate/up) into one
matrix, so a decoder layer runs 4 products instead of 7, each wider. Three backends compute it:

* ``"skinny"``: jetspec's own AVX-512 kernel (``skinny_gemm.cpp``, compiled on first use with the
  machine's C++ compiler and cached by PyTorch). It streams each weight panel once for all rows,
  so a 17-row product costs little more than a 1-row one. fp32 on x86 CPUs with AVX-512.
* ``"onednn"``: the weight is reordered once (``torch.ops.mkldnn._reorder_linear_weight``, the
  op PyTorch's own compiler uses when it freezes a CPU model) and every call runs
  ``torch.ops.mkldnn._linear_pointwise``. fp32 / bf16 / fp16 on CPU.
* ``"torch"``: ``F.linear`` on the concatenated dense weight. This is the reference twin, and
  what runs for fp64, on GPUs and where neither of the others can.

``backend="auto"`` takes the first that can run here, in that order; a kernel that fails to
compile is reported once (``logging``) and skipped. All three compute the same product; they
differ only in the order of the floating-point additions (the tests bound the difference).

The packed weight is a *copy*, made once: later in-place edits of the model's weights are not
seen. This is for frozen targets; build a new one after changing weights (``TargetModel`` does, at
its next prefill: docs/design.md §6.3).

Design: docs/design.md §6.3.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

BACKENDS = ("auto", "skinny", "onednn", "torch")
ONEDNN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SKINNY_EVENT = "jetspec::skinny_matmul"  # profiler event name, followed by "[O,I]"
EXTENSION = "jetspec_skinny_gemm"  # the compiled module's name (and its build folder's)
COMPILE_WAIT_S = 600.0  # how long to wait for another live process's compile before falling back
_log = logging.getLogger(__name__)
_skinny = {}  # the compiled extension module (or the reason it is unavailable), built once per process


def skinny_kernel():
    """The compiled ``skinny_gemm.cpp`` module, or None when it cannot be built here (reason logged once)."""
    if "module" not in _skinny:
        _skinny["module"], _skinny["reason"] = None, None
        if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
            _skinny["reason"] = f"the CPU lacks AVX-512 (capability {torch.backends.cpu.get_cpu_capability()})"
        elif shutil.which("c++") is None and shutil.which("g++") is None:
            _skinny["reason"] = "no C++ compiler on PATH"
        else:
            try:
                from torch.utils import cpp_extension

                build = Path(cpp_extension._get_build_directory(EXTENSION, verbose=False))
                with _compile_lock(build):
                    if not (build / f"{EXTENSION}.so").is_file():
                        _log.warning("compiling jetspec's skinny GEMM kernel (once per machine, ~50 s)")
                    _skinny["module"] = cpp_extension.load(
                        EXTENSION, [str(Path(__file__).with_name("skinny_gemm.cpp"))], build_directory=str(build),
                        extra_cflags=["-O3", "-mavx512f", "-mfma", "-fopenmp"], extra_ldflags=["-fopenmp"],
                        verbose=False)
            except Exception as err:  # a missing ninja, headers, a compiler error, a compile elsewhere: fall back
                _skinny["reason"] = f"compiling skinny_gemm.cpp failed: {str(err).splitlines()[0][:200]}"
        if _skinny["reason"]:
            _log.warning("jetspec skinny GEMM kernel unavailable (%s); using oneDNN or torch", _skinny["reason"])
    return _skinny["module"]


@contextmanager
def _compile_lock(build: Path):
    """Hold ``build/jetspec-compile.pid`` (our process id) while the extension is built or loaded.

    PyTorch's own ``build/lock`` is an empty file that a later process waits on forever if the
    compiling process was killed (SIGKILL, or SIGTERM from ``timeout``). Every jetspec compile runs
    under this lock, which names its owner: an owner that no longer runs left a stale lock, so its
    file and PyTorch's are removed; a live owner is waited for up to ``COMPILE_WAIT_S``, then this
    process falls back to another backend (``TimeoutError``, reported once as the reason).
    """
    build.mkdir(parents=True, exist_ok=True)
    mine, torch_lock = build / "jetspec-compile.pid", build / "lock"
    deadline = time.monotonic() + COMPILE_WAIT_S
    while True:
        try:
            fd = os.open(mine, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = _lock_owner(mine)
            if owner is None:  # its process is gone: the lock is stale
                _log.warning("removing a stale compile lock in %s (its process no longer runs)", build)
                mine.unlink(missing_ok=True)
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"process {owner} has been compiling it for over {COMPILE_WAIT_S:.0f} s") from None
            time.sleep(0.5)
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        break
    try:
        if torch_lock.exists():  # no jetspec process is compiling (we hold the lock): a killed compile left it
            _log.warning("removing a stale PyTorch build lock %s (left by a compile that was killed)", torch_lock)
            torch_lock.unlink(missing_ok=True)
        yield
    finally:
        mine.unlink(missing_ok=True)


def _lock_owner(path: Path) -> Optional[int]:
    """The process id in a lock file if that process still runs, else None. A file still being
    written (empty, under 10 s old) counts as held by a running process (-1)."""
    try:
        text, age = path.read_text().strip(), time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return -1  # released meanwhile: try again
    if not text.isdigit():
        return -1 if age < 10 else None
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    return int(text)


def skinny_available(dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether the skinny AVX-512 kernel can run for weights of this dtype on this device (compiles it)."""
    return torch.device(device).type == "cpu" and dtype == torch.float32 and skinny_kernel() is not None


_onednn_dtypes: dict[torch.dtype, bool] = {}  # dtype -> whether oneDNN packed a small weight of it here


def onednn_available(dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether the prepacked oneDNN product can run for weights of this dtype on this device.

    Tried once per dtype on a small weight: oneDNN refuses fp16 on CPUs without avx512_fp16 or
    avx_ne_convert (the 2-core EPYC of BENCHMARKS.md is one), which no flag tells in advance.
    """
    if torch.device(device).type != "cpu" or dtype not in ONEDNN_DTYPES or not torch.backends.mkldnn.is_available():
        return False
    if not (hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    if dtype not in _onednn_dtypes:
        try:
            w = torch.ops.mkldnn._reorder_linear_weight(torch.ones(8, 8, dtype=dtype))
            torch.ops.mkldnn._linear_pointwise(torch.ones(2, 8, dtype=dtype), w, None, "none", [], "")
            _onednn_dtypes[dtype] = True
        except RuntimeError:
            _onednn_dtypes[dtype] = False
    return _onednn_dtypes[dtype]


def resolve_linear_backend(backend: str, dtype: torch.dtype, device) -> str:
    """The backend that will run for ``backend``; an explicit backend that cannot run here raises."""
    if backend not in BACKENDS:
        raise ValueError(f"linear backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if skinny_available(dtype, device):
            return "skinny"
        return "onednn" if onednn_available(dtype, device) else "torch"
    if backend == "skinny" and not skinny_available(dtype, device):
        reason = _skinny.get("reason") or f"it needs fp32 on CPU, got {dtype} on {device}"
        raise ValueError(f"linear backend 'skinny' cannot run here: {reason}. Use backend='auto'.")
    if backend == "onednn" and not onednn_available(dtype, device):
        raise ValueError(f"linear backend 'onednn' needs a CPU tensor of dtype {ONEDNN_DTYPES} and a PyTorch "
                         f"built with oneDNN; got {dtype} on {device}. Use backend='torch' or 'auto'.")
    return backend


class PackedLinear:
    """``y = x @ cat(weights)^T + cat(biases)``, with the weights packed once for fast calls.

    Args:
        weights: ``[O_i, I]`` matrices that read the same input (nn.Linear's ``weight`` layout).
        biases: one bias ``[O_i]`` or None per weight; None (the default) means no bias at all.
        backend: one of ``BACKENDS``: ``"auto"``, ``"skinny"``, ``"onednn"`` or ``"torch"`` (module docstring).

    Calling it on ``x [..., I]`` returns ``[..., O]`` with ``O = sum(O_i)``; ``split(y)`` cuts that
    back into the ``[..., O_i]`` parts, in the order the weights were given.
    """

    def __init__(self, weights: Sequence[Tensor], biases: Optional[Sequence[Optional[Tensor]]] = None,
                 backend: str = "auto") -> None:
        if not weights:
            raise ValueError("PackedLinear needs at least one weight")
        in_features = {w.shape[1] for w in weights}
        if any(w.dim() != 2 for w in weights) or len(in_features) != 1:
            raise ValueError(f"weights must be 2-D [O_i, I] with one I; got {[tuple(w.shape) for w in weights]}")
        self.sizes = [w.shape[0] for w in weights]
        self.in_features = in_features.pop()
        self.out_features = sum(self.sizes)
        weight = torch.cat([w.detach() for w in weights]) if len(weights) > 1 else weights[0].detach()
        self.bias = None
        if biases is not None and any(b is not None for b in biases):
            if len(biases) != len(weights):
                raise ValueError(f"got {len(biases)} biases for {len(weights)} weights")
            self.bias = torch.cat([b.detach() if b is not None else weight.new_zeros(o)
                                   for b, o in zip(biases, self.sizes)])
        self.backend = resolve_linear_backend(backend, weight.dtype, weight.device)
        if self.backend == "skinny":
            self.weight = skinny_kernel().pack_weight(weight.contiguous())  # [ceil(O/32), I, 32] panels
        elif self.backend == "onednn":
            self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous())
        else:
            self.weight = weight.clone() if len(weights) == 1 else weight  # a copy, like the packed backends

    def __call__(self, x: Float[Tensor, "*B I"]) -> Float[Tensor, "*B O"]:
        if self.backend == "skinny":
            if torch.autograd._profiler_enabled():  # the extension is no dispatcher op: name it for the profiler
                with torch.profiler.record_function(f"{SKINNY_EVENT}[{self.out_features},{self.in_features}]"):
                    return self._skinny(x)
            return self._skinny(x)
        if self.backend == "onednn":
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def _skinny(self, x: Tensor) -> Tensor:
        y = skinny_kernel().skinny_matmul(x.reshape(-1, self.in_features).contiguous(), self.weight, self.out_features)
        y = y.view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def split(self, y: Float[Tensor, "*B O"]) -> tuple[Tensor, ...]:
        """Split a fused output back into the parts of the weights given, in their order."""
        return y.split(self.sizes, dim=-1)

    def __repr__(self) -> str:
        return f"PackedLinear({self.in_features} -> {self.sizes}, backend={self.backend!r})"
