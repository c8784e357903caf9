"""Tree attention: the Triton kernel (CPU interpreter here) and the reference vs a naive oracle.

The oracle below is written independently of jetspec: ancestors by walking up the parents array,
attention by einsum + softmax in fp64 over an explicit visibility matrix. Output buffers are
poisoned with NaN before every kernel call so that a row the kernel forgets to write shows up.

Interpreter shapes are kept small: the whole file must run in well under 90 s on 2 CPU cores.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jetspec.core.masks import ancestor_from_parents, chain_ancestor, full_ancestor
from jetspec.kernels import (
    pack_ancestor_bits,
    tree_attention,
    tree_attention_reference,
    tree_attention_triton,
    triton_installed,
)
from jetspec.kernels.tree_attention import merge_splits

REPO = Path(__file__).resolve().parents[2]
# (atol, rtol) against the fp64 oracle computed from the same (already rounded) inputs; half
# precision errors come from rounding p before the P.V product and the output itself.
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run experiments/gpu_check.py)")
# Triton has wheels for Linux only: on macOS and Windows the kernel cannot run (not even interpreted),
# and what runs there, the reference twin, is tested below whatever the platform.
needs_triton = pytest.mark.skipif(not triton_installed(), reason="triton is not installed (Linux-only wheels): "
                                  "the kernel cannot run here; its PyTorch twin is tested instead")


# ----------------------------------------------------------------------------- the oracle
def naive_ancestor(parents: list[int]) -> torch.Tensor:
    n = len(parents)
    anc = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        j = i
        while j >= 0:  # walk up to the root
            anc[i, j] = True
            j = parents[j]
    return anc


def naive_tree_attention(q, k, v, anc, scale=None):
    """Einsum-softmax in fp64: [B, h, N, K] x [B, h_kv, P+N, K] -> [B, h, N, K]."""
    n, t = q.shape[2], k.shape[2]
    visible = torch.cat([torch.ones(n, t - n, dtype=torch.bool), anc.cpu()], dim=1).to(q.device)
    group = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(group, 1)
    vv = v.double().repeat_interleave(group, 1)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.einsum("bhnd,bhtd->bhnt", q.double(), kk) * scale
    s = s.masked_fill(~visible, float("-inf"))
    return torch.einsum("bhnt,bhtd->bhnd", torch.softmax(s, -1), vv)


def random_parents(n: int, gen: torch.Generator) -> list[int]:
    return [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]


def make_inputs(b, h, h_kv, n, p, d, dtype, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=gen).to(device, dtype)
    k = torch.randn(b, h_kv, p + n, d, generator=gen).to(device, dtype)
    v = torch.randn(b, h_kv, p + n, d, generator=gen).to(device, dtype)
    return q, k, v, naive_ancestor(random_parents(n, gen)).to(device)


def run_poisoned(q, k, v, anc, **kw):
    out = torch.full_like(q, float("nan"))
    result = tree_attention_triton(q, k, v, anc, out=out, **kw)
    assert result.data_ptr() == out.data_ptr()
    return result


def assert_close(got, want, dtype, what):
    atol, rtol = TOL[dtype]
    assert not torch.isnan(got).any(), f"{what}: NaN leaked into the output"
    err = (got.double() - want.double()).abs().max().item()
    torch.testing.assert_close(got.double(), want.double(), atol=atol, rtol=rtol,
                               msg=lambda m: f"{what}: max abs err {err:.3g}\n{m}")


# ----------------------------------------------------------------------------- random trees
@st.composite
def tree_cases(draw, max_prefix=300):
    n = draw(st.integers(1, 64))
    parents = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    return dict(
        parents=parents,
        p=draw(st.one_of(st.integers(0, max_prefix), st.sampled_from([0, 1, 63, 64, 65, 127, 299]))),
        group=draw(st.sampled_from([1, 2, 4])),
        h_kv=draw(st.sampled_from([1, 2])),
        d=draw(st.sampled_from([32, 64, 80, 128])),
        b=draw(st.sampled_from([1, 2])),
        dtype=draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16])),
        seed=draw(st.integers(0, 2**16)),
    )


def case_inputs(case):
    gen = torch.Generator().manual_seed(case["seed"])
    n, dt = len(case["parents"]), case["dtype"]
    h = case["group"] * case["h_kv"]
    q = torch.randn(case["b"], h, n, case["d"], generator=gen).to(dt)
    k = torch.randn(case["b"], case["h_kv"], case["p"] + n, case["d"], generator=gen).to(dt)
    v = torch.randn(case["b"], case["h_kv"], case["p"] + n, case["d"], generator=gen).to(dt)
    return q, k, v, naive_ancestor(case["parents"])


@needs_triton
@settings(deadline=None, max_examples=30)
@given(case=tree_cases())
def test_triton_matches_naive_on_random_trees(case):
    q, k, v, anc = case_inputs(case)
    want = naive_tree_attention(q, k, v, anc)
    assert_close(run_poisoned(q, k, v, anc), want, case["dtype"], f"triton {case}")


@settings(deadline=None, max_examples=40)
@given(case=tree_cases())
def test_reference_matches_naive_on_random_trees(case):
    q, k, v, anc = case_inputs(case)
    got = tree_attention(q, k, v, anc, backend="torch")
    assert got.dtype == q.dtype
    assert_close(got, naive_tree_attention(q, k, v, anc), case["dtype"], f"reference {case}")


@settings(deadline=None, max_examples=30)
@given(parents=st.integers(1, 40).flatmap(
    lambda n: st.tuples(*[st.just(-1)] + [st.integers(0, i - 1) for i in range(1, n)])))
def test_ancestor_from_parents_is_the_closure(parents):
    assert torch.equal(ancestor_from_parents(list(parents)), naive_ancestor(list(parents)))


# ----------------------------------------------------------------------------- tiles and splits
@pytest.mark.parametrize("n,p,block_m,block_n,splits", [
    (20, 37, 16, 16, 1),  # several row tiles, a partial prefix tile, two tree tiles
    (7, 100, 16, 16, 3),  # split-KV: three prefix slices merged in torch
    (33, 0, 16, 32, 1),  # no prefix at all; word boundary at node 32
    (5, 130, 16, 16, 4),  # splits with a 2-key last tile
    (1, 1, 16, 16, 1),  # the smallest verify: one node, one cached token
])
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_small_tiles_and_splits(n, p, block_m, block_n, splits, dtype):
    q, k, v, anc = make_inputs(2, 4, 2, n, p, 80, dtype, seed=n + p)
    got = run_poisoned(q, k, v, anc, block_m=block_m, block_n=block_n, num_splits=splits)
    assert_close(got, naive_tree_attention(q, k, v, anc), dtype, f"n={n} p={p} splits={splits}")


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_largest_interpreter_case(dtype):
    # The upper end of the random cases at once: 64 nodes, 4 query heads per kv head, K = 128.
    q, k, v, anc = make_inputs(2, 8, 2, 64, 299, 128, dtype, seed=11)
    assert_close(run_poisoned(q, k, v, anc), naive_tree_attention(q, k, v, anc), dtype, "largest")


@needs_triton
def test_strided_inputs_and_output_like_transformers():
    # HF hands over q as a transpose of [B, N, h, K] and wants the output in that layout as well.
    q, k, v, anc = make_inputs(1, 4, 2, 9, 21, 32, torch.float32, seed=3)
    q_t = q.transpose(1, 2).contiguous().transpose(1, 2)  # same values, non-contiguous strides
    out = torch.full((1, 9, 4, 32), float("nan")).transpose(1, 2)
    tree_attention_triton(q_t, k, v, anc, out=out)
    assert_close(out, naive_tree_attention(q, k, v, anc), torch.float32, "strided")


@needs_triton
def test_custom_scale_and_head_dim_not_power_of_two():
    q, k, v, anc = make_inputs(1, 2, 1, 6, 17, 24, torch.float32, seed=4)  # K = 24 pads to 32
    want = naive_tree_attention(q, k, v, anc, scale=0.3)
    assert_close(run_poisoned(q, k, v, anc, scale=0.3), want, torch.float32, "scale triton")
    assert_close(tree_attention_reference(q, k, v, anc, scale=0.3), want, torch.float32, "scale reference")


@needs_triton
def test_a_query_that_sees_nothing_gets_zeros_not_nan():
    q, k, v, _ = make_inputs(1, 2, 2, 4, 0, 32, torch.float32)
    anc = chain_ancestor(4)
    anc[2] = False  # node 2 sees no key at all (no prefix, not even itself)
    for got in (run_poisoned(q, k, v, anc), tree_attention_reference(q, k, v, anc)):
        assert not torch.isnan(got).any()
        assert torch.equal(got[:, :, 2], torch.zeros_like(got[:, :, 2]))
        want = naive_tree_attention(q, k, v, chain_ancestor(4))
        assert_close(got[:, :, 3], want[:, :, 3], torch.float32, "row 3")


@needs_triton
@pytest.mark.parametrize("kind", ["chain", "full"])
def test_block_attention_is_tree_attention(kind):
    # A drafting head's block: causal = chain tree, bidirectional = all-True, over P context rows.
    q, k, v, _ = make_inputs(1, 4, 2, 16, 40, 32, torch.float32, seed=5)
    anc = chain_ancestor(16) if kind == "chain" else full_ancestor(16)
    mask = torch.cat([torch.ones(16, 40, dtype=torch.bool), anc], dim=1)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    want = sdpa(q.double(), kk.double(), vv.double(), attn_mask=mask)
    assert_close(run_poisoned(q, k, v, anc), want, torch.float32, kind)


# ----------------------------------------------------------------------------- pieces
@pytest.mark.parametrize("n", [1, 31, 32, 33, 64, 65])
def test_pack_ancestor_bits_round_trip(n):
    anc = torch.rand(n, n, generator=torch.Generator().manual_seed(n)) < 0.5
    anc[:, -1] = True  # make sure bit 31 (the sign bit of an int32 word) is exercised when n = 32
    bits = pack_ancestor_bits(anc)
    assert bits.dtype == torch.int32 and bits.shape == (n, math.ceil(n / 32))
    cols = torch.arange(n)
    unpacked = ((bits[:, cols // 32] >> (cols % 32)) & 1).bool()
    assert torch.equal(unpacked, anc)


@needs_triton
def test_packed_bits_memory_sees_in_place_edits():
    # The launcher keeps no memory of earlier masks (jetspec.core.attention packs once per forward and
    # passes the bits): editing the mask in place between calls must give the new attention.
    q, k, v, anc = make_inputs(1, 2, 1, 5, 3, 16, torch.float32)
    run_poisoned(q, k, v, anc)
    anc[4] = False
    anc[4, 4] = True  # node 4 becomes a root-less singleton: it now sees only the prefix and itself
    assert_close(run_poisoned(q, k, v, anc), naive_tree_attention(q, k, v, anc), torch.float32, "edited")


def test_merge_splits_equals_one_softmax():
    gen = torch.Generator().manual_seed(0)
    scores, values = torch.randn(2, 3, 5, 40, generator=gen), torch.randn(2, 3, 40, 8, generator=gen)
    scores[..., 1, 10:] = float("-inf")  # row 1 sees nothing in slices 2 and 3
    want = torch.softmax(scores, -1) @ values
    parts, lses = [], []
    for sl in (slice(0, 10), slice(10, 25), slice(25, 40)):
        s2 = scores[..., sl] / math.log(2)  # the kernel works in log2 units
        lse = torch.logsumexp(s2 * math.log(2), -1) / math.log(2)
        p = torch.exp2(s2 - torch.where(torch.isfinite(lse), lse, 0)[..., None])
        parts.append(torch.nan_to_num(p) @ values[..., sl, :])
        lses.append(lse)
    got = merge_splits(torch.stack(parts), torch.stack(lses))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_auto_backend_uses_the_reference_on_cpu():
    q, k, v, anc = make_inputs(1, 2, 1, 3, 5, 16, torch.float32)
    torch.testing.assert_close(tree_attention(q, k, v, anc), tree_attention_reference(q, k, v, anc))


# ----------------------------------------------------------------------------- bad input
def _good():
    return make_inputs(1, 4, 2, 3, 5, 32, torch.float32)


@pytest.mark.parametrize("mutate,argname", [
    (lambda q, k, v, a: (q[0], k, v, a), "q"),
    (lambda q, k, v, a: (q, k[:, :, :2], v[:, :, :2], a), "k"),
    (lambda q, k, v, a: (q, k, v[:, :, :-1], a), "v"),
    (lambda q, k, v, a: (q[:, :3], k, v, a), "heads"),
    (lambda q, k, v, a: (q, k[..., :16], v[..., :16], a), "head dim"),
    (lambda q, k, v, a: (q, torch.cat([k, k]), torch.cat([v, v]), a), "batch"),
    (lambda q, k, v, a: (q, k, v, a[:2, :2]), "ancestor"),
    (lambda q, k, v, a: (q, k, v, a.int()), "ancestor"),
    (lambda q, k, v, a: (q.half(), k, v, a), "dtype"),
    (lambda q, k, v, a: (q.long(), k.long(), v.long(), a), "q has dtype"),
])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bad_arguments_raise_value_errors_naming_them(mutate, argname, backend):
    with pytest.raises(ValueError, match=argname):
        tree_attention(*mutate(*_good()), backend=backend)


@pytest.mark.parametrize("b, h, h_kv, n, p, d, error", [
    (1, 2, 1, 0, 0, 16, None),  # no node and no prefix: the torch backend used to fail in amax
    (1, 2, 1, 0, 7, 16, None),  # no node
    (0, 2, 1, 3, 4, 16, None),  # an empty batch
    (1, 0, 1, 3, 4, 16, None),  # no query head
    (1, 2, 1, 3, 4, 0, "head dim"),  # used to be a ZeroDivisionError from 1 / sqrt(0) in torch only
    (1, 2, 1, 0, 0, 0, "head dim"),
])
def test_empty_shapes_give_both_backends_the_same_result_or_error(b, h, h_kv, n, p, d, error):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(b, h, n, d, generator=gen)
    k, v = torch.randn(2, b, h_kv, p + n, d, generator=gen)
    anc = chain_ancestor(n)
    outcomes = {}
    for backend in ("torch", "triton"):
        try:
            outcomes[backend] = tree_attention(q, k, v, anc, backend=backend)
        except Exception as err:  # noqa: BLE001 - the point is to compare whatever comes out
            outcomes[backend] = (type(err), str(err))
    if error is None:
        for got in outcomes.values():
            assert isinstance(got, torch.Tensor), outcomes
            assert got.shape == q.shape and got.dtype == q.dtype
    else:
        assert outcomes["torch"] == outcomes["triton"], outcomes
        kind, message = outcomes["torch"]
        assert kind is ValueError and error in message


@needs_triton
def test_triton_specific_limits():
    q, k, v, anc = _good()
    with pytest.raises(ValueError, match="float64"):
        tree_attention_triton(q.double(), k.double(), v.double(), anc)
    big = torch.zeros(1, 1, 3, 512)
    with pytest.raises(ValueError, match="head dim 512"):
        tree_attention_triton(big, torch.zeros(1, 1, 5, 512), torch.zeros(1, 1, 5, 512), anc)
    with pytest.raises(ValueError, match="block_n"):
        tree_attention_triton(q, k, v, anc, block_n=8)
    with pytest.raises(ValueError, match="out must match q"):
        tree_attention_triton(q, k, v, anc, out=torch.empty(1, 4, 3, 16))
    with pytest.raises(ValueError, match="backend"):
        tree_attention(q, k, v, anc, backend="cuda")


@needs_triton
def test_clean_import_and_clear_error_without_the_interpreter():
    """In a fresh process without TRITON_INTERPRET: importing is side-effect free, and asking for the
    Triton backend on CPU tensors says what to do. The folder `kernels/`, loaded by itself under a
    name of its own, must import neither triton nor lightning (which imports triton); of jetspec it
    may import the core layer only, where its ``ancestor`` masks live (jetspec/core/masks.py). (Under
    the bare name `kernels` it hands over to Hugging Face's package: test_bare_name.py.)"""
    script = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("kernels_alone", {str(REPO / "kernels" / "__init__.py")!r},
                                                      submodule_search_locations=[{str(REPO / "kernels")!r}])
        kernels = importlib.util.module_from_spec(spec)
        sys.modules["kernels_alone"] = kernels
        spec.loader.exec_module(kernels)
        layers = set(m.split(".")[1] for m in sys.modules if m.startswith("jetspec."))
        assert layers <= set(["core", "kernels", "drafters", "trees", "verifiers"]), f"imported jetspec {{layers}}"
        assert "lightning" not in sys.modules, "importing the kernels package imported lightning"
        assert "triton" not in sys.modules, "importing the kernels package imported triton"
        import torch
        q = torch.zeros(1, 1, 2, 16); k = torch.zeros(1, 1, 4, 16)
        try:  # the same code as jetspec.kernels, without paying for `import jetspec` (lightning, ...)
            kernels.tree_attention(q, k, k, kernels.chain_ancestor(2), backend="triton")
        except RuntimeError as err:
            assert "TRITON_INTERPRET" in str(err), err
            print("OK")
    """)
    env = {key: val for key, val in os.environ.items() if key != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr


def test_without_triton_every_triton_path_runs_the_twin_with_one_notice(monkeypatch, caplog):
    """macOS and Windows have no Triton wheels (the kernels extra installs it on Linux only): asking for
    the Triton backend there must run the PyTorch twin, with the same results and one notice per
    process, not fail. Simulated here by reporting triton as not installed."""
    ta = importlib.import_module("jetspec.kernels.tree_attention")  # the module, not the function it exports
    from conftest import tiny_llama

    from jetspec.core.attention import TREE_TORCH, attention_backend

    monkeypatch.setattr(ta, "triton_installed", lambda: False)
    monkeypatch.setattr(ta, "_notice_given", [], raising=False)  # a fresh process: no notice given yet
    q, k, v, anc = _good()
    with caplog.at_level("WARNING", logger=ta.__name__):
        for _ in range(3):
            assert torch.equal(tree_attention(q, k, v, anc, backend="triton"), tree_attention_reference(q, k, v, anc))
        with attention_backend(tiny_llama(), "triton") as model:
            assert model.config._attn_implementation == TREE_TORCH
    notices = [r.getMessage() for r in caplog.records if r.name == ta.__name__]
    assert notices == [ta.TWIN_NOTICE], notices


@needs_triton
def test_gpu_check_dry_run(tmp_path):
    """experiments/gpu_check.py runs once on a lent GPU: its CPU dry run keeps every code path working."""
    cmd = [sys.executable, str(REPO / "experiments" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert all(row["ok"] for row in results["correctness"])
    assert {"sdpa", "torch", "triton"} == set(results["verify"]["backends"])
    assert "| tree (auto split) |" in (tmp_path / "results.md").read_text()


# ----------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,p,h,h_kv,d", [(16, 2048, 32, 8, 128), (64, 517, 16, 8, 128),
                                          (256, 8192, 32, 8, 128), (37, 1000, 8, 2, 80), (8, 300, 4, 4, 256)])
def test_cuda_matches_naive(dtype, n, p, h, h_kv, d):
    q, k, v, anc = make_inputs(1, h, h_kv, n, p, d, dtype, seed=n, device="cuda")
    got = run_poisoned(q, k, v, anc)
    assert_close(got, naive_tree_attention(q, k, v, anc), dtype, f"cuda {dtype}")  # oracle in fp64 on the GPU
