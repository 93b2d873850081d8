// AVX-512 VNNI int8 micro-kernel (qgemm.h): an 8 x 32 tile (8 x 16 where a tile has at most 16 columns), 16 zmm int32
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
#define TDQ_AINLINE_VNNI inline __attribute__((always_inline))

// NH halves of 16 columns: 2 for a full tile, 1 where the tile has at most 16
// valid columns (small feature maps: a 4x4 map of one sample is a panel of 16
// columns), which halves the work there. The results are the same.
template <int NH>
TDQ_VNNI TDQ_AINLINE_VNNI void ukr_vnni_body(int64_t kq, const int8_t* w, int64_t ldw, const uint8_t* panel,
                                             const QTile& t) {
  // Named accumulators (an array made GCC 12 copy registers around every
  // vpdpbusd and spill): 8 rows x 2 halves of the 32 columns.
  const int8_t* r0 = w;
  const int8_t* r1 = w + std::min(1, t.mr - 1) * ldw;
  const int8_t* r2 = w + std::min(2, t.mr - 1) * ldw;
  const int8_t* r3 = w + std::min(3, t.mr - 1) * ldw;
  const int8_t* r4 = w + std::min(4, t.mr - 1) * ldw;
  const int8_t* r5 = w + std::min(5, t.mr - 1) * ldw;
  const int8_t* r6 = w + std::min(6, t.mr - 1) * ldw;
  const int8_t* r7 = w + std::min(7, t.mr - 1) * ldw;
  __m512i c00 = _mm512_setzero_si512(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
          c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
#define TDQ_ROW(ri, ca, cb)                                   \
  {                                                           \
    int32_t wq;                                               \
    std::memcpy(&wq, ri + 4 * q, 4);                          \
    const __m512i b = _mm512_set1_epi32(wq);                  \
    ca = _mm512_dpbusd_epi32(ca, a0, b);                      \
    if constexpr (NH == 2) cb = _mm512_dpbusd_epi32(cb, a1, b); \
  }
  for (int64_t q = 0; q < kq; ++q) {
    const __m512i a0 = _mm512_loadu_si512(panel);
    const __m512i a1 = NH == 2 ? _mm512_loadu_si512(panel + 64) : a0;
    TDQ_ROW(r0, c00, c01) TDQ_ROW(r1, c10, c11) TDQ_ROW(r2, c20, c21) TDQ_ROW(r3, c30, c31)
    TDQ_ROW(r4, c40, c41) TDQ_ROW(r5, c50, c51) TDQ_ROW(r6, c60, c61) TDQ_ROW(r7, c70, c71)
    panel += kNR * 4;
  }
#undef TDQ_ROW
  const __m512i acc0[kMR] = {c00, c10, c20, c30, c40, c50, c60, c70};
  const __m512i acc1[kMR] = {c01, c11, c21, c31, c41, c51, c61, c71};
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
      if (NH == 2 && n1) _mm512_mask_storeu_ps(yi + t.col_off[0] + 16, m1, v1);
    } else {
      alignas(64) float tmp[32];
      _mm512_store_ps(tmp, v0);
      _mm512_store_ps(tmp + 16, v1);
      for (int j = 0; j < t.nr; ++j) yi[t.col_off[j]] = tmp[j];
    }
  }
}

TDQ_VNNI void ukr_vnni_8x32(int64_t kq, const int8_t* w, int64_t ldw, const uint8_t* panel, const QTile& t) {
  if (t.nr <= 16) ukr_vnni_body<1>(kq, w, ldw, panel, t);
  else ukr_vnni_body<2>(kq, w, ldw, panel, t);
}

}  // namespace

const QKernel& qkernel_avx512_vnni() {
  static const QKernel k{kMR, ukr_vnni_8x32, "avx512-vnni"};
  return k;
}

}  // namespace qgemm_detail
}  // namespace tdq
