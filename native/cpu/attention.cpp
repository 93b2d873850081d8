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
    constexpr int R = W >= 16 ? 4 : 2;
    int64_t j = 0;
    for (; j + 4 * W <= N; j += 4 * W) gemm_cols<W, R, 4>(M, K, A, lda, B + j, ldb, C + j, ldc, alpha, acc);
    for (; j + W <= N; j += W) gemm_cols<W, R, 1>(M, K, A, lda, B + j, ldb, C + j, ldc, alpha, acc);
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

#if TDQ_NN_X86
TDQ_AVX2 void fwd_avx2(const AttnShape& s, const float* q, const float* kt, const float* v, float* o, float* l,
                       int64_t bh, int64_t qb, float* buf) {
  fwd_block<8>(s, q, kt, v, o, l, bh, qb, buf);
}
TDQ_AVX2 void bwd_kv_avx2(const AttnShape& s, const BwdArgs& a, int64_t bh, int64_t b, float* buf) { bwd_kv_block<8>(s, a, bh, b, buf); }
TDQ_AVX2 void bwd_q_avx2(const AttnShape& s, const BwdArgs& a, int64_t bh, int64_t b, float* buf) { bwd_q_block<8>(s, a, bh, b, buf); }
TDQ_AVX512 void fwd_avx512(const AttnShape& s, const float* q, const float* kt, const float* v, float* o, float* l,
                           int64_t bh, int64_t qb, float* buf) {
  fwd_block<16>(s, q, kt, v, o, l, bh, qb, buf);
}
TDQ_AVX512 void bwd_kv_avx512(const AttnShape& s, const BwdArgs& a, int64_t bh, int64_t b, float* buf) { bwd_kv_block<16>(s, a, bh, b, buf); }
TDQ_AVX512 void bwd_q_avx512(const AttnShape& s, const BwdArgs& a, int64_t bh, int64_t b, float* buf) { bwd_q_block<16>(s, a, bh, b, buf); }
#else
// Other architectures never report an AVX level (cpu_features.cpp); these
// keep the dispatch tables whole.
constexpr FwdFn fwd_avx2 = fwd_ref, fwd_avx512 = fwd_ref;
constexpr BwdFn bwd_kv_avx2 = bwd_kv_ref, bwd_kv_avx512 = bwd_kv_ref, bwd_q_avx2 = bwd_q_ref, bwd_q_avx512 = bwd_q_ref;
#endif

// ---- argument checks ---------------------------------------------------------
void check_qkv(const std::vector<Tensor>& in, const Attrs& a, size_t iq) {
  const Tensor &q = in[iq], &k = in[iq + 1], &v = in[iq + 2];
  const char* names[3] = {"q", "k", "v"};
  for (int i = 0; i < 3; ++i) {
    check_dtype(a, in[iq + i], names[i], DType::f32);
    TDQ_CHECK_RANGE(in[iq + i].dim() == 4, a.op, ": argument '", names[i], "' must have 4 dimensions (B, H, L, D), got shape ",
                    shape_str(in[iq + i].shape));
  }
  TDQ_CHECK_RANGE(k.shape[0] == q.shape[0] && k.shape[1] == q.shape[1], a.op, ": argument 'k' must have the batch and head sizes of 'q' (",
                  q.shape[0], ", ", q.shape[1], "), got shape ", shape_str(k.shape));
  TDQ_CHECK_RANGE(k.shape[3] == q.shape[3], a.op, ": argument 'k' must have the head dimension of 'q' (D = ", q.shape[3],
                  "), got shape ", shape_str(k.shape));
  TDQ_CHECK_RANGE(v.shape[0] == q.shape[0] && v.shape[1] == q.shape[1] && v.shape[2] == k.shape[2], a.op,
                  ": argument 'v' must have shape (", q.shape[0], ", ", q.shape[1], ", ", k.shape[2],
                  ", Dv) to match 'q' and 'k', got ", shape_str(v.shape));
  TDQ_CHECK_RANGE(q.shape[3] >= 1, a.op, ": argument 'q' must have a head dimension >= 1, got shape ", shape_str(q.shape));
  TDQ_CHECK_RANGE(k.shape[2] >= 1, a.op, ": argument 'k' must hold at least one key (Lk >= 1), got shape ", shape_str(k.shape));
  if (a.has("scale")) {
    const double sc = a.get_float("scale");
    TDQ_CHECK_RANGE(std::isfinite(sc), a.op, ": attribute 'scale' must be finite, got ", sc);
  }
}

// attention_forward(q, k, v; scale?) -> O (B,H,Lq,Dv), L (B,H,Lq)
std::vector<TensorMeta> infer_attention_forward(const std::vector<Tensor>& in, const Attrs& a) {
  check_qkv(in, a, 0);
  const Tensor &q = in[0], &v = in[2];
  return {{{q.shape[0], q.shape[1], q.shape[2], v.shape[3]}, DType::f32}, {{q.shape[0], q.shape[1], q.shape[2]}, DType::f32}};
}

void attention_forward_cpu(OpCall& c, const ExecContext& ctx) {
  const AttnShape s = attn_shape(c.inputs[0], c.inputs[2], c.attrs);
  const float *q = c.inputs[0].f32(), *k = c.inputs[1].f32(), *v = c.inputs[2].f32();
  float *o = c.outputs[0].f32(), *lse = c.outputs[1].f32();
  if (s.BH * s.Lq == 0) return;
  const FwdFn fn = ctx.cpu_level == CpuLevel::avx512 ? fwd_avx512 : ctx.cpu_level == CpuLevel::avx2 ? fwd_avx2 : fwd_ref;
  // K^T by key blocks: the size of k, O(Lk D), never O(Lq Lk).
  Tensor kt = ctx.scratch({s.BH * s.nkb() * s.D * kBK});
  pack_blocks_transposed(k, s.BH, s.Lk, s.D, kBK, kt.f32(), ctx);
  const int64_t nqb = s.nqb();
  ctx.parallel_for(s.BH * nqb, 1, [&](int64_t b, int64_t e) {
    std::vector<float> buf(static_cast<size_t>(tile_floats(s)));
    for (int64_t t = b; t < e; ++t) fn(s, q, kt.f32(), v, o, lse, t / nqb, t % nqb, buf.data());
  });
}

// attention_backward(gO, q, k, v, O, L; scale?) -> dq, dk, dv
std::vector<TensorMeta> infer_attention_backward(const std::vector<Tensor>& in, const Attrs& a) {
  check_qkv(in, a, 1);
  const Tensor &q = in[1], &k = in[2], &v = in[3];
  const Shape oshape{q.shape[0], q.shape[1], q.shape[2], v.shape[3]};
  check_dtype(a, in[0], "gO", DType::f32);
  check_shape(a, in[0], "gO", oshape);
  check_dtype(a, in[4], "O", DType::f32);
  check_shape(a, in[4], "O", oshape);
  check_dtype(a, in[5], "L", DType::f32);
  check_shape(a, in[5], "L", {q.shape[0], q.shape[1], q.shape[2]});
  return {{q.shape, DType::f32}, {k.shape, DType::f32}, {v.shape, DType::f32}};
}

void attention_backward_cpu(OpCall& c, const ExecContext& ctx) {
  const AttnShape s = attn_shape(c.inputs[1], c.inputs[3], c.attrs);
  const float* go = c.inputs[0].f32();
  const float* O = c.inputs[4].f32();
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
  const float *q = c.inputs[1].f32(), *k = c.inputs[2].f32(), *v = c.inputs[3].f32();
  Tensor qt = ctx.scratch({s.BH * s.nqb() * s.D * kBQ}), got = ctx.scratch({s.BH * s.nqb() * s.Dv * kBQ});
  Tensor kt = ctx.scratch({s.BH * s.nkb() * s.D * kBK}), vt = ctx.scratch({s.BH * s.nkb() * s.Dv * kBK});
  pack_blocks_transposed(q, s.BH, s.Lq, s.D, kBQ, qt.f32(), ctx);
  pack_blocks_transposed(go, s.BH, s.Lq, s.Dv, kBQ, got.f32(), ctx);
  pack_blocks_transposed(k, s.BH, s.Lk, s.D, kBK, kt.f32(), ctx);
  pack_blocks_transposed(v, s.BH, s.Lk, s.Dv, kBK, vt.f32(), ctx);
  const BwdArgs a{go, q, k, v, c.inputs[5].f32(), delta.data(), qt.f32(), got.f32(), kt.f32(), vt.f32(),
                  c.outputs[0].f32(), c.outputs[1].f32(), c.outputs[2].f32()};
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

}  // namespace

TDQ_REGISTER_OP({"attention_forward", 3, 3, infer_attention_forward, attention_forward_cpu, {}});
TDQ_REGISTER_OP({"attention_backward", 6, 6, infer_attention_backward, attention_backward_cpu, {}});

}  // namespace tdq
