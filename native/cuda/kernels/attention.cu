// Scaled dot-product attention (fp32), as native/cpu/attention.cpp:
//   O = softmax(scale * Q K^T) V, L = logsumexp of each row of scale * Q K^T,
// in the three layouts of the CPU ops: attention_* (B,H,L,D), attention_cm_*
// (B,H,D,L) and attention_blhd_* (B,L,H,D); L is (B,H,Lq) in all. Each layout
// is a set of strides, so one kernel serves all three.
// Forward, flash-style: one warp per query row, 8 rows per block; keys go in
// tiles of 32 (one per lane), the softmax is folded in online with a running
// maximum and sum, and the row's output accumulator (Dv floats) lives in
// shared memory: no score matrix. Backward (gO, q, k, v, O, L) -> dq, dk, dv
// with P = exp(scale q.k - L) recomputed: delta_i = dO_i . O_i; dq_i = scale
// sum_j P_ij (dO_i . v_j - delta_i) k_j (a warp per query row); dk_j = scale
// sum_i dS_ij q_i and dv_j = sum_i P_ij dO_i (a warp per key row). No atomics:
// every output row has one owner, so results are deterministic.
// With precision fp16 / bf16 (vendor.cuh) the forward runs on the tensor cores
// instead (mma.cuh): S = scale Q K^T and O = P V with operands rounded to
// that type, fp32 accumulation, the scores of a chunk of (b, h) held in fp32
// scratch and turned into P = exp(S - L) by one warp per row. The backward
// stays fp32.
#include <cmath>

#include "mma.cuh"
#include "vendor.cuh"

namespace tdqcu {
namespace {

enum Lay { kTokens = 0, kChannels = 1, kSequence = 2 };

// Element (b, h, l, d) of a tensor with H heads, L positions, D channels.
struct View {
  int64_t sb, sh, sl, sd;
  __host__ __device__ int64_t at(int64_t b, int64_t h, int64_t l, int64_t d) const {
    return b * sb + h * sh + l * sl + d * sd;
  }
};

View view(int lay, int64_t H, int64_t L, int64_t D) {
  if (lay == kChannels) return {H * D * L, D * L, 1, L};
  if (lay == kSequence) return {L * H * D, D, H * D, 1};
  return {H * L * D, L * D, D, 1};
}

struct Dims {
  int64_t B, H, Lq, Lk, D, Dv;
  float scale;
  View q, k, v, o;  // o: the layout of O and dO (Lq x Dv)
};

Dims dims_of(const Launch& l, int lay, const tdq_cu_tensor& q, const tdq_cu_tensor& k, const tdq_cu_tensor& v) {
  // positions of H, L and D in the shape of the layout
  const int ih = lay == kSequence ? 2 : 1, il = lay == kChannels ? 3 : lay == kSequence ? 1 : 2,
            id = lay == kChannels ? 2 : 3;
  Dims s{};
  s.B = q.shape[0];
  s.H = q.shape[ih];
  s.Lq = q.shape[il];
  s.Lk = k.shape[il];
  s.D = q.shape[id];
  s.Dv = v.shape[id];
  s.scale = static_cast<float>(l.num("scale", 1.0 / std::sqrt(static_cast<double>(s.D))));
  s.q = view(lay, s.H, s.Lq, s.D);
  s.k = view(lay, s.H, s.Lk, s.D);
  s.v = view(lay, s.H, s.Lk, s.Dv);
  s.o = view(lay, s.H, s.Lq, s.Dv);
  return s;
}

constexpr int kWarps = 8;  // rows per block

__device__ inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Dynamic shared memory per warp: a row of D floats, Dv floats of
// accumulator and 32 tile values.
__global__ void __launch_bounds__(kWarps * 32) attn_fwd(const float* __restrict__ q, const float* __restrict__ k,
                                                        const float* __restrict__ v, float* __restrict__ o,
                                                        float* __restrict__ lse, Dims s) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* qs = smem + warp * (s.D + s.Dv + 32);
  float* acc = qs + s.D;
  float* ps = acc + s.Dv;
  const int64_t row = int64_t(blockIdx.x) * kWarps + warp;
  if (row >= s.B * s.H * s.Lq) return;  // whole warps only; no block-wide barriers below
  const int64_t bh = row / s.Lq, i = row % s.Lq, b = bh / s.H, h = bh % s.H;
  for (int64_t d = lane; d < s.D; d += 32) qs[d] = q[s.q.at(b, h, i, d)];
  for (int64_t d = lane; d < s.Dv; d += 32) acc[d] = 0.f;
  __syncwarp();
  float m = -INFINITY, l = 0.f;
  for (int64_t j0 = 0; j0 < s.Lk; j0 += 32) {
    const int64_t j = j0 + lane;
    float sc = -INFINITY;
    if (j < s.Lk) {
      float dot = 0.f;
      for (int64_t d = 0; d < s.D; ++d) dot = fmaf(qs[d], k[s.k.at(b, h, j, d)], dot);
      sc = s.scale * dot;
    }
    const float mn = fmaxf(m, warp_max(sc));  // finite: the tile holds at least one key
    const float corr = expf(m - mn);          // 0 on the first tile (m = -inf)
    const float p = j < s.Lk ? expf(sc - mn) : 0.f;
    l = l * corr + warp_sum(p);
    m = mn;
    ps[lane] = p;
    __syncwarp();
    const int nj = static_cast<int>(s.Lk - j0 < 32 ? s.Lk - j0 : 32);
    for (int64_t d = lane; d < s.Dv; d += 32) {
      float a = acc[d] * corr;
      for (int jj = 0; jj < nj; ++jj) a = fmaf(ps[jj], v[s.v.at(b, h, j0 + jj, d)], a);
      acc[d] = a;
    }
    __syncwarp();
  }
  const float inv = 1.f / l;
  for (int64_t d = lane; d < s.Dv; d += 32) o[s.o.at(b, h, i, d)] = acc[d] * inv;
  if (lane == 0) lse[row] = m + logf(l);
}

// delta[row] = dO_row . O_row
__global__ void attn_delta(const float* __restrict__ go, const float* __restrict__ O, float* __restrict__ delta,
                           Dims s) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kWarps + warp;
  if (row >= s.B * s.H * s.Lq) return;
  const int64_t bh = row / s.Lq, i = row % s.Lq, b = bh / s.H, h = bh % s.H;
  float t = 0.f;
  for (int64_t d = lane; d < s.Dv; d += 32) t = fmaf(go[s.o.at(b, h, i, d)], O[s.o.at(b, h, i, d)], t);
  t = warp_sum(t);
  if (lane == 0) delta[row] = t;
}

// dq: a warp per query row; lanes take keys, then the row's dq (D floats, in
// shared memory) gathers the tile's dS k_j.
__global__ void __launch_bounds__(kWarps * 32) attn_bwd_q(const float* __restrict__ go, const float* __restrict__ q,
                                                          const float* __restrict__ k, const float* __restrict__ v,
                                                          const float* __restrict__ lse,
                                                          const float* __restrict__ delta, float* __restrict__ dq,
                                                          Dims s) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* qs = smem + warp * (2 * s.D + s.Dv + 32);
  float* gs = qs + s.D;   // dO row (Dv)
  float* acc = gs + s.Dv;  // dq row (D)
  float* ds = acc + s.D;   // 32 dS values
  const int64_t row = int64_t(blockIdx.x) * kWarps + warp;
  if (row >= s.B * s.H * s.Lq) return;
  const int64_t bh = row / s.Lq, i = row % s.Lq, b = bh / s.H, h = bh % s.H;
  for (int64_t d = lane; d < s.D; d += 32) qs[d] = q[s.q.at(b, h, i, d)], acc[d] = 0.f;
  for (int64_t d = lane; d < s.Dv; d += 32) gs[d] = go[s.o.at(b, h, i, d)];
  __syncwarp();
  const float L = lse[row], dl = delta[row];
  for (int64_t j0 = 0; j0 < s.Lk; j0 += 32) {
    const int64_t j = j0 + lane;
    float dsv = 0.f;
    if (j < s.Lk) {
      float dot = 0.f, dp = 0.f;
      for (int64_t d = 0; d < s.D; ++d) dot = fmaf(qs[d], k[s.k.at(b, h, j, d)], dot);
      for (int64_t d = 0; d < s.Dv; ++d) dp = fmaf(gs[d], v[s.v.at(b, h, j, d)], dp);
      const float p = expf(s.scale * dot - L);
      dsv = p * (dp - dl);
    }
    ds[lane] = dsv;
    __syncwarp();
    const int nj = static_cast<int>(s.Lk - j0 < 32 ? s.Lk - j0 : 32);
    for (int64_t d = lane; d < s.D; d += 32) {
      float a = acc[d];
      for (int jj = 0; jj < nj; ++jj) a = fmaf(ds[jj], k[s.k.at(b, h, j0 + jj, d)], a);
      acc[d] = a;
    }
    __syncwarp();
  }
  for (int64_t d = lane; d < s.D; d += 32) dq[s.q.at(b, h, i, d)] = s.scale * acc[d];
}

// dk, dv: a warp per key row; lanes take queries.
__global__ void __launch_bounds__(kWarps * 32) attn_bwd_kv(const float* __restrict__ go, const float* __restrict__ q,
                                                           const float* __restrict__ k, const float* __restrict__ v,
                                                           const float* __restrict__ lse,
                                                           const float* __restrict__ delta, float* __restrict__ dk,
                                                           float* __restrict__ dv, Dims s) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* ks = smem + warp * (2 * s.D + 2 * s.Dv + 64);
  float* vs = ks + s.D;        // v row (Dv)
  float* dka = vs + s.Dv;      // dk row (D)
  float* dva = dka + s.D;      // dv row (Dv)
  float* ps = dva + s.Dv;      // 32 P values
  float* ds = ps + 32;         // 32 dS values
  const int64_t row = int64_t(blockIdx.x) * kWarps + warp;
  if (row >= s.B * s.H * s.Lk) return;
  const int64_t bh = row / s.Lk, j = row % s.Lk, b = bh / s.H, h = bh % s.H;
  for (int64_t d = lane; d < s.D; d += 32) ks[d] = k[s.k.at(b, h, j, d)], dka[d] = 0.f;
  for (int64_t d = lane; d < s.Dv; d += 32) vs[d] = v[s.v.at(b, h, j, d)], dva[d] = 0.f;
  __syncwarp();
  for (int64_t i0 = 0; i0 < s.Lq; i0 += 32) {
    const int64_t i = i0 + lane;
    float p = 0.f, dsv = 0.f;
    if (i < s.Lq) {
      float dot = 0.f, dp = 0.f;
      for (int64_t d = 0; d < s.D; ++d) dot = fmaf(q[s.q.at(b, h, i, d)], ks[d], dot);
      for (int64_t d = 0; d < s.Dv; ++d) dp = fmaf(go[s.o.at(b, h, i, d)], vs[d], dp);
      const int64_t r = bh * s.Lq + i;
      p = expf(s.scale * dot - lse[r]);
      dsv = p * (dp - delta[r]);
    }
    ps[lane] = p;
    ds[lane] = dsv;
    __syncwarp();
    const int ni = static_cast<int>(s.Lq - i0 < 32 ? s.Lq - i0 : 32);
    for (int64_t d = lane; d < s.D; d += 32) {
      float a = dka[d];
      for (int ii = 0; ii < ni; ++ii) a = fmaf(ds[ii], q[s.q.at(b, h, i0 + ii, d)], a);
      dka[d] = a;
    }
    for (int64_t d = lane; d < s.Dv; d += 32) {
      float a = dva[d];
      for (int ii = 0; ii < ni; ++ii) a = fmaf(ps[ii], go[s.o.at(b, h, i0 + ii, d)], a);
      dva[d] = a;
    }
    __syncwarp();
  }
  for (int64_t d = lane; d < s.D; d += 32) dk[s.k.at(b, h, j, d)] = s.scale * dka[d];
  for (int64_t d = lane; d < s.Dv; d += 32) dv[s.v.at(b, h, j, d)] = dva[d];
}

// Dynamic shared memory for kWarps rows of `per_row` floats, opted in above 48 KiB.
template <typename K>
size_t shared_for(const Launch& l, K kernel, int64_t per_row) {
  const size_t bytes = static_cast<size_t>(per_row) * kWarps * sizeof(float);
  if (bytes > 48 * 1024) {
    int dev = 0, max_optin = 0;
    TDQ_CU_CHECK(cudaGetDevice(&dev));
    TDQ_CU_CHECK(cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    if (bytes > static_cast<size_t>(max_optin))
      throw CuError(std::string(l.op) + ": head dimensions too large for the CUDA kernel (" + std::to_string(bytes) +
                    " bytes of shared memory per block, the device allows " + std::to_string(max_optin) + ")");
    TDQ_CU_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
  return bytes;
}

unsigned blocks_for(int64_t rows) {
  const int64_t b = (rows + kWarps - 1) / kWarps;
  if (b > 0x7fffffff) throw CuError("attention: too many rows for one launch");
  return static_cast<unsigned>(b);
}

// ---- the reduced-precision forward -------------------------------------------------------
// z indexes (b, h) pairs from z0: b = (z0 + z) / H, h = (z0 + z) % H.
struct LoadQ {
  const float* q;
  View v;
  int64_t H, z0;
  __device__ float operator()(int64_t z, int64_t i, int64_t d) const {
    return q[v.at((z0 + z) / H, (z0 + z) % H, i, d)];
  }
};
struct LoadKT {  // (d, j) of K^T, and (j, e) of V
  const float* k;
  View v;
  int64_t H, z0;
  bool transposed;
  __device__ float operator()(int64_t z, int64_t r, int64_t c) const {
    return transposed ? k[v.at((z0 + z) / H, (z0 + z) % H, c, r)] : k[v.at((z0 + z) / H, (z0 + z) % H, r, c)];
  }
};
struct StoreS {  // scores, (z, i, j) of the chunk
  float* S;
  int64_t Lq, Lk;
  float scale;
  __device__ void operator()(int64_t z, int64_t i, int64_t j, float acc) const { S[(z * Lq + i) * Lk + j] = scale * acc; }
};
struct LoadP {
  const float* P;
  int64_t Lq, Lk;
  __device__ float operator()(int64_t z, int64_t i, int64_t j) const { return P[(z * Lq + i) * Lk + j]; }
};
struct StoreO {
  float* o;
  View v;
  int64_t H, z0;
  __device__ void operator()(int64_t z, int64_t i, int64_t e, float acc) const {
    o[v.at((z0 + z) / H, (z0 + z) % H, i, e)] = acc;
  }
};

// One warp per score row (rows of Lk): L = max + log(sum exp(s - max)), then P = exp(s - L) in place.
__global__ void rows_softmax_lse(float* __restrict__ S, float* __restrict__ lse, int64_t rows, int64_t Lk) {
  const int64_t r = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  float* row = S + r * Lk;
  float m = -INFINITY;
  for (int64_t j = lane; j < Lk; j += 32) m = fmaxf(m, row[j]);
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  float sum = 0.f;
  for (int64_t j = lane; j < Lk; j += 32) sum += expf(row[j] - m);
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  const float L = m + logf(sum);
  for (int64_t j = lane; j < Lk; j += 32) row[j] = expf(row[j] - L);
  if (lane == 0) lse[r] = L;
}

void forward_reduced(const Launch& l, const Dims& s, bool bf16) {
  const int64_t BH = s.B * s.H, per = s.Lq * s.Lk;
  // (b, h) pairs per chunk: at most 256 MiB of scores, and the grid's z limit.
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>({BH, (int64_t{64} << 20) / std::max<int64_t>(per, 1), 65535}));
  Scratch S(static_cast<size_t>(chunk * per) * sizeof(float));
  for (int64_t z0 = 0; z0 < BH; z0 += chunk) {
    const int64_t nz = std::min(chunk, BH - z0);
    launch_mma_gemm(l.op, l.stream, bf16, s.Lq, s.Lk, s.D, LoadQ{l.fin(0), s.q, s.H, z0},
                    LoadKT{l.fin(1), s.k, s.H, z0, true}, StoreS{S.as<float>(), s.Lq, s.Lk, s.scale}, nz);
    const int64_t rows = nz * s.Lq;
    rows_softmax_lse<<<blocks_for(rows), kWarps * 32, 0, l.stream>>>(S.as<float>(), l.fout(1) + z0 * s.Lq, rows, s.Lk);
    check_launch(l.op);
    launch_mma_gemm(l.op, l.stream, bf16, s.Lq, s.Dv, s.Lk, LoadP{S.as<float>(), s.Lq, s.Lk},
                    LoadKT{l.fin(2), s.v, s.H, z0, false}, StoreO{l.fout(0), s.o, s.H, z0}, nz);
  }
}

template <int LAY>
void forward_op(const Launch& l) {
  const Dims s = dims_of(l, LAY, l.in[0], l.in[1], l.in[2]);
  const int64_t rows = s.B * s.H * s.Lq;
  if (rows == 0) return;
  const Precision p = precision();
  if (p != Precision::fp32) return forward_reduced(l, s, p == Precision::bf16);
  // (Lk >= 1 is checked by the op's infer.)
  const size_t sh = shared_for(l, attn_fwd, s.D + s.Dv + 32);
  attn_fwd<<<blocks_for(rows), kWarps * 32, sh, l.stream>>>(l.fin(0), l.fin(1), l.fin(2), l.fout(0), l.fout(1), s);
  check_launch(l.op);
}

// (gO, q, k, v, O, L) -> dq, dk, dv
template <int LAY>
void backward_op(const Launch& l) {
  const Dims s = dims_of(l, LAY, l.in[1], l.in[2], l.in[3]);
  const int64_t qrows = s.B * s.H * s.Lq, krows = s.B * s.H * s.Lk;
  if (qrows > 0) {
    Scratch delta(static_cast<size_t>(qrows) * sizeof(float));
    attn_delta<<<blocks_for(qrows), kWarps * 32, 0, l.stream>>>(l.fin(0), l.fin(4), delta.as<float>(), s);
    check_launch(l.op);
    const size_t shq = shared_for(l, attn_bwd_q, 2 * s.D + s.Dv + 32);
    attn_bwd_q<<<blocks_for(qrows), kWarps * 32, shq, l.stream>>>(l.fin(0), l.fin(1), l.fin(2), l.fin(3), l.fin(5),
                                                                  delta.as<float>(), l.fout(0), s);
    check_launch(l.op);
    if (krows > 0) {
      const size_t shk = shared_for(l, attn_bwd_kv, 2 * s.D + 2 * s.Dv + 64);
      attn_bwd_kv<<<blocks_for(krows), kWarps * 32, shk, l.stream>>>(l.fin(0), l.fin(1), l.fin(2), l.fin(3),
                                                                     l.fin(5), delta.as<float>(), l.fout(1),
                                                                     l.fout(2), s);
      check_launch(l.op);
    }
  } else if (krows > 0) {
    // No queries: dk and dv are zero.
    TDQ_CU_CHECK(cudaMemsetAsync(l.fout(1), 0, numel(l.out[1]) * sizeof(float), l.stream));
    TDQ_CU_CHECK(cudaMemsetAsync(l.fout(2), 0, numel(l.out[2]) * sizeof(float), l.stream));
  }
}

}  // namespace

TDQ_CU_OP("attention_forward", forward_op<kTokens>);
TDQ_CU_OP("attention_cm_forward", forward_op<kChannels>);
TDQ_CU_OP("attention_blhd_forward", forward_op<kSequence>);
TDQ_CU_OP("attention_backward", backward_op<kTokens>);
TDQ_CU_OP("attention_cm_backward", backward_op<kChannels>);
TDQ_CU_OP("attention_blhd_backward", backward_op<kSequence>);

}  // namespace tdqcu
