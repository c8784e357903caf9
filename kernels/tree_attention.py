"""Tree attention in Triton: verify a whole draft tree in one FlashAttention-style pass.

What this file teaches:

* how the attention of N tree nodes over a cached prefix plus the tree itself (docs/design.md
  §6.4) becomes an online softmax over key/value tiles,
* why the prefix needs no mask and the tree part needs one bit per (query, key) pair,
* how grouped-query attention lets several query heads share one key/value tile,
* how to split a long prefix across programs (split-KV) when the tree alone is too small to
  keep a GPU busy, and merge the pieces exactly.

Read in this order (the Triton tutorial anatomy):

1. ``kernels/reference.py``: ``tree_attention_reference``, the definition in ten lines of
   PyTorch. Everything here must agree with it (``tests/kernels/test_tree_attention.py``).
2. ``pack_ancestor_bits``: the ``[N, N]`` bool ancestor mask packed into int32 words.
3. ``_tree_attention_fwd``: the kernel, every constant explained.
4. ``tree_attention_triton``: the launcher (grid, block sizes, split-KV, merge).
5. ``tree_attention``: the public dispatcher (``backend="torch" | "triton" | "auto"``).

The benchmark against SDPA and FlexAttention lives in ``experiments/gpu_check.py``.

**Block attention is tree attention.** A drafting head attends from a block of S slots to its
context rows plus the block itself. That is this very function with P = the context length and
N = S: a causal block is a chain tree (``ancestor = chain_ancestor(S)``, lower-triangular) and
a bidirectional (DFlash-style) block is ``full_ancestor(S)`` (all True). There is therefore no
separate block-attention kernel.

Shapes use the glossary of ``jetspec`` (docs/design.md §8).

Triton is imported lazily inside functions: importing ``jetspec.kernels`` must stay cheap and
free of side effects, and ``triton`` is an optional dependency (``pip install jetspec[kernels]``).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Optional, no_type_check

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .reference import check_tree_attention_args, tree_attention_reference

# Dtypes the kernel takes. Scores, softmax statistics and the output accumulator are fp32 always.
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256  # one head's q row + a K and a V tile must fit in shared memory at BLOCK_N = 32
LOG2E = 1.4426950408889634  # the kernel uses exp2 (one instruction); exp(x) = exp2(x * log2(e))

# `tl` is bound to `triton.language` by `_compiled_kernel()` the first time a kernel is needed, so
# that importing this module never imports triton. The kernel below reads it as a module global,
# which is where Triton's compiler (and its CPU interpreter) look names up.
tl = None


# ----------------------------------------------------------------------------- the bitmask
def pack_ancestor_bits(ancestor: Bool[Tensor, "N N"]) -> Int[Tensor, "N (N+31)//32"]:  # noqa: F821 (jaxtyping)
    """Pack the ancestor mask into ``ceil(N / 32)`` int32 words per row.

    Bit ``j % 32`` of word ``j // 32`` in row i is ``ancestor[i, j]``. A 256-node tree costs 8 KiB
    as bits instead of 64 KiB as bools, and one 32-bit load answers 32 (query, key) questions.
    """
    n = ancestor.shape[0]
    words = max(1, math.ceil(n / 32))
    padded = torch.zeros(n, words * 32, dtype=torch.int64, device=ancestor.device)
    padded[:, :n] = ancestor.to(torch.int64)
    weights = 2 ** torch.arange(32, dtype=torch.int64, device=ancestor.device)  # bit b is worth 2^b
    packed = (padded.view(n, words, 32) * weights).sum(-1)  # (N, words) values in [0, 2^32)
    # Reinterpret as signed int32 (two's complement): bit 31 set means a negative word. The kernel
    # shifts right arithmetically and keeps only the lowest bit, so the sign never matters.
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)
    return packed.to(torch.int32).contiguous()


# ----------------------------------------------------------------------------- the kernel
# One function of ~110 lines on purpose: a Triton kernel is compiled as one program, and its tile
# loop (load a key tile, score, mask, online-softmax update, accumulate) reads best in one place;
# the small @triton.jit helpers it could be cut into would each be called once.
def _tree_attention_fwd(
    Q, K, V, Bits, Out, Lse,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_os, stride_ob, stride_oh, stride_on, stride_od,
    stride_ls, stride_lb, stride_lh, stride_ln,
    N, P, H_KV, WORDS, TILES_PER_SPLIT, NUM_SPLITS, qk_scale,
    GROUP: tl.constexpr,  # query heads per kv head (h // h_kv)
    HEAD_DIM: tl.constexpr,  # K, the true head dim
    BLOCK_M: tl.constexpr,  # query rows per program (rows = (query head in group, node) pairs)
    BLOCK_N: tl.constexpr,  # keys per tile
    BLOCK_D: tl.constexpr,  # K rounded up to a power of two (tl.arange needs one), >= 16
    UPCAST: tl.constexpr,  # cast q/k/v to fp32 after loading (interpreter: its bf16 is broken)
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (no silent tf32), else the default
    WRITE_LSE: tl.constexpr,  # split-KV: also write each row's log2-sum-exp for the merge
):
    # One program = one tile of BLOCK_M query rows of one (batch, kv head), over one slice of the
    # prefix (split-KV); the last slice also covers the tree part.
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = pid_bh // H_KV
    kvh = pid_bh % H_KV

    # GQA packing: the GROUP query heads that share kv head `kvh` read exactly the same keys, so we
    # stack them as rows of one tile: row r is query head kvh*GROUP + r // N, tree node r % N. A
    # 16-node tree with 4 heads per group fills a 64-row tile instead of four 16-row ones.
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < GROUP * N
    head = kvh * GROUP + rows // N
    node = rows % N
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < HEAD_DIM  # padded head-dim lanes load 0 and add nothing to q.k or p.v

    q = tl.load(Q + b * stride_qb + head[:, None] * stride_qh + node[:, None] * stride_qn
                + dims[None, :] * stride_qd, mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    # Online softmax state per row: running max m (log2 domain), running sum l, unnormalised output.
    # m starts at -1e30, not -inf: a row whose keys are all hidden so far keeps m = -1e30, and
    # exp2(m_old - m_new) = exp2(0) = 1 instead of exp2(-inf + inf) = NaN.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    k_base = K + b * stride_kb + kvh * stride_kh
    v_base = V + b * stride_vb + kvh * stride_vh
    cols = tl.arange(0, BLOCK_N)

    # ---- Part 1: the cached prefix. Every node sees every prefix key, so the only mask work is
    # the bound check `keys < P` that matters on the last, partial tile.
    n_prefix_tiles = tl.cdiv(P, BLOCK_N)
    t_lo = pid_s * TILES_PER_SPLIT
    t_hi = tl.minimum(t_lo + TILES_PER_SPLIT, n_prefix_tiles)
    for t in range(t_lo, t_hi):
        keys = t * BLOCK_N + cols
        key_ok = keys < P
        kt = tl.load(k_base + keys[None, :] * stride_kn + dims[:, None] * stride_kd,
                     mask=key_ok[None, :] & dim_ok[:, None], other=0.0)  # (BLOCK_D, BLOCK_N): K^T
        vt = tl.load(v_base + keys[:, None] * stride_vn + dims[None, :] * stride_vd,
                     mask=key_ok[:, None] & dim_ok[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
        if UPCAST:
            kt = kt.to(tl.float32)
            vt = vt.to(tl.float32)
        s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        s = tl.where(key_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)  # rescales what was accumulated under the old max
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(vt.dtype), vt, acc=acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new

    # ---- Part 2: the tree nodes (keys P .. P+N-1), only in the last split. Key node j is visible
    # to row node i iff bit j of ancestor row i is set: word j // 32, bit j % 32.
    tree_tiles = tl.where(pid_s == NUM_SPLITS - 1, tl.cdiv(N, BLOCK_N), 0)
    for t in range(0, tree_tiles):
        nodes_j = t * BLOCK_N + cols
        j_ok = nodes_j < N
        keys = P + nodes_j
        kt = tl.load(k_base + keys[None, :] * stride_kn + dims[:, None] * stride_kd,
                     mask=j_ok[None, :] & dim_ok[:, None], other=0.0)
        vt = tl.load(v_base + keys[:, None] * stride_vn + dims[None, :] * stride_vd,
                     mask=j_ok[:, None] & dim_ok[None, :], other=0.0)
        if UPCAST:
            kt = kt.to(tl.float32)
            vt = vt.to(tl.float32)
        # A (BLOCK_M, BLOCK_N) gather of words; rows of one tile touch at most N * ceil(N / 32) words, which
        # stay in L1, so this costs far less than the K and V tiles.
        words = tl.load(Bits + node[:, None] * WORDS + (nodes_j // 32)[None, :],
                        mask=row_ok[:, None] & j_ok[None, :], other=0)
        visible = ((words >> (nodes_j % 32)[None, :]) & 1) != 0
        s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(vt.dtype), vt, acc=acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new

    # ---- Epilogue: normalise. A row that saw no key (l = 0) writes 0, like the reference.
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    if WRITE_LSE:
        lse = tl.where(l_i > 0, m_i + tl.log2(l_safe), float("-inf"))
        tl.store(Lse + pid_s * stride_ls + b * stride_lb + head * stride_lh + node * stride_ln, lse,
                 mask=row_ok)
    tl.store(Out + pid_s * stride_os + b * stride_ob + head[:, None] * stride_oh + node[:, None] * stride_on
             + dims[None, :] * stride_od, out.to(Out.dtype.element_ty),
             mask=row_ok[:, None] & dim_ok[None, :])


_KERNELS: dict = {}  # interpreter mode (bool) -> the jitted kernel


def _interpreting() -> bool:
    """True when TRITON_INTERPRET asks Triton to run kernels on the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _compiled_kernel():
    """The jitted kernel, built on first use (one per interpreter mode, read when it is built)."""
    interpret = _interpreting()
    if interpret not in _KERNELS:
        try:
            import triton
            import triton.language as language
        except ImportError as err:
            raise RuntimeError("backend='triton' needs the triton package: "
                               "pip install 'jetspec[kernels]'") from err
        global tl
        tl = language
        _KERNELS[interpret] = triton.jit(_tree_attention_fwd)
    return _KERNELS[interpret]


# ----------------------------------------------------------------------------- the launcher
def _launch_config(rows: int, block_d: int, interpret: bool) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps). All >= 16: tl.dot on a GPU rejects smaller tiles."""
    block_m = 16 if rows <= 16 else 32 if rows <= 32 else 64
    if interpret:
        return block_m, 64, 4  # the interpreter pays per tile, not per element: few big tiles
    block_n = 64 if block_d <= 128 else 32  # head dim 256: keep K + V tiles within shared memory
    return block_m, block_n, 4 if block_d <= 64 else 8


def _num_splits(programs: int, prefix_tiles: int, device: torch.device) -> int:
    """Split the prefix when the (row tile, batch, kv head) grid alone would leave SMs idle.

    Verifying 16 nodes with 8 kv heads is only 8 programs; with an 8k-token prefix each would walk
    128 tiles alone on an H200 with 132 SMs. Give each program at least 4 prefix tiles.
    """
    if device.type != "cuda" or prefix_tiles < 8:
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    if programs >= sms:
        return 1
    return max(1, min(math.ceil(2 * sms / programs), prefix_tiles // 4))


@no_type_check  # validates its arguments with errors naming them (check_tree_attention_args)
def tree_attention_triton(
    q: Float[Tensor, "B h N K"],
    k: Float[Tensor, "B h_kv T K"],
    v: Float[Tensor, "B h_kv T K"],
    ancestor: Bool[Tensor, "N N"],
    scale: Optional[float] = None,
    *,
    out: Optional[Float[Tensor, "B h N K"]] = None,
    block_m: Optional[int] = None,
    block_n: Optional[int] = None,
    num_splits: Optional[int] = None,
    ancestor_bits: Optional[Int[Tensor, "N (N+31)//32"]] = None,  # noqa: F821 (a jaxtyping size)
) -> Float[Tensor, "B h N K"]:
    """Launch the Triton kernel (arguments as in ``tree_attention``).

    Extra keyword arguments, for tests and tuning: ``out`` an output buffer of q's shape and dtype
    (any strides) to write into; ``block_m`` / ``block_n`` tile sizes (powers of two, >= 16);
    ``num_splits`` how many slices to cut the prefix into (default: chosen from the SM count);
    ``ancestor_bits`` = ``pack_ancestor_bits(ancestor)`` on q's device, packed once by a caller
    that runs many layers over one tree (``jetspec.core.attention`` does, once per forward).
    """
    check_tree_attention_args(q, k, v, ancestor)
    out, interpret = _checked_triton_call(q, out)
    if out.numel() == 0:
        return out
    batch, heads, n, head_dim = q.shape
    kernel = _compiled_kernel()

    kv_heads = k.shape[1]
    group = heads // kv_heads
    prefix_len = k.shape[2] - n
    bits = pack_ancestor_bits(ancestor.to(q.device)) if ancestor_bits is None else ancestor_bits
    block_d = max(16, _next_power_of_2(head_dim))
    auto_m, auto_n, num_warps = _launch_config(group * n, block_d, interpret)
    block_m, block_n = block_m or auto_m, block_n or auto_n
    for name, size in (("block_m", block_m), ("block_n", block_n)):
        if size < 16 or size & (size - 1):
            raise ValueError(f"{name} = {size}: tile sizes must be powers of two >= 16")

    row_tiles = math.ceil(group * n / block_m)
    prefix_tiles = math.ceil(prefix_len / block_n)
    if num_splits is None:
        num_splits = _num_splits(row_tiles * batch * kv_heads, prefix_tiles, q.device)
    # Even slices of whole tiles; recomputing the count drops slices that would be empty.
    tiles_per_split = max(1, math.ceil(prefix_tiles / max(1, num_splits)))
    num_splits = max(1, math.ceil(prefix_tiles / tiles_per_split))

    if num_splits == 1:
        target, lse = out, out  # lse is never touched when WRITE_LSE is False
        out_strides = (0, *out.stride())
        lse_strides = (0, 0, 0, 0)
    else:
        # Each slice writes its own normalised output and log2-sum-exp; the merge is in torch.
        target = torch.empty(num_splits, batch, heads, n, head_dim, dtype=torch.float32, device=q.device)
        lse = torch.empty(num_splits, batch, heads, n, dtype=torch.float32, device=q.device)
        out_strides, lse_strides = target.stride(), lse.stride()

    grid = (row_tiles, batch * kv_heads, num_splits)
    kernel[grid](
        q, k, v, bits, target, lse,
        *q.stride(), *k.stride(), *v.stride(), *out_strides, *lse_strides,
        n, prefix_len, kv_heads, bits.shape[1], tiles_per_split, num_splits,
        (1.0 / math.sqrt(head_dim) if scale is None else scale) * LOG2E,
        GROUP=group, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        UPCAST=interpret or q.dtype == torch.float32,
        DOT_PRECISION="ieee" if (interpret or q.dtype == torch.float32) else "tf32",
        WRITE_LSE=num_splits > 1,
        num_warps=num_warps, num_stages=2,
    )
    if num_splits > 1:
        out.copy_(merge_splits(target, lse))
    return out


def _checked_triton_call(q: Tensor, out: Optional[Tensor]) -> tuple[Tensor, bool]:
    """What only the Triton backend refuses (dtype, head dim, device), and the output buffer.

    Returns ``(out, interpret)``: ``out`` the given buffer (checked to match q) or a new one, and
    whether kernels run in Triton's CPU interpreter.
    """
    if q.dtype not in TRITON_DTYPES:
        raise ValueError(f"q has dtype {q.dtype}; the Triton kernel takes {[str(d) for d in TRITON_DTYPES]} "
                         "(use backend='torch' for others)")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"q has head dim {q.shape[-1]}; the Triton kernel supports up to {MAX_HEAD_DIM}")
    interpret = _interpreting()
    if not q.is_cuda and not interpret:
        raise RuntimeError("backend='triton' needs CUDA tensors; on a CPU, set TRITON_INTERPRET=1 before the "
                           "first kernel call to run the Triton interpreter, or use backend='torch'")
    if out is None:
        return torch.empty_like(q, memory_format=torch.contiguous_format), interpret
    if out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(f"out must match q: got {tuple(out.shape)} {out.dtype} on {out.device}, "
                         f"expected {tuple(q.shape)} {q.dtype} on {q.device}")
    return out, interpret


def merge_splits(
    partial: Float[Tensor, "Z B h N K"], lse: Float[Tensor, "Z B h N"]
) -> Float[Tensor, "B h N K"]:
    """Merge Z softmax slices (split-K), each normalised over its own keys, into one softmax over all keys.

    Slice s covers keys with log2-sum-exp ``lse[s]``; the full softmax weights it by
    ``2^lse[s] / sum_t 2^lse[t]``. Subtracting the max first keeps the exponentials in range.
    """
    top = lse.amax(dim=0)  # (B, h, N)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weight = torch.exp2(lse - top)  # (Z, B, h, N); 0 for a slice in which a row saw nothing
    total = weight.sum(dim=0)
    merged = (weight[..., None] * partial).sum(dim=0)  # (B, h, N, K)
    return merged / torch.where(total > 0, total, torch.ones_like(total))[..., None]


def _next_power_of_2(x: int) -> int:
    """Smallest power of two >= x (as triton.next_power_of_2, without importing triton)."""
    return 1 << max(0, x - 1).bit_length()


# ----------------------------------------------------------------------------- the dispatcher
@no_type_check  # validates its arguments with errors naming them (check_tree_attention_args)
def tree_attention(
    q: Float[Tensor, "B h N K"],
    k: Float[Tensor, "B h_kv T K"],
    v: Float[Tensor, "B h_kv T K"],
    ancestor: Bool[Tensor, "N N"],
    scale: Optional[float] = None,
    backend: str = "auto",
    ancestor_bits: Optional[Int[Tensor, "N (N+31)//32"]] = None,  # noqa: F821 (a jaxtyping size)
) -> Float[Tensor, "B h N K"]:
    """Attention of N tree nodes over a cached prefix and their own ancestors.

    Args:
        q: ``[B, h, N, K]`` queries of the N tree nodes (RoPE already applied).
        k: ``[B, h_kv, P + N, K]``: P cached prefix positions, then the N tree nodes.
            ``h % h_kv == 0`` (grouped-query attention).
        v: ``[B, h_kv, P + N, K]``, the values of the same positions as ``k``.
        ancestor: bool ``[N, N]``; ``ancestor[i, j]`` is True iff node j is node i or one of its
            ancestors. One tree for the whole batch. Any bool mask works (a chain, all-True, ...).
        scale: softmax scale; ``1 / sqrt(K)`` by default.
        backend: ``"torch"`` (the reference), ``"triton"`` (the kernel; CUDA tensors, or CPU
            tensors under ``TRITON_INTERPRET=1``; where triton is not installed, the reference,
            with one notice: ``triton_or_twin``) or ``"auto"`` (triton for CUDA tensors when
            triton is installed and the dtype/head dim fit, torch otherwise).
        ancestor_bits: ``pack_ancestor_bits(ancestor)`` on q's device, when the caller packed it
            once for many calls over the same tree (the Triton backend only; else packed here).

    Returns:
        ``[B, h, N, K]`` in q's dtype: key j is visible to query i iff ``j < P`` or
        ``ancestor[i, j - P]``. A query that sees no key at all gets zeros.

    Example:
        >>> from jetspec.kernels import tree_attention, ancestor_from_parents
        >>> q = torch.randn(1, 8, 4, 64); k = v = torch.randn(1, 2, 100 + 4, 64)
        >>> out = tree_attention(q, k, v, ancestor_from_parents([-1, 0, 0, 1]), backend="torch")
        >>> out.shape
        torch.Size([1, 8, 4, 64])
    """
    if backend == "auto":
        usable = q.is_cuda and q.dtype in TRITON_DTYPES and q.shape[-1] <= MAX_HEAD_DIM
        backend = "triton" if usable and triton_installed() else "torch"
    backend = triton_or_twin(backend)
    if backend == "torch":
        return tree_attention_reference(q, k, v, ancestor, scale)
    if backend == "triton":
        return tree_attention_triton(q, k, v, ancestor, scale, ancestor_bits=ancestor_bits)
    raise ValueError(f"backend must be 'torch', 'triton' or 'auto', got {backend!r}")


def triton_installed() -> bool:
    """Whether triton can be imported (without importing it: that takes seconds and may fail)."""
    import importlib.util

    return importlib.util.find_spec("triton") is not None


_log = logging.getLogger(__name__)
TWIN_NOTICE = ("triton is not installed (it publishes wheels for Linux only), so the Triton tree-attention "
               "kernel's PyTorch twin (tree_attention_reference) runs instead: same results, no custom kernel")
_notice_given: list[bool] = []  # one notice per process, however many calls fall back


def triton_or_twin(backend: str) -> str:
    """``backend``, except ``"triton"`` where triton is not installed: ``"torch"`` (the twin) then, with
    one logged notice (``TWIN_NOTICE``) per process. On macOS and Windows, where Triton has no wheels
    (the ``kernels`` extra installs it on Linux only), every Triton path of jetspec runs its twin this way."""
    if backend != "triton" or triton_installed():
        return backend
    if not _notice_given:
        _notice_given.append(True)
        _log.warning(TWIN_NOTICE)
    return "torch"
