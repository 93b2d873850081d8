// AVX2 + FMA SGEMM micro-kernel: a 6 x 16 tile of C in 12 ymm accumulators,
// leaving 4 of the 16 registers for the two B vectors and the A broadcast.
// 12 independent FMA chains cover the FMA latency x throughput (4 x 2) of
// current cores. Compiled for AVX2 through the target attribute only, so the
// rest of the library stays baseline x86-64.
#include <immintrin.h>

#include "gemm.h"

namespace tdq {
namespace gemm_detail {
namespace {

constexpr int kMR = 6, kNR = 16;

__attribute__((target("avx2,fma"))) void ukr_avx2_6x16(int64_t kc, const float* a,
                                                      const float* b, float* c, int64_t ldc,
                                                      float beta) {
  __m256 acc0[kMR], acc1[kMR];
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i) acc0[i] = acc1[i] = _mm256_setzero_ps();
#pragma GCC unroll 2
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < kMR; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
      acc0[i] = _mm256_fmadd_ps(ai, b0, acc0[i]);
      acc1[i] = _mm256_fmadd_ps(ai, b1, acc1[i]);
    }
    a += kMR;
    b += kNR;
  }
  const __m256 vb = _mm256_set1_ps(beta);
#pragma GCC unroll 6
  for (int i = 0; i < kMR; ++i) {
    float* ci = c + i * ldc;
    if (beta == 0.f) {
      _mm256_storeu_ps(ci, acc0[i]);
      _mm256_storeu_ps(ci + 8, acc1[i]);
    } else {
      _mm256_storeu_ps(ci, _mm256_fmadd_ps(vb, _mm256_loadu_ps(ci), acc0[i]));
      _mm256_storeu_ps(ci + 8, _mm256_fmadd_ps(vb, _mm256_loadu_ps(ci + 8), acc1[i]));
    }
  }
}

}  // namespace

// KC: the B micro-panel (KC x 16 floats = 16 KiB) stays in a 32 KiB L1.
// MC: the packed A block (MC x KC = 144 KiB) fits a 512 KiB+ L2.
const GemmKernel& kernel_avx2() {
  static const GemmKernel k{kMR, kNR, 144, 256, 512, ukr_avx2_6x16};
  return k;
}

}  // namespace gemm_detail
}  // namespace tdq
