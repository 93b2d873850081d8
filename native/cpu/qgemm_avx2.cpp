// AVX2 int8 micro-kernel (qgemm.h): 4 rows x 32 columns, as four 4 x 8
// sub-tiles. No vpmaddubsw: its int16 pair sums saturate (255 * 127 * 2 >
// 32767), which would make the result depend on the data's range. Instead
// activations (u8) and weights (s8) are widened to int16 and multiplied with
// vpmaddwd, whose int32 pair sums are exact; a final horizontal add joins the
// two pairs of each group of 4 k. The weights come widened to int16 (the
// driver does it once per call; QKernel::wide_weights), so a row's 4 k are one
// 8-byte broadcast. Also the kernel of the avx512 level on CPUs
// without VNNI. Compiled for AVX2 through the target attribute only.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "qgemm.h"

namespace tdq {
namespace qgemm_detail {
namespace {

constexpr int kMR = 4;

#define TDQ_AVX2_INT __attribute__((target("avx2,fma")))

TDQ_AVX2_INT void ukr_avx2_4x32(int64_t kq, const int8_t* w, int64_t ldw, const uint8_t* panel, const QTile& t) {
  const int8_t* rows[kMR];
  for (int i = 0; i < kMR; ++i) rows[i] = w + std::min(i, t.mr - 1) * ldw;
  for (int g = 0; g * 8 < t.nr; ++g) {
    // Named accumulators: an array made GCC 12 copy registers and spill.
    __m256i l0 = _mm256_setzero_si256(), l1 = l0, l2 = l0, l3 = l0, h0 = l0, h1 = l0, h2 = l0, h3 = l0;
    const uint8_t* p = panel + g * 32;
#define TDQ_ROW(ri, l, h)                                                                      \
  {                                                                                            \
    int64_t wq;                                                                                \
    std::memcpy(&wq, ri + 8 * q, 8);                                                           \
    const __m256i b = _mm256_set1_epi64x(wq);                                                  \
    l = _mm256_add_epi32(l, _mm256_madd_epi16(lo, b));                                         \
    h = _mm256_add_epi32(h, _mm256_madd_epi16(hi, b));                                         \
  }
    for (int64_t q = 0; q < kq; ++q, p += kNR * 4) {
      // columns 0..3 and 4..7 of the group, each 4 k, as int16
      const __m256i lo = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      const __m256i hi = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)));
      TDQ_ROW(rows[0], l0, h0) TDQ_ROW(rows[1], l1, h1) TDQ_ROW(rows[2], l2, h2) TDQ_ROW(rows[3], l3, h3)
    }
#undef TDQ_ROW
    const __m256i accl[kMR] = {l0, l1, l2, l3}, acch[kMR] = {h0, h1, h2, h3};
    // Epilogue for columns 8g .. 8g + ng - 1.
    const int ng = std::min(8, t.nr - 8 * g);
    alignas(32) static const int32_t kIota[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(ng), _mm256_load_si256(reinterpret_cast<const __m256i*>(kIota)));
    const __m256 cs = _mm256_maskload_ps(t.col_step + 8 * g, mask);
    for (int i = 0; i < t.mr; ++i) {
      // lanes of accl: (c0: k0k1, k2k3), (c1: ...), | (c2), (c3); acch the same for c4..c7
      __m256i acc = _mm256_hadd_epi32(accl[i], acch[i]);              // c0 c1 c4 c5 | c2 c3 c6 c7
      acc = _mm256_permute4x64_epi64(acc, _MM_SHUFFLE(3, 1, 2, 0));   // c0 .. c7
      const __m256 s = _mm256_mul_ps(cs, _mm256_set1_ps(t.wstep[i]));
      __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(acc, _mm256_set1_epi32(t.zc[i]))), s);
      asm("" : "+x"(v));  // no fusing into the add below
      v = _mm256_add_ps(v, _mm256_set1_ps(t.bias ? t.bias[i] : 0.f));
      float* yi = t.y + i * t.row_stride;
      if (t.contig) {
        _mm256_maskstore_ps(yi + t.col_off[0] + 8 * g, mask, v);
      } else {
        alignas(32) float tmp[8];
        _mm256_store_ps(tmp, v);
        for (int j = 0; j < ng; ++j) yi[t.col_off[8 * g + j]] = tmp[j];
      }
    }
  }
}

}  // namespace

const QKernel& qkernel_avx2() {
  static const QKernel k{kMR, ukr_avx2_4x32, "avx2", true};
  return k;
}

}  // namespace qgemm_detail
}  // namespace tdq
