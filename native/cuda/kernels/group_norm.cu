// group_norm_forward / group_norm_backward (with the optional fused SiLU), as
// native/cpu/group_norm.cpp: x (N, C, *) in G groups of C/G channels, biased
// variance, statistics (mean, rstd) of shape (N, G) in float, sums in double.
// The forward also takes x and / or y in float16 (dtype f16: half the memory
// traffic; the arithmetic stays fp32 / fp64, y rounded once to fp16).
#include <cuda_fp16.h>

#include "common.cuh"

namespace tdqcu {
namespace {

__device__ inline float silu_f(float z) { return z / (1.0f + expf(-z)); }
__device__ inline float silu_df(float z) {
  const float s = 1.0f / (1.0f + expf(-z));
  return s * (1.0f + z * (1.0f - s));
}

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

// One block per (n, g) group: its m = cpg * HW elements are contiguous. TX / TY: float or __half.
template <typename TX, typename TY>
__global__ void gn_forward(const TX* x, const float* w, const float* b, TY* y, float* mean_out, float* rstd_out,
                           int64_t G, int64_t cpg, int64_t HW, double eps, bool silu) {
  const int64_t ng = blockIdx.x, g = ng % G, m = cpg * HW;
  const TX* xg = x + ng * m;
  double s = 0;
  for (int64_t i = threadIdx.x; i < m; i += blockDim.x) s += to_f(xg[i]);
  const double mean = block_sum(s) / m;
  double v = 0;
  for (int64_t i = threadIdx.x; i < m; i += blockDim.x) {
    const double d = to_f(xg[i]) - mean;
    v += d * d;
  }
  const double var = block_sum(v) / m;
  const double rstd = 1.0 / sqrt(var + eps);
  if (threadIdx.x == 0) mean_out[ng] = static_cast<float>(mean), rstd_out[ng] = static_cast<float>(rstd);
  const float mhi = static_cast<float>(mean), mlo = static_cast<float>(mean - mhi);
  for (int64_t i = threadIdx.x; i < m; i += blockDim.x) {
    const int64_t ch = g * cpg + i / HW;
    const float scale = static_cast<float>(rstd * (w ? w[ch] : 1.0f)), shift = b ? b[ch] : 0.f;
    const float z = ((to_f(xg[i]) - mhi) - mlo) * scale + shift;
    y[ng * m + i] = from_f<TY>(silu ? silu_f(z) : z);
  }
}

__global__ void gn_fill_stats(float* mean, float* rstd, int64_t n, float r) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    mean[i] = 0.f, rstd[i] = r;
}

void gn_forward_op(const Launch& l) {
  const tdq_cu_tensor& x = l.in[0];
  const int64_t N = x.shape[0], C = x.shape[1], G = l.integer("num_groups", 1);
  int64_t HW = 1;
  for (int d = 2; d < x.ndim; ++d) HW *= x.shape[d];
  const double eps = l.num("eps", 1e-5);
  const int64_t cpg = C / G;
  if (N * G == 0) return;
  if (cpg * HW == 0) {
    gn_fill_stats<<<grid_for(N * G), kThreads, 0, l.stream>>>(l.fout(1), l.fout(2), N * G,
                                                              static_cast<float>(1.0 / std::sqrt(eps)));
  } else {
    const unsigned blocks = static_cast<unsigned>(N * G);
    const bool hx = x.dtype == 1, hy = l.out[0].dtype == 1;  // float16
    const bool silu = l.flag("silu", false);
    const void *px = x.data;
    void* py = l.out[0].data;
#define TDQ_GN_FWD(TX, TY)                                                                                         \
  gn_forward<TX, TY><<<blocks, kThreads, 0, l.stream>>>(static_cast<const TX*>(px), l.fin(1), l.fin(2),            \
                                                        static_cast<TY*>(py), l.fout(1), l.fout(2), G, cpg, HW, eps, silu)
    if (hx && hy) TDQ_GN_FWD(__half, __half);
    else if (hx) TDQ_GN_FWD(__half, float);
    else if (hy) TDQ_GN_FWD(float, __half);
    else TDQ_GN_FWD(float, float);
#undef TDQ_GN_FWD
  }
  check_launch(l.op);
}

// ---- backward -----------------------------------------------------------------------
// 1) delta[ng] = sum (x - mf) / m: the saved mean's rounding error, so that
//    x - mean = (x - mf) - delta is exact (as the CPU op).
__global__ void gn_bwd_delta(const float* x, const float* mean, double* delta, int64_t m) {
  const int64_t ng = blockIdx.x;
  const float mf = mean[ng];
  double s = 0;
  for (int64_t i = threadIdx.x; i < m; i += blockDim.x) s += double(x[ng * m + i]) - mf;
  s = block_sum(s);
  if (threadIdx.x == 0) delta[ng] = m ? s / m : 0.0;
}

// g = gy, or gy * silu'(z) with z the forward's GroupNorm output recomputed.
__device__ inline float gn_grad(float gy, float x, float mf, float dlt, float scale, float shift, bool silu) {
  if (!silu) return gy;
  const float z = ((x - mf) - dlt) * scale + shift;
  return gy * silu_df(z);
}

// 2) per (n, c): sg = sum g, sgx = sum g (x - mean)
__global__ void gn_bwd_sums(const float* gy, const float* x, const float* mean, const float* rstd, const double* delta,
                            const float* w, const float* b, double* sg, double* sgx, int64_t C, int64_t G, int64_t cpg,
                            int64_t HW, bool silu) {
  const int64_t nc = blockIdx.x, n = nc / C, ch = nc % C, ng = n * G + ch / cpg;
  const float mf = mean[ng], dlt = static_cast<float>(delta[ng]);
  const float scale = static_cast<float>(double(rstd[ng]) * (w ? w[ch] : 1.0f)), shift = b ? b[ch] : 0.f;
  double s0 = 0, s1 = 0;
  for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) {
    const int64_t off = nc * HW + i;
    const float g = gn_grad(gy[off], x[off], mf, dlt, scale, shift, silu);
    s0 += g;
    s1 += double(g) * ((double(x[off]) - mf) - delta[ng]);
  }
  s0 = block_sum(s0);
  s1 = block_sum(s1);
  if (threadIdx.x == 0) sg[nc] = s0, sgx[nc] = s1;
}

// 3) dx = rstd w g - rstd A - rstd^2 B (x - mean), A = sum_c w sg / m,
//    B = rstd sum_c w sgx / m, over the group.
__global__ void gn_bwd_dx(const float* gy, const float* x, const float* mean, const float* rstd, const double* delta,
                          const float* w, const float* b, const double* sg, const double* sgx, float* dx, int64_t C,
                          int64_t G, int64_t cpg, int64_t HW, bool silu) {
  const int64_t ng = blockIdx.x, n = ng / G, g = ng % G, m = cpg * HW;
  double a = 0, bb = 0;
  for (int64_t k = 0; k < cpg; ++k) {
    const int64_t ch = g * cpg + k;
    const double wc = w ? w[ch] : 1.0;
    a += wc * sg[n * C + ch];
    bb += wc * sgx[n * C + ch];
  }
  const double r = rstd[ng], A = a / m, B = bb * r / m;
  const float k2 = static_cast<float>(r * r * B), k0 = static_cast<float>(r * A);
  const float mf = mean[ng], dlt = static_cast<float>(delta[ng]);
  for (int64_t i = threadIdx.x; i < m; i += blockDim.x) {
    const int64_t ch = g * cpg + i / HW, off = ng * m + i;
    const float scale = static_cast<float>(r * (w ? w[ch] : 1.0f)), shift = b ? b[ch] : 0.f;
    const float gv = gn_grad(gy[off], x[off], mf, dlt, scale, shift, silu);
    const float k1 = static_cast<float>(r * (w ? w[ch] : 1.0f));
    dx[off] = k1 * gv - k2 * ((x[off] - mf) - dlt) - k0;
  }
}

// 4) dweight[c] = sum_n sgx rstd, dbias[c] = sum_n sg
__global__ void gn_bwd_wb(const double* sg, const double* sgx, const float* rstd, float* dw, float* db, int64_t N,
                          int64_t C, int64_t G, int64_t cpg) {
  const int64_t ch = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (ch >= C) return;
  double sw = 0, sb = 0;
  for (int64_t n = 0; n < N; ++n) {
    sw += sgx[n * C + ch] * rstd[n * G + ch / cpg];
    sb += sg[n * C + ch];
  }
  dw[ch] = static_cast<float>(sw);
  db[ch] = static_cast<float>(sb);
}

void gn_backward_op(const Launch& l) {
  const tdq_cu_tensor& gy = l.in[0];
  const int64_t N = gy.shape[0], C = gy.shape[1], G = l.integer("num_groups", 1), cpg = C / G;
  int64_t HW = 1;
  for (int d = 2; d < gy.ndim; ++d) HW *= gy.shape[d];
  const bool silu = l.flag("silu", false);
  const float* w = l.fin(4);
  const float* b = silu ? l.fin(5) : nullptr;
  Scratch delta(sizeof(double) * N * G), sg(sizeof(double) * N * C), sgx(sizeof(double) * N * C);
  const int64_t m = cpg * HW;
  if (N * C > 0 && m > 0) {
    gn_bwd_delta<<<static_cast<unsigned>(N * G), kThreads, 0, l.stream>>>(l.fin(1), l.fin(2), delta.as<double>(), m);
    gn_bwd_sums<<<static_cast<unsigned>(N * C), kThreads, 0, l.stream>>>(
        l.fin(0), l.fin(1), l.fin(2), l.fin(3), delta.as<double>(), w, b, sg.as<double>(), sgx.as<double>(), C, G, cpg,
        HW, silu);
    gn_bwd_dx<<<static_cast<unsigned>(N * G), kThreads, 0, l.stream>>>(l.fin(0), l.fin(1), l.fin(2), l.fin(3),
                                                                       delta.as<double>(), w, b, sg.as<double>(),
                                                                       sgx.as<double>(), l.fout(0), C, G, cpg, HW, silu);
  } else if (N * C > 0) {
    TDQ_CU_CHECK(cudaMemsetAsync(sg.p, 0, sizeof(double) * N * C, l.stream));
    TDQ_CU_CHECK(cudaMemsetAsync(sgx.p, 0, sizeof(double) * N * C, l.stream));
  }
  if (C > 0)
    gn_bwd_wb<<<grid_for(C), kThreads, 0, l.stream>>>(sg.as<double>(), sgx.as<double>(), l.fin(3), l.fout(1), l.fout(2),
                                                      N, C, G, cpg);
  check_launch(l.op);
}

}  // namespace

TDQ_CU_OP("group_norm_forward", gn_forward_op);
TDQ_CU_OP("group_norm_backward", gn_backward_op);

}  // namespace tdqcu
