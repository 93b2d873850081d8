// AVX-512 VNNI int8 micro-kernel (qgemm.h): an 8 x 32 tile, 16 zmm int32
// accumulators. Per group of 4 k: two 64-byte loads of the activation panel
// (32 columns x 4 u8) and, per row, one 4-byte broadcast of the weights, then
// vpdpbusd: each int32 lane adds 4 exact u8 x s8 products (no saturation; the
// int32 sum cannot overflow for K <= 65000). Compiled for AVX-512 through the
// target attribute only; chosen at the avx512 level where the CPU reports VNNI.
// GCC 12 warns about the deliberately undefined pass-through operand inside
// _mm512_cvtepi32_ps (a false positive of its own header).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "qgemm.h"

namespace tdq {
namespace qgemm_detail {
namespace {

constexpr int kMR = 8;

#define TDQ_VNNI __attribute__((target("avx512f,avx512vl,avx512bw,avx512vnni,fma")))

TDQ_VNNI void ukr_vnni_8x32(int64_t kq, const int8_t* w, int64_t ldw, const uint8_t* panel, const QTile& t) {
  __m512i acc0[kMR], acc1[kMR];
  const int8_t* rows[kMR];
#pragma GCC unroll 8
  for (int i = 0; i < kMR; ++i) {
    acc0[i] = acc1[i] = _mm512_setzero_si512();
    rows[i] = w + std::min(i, t.mr - 1) * ldw;
  }
  for (int64_t q = 0; q < kq; ++q) {
    const __m512i a0 = _mm512_loadu_si512(panel), a1 = _mm512_loadu_si512(panel + 64);
#pragma GCC unroll 8
    for (int i = 0; i < kMR; ++i) {
      int32_t wq;
      std::memcpy(&wq, rows[i] + 4 * q, 4);
      const __m512i b = _mm512_set1_epi32(wq);
      acc0[i] = _mm512_dpbusd_epi32(acc0[i], a0, b);
      acc1[i] = _mm512_dpbusd_epi32(acc1[i], a1, b);
    }
    panel += kNR * 4;
  }
  // Epilogue: y = fl(fl(float(acc - zc) * fl(col_step * wstep)) + bias).
  const int n0 = std::min(t.nr, 16), n1 = std::max(t.nr - 16, 0);
  const __mmask16 m0 = static_cast<__mmask16>((1u << n0) - 1), m1 = static_cast<__mmask16>((1u << n1) - 1);
  const __m512 cs0 = _mm512_maskz_loadu_ps(m0, t.col_step), cs1 = _mm512_maskz_loadu_ps(m1, t.col_step + 16);
  for (int i = 0; i < t.mr; ++i) {
    const __m512i z = _mm512_set1_epi32(t.zc[i]);
    const __m512 ws = _mm512_set1_ps(t.wstep[i]), b = _mm512_set1_ps(t.bias ? t.bias[i] : 0.f);
    __m512 v0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc0[i], z)), _mm512_mul_ps(cs0, ws));
    __m512 v1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc1[i], z)), _mm512_mul_ps(cs1, ws));
    asm("" : "+v"(v0), "+v"(v1));  // no fusing into the add below
    v0 = _mm512_add_ps(v0, b);
    v1 = _mm512_add_ps(v1, b);
    float* yi = t.y + i * t.row_stride;
    if (t.contig) {
      _mm512_mask_storeu_ps(yi + t.col_off[0], m0, v0);
      if (n1) _mm512_mask_storeu_ps(yi + t.col_off[0] + 16, m1, v1);
    } else {
      alignas(64) float tmp[32];
      _mm512_store_ps(tmp, v0);
      _mm512_store_ps(tmp + 16, v1);
      for (int j = 0; j < t.nr; ++j) yi[t.col_off[j]] = tmp[j];
    }
  }
}

}  // namespace

const QKernel& qkernel_avx512_vnni() {
  static const QKernel k{kMR, ukr_vnni_8x32, "avx512-vnni"};
  return k;
}

}  // namespace qgemm_detail
}  // namespace tdq
