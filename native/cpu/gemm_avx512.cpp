// AVX-512 SGEMM micro-kernel: an 8 x 32 tile of C in 16 zmm accumulators.
// 16 independent FMA chains cover the FMA latency x throughput of current
// cores (4 x 2), and 8 rows divide the channel counts of real networks (64,
// 128, 256...): a 12-row tile measured ~10% slower on M = 64 from the wasted
// rows of its last panel, and no faster elsewhere (AMD Zen 4). Compiled for
// AVX-512 through the target attribute only.
#include <immintrin.h>

#include "gemm.h"

namespace tdq {
namespace gemm_detail {
namespace {

constexpr int kMR = 8, kNR = 32;

__attribute__((target("avx512f,avx512vl,avx512bw,fma"))) void ukr_avx512_8x32(
    int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float beta) {
  __m512 acc0[kMR], acc1[kMR];
#pragma GCC unroll 8
  for (int i = 0; i < kMR; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
#pragma GCC unroll 2
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 8
    for (int i = 0; i < kMR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      acc0[i] = _mm512_fmadd_ps(ai, b0, acc0[i]);
      acc1[i] = _mm512_fmadd_ps(ai, b1, acc1[i]);
    }
    a += kMR;
    b += kNR;
  }
  const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 8
  for (int i = 0; i < kMR; ++i) {
    float* ci = c + i * ldc;
    if (beta == 0.f) {
      _mm512_storeu_ps(ci, acc0[i]);
      _mm512_storeu_ps(ci + 16, acc1[i]);
    } else {
      _mm512_storeu_ps(ci, _mm512_fmadd_ps(vb, _mm512_loadu_ps(ci), acc0[i]));
      _mm512_storeu_ps(ci + 16, _mm512_fmadd_ps(vb, _mm512_loadu_ps(ci + 16), acc1[i]));
    }
  }
}

}  // namespace

// KC: the B micro-panel (KC x 32 floats = 16 KiB at KC = 128) stays in L1.
// MC: the packed A block (MC x KC) fits L2 with room for B panels streaming.
const GemmKernel& kernel_avx512() {
  static const GemmKernel k{kMR, kNR, 144, 128, 512, ukr_avx512_8x32};
  return k;
}

}  // namespace gemm_detail
}  // namespace tdq
