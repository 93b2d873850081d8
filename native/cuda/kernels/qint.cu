// The integer path of quantized models on the GPU, bit for bit as the CPU ops
// (native/cpu/qgemm.cpp, qconv2d.cpp, step_table.cpp; semantics in qgemm.h):
//
//   step_table_lookup(table (T, Q), t (B))              -> (B, Q) steps of the batch
//   quantize_act(x f32, act_step; bits, signed, zero_point)  -> int8 / uint8 levels
//   qlinear(x, act_step, packed, wstep, row_sums, bias?)     -> (..., O) f32
//   qconv2d(x, act_step, packed, wstep, row_sums, bias?, add_channel?, residual?)
//                                                            -> (N, O, Ho, Wo) f32
//
// x: uint8 levels (zero point 'zero_point'), int8 levels (read as x + 128), or
// float32 quantized here first (QActSpec: bits, signed, offset, input_shifted,
// step_floor, column). The activation step of sample n is read on the device
// from act_step: [] / [1] / [N], or with 'column' >= 0 element 'column' of row
// n (or row 0) of a (1 or N, Q) step table, e.g. step_table_lookup's output,
// so the per-timestep steps never leave the GPU.
//
// The GEMM: acc[o, j] = sum_k byte[j, k] * w[o, k] exactly in int32 (the
// 8-bit tensor cores by WMMA, or option int8 = dp4a: 4 u8 x s8 products per
// instruction), implicit for the convolution (the
// columns are gathered from x while loading each tile: no im2col buffer; a
// tap over the padding reads the zero point). The epilogue rounds as the CPU's
// (qgemm.h), every step an explicit _rn intrinsic so that nvcc never fuses
// a product into an add:
//   v = fl(acc - zp * rowsum[o]),  s = fl(step[n] * wstep[o]),  y = fl(fl(v * s) + b[o])
//   b[o] = bias[o] (or 0), + fl(fl(z * wstep[o]) * rowsum[o]) for a real zero point z;
//   conv border pixels (some tap over the padding) with z != 0:
//     y = fl(y + fl(fl(z * wstep[o]) * (sum of row o over the valid taps - rowsum[o])))
//   then y = fl(y + add_channel[n, o]), y = fl(residual + y).
// Not checked here (the CPU op throws): steps that are not positive and finite
// (they give inf / NaN outputs), and timesteps outside the table (clamped).
#include <mma.h>

#include "vendor.cuh"

namespace tdqcu {
namespace {

enum : int { kF32 = 0, kF16 = 1, kI8 = 2, kU8 = 3, kI32 = 4 };

// Host and device: the per-element arithmetic below also compiles for the
// host, where test/cuda/qint_emulation.cu runs it on machines without a GPU
// (TDQ_QINT_HOST_EMULATION: every launch becomes a plain loop).
#define TDQ_HD __host__ __device__ __forceinline__
// One IEEE rounding each, never fused into an FMA.
TDQ_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  volatile float r = a * b;
  return r;
#endif
}
TDQ_HD float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  volatile float r = a + b;
  return r;
#endif
}
TDQ_HD float sub_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  volatile float r = a - b;
  return r;
#endif
}
TDQ_HD float div_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  volatile float r = a / b;
  return r;
#endif
}
TDQ_HD double dlerp_rn(double a, double d, double frac) {  // a + (d - a) * frac, three roundings
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, __dmul_rn(__dsub_rn(d, a), frac));
#else
  volatile double t = d - a;
  volatile double u = t * frac;
  return a + u;
#endif
}
// acc + 4 u8 (a) x 4 s8 (b) products.
TDQ_HD int32_t dp4a_us(uint32_t a, uint32_t b, int32_t c) {
#ifdef __CUDA_ARCH__
  int32_t d;
  asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
#else
  for (int i = 0; i < 4; ++i) c += int32_t((a >> (8 * i)) & 0xffu) * int32_t(int8_t((b >> (8 * i)) & 0xffu));
  return c;
#endif
}

// f(i) for i < n: a grid-stride kernel, or a host loop under emulation.
template <typename F> __global__ void each_index(int64_t n, F f) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) f(i);
}
template <typename F> void for_each_index(const Launch& l, int64_t n, F f) {
  if (n <= 0) return;
#ifdef TDQ_QINT_HOST_EMULATION
  for (int64_t i = 0; i < n; ++i) f(i);
#else
  each_index<<<grid_for(n), kThreads, 0, l.stream>>>(n, f);
  check_launch(l.op);
#endif
}

// ---- step_table_lookup --------------------------------------------------------------
// Integer t: row t exactly; fractional: linear in double between the two rows, one rounding.
struct StepTableLookup {
  const float *table, *t;
  float* out;
  int64_t T, Q;
  TDQ_HD void operator()(int64_t i) const {
    const int64_t b = i / Q, q = i % Q;
    double tb = t[b];
    tb = tb != tb ? 0.0 : fmin(fmax(tb, 0.0), double(T - 1));
    const int64_t k = static_cast<int64_t>(floor(tb));
    const double frac = tb - double(k);
    const float lo = table[k * Q + q];
    out[i] = frac == 0.0 ? lo : static_cast<float>(dlerp_rn(lo, table[(k + 1) * Q + q], frac));
  }
};

void step_table_lookup_op(const Launch& l) {
  const int64_t T = l.in[0].shape[0], Q = l.in[0].shape[1], B = l.in[1].shape[0];
  for_each_index(l, B * Q, StepTableLookup{l.fin(0), l.fin(1), l.fout(0), T, Q});
}

// ---- activation steps and quantization ------------------------------------------------

// Where the step of sample n lives (qgemm.cpp act_steps): p[(rows == 1 ? 0 : n) * ld + col],
// floored: raw < floor ? floor : raw (NaN stays NaN).
struct ActStep {
  const float* p;
  int64_t rows, ld, col;
  float floor;
  TDQ_HD float at(int64_t n) const {
    const float raw = p[(rows == 1 ? 0 : n) * ld + col];
    return raw < floor ? floor : raw;
  }
};

ActStep act_step_of(const Launch& l, int i, int64_t column, float floor) {
  const tdq_cu_tensor& s = l.in[i];
  ActStep a{static_cast<const float*>(s.data), 1, 1, 0, floor};
  if (column < 0) {
    a.rows = numel(s);
  } else {
    a.rows = s.shape[0];
    a.ld = s.shape[1];
    a.col = column;
  }
  return a;
}

// clamp(round_half_even(fl(x - off) / s), lo, hi) + add as a byte; NaN is level 0.
TDQ_HD uint32_t quant_byte(float x, float s, float lo, float hi, int32_t add, float off) {
  float v = div_rn(sub_rn(x, off), s);
  if (v != v) v = 0.f;
  const float r = fminf(fmaxf(rintf(v), lo), hi);
  return static_cast<uint32_t>(static_cast<int32_t>(r) + add) & 0xffu;
}

// bytes of x (per elements per sample) with the sample's step.
struct QuantizeBytes {
  const float* x;
  uint8_t* out;
  int64_t per;
  ActStep st;
  float lo, hi, off;
  int32_t add;
  TDQ_HD void operator()(int64_t i) const {
    out[i] = static_cast<uint8_t>(quant_byte(x[i], st.at(i / per), lo, hi, add, off));
  }
};

// quantize_act: levels clamp(round(x / s), qmin - zp, qmax - zp) + zp (uint8, or int8 when signed).
void quantize_act_op(const Launch& l) {
  const int64_t n = numel(l.in[0]);
  if (n == 0) return;
  const int64_t bits = l.integer("bits", 8), zp = l.integer("zero_point", 0);
  const bool sgn = l.flag("signed", false);
  const int64_t qmin = sgn ? -(int64_t{1} << (bits - 1)) : 0;
  const int64_t qmax = sgn ? (int64_t{1} << (bits - 1)) - 1 : (int64_t{1} << bits) - 1;
  const ActStep st = act_step_of(l, 1, -1, 0.f);
  const int64_t samples = st.rows == 1 ? 1 : l.in[0].shape[0];
  for_each_index(l, n, QuantizeBytes{l.fin(0), static_cast<uint8_t*>(l.out[0].data), n / samples, st, float(qmin - zp),
                                     float(qmax - zp), 0.f, static_cast<int32_t>(zp)});
}

// ---- the integer GEMM ---------------------------------------------------------------------

struct QArgs {
  // GEMM: M = O rows of packed weights (kq words each), cols columns.
  int64_t O, cols, kq;
  // linear: column j = row j of x (K bytes), sample j / per_sample.
  int64_t K, per_sample;
  // conv: x (N, C, H, W) bytes, kernel kh x kw, output (N, O, Ho, Wo); quad q = tap * Cq + cq.
  int64_t C, H, W, kh, kw, stride, pad, Ho, Wo, Cq;
  uint32_t flip;  // 0x80808080 for int8 x (read as x + 128), else 0
  int32_t zp;     // the zero point of the bytes
  float z;        // the real zero point (offset); 0: none
  ActStep step;
};

constexpr int QBM = 64, QBN = 64, QBK = 8;  // rows, columns, quads (32 k) per step

template <bool kConv>
TDQ_HD uint32_t gather_word(const uint8_t* __restrict__ x, const QArgs& g, int64_t j, int64_t q) {
  if (!kConv) {
    const uint8_t* r = x + j * g.K;
    const int64_t k = 4 * q;
    uint32_t w = 0;
#pragma unroll
    for (int b = 0; b < 4; ++b)
      if (k + b < g.K) w |= uint32_t(r[k + b]) << (8 * b);
    return w ^ g.flip;
  }
  const int64_t P = g.Ho * g.Wo, n = j / P, p = j % P, oh = p / g.Wo, ow = p % g.Wo;
  const int64_t tap = q / g.Cq, cq = q % g.Cq, ki = tap / g.kw, kj = tap % g.kw;
  const int64_t ih = oh * g.stride - g.pad + ki, iw = ow * g.stride - g.pad + kj;
  if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return uint32_t(g.zp) * 0x01010101u;  // padding: real 0
  const int64_t HW = g.H * g.W;
  const uint8_t* src = x + (n * g.C + 4 * cq) * HW + ih * g.W + iw;
  uint32_t w = 0;
#pragma unroll
  for (int b = 0; b < 4; ++b)
    if (4 * cq + b < g.C) w |= uint32_t(src[b * HW]) << (8 * b);  // channels past C meet zero weights
  return w ^ g.flip;
}

// The operands and outputs of one qlinear / qconv2d.
struct QPtrs {
  const uint8_t* x;      // activation bytes
  const int32_t* w;      // packed weights, kq words per row
  const float* wstep;    // [O]
  const int32_t* rsum;   // [O]
  const float* bias;     // [O] or null
  const int32_t* tsum;   // conv with z != 0: (O, kh * kw) weight sums per tap
  const float *addc, *resid;  // conv: (N, O), (N, O, Ho, Wo) or null
  float* y;
};

// y[o, column j] from the exact integer sum acc (qgemm.h's epilogue, then the
// conv's border fix-up and adds, each rounded as the CPU op rounds it).
template <bool kConv> TDQ_HD void qepilogue(const QArgs& g, const QPtrs& p, int64_t o, int64_t j, int32_t acc) {
  const int32_t zc = static_cast<int32_t>(int64_t(g.zp) * p.rsum[o]);
  const float ws = p.wstep[o];
  const float zw = mul_rn(g.z, ws);
  float b = p.bias ? p.bias[o] : 0.f;
  if (g.z != 0.f) {  // bias' = bias + z * wstep * rowsum
    const float corr = mul_rn(zw, static_cast<float>(p.rsum[o]));
    b = p.bias ? add_rn(b, corr) : corr;
  }
  const int64_t P = kConv ? g.Ho * g.Wo : 1;
  const int64_t n = kConv ? j / P : j / g.per_sample;
  const float s = mul_rn(g.step.at(n), ws);
  float v = add_rn(mul_rn(static_cast<float>(acc - zc), s), b);
  if (!kConv) {
    p.y[j * g.O + o] = v;
    return;
  }
  const int64_t px = j % P, yi = (n * g.O + o) * P + px;
  if (g.z != 0.f) {
    const int64_t oh = px / g.Wo, ow = px % g.Wo, ih0 = oh * g.stride - g.pad, iw0 = ow * g.stride - g.pad;
    if (ih0 < 0 || ih0 + g.kh > g.H || iw0 < 0 || iw0 + g.kw > g.W) {  // a border pixel: take the padding's z out
      int32_t vs = 0;
      for (int64_t a = 0; a < g.kh; ++a)
        for (int64_t c = 0; c < g.kw; ++c)
          if (ih0 + a >= 0 && ih0 + a < g.H && iw0 + c >= 0 && iw0 + c < g.W) vs += p.tsum[o * g.kh * g.kw + a * g.kw + c];
      v = add_rn(v, mul_rn(zw, static_cast<float>(vs - p.rsum[o])));
    }
  }
  if (p.addc) v = add_rn(v, p.addc[n * g.O + o]);
  if (p.resid) v = add_rn(p.resid[yi], v);
  p.y[yi] = v;
}

// 256 threads, a 64 x 64 tile of (o, column), each thread 4 x 4 of it; the
// exact sums by dp4a, then qepilogue.
template <bool kConv> __global__ void __launch_bounds__(256) qgemm_dp4a(QArgs g, QPtrs p) {
  __shared__ int32_t Ws[QBK][QBM + 4];
  __shared__ uint32_t Xs[QBK][QBN + 4];
  const int64_t o0 = int64_t(blockIdx.y) * QBM, j0 = int64_t(blockIdx.x) * QBN;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  int32_t acc[4][4] = {};
  for (int64_t q0 = 0; q0 < g.kq; q0 += QBK) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int idx = tid + r * 256;
      {
        const int mi = idx / QBK, qi = idx % QBK;
        const int64_t o = o0 + mi, q = q0 + qi;
        Ws[qi][mi] = (o < g.O && q < g.kq) ? p.w[o * g.kq + q] : 0;
      }
      {
        const int qi = idx / QBN, ni = idx % QBN;
        const int64_t q = q0 + qi, j = j0 + ni;
        Xs[qi][ni] = (q < g.kq && j < g.cols) ? gather_word<kConv>(p.x, g, j, q) : 0u;
      }
    }
    __syncthreads();
#pragma unroll
    for (int qq = 0; qq < QBK; ++qq) {
      int32_t a[4];
      uint32_t b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = Ws[qq][ty * 4 + i], b[i] = Xs[qq][tx * 4 + i];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) acc[i][jj] = dp4a_us(b[jj], uint32_t(a[i]), acc[i][jj]);
    }
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i) {
    const int64_t o = o0 + ty * 4 + i;
    if (o >= g.O) continue;
    for (int jj = 0; jj < 4; ++jj) {
      const int64_t j = j0 + tx * 4 + jj;
      if (j < g.cols) qepilogue<kConv>(g, p, o, j, acc[i][jj]);
    }
  }
}

// The same GEMM on the tensor cores (WMMA, 8-bit, sm_72+): WMMA multiplies
// s8 x s8 only, so the activation bytes go in as b - 128 (b ^ 0x80) and the
// sum gets 128 * rowsum[o] back: sum b * w = sum (b - 128) * w + 128 * sum w,
// exact in int32 (mod 2^32 like the CPU's sums), so qepilogue sees the same acc.
// 128 threads (4 warps) per 64 x 64 tile of (o, column), each warp 32 x 32
// (2 x 2 fragments of 16 x 16), k in steps of 32 bytes (two fragments deep).
#ifdef TDQ_QINT_HOST_EMULATION
inline int32_t dot4_s8(uint32_t a, uint32_t b, int32_t c) {  // the host emulation's s8 x s8 step
  for (int i = 0; i < 4; ++i) c += int32_t(int8_t((a >> (8 * i)) & 0xffu)) * int32_t(int8_t((b >> (8 * i)) & 0xffu));
  return c;
}
#endif
constexpr int QMT = 128;
template <bool kConv> __global__ void __launch_bounds__(QMT) qgemm_wmma(QArgs g, QPtrs p) {
  using namespace nvcuda;
  __shared__ __align__(32) int32_t Ws[2][QBM][4];  // [k half][o][4 words = 16 bytes of k]
  __shared__ __align__(32) uint32_t Xs[2][QBN][4];  // [k half][column][16 bytes of k]
  __shared__ __align__(32) int32_t Cs[QBM][QBN + 4];
  const int64_t o0 = int64_t(blockIdx.y) * QBM, j0 = int64_t(blockIdx.x) * QBN;
  const int tid = threadIdx.x, warp = tid / 32, wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  wmma::fragment<wmma::accumulator, 16, 16, 16, int> acc[2][2];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0);
  for (int64_t q0 = 0; q0 < g.kq; q0 += 8) {  // 8 quads = 32 bytes of k
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int idx = tid + r * QMT, row = idx / 8, qi = idx % 8;  // 64 rows x 8 quads
      const int64_t q = q0 + qi;
      const int64_t o = o0 + row, j = j0 + row;
      Ws[qi / 4][row][qi % 4] = (o < g.O && q < g.kq) ? p.w[o * g.kq + q] : 0;
      Xs[qi / 4][row][qi % 4] = (j < g.cols && q < g.kq) ? gather_word<kConv>(p.x, g, j, q) ^ 0x80808080u : 0u;
    }
    __syncthreads();
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, signed char, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, signed char, wmma::col_major> fb[2];
      for (int i = 0; i < 2; ++i)
        wmma::load_matrix_sync(fa[i], reinterpret_cast<const signed char*>(&Ws[h][wm + 16 * i][0]), 16);
      for (int j = 0; j < 2; ++j)
        wmma::load_matrix_sync(fb[j], reinterpret_cast<const signed char*>(&Xs[h][wn + 16 * j][0]), 16);
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&Cs[wm + 16 * i][wn + 16 * j], acc[i][j], QBN + 4, wmma::mem_row_major);
  __syncthreads();
  for (int idx = tid; idx < QBM * QBN; idx += QMT) {
    const int mi = idx / QBN, ni = idx % QBN;
    const int64_t o = o0 + mi, j = j0 + ni;
    if (o < g.O && j < g.cols) qepilogue<kConv>(g, p, o, j, Cs[mi][ni] + 128 * p.rsum[o]);
  }
}

template <bool kConv> void run_qgemm(const Launch& l, const QArgs& g, const QPtrs& p) {
  const bool mma = int8_kernel() == Int8Kernel::wmma;
#ifdef TDQ_QINT_HOST_EMULATION
  (void)l;
  for (int64_t o = 0; o < g.O; ++o)
    for (int64_t j = 0; j < g.cols; ++j) {
      int32_t acc = 0;
      for (int64_t q = 0; q < g.kq; ++q) {
        const uint32_t a = gather_word<kConv>(p.x, g, j, q), w = uint32_t(p.w[o * g.kq + q]);
        acc = mma ? dot4_s8(a ^ 0x80808080u, w, acc) : dp4a_us(a, w, acc);
      }
      qepilogue<kConv>(g, p, o, j, mma ? acc + 128 * p.rsum[o] : acc);
    }
#else
  const dim3 grid(static_cast<unsigned>((g.cols + QBN - 1) / QBN), static_cast<unsigned>((g.O + QBM - 1) / QBM));
  if (grid.y > 65535 || (g.cols + QBN - 1) / QBN >= (int64_t{1} << 31))
    throw CuError(std::string(l.op) + ": too large for one launch");
  if (mma) qgemm_wmma<kConv><<<grid, QMT, 0, l.stream>>>(g, p);
  else qgemm_dp4a<kConv><<<grid, 256, 0, l.stream>>>(g, p);
  check_launch(l.op);
#endif
}

// Per (o, tap) sums of a conv's packed weights (Cp channels per tap), for the border fix-up.
struct TapSums {
  const int8_t* w;
  int32_t* tsum;
  int64_t taps, Cp;
  TDQ_HD void operator()(int64_t i) const {
    const int8_t* r = w + (i / taps) * taps * Cp + (i % taps) * Cp;
    int32_t s = 0;
    for (int64_t c = 0; c < Cp; ++c) s += r[c];
    tsum[i] = s;
  }
};

// The activation arguments shared by qlinear and qconv2d (qgemm.cpp: activation_zero_point, qact_spec).
struct QAct {
  bool quantize;
  float lo, hi, off;
  int32_t add;
};
QAct qact_of(const Launch& l, QArgs& g) {
  QAct q{};
  const int dt = l.in[0].dtype;
  g.z = static_cast<float>(l.num("offset", 0));
  const int64_t column = l.integer("column", -1);
  g.step = act_step_of(l, 1, column, static_cast<float>(l.num("step_floor", 0)));
  g.flip = dt == kI8 ? 0x80808080u : 0u;
  if (dt == kF32) {
    q.quantize = true;
    const int64_t bits = l.integer("bits", 8), half = int64_t{1} << (bits - 1);
    const bool sgn = l.flag("signed", false);
    q.lo = sgn ? float(-half) : 0.f;
    q.hi = sgn ? float(half - 1) : float(2 * half - 1);
    q.add = sgn ? 128 : 0;
    q.off = l.flag("input_shifted", false) ? 0.f : g.z;
    g.zp = q.add;
  } else {
    g.zp = dt == kI8 ? 128 : static_cast<int32_t>(l.integer("zero_point", 0));
  }
  return q;
}

// x as bytes: the input itself, or float32 x quantized into `buf` (per elements per sample).
const uint8_t* act_bytes(const Launch& l, const QArgs& g, const QAct& q, int64_t per, Scratch& buf) {
  if (!q.quantize) return static_cast<const uint8_t*>(l.in[0].data);
  const int64_t n = numel(l.in[0]);
  for_each_index(l, n, QuantizeBytes{l.fin(0), buf.as<uint8_t>(), per, g.step, q.lo, q.hi, q.off, q.add});
  return buf.as<uint8_t>();
}

void qlinear_op(const Launch& l) {
  const tdq_cu_tensor& x = l.in[0];
  QArgs g{};
  const QAct q = qact_of(l, g);
  g.K = x.shape[x.ndim - 1];
  g.O = l.in[2].shape[0];
  g.kq = l.in[2].shape[1] / 4;
  g.cols = g.K ? numel(x) / g.K : 0;
  if (g.cols == 0 || g.O == 0) return;
  g.per_sample = g.cols / x.shape[0];
  Scratch buf(q.quantize ? static_cast<size_t>(numel(x)) : 0);
  const uint8_t* xb = act_bytes(l, g, q, g.per_sample * g.K, buf);
  run_qgemm<false>(l, g, QPtrs{xb, static_cast<const int32_t*>(l.in[2].data), l.fin(3),
                               static_cast<const int32_t*>(l.in[4].data), l.fin(5), nullptr, nullptr, nullptr, l.fout(0)});
}

void qconv2d_op(const Launch& l) {
  const tdq_cu_tensor& x = l.in[0];
  QArgs g{};
  const QAct q = qact_of(l, g);
  const std::vector<double> ws = l.nums("weight_shape");
  if (ws.size() != 4) throw CuError("qconv2d: attribute 'weight_shape' must be [O, C, kH, kW]");
  g.O = l.in[2].shape[0];
  g.C = x.shape[1], g.H = x.shape[2], g.W = x.shape[3];
  g.kh = static_cast<int64_t>(ws[2]), g.kw = static_cast<int64_t>(ws[3]);
  g.stride = l.integer("stride", 1), g.pad = l.integer("padding", 0);
  g.Ho = (g.H + 2 * g.pad - g.kh) / g.stride + 1;
  g.Wo = (g.W + 2 * g.pad - g.kw) / g.stride + 1;
  g.Cq = (g.C + 3) / 4;
  g.kq = g.kh * g.kw * g.Cq;
  g.cols = x.shape[0] * g.Ho * g.Wo;
  if (g.cols == 0 || g.O == 0) return;
  Scratch buf(q.quantize ? static_cast<size_t>(numel(x)) : 0);
  const uint8_t* xb = act_bytes(l, g, q, g.C * g.H * g.W, buf);
  Scratch tsum(g.z != 0.f ? static_cast<size_t>(g.O * g.kh * g.kw) * sizeof(int32_t) : 0);
  if (g.z != 0.f)
    for_each_index(l, g.O * g.kh * g.kw,
                   TapSums{static_cast<const int8_t*>(l.in[2].data), tsum.as<int32_t>(), g.kh * g.kw, 4 * g.Cq});
  run_qgemm<true>(l, g, QPtrs{xb, static_cast<const int32_t*>(l.in[2].data), l.fin(3),
                              static_cast<const int32_t*>(l.in[4].data), l.fin(5), tsum.as<int32_t>(), l.fin(6),
                              l.fin(7), l.fout(0)});
}

}  // namespace

TDQ_CU_OP("step_table_lookup", step_table_lookup_op);
TDQ_CU_OP("quantize_act", quantize_act_op);
TDQ_CU_OP("qlinear", qlinear_op);
TDQ_CU_OP("qconv2d", qconv2d_op);

}  // namespace tdqcu
