// layer_norm_forward / layer_norm_backward (fp32), as native/cpu/layer_norm.cpp:
// x (..., D) as (rows, D), biased variance, eps inside the square root;
//   forward (x, weight?, bias?; eps) -> y, mean (rows), rstd (rows)
//   backward (gy, x, mean, rstd, weight?) -> dx, dweight (D), dbias (D)
// A block per row for the row statistics (summed in double, two-pass
// variance); the weight gradients are column sums over rows, a thread per
// column, in double.
#include <cmath>

#include "common.cuh"

namespace tdqcu {
namespace {

__global__ void ln_fwd(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                       float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out, int64_t D,
                       double eps) {
  const int64_t r = blockIdx.x;
  const float* xr = x + r * D;
  float* yr = y + r * D;
  double s = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s += xr[i];
  const double mean = block_sum(s) / D;
  double q = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const double d = xr[i] - mean;
    q += d * d;
  }
  const double rstd = 1.0 / sqrt(block_sum(q) / D + eps);
  // The mean as a float plus its rounding error, as the CPU op.
  const float mhi = static_cast<float>(mean), mlo = static_cast<float>(mean - mhi), rf = static_cast<float>(rstd);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    float v = ((xr[i] - mhi) - mlo) * rf;
    if (w) v *= w[i];
    if (b) v += b[i];
    yr[i] = v;
  }
  if (threadIdx.x == 0) mean_out[r] = mhi, rstd_out[r] = rf;
}

// dx = rstd * (w gy - mean(w gy) - xhat mean(w gy xhat)), with the saved
// float mean's rounding error recovered as in the CPU op.
__global__ void ln_bwd_dx(const float* __restrict__ gy, const float* __restrict__ x, const float* __restrict__ pm,
                          const float* __restrict__ pr, const float* __restrict__ w, float* __restrict__ dx,
                          int64_t D) {
  const int64_t r = blockIdx.x;
  const float *g = gy + r * D, *xr = x + r * D;
  float* o = dx + r * D;
  const float mf = pm[r];
  const double rstd = pr[r];
  double sa = 0, sb = 0, sdev = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const double wg = static_cast<double>(g[i]) * (w ? w[i] : 1.0f);
    const double xc = xr[i] - mf;
    sa += wg;
    sb += wg * xc;
    sdev += xc;
  }
  sa = block_sum(sa);
  sb = block_sum(sb);
  sdev = block_sum(sdev);
  const double delta = sdev / D;
  sb -= delta * sa;
  const float k0 = static_cast<float>(rstd * sa / D), k2 = static_cast<float>(rstd * rstd * rstd * sb / D);
  const float rf = static_cast<float>(rstd), df = static_cast<float>(delta);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const float xc = (xr[i] - mf) - df;
    o[i] = rf * g[i] * (w ? w[i] : 1.0f) - k0 - k2 * xc;
  }
}

// dw[i] = sum_r gy[r, i] (x[r, i] - mean_r - delta_r) rstd_r, db[i] = sum_r gy[r, i]
// (delta_r: the saved float mean's rounding error, from ln_bwd_delta).
__global__ void ln_bwd_dwb(const float* __restrict__ gy, const float* __restrict__ x, const float* __restrict__ pm,
                           const float* __restrict__ pr, const float* __restrict__ delta, float* __restrict__ dw,
                           float* __restrict__ db, int64_t rows, int64_t D) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= D) return;
  double sw = 0, sb = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float g = gy[r * D + i];
    const float xc = (x[r * D + i] - pm[r]) - delta[r];
    sw += static_cast<double>(g) * xc * static_cast<double>(pr[r]);
    sb += g;
  }
  dw[i] = static_cast<float>(sw);
  db[i] = static_cast<float>(sb);
}

// delta[r] = mean over the row of (x - saved float mean), as a float.
__global__ void ln_bwd_delta(const float* __restrict__ x, const float* __restrict__ pm, float* __restrict__ delta,
                             int64_t D) {
  const int64_t r = blockIdx.x;
  double s = 0;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s += static_cast<double>(x[r * D + i] - pm[r]);
  s = block_sum(s);
  if (threadIdx.x == 0) delta[r] = static_cast<float>(s / D);
}

unsigned row_blocks(const Launch& l, int64_t rows) {
  if (rows > 0x7fffffff) throw CuError(std::string(l.op) + ": too many rows for one launch");
  return static_cast<unsigned>(rows);
}

void layer_norm_forward_op(const Launch& l) {
  const tdq_cu_tensor& x = l.in[0];
  const int64_t D = x.shape[x.ndim - 1], rows = D ? numel(x) / D : 0;
  if (rows == 0) return;
  ln_fwd<<<row_blocks(l, rows), kThreads, 0, l.stream>>>(l.fin(0), l.fin(1), l.fin(2), l.fout(0), l.fout(1),
                                                         l.fout(2), D, l.num("eps", 1e-5));
  check_launch(l.op);
}

void layer_norm_backward_op(const Launch& l) {
  const tdq_cu_tensor& gy = l.in[0];
  const int64_t D = gy.shape[gy.ndim - 1], rows = D ? numel(gy) / D : 0;
  if (rows == 0) {
    TDQ_CU_CHECK(cudaMemsetAsync(l.fout(1), 0, D * sizeof(float), l.stream));
    TDQ_CU_CHECK(cudaMemsetAsync(l.fout(2), 0, D * sizeof(float), l.stream));
    return;
  }
  ln_bwd_dx<<<row_blocks(l, rows), kThreads, 0, l.stream>>>(l.fin(0), l.fin(1), l.fin(2), l.fin(3), l.fin(4),
                                                            l.fout(0), D);
  check_launch(l.op);
  Scratch delta(static_cast<size_t>(rows) * sizeof(float));
  ln_bwd_delta<<<row_blocks(l, rows), kThreads, 0, l.stream>>>(l.fin(1), l.fin(2), delta.as<float>(), D);
  check_launch(l.op);
  ln_bwd_dwb<<<grid_for(D), kThreads, 0, l.stream>>>(l.fin(0), l.fin(1), l.fin(2), l.fin(3), delta.as<float>(),
                                                     l.fout(1), l.fout(2), rows, D);
  check_launch(l.op);
}

}  // namespace

TDQ_CU_OP("layer_norm_forward", layer_norm_forward_op);
TDQ_CU_OP("layer_norm_backward", layer_norm_backward_op);

}  // namespace tdqcu
