// Scaled dot-product attention, memory-efficient (FlashAttention-style):
//   O = softmax(scale * Q K^T) V,  q (B,H,Lq,D), k (B,H,Lk,D), v (B,H,Lk,Dv)
// The Lq x Lk score matrix is never built. Queries go in blocks of kBQ rows,
// keys in blocks of kBK; for each (query block, key block) pair only a
// kBQ x kBK tile of scores exists, and the softmax is folded in online with a
// running row maximum and row sum. The forward saves the per-row logsumexp L
// (B,H,Lq), from which the backward recomputes every probability tile exactly
// (P = exp(S - L)) instead of storing P.
//
// The tile products are one small GEMM (C = alpha A B (+ C), row-major) and
// the row operations; both are written once over a vector width W with GCC
// vector extensions. W = 1 is the plain scalar reference; W = 8 / 16 are
// instantiated inside functions compiled for AVX2 / AVX-512 and selected by
// ctx.cpu_level. Memory beyond the outputs: transposed copies of the inputs
// by blocks (ctx.scratch, the size of the inputs) and small per-thread tiles
// (see tile_floats).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "../core/registry.h"
#include "nn_simd.h"

namespace tdq {
namespace {

using namespace nnsimd;

constexpr int64_t kBQ = 64;  // query rows per block
constexpr int64_t kBK = 64;  // keys per block (a multiple of every vector width)

// ---- C (M x N) = alpha * A (M x K) B (K x N) [+ C], all row-major -------------
// R rows x NC vectors of C stay in registers while k runs; each loaded row of
// B serves R rows of A.
template <int W, int R, int NC>
TDQ_AINLINE void gemm_micro(int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                            int64_t ldc, float alpha, bool acc) {
  Vf<W> c[R][NC];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NC; ++j) c[r][j] = Vf<W>{};
  for (int64_t k = 0; k < K; ++k) {
    Vf<W> b[NC];
    for (int j = 0; j < NC; ++j) b[j] = vload<W>(B + k * ldb + j * W);
    for (int r = 0; r < R; ++r) {
      // scalar * vector: GCC broadcasts it with one vbroadcastss from memory
      // (an explicit splat here got merged into masked lane-by-lane builds).
      const float a = A[r * lda + k];
      for (int j = 0; j < NC; ++j) c[r][j] += a * b[j];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NC; ++j) {
      float* p = C + r * ldc + j * W;
      vstore<W>(p, acc ? vload<W>(p) + alpha * c[r][j] : alpha * c[r][j]);
    }
}

template <int W, int R, int NC>
TDQ_AINLINE void gemm_cols(int64_t M, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                           int64_t ldc, float alpha, bool acc) {
  int64_t i = 0;
  for (; i + R <= M; i += R) gemm_micro<W, R, NC>(K, A + i * lda, lda, B, ldb, C + i * ldc, ldc, alpha, acc);
  for (; i < M; ++i) gemm_micro<W, 1, NC>(K, A + i * lda, lda, B, ldb, C + i * ldc, ldc, alpha, acc);
}

template <int W>
TDQ_AINLINE void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                      float* C, int64_t ldc, float alpha, bool acc) {
  if constexpr (W == 1) {
    // The reference: one row of C at a time, k outermost so B is read by rows.
    for (int64_t i = 0; i < M; ++i) {
      float* c = C + i * ldc;
      if (!acc) std::fill(c, c + N, 0.f);
      for (int64_t k = 0; k < K; ++k) {
        const float a = alpha * A[i * lda + k];
        const float* b = B + k * ldb;
        for (int64_t j = 0; j < N; ++j) c[j] += a * b[j];
      }
    }
  } else {
    // Register blocks: 4 rows x 4 vectors (16 of 32 zmm) for AVX-512,
    // 2 rows x 4 vectors (8 of 16 ymm) for AVX2.
    // The last 1..3 vectors of columns in one pass (each row of A read once),
    // then a half vector (head dims 24, 40, ...), then scalar columns.
    constexpr int R = W >= 16 ? 4 : 2;
    int64_t j = 0;
    for (; j + 4 * W <= N; j += 4 * W) gemm_cols<W, R, 4>(M, K, A, lda, B + j, ldb, C + j, ldc, alpha, acc);
    switch ((N - j) / W) {
      case 3: gemm_cols<W, R, 3>(M, K, A, lda, B + j, ldb, C + j, ldc, alpha, acc); j += 3 * W; break;
      case 2: gemm_cols<W, R, 2>(M, K, A, lda, B + j, ldb, C + j, ldc, alpha, acc); j += 2 * W; break;
      case 1: gemm_cols<W, R, 1>(M, K, A, lda, B + j, ldb, C + j, ldc, alpha, acc); j += W; break;
      default: break;
    }
    if constexpr (W >= 16) {
      if (j + W / 2 <= N) {
        gemm_cols<W / 2, R, 1>(M, K, A, lda, B + j, ldb, C + j, ldc, alpha, acc);
        j += W / 2;
      }
    }
    if (j < N) gemm<1>(M, N - j, K, A, lda, B + j, ldb, C + j, ldc, alpha, acc);
  }
}

// s[j] = exp(s[j] - sub) for j < n; returns their sum.
template <int W> TDQ_AINLINE float exp_row(float* s, int64_t n, float sub) {
  int64_t j = 0;
  float sum = 0;
  if constexpr (W > 1) {
    Vf<W> vs = Vf<W>{};
    const Vf<W> vsub = vsplat<W>(sub);
    for (; j + W <= n; j += W) {
      const Vf<W> p = vexp<W>(vload<W>(s + j) - vsub);
      vstore<W>(s + j, p);
      vs += p;
    }
    sum = hsum<W>(vs);
  }
  for (; j < n; ++j) {
    s[j] = std::exp(s[j] - sub);
    sum += s[j];
  }
  return sum;
}

// One row of the softmax backward for a tile: p = exp(s - lse), then
// dp = p * (dp - delta). Dense selects per-element lse / delta (a row of the
// transposed tile, running over queries) or one value for the whole row.
template <int W, bool Dense>
TDQ_AINLINE void prob_and_ds_row(float* s, float* dp, int64_t n, const float* lse, const float* delta) {
  int64_t j = 0;
  if constexpr (W > 1) {
    const Vf<W> l1 = vsplat<W>(lse[0]), d1 = vsplat<W>(delta[0]);
    for (; j + W <= n; j += W) {
      const Vf<W> p = vexp<W>(vload<W>(s + j) - (Dense ? vload<W>(lse + j) : l1));
      vstore<W>(s + j, p);
      vstore<W>(dp + j, p * (vload<W>(dp + j) - (Dense ? vload<W>(delta + j) : d1)));
    }
  }
  for (; j < n; ++j) {
    const float p = std::exp(s[j] - lse[Dense ? j : 0]);
    s[j] = p;
    dp[j] = p * (dp[j] - delta[Dense ? j : 0]);
  }
}

// ---- the op ------------------------------------------------------------------
struct AttnShape {
  int64_t BH, Lq, Lk, D, Dv;
  float scale;
  int64_t nqb() const { return (Lq + kBQ - 1) / kBQ; }
  int64_t nkb() const { return (Lk + kBK - 1) / kBK; }
};

AttnShape attn_shape(const Tensor& q, const Tensor& v, const Attrs& a) {
  AttnShape s{q.shape[0] * q.shape[1], q.shape[2], v.shape[2], q.shape[3], v.shape[3], 0.f};
  s.scale = static_cast<float>(a.get_float("scale", 1.0 / std::sqrt(static_cast<double>(s.D))));
  return s;
}

// Floats of per-thread tile memory: two kBQ x kBK tiles (scores, dP), the
// kBQ x Dv output accumulator, row statistics. Tens of KiB for the head
// sizes of a UNet, independent of Lq and Lk.
int64_t tile_floats(const AttnShape& s) { return 2 * kBQ * kBK + kBQ * s.Dv + 2 * kBQ; }

// X (BH, L, d) -> out (BH, ceil(L / blk), d, blk): each block of blk rows
// transposed, columns past L zero. The tile products then read the other
// operand's rows contiguously. Done once per op: repacking inside the tile
// loop would repeat it for every (query block, key block) pair.
void pack_blocks_transposed(const float* X, int64_t BH, int64_t L, int64_t d, int64_t blk, float* out,
                            const ExecContext& ctx) {
  const int64_t nb = (L + blk - 1) / blk;
  ctx.parallel_for(BH * nb, std::max<int64_t>(1, 4096 / std::max<int64_t>(d * blk, 1)), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t bh = t / nb, j0 = (t % nb) * blk, n = std::min(blk, L - j0);
      const float* x = X + (bh * L + j0) * d;
      float* o = out + t * d * blk;
      for (int64_t j = 0; j < n; ++j)
        for (int64_t c = 0; c < d; ++c) o[c * blk + j] = x[j * d + c];
      for (int64_t c = 0; c < d; ++c) std::fill(o + c * blk + n, o + (c + 1) * blk, 0.f);
    }
  });
}

// Forward for query block qb of head bh: o (bq x Dv) and lse (bq). kt is K
// packed by pack_blocks_transposed.
template <int W>
TDQ_AINLINE void fwd_block(const AttnShape& s, const float* q, const float* kt, const float* v, float* o, float* lse,
                           int64_t bh, int64_t qb, float* buf) {
  const int64_t i0 = qb * kBQ, bq = std::min(kBQ, s.Lq - i0), nkb = s.nkb();
  const float* Q = q + (bh * s.Lq + i0) * s.D;
  const float* Vh = v + bh * s.Lk * s.Dv;
  float* O = o + (bh * s.Lq + i0) * s.Dv;
  float* st = buf;                  // kBQ x kBK scores, then probabilities
  float* acc = st + kBQ * kBK;      // kBQ x Dv unnormalised output
  float* mrow = acc + kBQ * s.Dv;   // running row maximum
  float* lrow = mrow + kBQ;         // running row sum of exp(score - max)
  std::fill(acc, acc + bq * s.Dv, 0.f);
  std::fill(mrow, mrow + bq, -std::numeric_limits<float>::infinity());
  std::fill(lrow, lrow + bq, 0.f);
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const int64_t j0 = kb * kBK, bk = std::min(kBK, s.Lk - j0);
    gemm<W>(bq, kBK, s.D, Q, s.D, kt + (bh * nkb + kb) * s.D * kBK, kBK, st, kBK, s.scale, false);
    for (int64_t i = 0; i < bq; ++i) {
      float* srow = st + i * kBK;
      const float mnew = std::max(mrow[i], row_max<W>(srow, bk));
      const float alpha = std::exp(mrow[i] - mnew);  // 0 on the first block (m = -inf)
      const float sum = exp_row<W>(srow, bk, mnew);
      lrow[i] = lrow[i] * alpha + sum;
      mrow[i] = mnew;
      if (alpha != 1.f) scale_row<W>(acc + i * s.Dv, s.Dv, alpha);
    }
    gemm<W>(bq, s.Dv, bk, st, kBK, Vh + j0 * s.Dv, s.Dv, acc, s.Dv, 1.f, true);
  }
  for (int64_t i = 0; i < bq; ++i) {
    const float* a = acc + i * s.Dv;
    float* out = O + i * s.Dv;
    const float inv = 1.f / lrow[i];
    for (int64_t e = 0; e < s.Dv; ++e) out[e] = a[e] * inv;
    lse[bh * s.Lq + i0 + i] = mrow[i] + std::log(lrow[i]);
  }
}

// ---- the fast forward (AVX2 / AVX-512) ---------------------------------------
// Every product is computed transposed, queries along the vector lanes:
//   S^T (keys x queries) = K (keys x D) Qs^T,  Qs = scale Q
//   O^T (Dv x queries)  += V^T (Dv x keys) P^T
// so the online softmax runs down the columns of S^T with one max / sum
// vector per W queries (no horizontal reductions), and the operands that are
// not along the lanes (K, V) are only ever broadcast one float at a time:
// they are read in place with any strides, so both layouts, tokens-major
// (B, H, L, D) and channels-major (B, H, D, L, the UNet's (B, C, L)), need no
// transposed copy. A work item is a block of up to 4 W queries of one head;
// its queries are copied once (scaled, zero past Lq) into a (D x 4W) panel.
// Register blocks: R rows (keys, or output channels) x NCV vectors of
// queries, R = 6 for AVX-512 (24 of 32 zmm accumulate), 2 for AVX2.

// Element strides (in floats) of the four tensors: element (bh, i, d) of q,
// with bh = b * H + h, is q[b * q_b + h * q_h + i * q_i + d * q_d], and so on.
struct AttnLayout {
  int64_t H;
  int64_t q_b, q_h, q_i, q_d;
  int64_t k_b, k_h, k_j, k_d;
  int64_t v_b, v_h, v_j, v_e;
  int64_t o_b, o_h, o_i, o_e;
  int64_t at(int64_t bh, int64_t sb, int64_t sh) const { return (bh / H) * sb + (bh % H) * sh; }
};

// (B, H, L, D): H = 1 in the layout, bh runs over both.
AttnLayout tokens_major(const AttnShape& s) {
  return {1, s.Lq * s.D, 0, s.D, 1, s.Lk * s.D, 0, s.D, 1, s.Lk * s.Dv, 0, s.Dv, 1, s.Lq * s.Dv, 0, s.Dv, 1};
}
// (B, H, D, L)
AttnLayout channels_major(const AttnShape& s) {
  return {1, s.Lq * s.D, 0, 1, s.Lq, s.Lk * s.D, 0, 1, s.Lk, s.Lk * s.Dv, 0, 1, s.Lk, s.Lq * s.Dv, 0, 1, s.Lq};
}
// (B, L, H, D): a linear layer's (B, L, H * D) output split into heads.
AttnLayout sequence_major(const AttnShape& s, int64_t H) {
  return {H,
          s.Lq * H * s.D, s.D, H * s.D, 1,
          s.Lk * H * s.D, s.D, H * s.D, 1,
          s.Lk * H * s.Dv, s.Dv, H * s.Dv, 1,
          s.Lq * H * s.Dv, s.Dv, H * s.Dv, 1};
}

constexpr int64_t kFastBK = 64;  // keys per tile of the fast forward

template <int W> constexpr int fast_rows() { return W >= 16 ? 6 : 2; }
template <int W> constexpr int64_t fast_bq() { return 4 * W; }  // queries per work item
// Per-thread floats: the query panel, the score tile, the output
// accumulator, and four vectors of row statistics (max, sum, rescale, new max).
template <int W> int64_t fast_tile_floats(const AttnShape& s) {
  return fast_bq<W>() * (s.D + kFastBK + s.Dv + 4);
}

// T (rows x NCV*W, row stride ldt) = A B, A (rows x K) read as
// a[r * ar + k * ak], B (K x NCV*W) packed with row stride ldb. R rows at a
// time. Scale (with acc) gives T = scale * T + A B, scale per query vector.
template <int W, int NCV, int R, bool Acc>
TDQ_AINLINE void fast_micro(int64_t K, const float* a, int64_t ar, int64_t ak, const float* B, int64_t ldb, float* T,
                            int64_t ldt, const float* scale) {
  Vf<W> c[R][NCV];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NCV; ++j) c[r][j] = Vf<W>{};
  for (int64_t k = 0; k < K; ++k) {
    Vf<W> b[NCV];
    for (int j = 0; j < NCV; ++j) b[j] = vload<W>(B + k * ldb + j * W);
    for (int r = 0; r < R; ++r) {
      const float x = a[r * ar + k * ak];
      for (int j = 0; j < NCV; ++j) c[r][j] += x * b[j];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NCV; ++j) {
      float* p = T + r * ldt + j * W;
      if constexpr (Acc) vstore<W>(p, vload<W>(p) * vload<W>(scale + j * W) + c[r][j]);
      else vstore<W>(p, c[r][j]);
    }
}

template <int W, int NCV, int R, bool Acc>
TDQ_AINLINE void fast_rows_product(int64_t rows, int64_t K, const float* a, int64_t ar, int64_t ak, const float* B,
                                   int64_t ldb, float* T, int64_t ldt, const float* scale) {
  int64_t r = 0;
  for (; r + R <= rows; r += R) fast_micro<W, NCV, R, Acc>(K, a + r * ar, ar, ak, B, ldb, T + r * ldt, ldt, scale);
  // The last rows < R: one smaller block.
  const float* ap = a + r * ar;
  float* tp = T + r * ldt;
  switch (rows - r) {
    case 1: fast_micro<W, NCV, 1, Acc>(K, ap, ar, ak, B, ldb, tp, ldt, scale); break;
    case 2: if constexpr (R > 2) fast_micro<W, NCV, 2, Acc>(K, ap, ar, ak, B, ldb, tp, ldt, scale); break;
    case 3: if constexpr (R > 3) fast_micro<W, NCV, 3, Acc>(K, ap, ar, ak, B, ldb, tp, ldt, scale); break;
    case 4: if constexpr (R > 4) fast_micro<W, NCV, 4, Acc>(K, ap, ar, ak, B, ldb, tp, ldt, scale); break;
    case 5: if constexpr (R > 5) fast_micro<W, NCV, 5, Acc>(K, ap, ar, ak, B, ldb, tp, ldt, scale); break;
    default: break;
  }
}

// One work item: queries i0 .. i0 + n - 1 (n <= NCV W) of head bh.
template <int W, int NCV>
TDQ_AINLINE void fast_fwd_item(const AttnShape& s, const AttnLayout& ly, const float* q, const float* k, const float* v,
                               float* o, float* lse, int64_t bh, int64_t i0, int64_t n, float* buf) {
  constexpr int R = fast_rows<W>();
  constexpr int64_t QW = fast_bq<W>();  // row stride of every tile
  float* qp = buf;                      // D x QW: scale * Q^T, zero past n
  float* st = qp + s.D * QW;            // kFastBK x QW: S^T, then P^T
  float* acc = st + kFastBK * QW;       // Dv x QW: O^T, unnormalised
  float* mrow = acc + s.Dv * QW;        // running column max
  float* lrow = mrow + QW;              // running column sum of exp(S - max)
  float* alpha = lrow + QW;             // exp(old max - new max)
  const float* Q = q + ly.at(bh, ly.q_b, ly.q_h) + i0 * ly.q_i;
  for (int64_t d = 0; d < s.D; ++d) {
    float* row = qp + d * QW;
    for (int64_t c = 0; c < n; ++c) row[c] = s.scale * Q[c * ly.q_i + d * ly.q_d];
    std::fill(row + n, row + NCV * W, 0.f);
  }
  const float* Kh = k + ly.at(bh, ly.k_b, ly.k_h);
  const float* Vh = v + ly.at(bh, ly.v_b, ly.v_h);
  const int64_t nkb = (s.Lk + kFastBK - 1) / kFastBK;
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const int64_t j0 = kb * kFastBK, bk = std::min(kFastBK, s.Lk - j0);
    fast_rows_product<W, NCV, R, false>(bk, s.D, Kh + j0 * ly.k_j, ly.k_j, ly.k_d, qp, QW, st, QW, nullptr);
    // Column maxima, rescale factors, probabilities and their column sums.
    Vf<W> mx[NCV], sm[NCV];
    for (int c = 0; c < NCV; ++c) mx[c] = vload<W>(st + c * W);
    for (int64_t j = 1; j < bk; ++j)
      for (int c = 0; c < NCV; ++c) mx[c] = vmax<W>(mx[c], vload<W>(st + j * QW + c * W));
    for (int c = 0; c < NCV; ++c) {
      if (kb > 0) {
        const Vf<W> mold = vload<W>(mrow + c * W);
        mx[c] = vmax<W>(mx[c], mold);
        vstore<W>(alpha + c * W, vexp<W>(mold - mx[c]));
      }
      vstore<W>(mrow + c * W, mx[c]);
      sm[c] = Vf<W>{};
    }
    for (int64_t j = 0; j < bk; ++j)
      for (int c = 0; c < NCV; ++c) {
        float* p = st + j * QW + c * W;
        const Vf<W> e = vexp<W>(vload<W>(p) - mx[c]);
        vstore<W>(p, e);
        sm[c] += e;
      }
    for (int c = 0; c < NCV; ++c)
      vstore<W>(lrow + c * W, kb > 0 ? vload<W>(lrow + c * W) * vload<W>(alpha + c * W) + sm[c] : sm[c]);
    if (kb == 0) fast_rows_product<W, NCV, R, false>(s.Dv, bk, Vh + j0 * ly.v_j, ly.v_e, ly.v_j, st, QW, acc, QW, nullptr);
    else fast_rows_product<W, NCV, R, true>(s.Dv, bk, Vh + j0 * ly.v_j, ly.v_e, ly.v_j, st, QW, acc, QW, alpha);
  }
  // lse = max + log l, O = acc / l.
  for (int64_t c = 0; c < n; ++c) lse[bh * s.Lq + i0 + c] = mrow[c] + std::log(lrow[c]);
  for (int c = 0; c < NCV; ++c) vstore<W>(lrow + c * W, 1.f / vload<W>(lrow + c * W));
  float* O = o + ly.at(bh, ly.o_b, ly.o_h) + i0 * ly.o_i;
  if (ly.o_i == 1 && n == NCV * W) {
    for (int64_t e = 0; e < s.Dv; ++e)
      for (int c = 0; c < NCV; ++c)
        vstore<W>(O + e * ly.o_e + c * W, vload<W>(acc + e * QW + c * W) * vload<W>(lrow + c * W));
  } else {
    for (int64_t e = 0; e < s.Dv; ++e)
      for (int64_t c = 0; c < n; ++c) O[c * ly.o_i + e * ly.o_e] = acc[e * QW + c] * lrow[c];
  }
}

template <int W>
TDQ_AINLINE void fast_fwd(const AttnShape& s, const AttnLayout& ly, const float* q, const float* k, const float* v,
                          float* o, float* lse, int64_t bh, int64_t qb, float* buf) {
  const int64_t i0 = qb * fast_bq<W>(), n = std::min(fast_bq<W>(), s.Lq - i0);
  switch ((n + W - 1) / W) {
    case 1: fast_fwd_item<W, 1>(s, ly, q, k, v, o, lse, bh, i0, n, buf); break;
    case 2: fast_fwd_item<W, 2>(s, ly, q, k, v, o, lse, bh, i0, n, buf); break;
    case 3: fast_fwd_item<W, 3>(s, ly, q, k, v, o, lse, bh, i0, n, buf); break;
    default: fast_fwd_item<W, 4>(s, ly, q, k, v, o, lse, bh, i0, n, buf); break;
  }
}

struct BwdArgs {
  const float *go, *q, *k, *v, *lse, *delta;
  const float *qt, *got, *kt, *vt;  // packed by pack_blocks_transposed
  float *dq, *dk, *dv;
};

// dK and dV for key block kb of head bh, summed over every query block; the
// work item owns these rows of dk / dv. The tiles are computed transposed
// (keys x queries), so that P^T and dS^T come out in the layout their
// products with dO and Q need:
//   S^T = scale K Q^T, dP^T = V dO^T, P^T = exp(S^T - L), dS^T = P^T (dP^T - delta)
//   dV += P^T dO,  dK += scale dS^T Q
template <int W>
TDQ_AINLINE void bwd_kv_block(const AttnShape& s, const BwdArgs& a, int64_t bh, int64_t kb, float* buf) {
  const int64_t j0 = kb * kBK, bk = std::min(kBK, s.Lk - j0), nqb = s.nqb();
  float* st = buf;             // kBK x kBQ
  float* dp = st + kBK * kBQ;  // kBK x kBQ
  const float* Kb = a.k + (bh * s.Lk + j0) * s.D;
  const float* Vb = a.v + (bh * s.Lk + j0) * s.Dv;
  float* dK = a.dk + (bh * s.Lk + j0) * s.D;
  float* dV = a.dv + (bh * s.Lk + j0) * s.Dv;
  std::fill(dK, dK + bk * s.D, 0.f);
  std::fill(dV, dV + bk * s.Dv, 0.f);
  for (int64_t qb = 0; qb < nqb; ++qb) {
    const int64_t i0 = qb * kBQ, bq = std::min(kBQ, s.Lq - i0), row = bh * s.Lq + i0;
    gemm<W>(bk, kBQ, s.D, Kb, s.D, a.qt + (bh * nqb + qb) * s.D * kBQ, kBQ, st, kBQ, s.scale, false);
    gemm<W>(bk, kBQ, s.Dv, Vb, s.Dv, a.got + (bh * nqb + qb) * s.Dv * kBQ, kBQ, dp, kBQ, 1.f, false);
    for (int64_t j = 0; j < bk; ++j) prob_and_ds_row<W, true>(st + j * kBQ, dp + j * kBQ, bq, a.lse + row, a.delta + row);
    gemm<W>(bk, s.Dv, bq, st, kBQ, a.go + row * s.Dv, s.Dv, dV, s.Dv, 1.f, true);
    gemm<W>(bk, s.D, bq, dp, kBQ, a.q + row * s.D, s.D, dK, s.D, s.scale, true);
  }
}

// dQ for query block qb of head bh, summed over every key block:
//   S = scale Q K^T, dP = dO V^T, dS = exp(S - L) (dP - delta), dQ += scale dS K
template <int W>
TDQ_AINLINE void bwd_q_block(const AttnShape& s, const BwdArgs& a, int64_t bh, int64_t qb, float* buf) {
  const int64_t i0 = qb * kBQ, bq = std::min(kBQ, s.Lq - i0), row = bh * s.Lq + i0, nkb = s.nkb();
  float* st = buf;             // kBQ x kBK
  float* dp = st + kBQ * kBK;  // kBQ x kBK
  const float* Q = a.q + row * s.D;
  const float* GO = a.go + row * s.Dv;
  float* dQ = a.dq + row * s.D;
  std::fill(dQ, dQ + bq * s.D, 0.f);
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const int64_t j0 = kb * kBK, bk = std::min(kBK, s.Lk - j0);
    gemm<W>(bq, kBK, s.D, Q, s.D, a.kt + (bh * nkb + kb) * s.D * kBK, kBK, st, kBK, s.scale, false);
    gemm<W>(bq, kBK, s.Dv, GO, s.Dv, a.vt + (bh * nkb + kb) * s.Dv * kBK, kBK, dp, kBK, 1.f, false);
    for (int64_t i = 0; i < bq; ++i) prob_and_ds_row<W, false>(st + i * kBK, dp + i * kBK, bk, a.lse + row + i, a.delta + row + i);
    gemm<W>(bq, s.D, bk, dp, kBK, a.k + (bh * s.Lk + j0) * s.D, s.D, dQ, s.D, s.scale, true);
  }
}

// One function per CPU level; the templates above are inlined into each, so
// the vector code is compiled for that level's instruction set.
using FwdFn = void (*)(const AttnShape&, const float*, const float*, const float*, float*, float*, int64_t, int64_t,
                       float*);
using BwdFn = void (*)(const AttnShape&, const BwdArgs&, int64_t, int64_t, float*);

void fwd_ref(const AttnShape& s, const float* q, const float* kt, const float* v, float* o, float* l, int64_t bh,
             int64_t qb, float* buf) {
  fwd_block<1>(s, q, kt, v, o, l, bh, qb, buf);
}
void bwd_kv_ref(const AttnShape& s, const BwdArgs& a, int64_t bh, int64_t b, float* buf) { bwd_kv_block<1>(s, a, bh, b, buf); }
void bwd_q_ref(const AttnShape& s, const BwdArgs& a, int64_t bh, int64_t b, float* buf) { bwd_q_block<1>(s, a, bh, b, buf); }

using FastFwdFn = void (*)(const AttnShape&, const AttnLayout&, const float*, const float*, const float*, float*,
                           float*, int64_t, int64_t, float*);

#if TDQ_NN_X86
TDQ_AVX2 void fast_fwd_avx2(const AttnShape& s, const AttnLayout& ly, const float* q, const float* k, const float* v,
                            float* o, float* l, int64_t bh, int64_t qb, float* buf) {
  fast_fwd<8>(s, ly, q, k, v, o, l, bh, qb, buf);
}
TDQ_AVX512 void fast_fwd_avx512(const AttnShape& s, const AttnLayout& ly, const float* q, const float* k,
                                const float* v, float* o, float* l, int64_t bh, int64_t qb, float* buf) {
  fast_fwd<16>(s, ly, q, k, v, o, l, bh, qb, buf);
}
TDQ_AVX2 void bwd_kv_avx2(const AttnShape& s, const BwdArgs& a, int64_t bh, int64_t b, float* buf) { bwd_kv_block<8>(s, a, bh, b, buf); }
TDQ_AVX2 void bwd_q_avx2(const AttnShape& s, const BwdArgs& a, int64_t bh, int64_t b, float* buf) { bwd_q_block<8>(s, a, bh, b, buf); }
TDQ_AVX512 void bwd_kv_avx512(const AttnShape& s, const BwdArgs& a, int64_t bh, int64_t b, float* buf) { bwd_kv_block<16>(s, a, bh, b, buf); }
TDQ_AVX512 void bwd_q_avx512(const AttnShape& s, const BwdArgs& a, int64_t bh, int64_t b, float* buf) { bwd_q_block<16>(s, a, bh, b, buf); }
#else
// Other architectures never report an AVX level (cpu_features.cpp); these
// keep the dispatch tables whole.
constexpr FastFwdFn fast_fwd_avx2 = nullptr, fast_fwd_avx512 = nullptr;
constexpr BwdFn bwd_kv_avx2 = bwd_kv_ref, bwd_kv_avx512 = bwd_kv_ref, bwd_q_avx2 = bwd_q_ref, bwd_q_avx512 = bwd_q_ref;
#endif

// ---- argument checks ---------------------------------------------------------
// The three layouts of q, k, v and O: tokens-major (B,H,L,D), channels-major
// (B,H,D,L) and sequence-major (B,L,H,D).
enum class Lay { tokens, channels, sequence };
struct LayDims {
  int h, l, d;  // the dims of H, L and D
  const char* name;
};
LayDims lay_dims(Lay y) {
  if (y == Lay::channels) return {1, 3, 2, "(B, H, D, L)"};
  if (y == Lay::sequence) return {2, 1, 3, "(B, L, H, D)"};
  return {1, 2, 3, "(B, H, L, D)"};
}

// A shape of the layout from its sizes.
Shape lay_shape(Lay y, int64_t b, int64_t h, int64_t l, int64_t d) {
  const LayDims ld = lay_dims(y);
  Shape s(4);
  s[0] = b, s[ld.h] = h, s[ld.l] = l, s[ld.d] = d;
  return s;
}

void check_qkv(const std::vector<Tensor>& in, const Attrs& a, size_t iq, Lay y) {
  const Tensor &q = in[iq], &k = in[iq + 1], &v = in[iq + 2];
  const LayDims ld = lay_dims(y);
  const char* names[3] = {"q", "k", "v"};
  for (int i = 0; i < 3; ++i) {
    check_dtype(a, in[iq + i], names[i], DType::f32);
    TDQ_CHECK_RANGE(in[iq + i].dim() == 4, a.op, ": argument '", names[i], "' must have 4 dimensions ", ld.name,
                    ", got shape ", shape_str(in[iq + i].shape));
  }
  TDQ_CHECK_RANGE(k.shape[0] == q.shape[0] && k.shape[ld.h] == q.shape[ld.h], a.op,
                  ": argument 'k' must have the batch and head sizes of 'q' (", q.shape[0], ", ", q.shape[ld.h],
                  "), got shape ", shape_str(k.shape));
  TDQ_CHECK_RANGE(k.shape[ld.d] == q.shape[ld.d], a.op, ": argument 'k' must have the head dimension of 'q' (D = ",
                  q.shape[ld.d], "), got shape ", shape_str(k.shape));
  TDQ_CHECK_RANGE(v.shape[0] == q.shape[0] && v.shape[ld.h] == q.shape[ld.h] && v.shape[ld.l] == k.shape[ld.l], a.op,
                  ": argument 'v' must have the batch, head and key sizes (", q.shape[0], ", ", q.shape[ld.h], ", ",
                  k.shape[ld.l], ") of 'q' and 'k' in ", ld.name, ", got ", shape_str(v.shape));
  TDQ_CHECK_RANGE(q.shape[ld.d] >= 1, a.op, ": argument 'q' must have a head dimension >= 1, got shape ", shape_str(q.shape));
  TDQ_CHECK_RANGE(k.shape[ld.l] >= 1, a.op, ": argument 'k' must hold at least one key (Lk >= 1), got shape ", shape_str(k.shape));
  if (a.has("scale")) {
    const double sc = a.get_float("scale");
    TDQ_CHECK_RANGE(std::isfinite(sc), a.op, ": attribute 'scale' must be finite, got ", sc);
  }
}

AttnShape attn_shape_of(Lay y, const Tensor& q, const Tensor& v, const Attrs& a) {
  const LayDims ld = lay_dims(y);
  AttnShape s{q.shape[0] * q.shape[ld.h], q.shape[ld.l], v.shape[ld.l], q.shape[ld.d], v.shape[ld.d], 0.f};
  s.scale = static_cast<float>(a.get_float("scale", 1.0 / std::sqrt(static_cast<double>(s.D))));
  return s;
}

// dst[m][c][r] = src[m][r][c] for n matrices of rows x cols.
void transpose_batch(const float* src, int64_t n, int64_t rows, int64_t cols, float* dst, const ExecContext& ctx) {
  constexpr int64_t T = 32;
  const int64_t rb = (rows + T - 1) / T;
  ctx.parallel_for(n * rb, std::max<int64_t>(1, 8192 / std::max<int64_t>(T * cols, 1)), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t m = t / rb, r0 = (t % rb) * T, r1 = std::min(rows, r0 + T);
      const float* S = src + m * rows * cols;
      float* D = dst + m * rows * cols;
      for (int64_t c0 = 0; c0 < cols; c0 += T) {
        const int64_t c1 = std::min(cols, c0 + T);
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c) D[c * rows + r] = S[r * cols + c];
      }
    }
  });
}

// dst[b][j][i][:] = src[b][i][j][:], i < n1, j < n2, vectors of d floats.
void swap_mid(const float* src, int64_t B, int64_t n1, int64_t n2, int64_t d, float* dst, const ExecContext& ctx) {
  ctx.parallel_for(B * n1, std::max<int64_t>(1, 8192 / std::max<int64_t>(n2 * d, 1)), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t m = t / n1, i = t % n1;
      for (int64_t j = 0; j < n2; ++j)
        std::memcpy(dst + ((m * n2 + j) * n1 + i) * d, src + ((m * n1 + i) * n2 + j) * d, static_cast<size_t>(d) * sizeof(float));
    }
  });
}

// A tensor of layout y (sizes B, H, L, D) to tokens-major (B, H, L, D), and back.
void to_tokens(Lay y, const float* src, int64_t B, int64_t H, int64_t L, int64_t D, float* dst, const ExecContext& ctx) {
  if (y == Lay::channels) transpose_batch(src, B * H, D, L, dst, ctx);
  else if (y == Lay::sequence) swap_mid(src, B, L, H, D, dst, ctx);
  else std::memcpy(dst, src, static_cast<size_t>(B * H * L * D) * sizeof(float));
}
void from_tokens(Lay y, const float* src, int64_t B, int64_t H, int64_t L, int64_t D, float* dst, const ExecContext& ctx) {
  if (y == Lay::channels) transpose_batch(src, B * H, L, D, dst, ctx);
  else if (y == Lay::sequence) swap_mid(src, B, H, L, D, dst, ctx);
  else std::memcpy(dst, src, static_cast<size_t>(B * H * L * D) * sizeof(float));
}

// The reference forward, tokens-major: K^T by key blocks (the size of k,
// never O(Lq Lk)), then the tiles of fwd_ref per (head, query block).
void forward_reference(const AttnShape& s, const float* q, const float* k, const float* v, float* o, float* lse,
                       const ExecContext& ctx) {
  Tensor kt = ctx.scratch({s.BH * s.nkb() * s.D * kBK});
  pack_blocks_transposed(k, s.BH, s.Lk, s.D, kBK, kt.f32(), ctx);
  const int64_t nqb = s.nqb();
  ctx.parallel_for(s.BH * nqb, 1, [&](int64_t b, int64_t e) {
    std::vector<float> buf(static_cast<size_t>(tile_floats(s)));
    for (int64_t t = b; t < e; ++t) fwd_ref(s, q, kt.f32(), v, o, lse, t / nqb, t % nqb, buf.data());
  });
}

// The fast forward in either layout; false at the scalar level (no fast kernel).
bool forward_fast(const AttnShape& s, const AttnLayout& ly, const float* q, const float* k, const float* v, float* o,
                  float* lse, const ExecContext& ctx) {
  FastFwdFn fn = nullptr;
  int64_t bq = 0, tile = 0;
  if (ctx.cpu_level == CpuLevel::avx512) fn = fast_fwd_avx512, bq = fast_bq<16>(), tile = fast_tile_floats<16>(s);
  else if (ctx.cpu_level == CpuLevel::avx2) fn = fast_fwd_avx2, bq = fast_bq<8>(), tile = fast_tile_floats<8>(s);
  if (fn == nullptr) return false;
  const int64_t nqb = (s.Lq + bq - 1) / bq;
  ctx.parallel_for(s.BH * nqb, 1, [&](int64_t b, int64_t e) {
    std::vector<float> buf(static_cast<size_t>(tile));
    for (int64_t t = b; t < e; ++t) fn(s, ly, q, k, v, o, lse, t / nqb, t % nqb, buf.data());
  });
  return true;
}

// attention_forward(q, k, v; scale?): tokens-major q (B,H,Lq,D),
// k (B,H,Lk,D), v (B,H,Lk,Dv) -> O (B,H,Lq,Dv), L (B,H,Lq).
// attention_cm_forward: channels-major, q (B,H,D,Lq), k (B,H,D,Lk),
// v (B,H,Dv,Lk) -> O (B,H,Dv,Lq): the layout of a UNet's (B, C, L) features
// split into heads, no permutes around the op.
// attention_blhd_forward: sequence-major, q (B,Lq,H,D), k (B,Lk,H,D),
// v (B,Lk,H,Dv) -> O (B,Lq,H,Dv): a linear layer's (B, L, H * D) output
// split into heads. L is (B,H,Lq) in every layout.
template <Lay Y>
std::vector<TensorMeta> infer_fwd(const std::vector<Tensor>& in, const Attrs& a) {
  check_qkv(in, a, 0, Y);
  const LayDims ld = lay_dims(Y);
  const Tensor &q = in[0], &v = in[2];
  const int64_t B = q.shape[0], H = q.shape[ld.h], Lq = q.shape[ld.l];
  return {{lay_shape(Y, B, H, Lq, v.shape[ld.d]), DType::f32}, {{B, H, Lq}, DType::f32}};
}

template <Lay Y>
void fwd_cpu(OpCall& c, const ExecContext& ctx) {
  const AttnShape s = attn_shape_of(Y, c.inputs[0], c.inputs[2], c.attrs);
  const int64_t B = c.inputs[0].shape[0], H = B == 0 ? 0 : s.BH / B;
  const float *q = c.inputs[0].f32(), *k = c.inputs[1].f32(), *v = c.inputs[2].f32();
  float *o = c.outputs[0].f32(), *lse = c.outputs[1].f32();
  if (s.BH * s.Lq == 0) return;
  const AttnLayout ly = Y == Lay::channels ? channels_major(s) : Y == Lay::sequence ? sequence_major(s, H) : tokens_major(s);
  if (forward_fast(s, ly, q, k, v, o, lse, ctx)) return;
  if (Y == Lay::tokens) {
    forward_reference(s, q, k, v, o, lse, ctx);
    return;
  }
  // Scalar level: the reference on tokens-major copies.
  Tensor qt = ctx.scratch({s.BH * s.Lq * s.D}), kt = ctx.scratch({s.BH * s.Lk * s.D});
  Tensor vt = ctx.scratch({s.BH * s.Lk * s.Dv}), ot = ctx.scratch({s.BH * s.Lq * s.Dv});
  to_tokens(Y, q, B, H, s.Lq, s.D, qt.f32(), ctx);
  to_tokens(Y, k, B, H, s.Lk, s.D, kt.f32(), ctx);
  to_tokens(Y, v, B, H, s.Lk, s.Dv, vt.f32(), ctx);
  forward_reference(s, qt.f32(), kt.f32(), vt.f32(), ot.f32(), lse, ctx);
  from_tokens(Y, ot.f32(), B, H, s.Lq, s.Dv, o, ctx);
}

// attention_*backward(gO, q, k, v, O, L; scale?) -> dq, dk, dv, in the layout of the forward.
template <Lay Y>
std::vector<TensorMeta> infer_bwd(const std::vector<Tensor>& in, const Attrs& a) {
  check_qkv(in, a, 1, Y);
  const LayDims ld = lay_dims(Y);
  const Tensor &q = in[1], &k = in[2], &v = in[3];
  const int64_t B = q.shape[0], H = q.shape[ld.h], Lq = q.shape[ld.l];
  const Shape oshape = lay_shape(Y, B, H, Lq, v.shape[ld.d]);
  check_dtype(a, in[0], "gO", DType::f32);
  check_shape(a, in[0], "gO", oshape);
  check_dtype(a, in[4], "O", DType::f32);
  check_shape(a, in[4], "O", oshape);
  check_dtype(a, in[5], "L", DType::f32);
  check_shape(a, in[5], "L", {B, H, Lq});
  return {{q.shape, DType::f32}, {k.shape, DType::f32}, {v.shape, DType::f32}};
}

// The backward, tokens-major.
void backward_tokens_major(const AttnShape& s, const float* go, const float* q, const float* k, const float* v,
                           const float* O, const float* lse, float* dq, float* dk, float* dv, const ExecContext& ctx) {
  // delta_i = sum_e dO_ie O_ie = sum_j P_ij dP_ij: the softmax backward's
  // row term, one float per query row.
  std::vector<float> delta(static_cast<size_t>(s.BH * s.Lq));
  ctx.parallel_for(s.BH * s.Lq, std::max<int64_t>(1, 8192 / std::max<int64_t>(s.Dv, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      double d = 0;
      for (int64_t x = 0; x < s.Dv; ++x) d += static_cast<double>(go[r * s.Dv + x]) * O[r * s.Dv + x];
      delta[r] = static_cast<float>(d);
    }
  });
  // Q, dO by query blocks and K, V by key blocks, transposed (see
  // pack_blocks_transposed): together the size of the inputs.
  Tensor qt = ctx.scratch({s.BH * s.nqb() * s.D * kBQ}), got = ctx.scratch({s.BH * s.nqb() * s.Dv * kBQ});
  Tensor kt = ctx.scratch({s.BH * s.nkb() * s.D * kBK}), vt = ctx.scratch({s.BH * s.nkb() * s.Dv * kBK});
  pack_blocks_transposed(q, s.BH, s.Lq, s.D, kBQ, qt.f32(), ctx);
  pack_blocks_transposed(go, s.BH, s.Lq, s.Dv, kBQ, got.f32(), ctx);
  pack_blocks_transposed(k, s.BH, s.Lk, s.D, kBK, kt.f32(), ctx);
  pack_blocks_transposed(v, s.BH, s.Lk, s.Dv, kBK, vt.f32(), ctx);
  const BwdArgs a{go, q, k, v, lse, delta.data(), qt.f32(), got.f32(), kt.f32(), vt.f32(), dq, dk, dv};
  const bool v512 = ctx.cpu_level == CpuLevel::avx512, v2 = ctx.cpu_level == CpuLevel::avx2;
  const BwdFn kv = v512 ? bwd_kv_avx512 : v2 ? bwd_kv_avx2 : bwd_kv_ref;
  const BwdFn qf = v512 ? bwd_q_avx512 : v2 ? bwd_q_avx2 : bwd_q_ref;
  // Two passes, each with exclusive output rows: (head, key block) items
  // accumulate dK and dV over all queries; (head, query block) items
  // accumulate dQ over all keys. The score tiles are computed in both, which
  // costs more arithmetic than sharing accumulators between threads but is
  // deterministic and needs no per-thread copies of dK / dV.
  const int64_t nkb = s.nkb(), nqb = s.nqb();
  ctx.parallel_for(s.BH * nkb, 1, [&](int64_t b, int64_t e) {
    std::vector<float> buf(static_cast<size_t>(tile_floats(s)));
    for (int64_t t = b; t < e; ++t) kv(s, a, t / nkb, t % nkb, buf.data());
  });
  ctx.parallel_for(s.BH * nqb, 1, [&](int64_t b, int64_t e) {
    std::vector<float> buf(static_cast<size_t>(tile_floats(s)));
    for (int64_t t = b; t < e; ++t) qf(s, a, t / nqb, t % nqb, buf.data());
  });
}

// The tokens-major backward; other layouts on transposed copies, their
// gradients transposed back.
template <Lay Y>
void bwd_cpu(OpCall& c, const ExecContext& ctx) {
  const AttnShape s = attn_shape_of(Y, c.inputs[1], c.inputs[3], c.attrs);
  if (Y == Lay::tokens) {
    backward_tokens_major(s, c.inputs[0].f32(), c.inputs[1].f32(), c.inputs[2].f32(), c.inputs[3].f32(),
                          c.inputs[4].f32(), c.inputs[5].f32(), c.outputs[0].f32(), c.outputs[1].f32(),
                          c.outputs[2].f32(), ctx);
    return;
  }
  const int64_t B = c.inputs[1].shape[0], H = B == 0 ? 0 : s.BH / B;
  const int64_t nq = s.BH * s.Lq * s.D, nk = s.BH * s.Lk * s.D, nv = s.BH * s.Lk * s.Dv, no = s.BH * s.Lq * s.Dv;
  Tensor buf = ctx.scratch({2 * no + 2 * nq + 2 * nk + 2 * nv});
  float* go = buf.f32();
  float* O = go + no;
  float* q = O + no;
  float* k = q + nq;
  float* v = k + nk;
  float* dq = v + nv;
  float* dk = dq + nq;
  float* dv = dk + nk;
  to_tokens(Y, c.inputs[0].f32(), B, H, s.Lq, s.Dv, go, ctx);
  to_tokens(Y, c.inputs[1].f32(), B, H, s.Lq, s.D, q, ctx);
  to_tokens(Y, c.inputs[2].f32(), B, H, s.Lk, s.D, k, ctx);
  to_tokens(Y, c.inputs[3].f32(), B, H, s.Lk, s.Dv, v, ctx);
  to_tokens(Y, c.inputs[4].f32(), B, H, s.Lq, s.Dv, O, ctx);
  backward_tokens_major(s, go, q, k, v, O, c.inputs[5].f32(), dq, dk, dv, ctx);
  from_tokens(Y, dq, B, H, s.Lq, s.D, c.outputs[0].f32(), ctx);
  from_tokens(Y, dk, B, H, s.Lk, s.D, c.outputs[1].f32(), ctx);
  from_tokens(Y, dv, B, H, s.Lk, s.Dv, c.outputs[2].f32(), ctx);
}

}  // namespace

TDQ_REGISTER_OP({"attention_forward", 3, 3, infer_fwd<Lay::tokens>, fwd_cpu<Lay::tokens>, {}});
TDQ_REGISTER_OP({"attention_backward", 6, 6, infer_bwd<Lay::tokens>, bwd_cpu<Lay::tokens>, {}});
TDQ_REGISTER_OP({"attention_cm_forward", 3, 3, infer_fwd<Lay::channels>, fwd_cpu<Lay::channels>, {}});
TDQ_REGISTER_OP({"attention_cm_backward", 6, 6, infer_bwd<Lay::channels>, bwd_cpu<Lay::channels>, {}});
TDQ_REGISTER_OP({"attention_blhd_forward", 3, 3, infer_fwd<Lay::sequence>, fwd_cpu<Lay::sequence>, {}});
TDQ_REGISTER_OP({"attention_blhd_backward", 6, 6, infer_bwd<Lay::sequence>, bwd_cpu<Lay::sequence>, {}});

}  // namespace tdq
