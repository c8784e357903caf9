// Skinny matrix products for CPU decoding: y[M, N] = x[M, K] @ W[N, K]^T with M small (1 to ~65).
//
// The twin of this kernel is F.linear (see packed_linear.py, which compiles and loads this file).
//
// Why a kernel of our own: a verify forward multiplies a handful of rows (the tree's nodes) by every
// weight matrix of the target. Its floor is reading each weight once from memory; the arithmetic for
// 17 rows takes less time than that on a CPU with AVX-512. General GEMM libraries block for large M
// and, at M = 17, ran the weight stream and the arithmetic one after the other (BENCHMARKS.md,
// "Roofline"). This kernel streams each weight panel once and applies it to all rows while it is in
// registers and L1, so the arithmetic hides under the memory traffic.
//
// Layout. The weight is packed once into panels of 32 output columns: Wp[NB][K][32] (NB = ceil(N/32),
// the last panel zero-padded). Panel nb, row k holds W[nb*32 .. nb*32+31, k]: two AVX-512 vectors.
// A panel is one sequential stream of K*128 bytes, which the hardware prefetcher follows.
//
// Micro-kernel. For R rows (R <= 12) it keeps 2*R accumulators (R rows x 32 columns = 24 of the 32
// zmm registers at R = 12) and, for each k, loads the panel's two vectors once and does 2*R FMAs
// with x[r, k] broadcast. More rows than 12 are done 12 at a time over the same panel (then read
// from L1/L2, not memory). Each output is one sequential sum over k, so a row's product does not
// depend on M, on the other rows or on the thread count. (The rest of a forward is not
// row-invariant in this way: attention over a tree rounds differently from a one-row step.)
//
// Threads: panels are split across torch's intra-op threads (at::parallel_for).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

namespace {

constexpr int64_t kPanel = 32;  // output columns per panel: two 16-float AVX-512 vectors
constexpr int kMaxRows = 12;    // rows per micro-kernel call: 24 accumulators + 2 weights + 1 broadcast
// Software prefetch distance, in panel rows (128 bytes each): 16 KB ahead. Without it the weight
// stream stalls while a 12-row pass computes; with it a 17-row product of SmolLM2's weights took
// 10.9 ms instead of 14.6 (distances 16 / 32 / 64 / 128 / 256 gave 13.4 / 12.3 / 11.3 / 10.9 / 10.8;
// a 1-row product was unchanged). Prefetches past the end of a buffer are harmless: they never fault.
constexpr int64_t kPrefetchRows = 128;

template <int R>
void micro_kernel(const float* __restrict x, int64_t K, const float* __restrict panel, float* __restrict y,
                  int64_t ldy, int64_t ncols) {
  __m512 lo[R], hi[R];
  for (int r = 0; r < R; ++r) {
    lo[r] = _mm512_setzero_ps();
    hi[r] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < K; ++k) {
    _mm_prefetch(reinterpret_cast<const char*>(panel + (k + kPrefetchRows) * kPanel), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(panel + (k + kPrefetchRows) * kPanel + 16), _MM_HINT_T0);
    const __m512 w_lo = _mm512_loadu_ps(panel + k * kPanel);
    const __m512 w_hi = _mm512_loadu_ps(panel + k * kPanel + 16);
    for (int r = 0; r < R; ++r) {
      const __m512 xr = _mm512_set1_ps(x[r * K + k]);
      lo[r] = _mm512_fmadd_ps(xr, w_lo, lo[r]);
      hi[r] = _mm512_fmadd_ps(xr, w_hi, hi[r]);
    }
  }
  if (ncols == kPanel) {
    for (int r = 0; r < R; ++r) {
      _mm512_storeu_ps(y + r * ldy, lo[r]);
      _mm512_storeu_ps(y + r * ldy + 16, hi[r]);
    }
    return;
  }
  alignas(64) float tmp[kPanel];  // the last, partial panel: write only the real columns
  for (int r = 0; r < R; ++r) {
    _mm512_store_ps(tmp, lo[r]);
    _mm512_store_ps(tmp + 16, hi[r]);
    for (int64_t c = 0; c < ncols; ++c) y[r * ldy + c] = tmp[c];
  }
}

using MicroKernel = void (*)(const float*, int64_t, const float*, float*, int64_t, int64_t);
constexpr MicroKernel kKernels[kMaxRows + 1] = {
    nullptr,          micro_kernel<1>, micro_kernel<2>, micro_kernel<3>,  micro_kernel<4>,
    micro_kernel<5>,  micro_kernel<6>, micro_kernel<7>, micro_kernel<8>,  micro_kernel<9>,
    micro_kernel<10>, micro_kernel<11>, micro_kernel<12>};

}  // namespace

// W [N, K] fp32 -> packed panels [NB, K, 32].
torch::Tensor pack_weight(torch::Tensor W) {
  TORCH_CHECK(W.dim() == 2 && W.scalar_type() == torch::kFloat32 && W.device().is_cpu(),
              "pack_weight expects a 2-D fp32 CPU tensor");
  const int64_t N = W.size(0), K = W.size(1), NB = (N + kPanel - 1) / kPanel;
  auto padded = torch::zeros({NB * kPanel, K}, W.options());
  padded.narrow(0, 0, N).copy_(W);
  return padded.view({NB, kPanel, K}).transpose(1, 2).contiguous();
}

// x [M, K] fp32 contiguous, panels from pack_weight, N the real output width -> y [M, N].
torch::Tensor skinny_matmul(torch::Tensor x, torch::Tensor panels, int64_t N) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous() && x.device().is_cpu(),
              "skinny_matmul expects x as a contiguous 2-D fp32 CPU tensor");
  TORCH_CHECK(panels.dim() == 3 && panels.size(1) == x.size(1) && panels.size(2) == kPanel && panels.is_contiguous() &&
                  panels.scalar_type() == torch::kFloat32 && panels.device().is_cpu(),
              "skinny_matmul: panels must be contiguous fp32 CPU panels [NB, K, 32] matching x's K");
  const int64_t M = x.size(0), K = x.size(1), NB = panels.size(0);
  TORCH_CHECK(N > (NB - 1) * kPanel && N <= NB * kPanel, "skinny_matmul: N does not match the panels");
  auto y = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = panels.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, NB, 1, [&](int64_t first, int64_t last) {
    for (int64_t nb = first; nb < last; ++nb) {
      const float* panel = wp + nb * K * kPanel;
      const int64_t ncols = std::min<int64_t>(kPanel, N - nb * kPanel);
      for (int64_t m = 0; m < M; m += kMaxRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kMaxRows, M - m));
        kKernels[rows](xp + m * K, K, panel, yp + m * N + nb * kPanel, N, ncols);
      }
    }
  });
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pack_weight", &pack_weight, "pack W [N, K] into panels [NB, K, 32]");
  m.def("skinny_matmul", &skinny_matmul, "x [M, K] @ W^T from packed panels -> [M, N]");
}
