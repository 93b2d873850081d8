// fake_quant_forward / fake_quant_backward (LSQ), as native/cpu/fake_quant.cpp:
// y = clamp(round_half_even(x / s), qmin, qmax) * s with one step per tensor
// or per index of `axis`; the backward gives dx (straight-through inside the
// range) and dstep = g * sum gy * t, g = grad_scale or 1 / sqrt(n_per_step qmax).
#include <cmath>
#include <cstdio>

#include "common.cuh"

namespace tdqcu {
namespace {

struct Quant {
  float qmin, qmax;
  int64_t outer = 1, groups = 1, inner = 1;
  bool per_tensor = true;
};

Quant quant_of(const Launch& l, const tdq_cu_tensor& x) {
  Quant q;
  const int64_t bits = l.integer("bits", 8);
  if (l.flag("signed", true)) {
    q.qmin = -static_cast<float>(int64_t{1} << (bits - 1));
    q.qmax = static_cast<float>((int64_t{1} << (bits - 1)) - 1);
  } else {
    q.qmin = 0;
    q.qmax = static_cast<float>((int64_t{1} << bits) - 1);
  }
  const std::string gran = l.str("granularity", "tensor");
  if (gran == "tensor") {
    q.inner = numel(x);
  } else {
    q.per_tensor = false;
    int64_t axis = l.integer("axis", 0);
    if (axis < 0) axis += x.ndim;
    for (int64_t d = 0; d < axis; ++d) q.outer *= x.shape[d];
    q.groups = x.shape[axis];
    for (int64_t d = axis + 1; d < x.ndim; ++d) q.inner *= x.shape[d];
  }
  return q;
}

// The steps are data: checked here (a small copy to the host) with the CPU
// op's message, before anything is written.
void check_steps(const Launch& l, const float* s, int64_t n, bool per_tensor) {
  std::vector<float> h(static_cast<size_t>(n));
  TDQ_CU_CHECK(cudaMemcpyAsync(h.data(), s, sizeof(float) * n, cudaMemcpyDeviceToHost, l.stream));
  TDQ_CU_CHECK(cudaStreamSynchronize(l.stream));
  for (int64_t i = 0; i < n; ++i) {
    if (h[i] > 0 && std::isfinite(h[i])) continue;
    char buf[256];
    if (per_tensor) std::snprintf(buf, sizeof buf, "quantizer step 'step' = %g must be positive and finite", h[i]);
    else
      std::snprintf(buf, sizeof buf, "quantizer step 'step'[%lld] = %g must be positive and finite (granularity '%s')",
                    static_cast<long long>(i), h[i], l.str("granularity", "tensor").c_str());
    throw CuError(buf);
  }
}

__global__ void fq_fwd(const float* x, const float* s, float* y, int64_t n, int64_t groups, int64_t inner, float qmin,
                       float qmax) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float st = s[(i / inner) % groups];
    const float r = rintf(x[i] / st);  // round half to even, as nearbyint
    y[i] = fminf(fmaxf(r, qmin), qmax) * st;
    if (isnan(r)) y[i] = r;  // fminf/fmaxf drop NaN; the CPU op keeps it
  }
}

// One block per (row, chunk) of a row of `inner` elements sharing one step;
// its partial sum of gy * t is added to acc[group] in double.
__global__ void fq_bwd(const float* gy, const float* x, const float* s, float* dx, double* acc, int64_t groups,
                       int64_t inner, int64_t chunks, float qmin, float qmax) {
  const int64_t row = blockIdx.x / chunks, chunk = blockIdx.x % chunks, g = row % groups;
  const int64_t per = (inner + chunks - 1) / chunks, b = chunk * per, e = min(inner, b + per);
  const float st = s[g];
  double sum = 0;
  for (int64_t j = b + threadIdx.x; j < e; j += blockDim.x) {
    const int64_t i = row * inner + j;
    const float v = x[i] / st;
    const bool inside = v >= qmin && v <= qmax;
    dx[i] = inside ? gy[i] : 0.f;
    const float t = inside ? rintf(v) - v : (v < qmin ? qmin : qmax);
    sum += double(gy[i]) * t;
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) atomicAdd(&acc[g], sum);
}

__global__ void fq_finish(const double* acc, float* ds, int64_t groups, double scale) {
  const int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (g < groups) ds[g] = static_cast<float>(acc[g] * scale);
}

void fq_forward_op(const Launch& l) {
  const Quant q = quant_of(l, l.in[0]);
  check_steps(l, l.fin(1), numel(l.in[1]), q.per_tensor);
  const int64_t n = numel(l.in[0]);
  if (n == 0) return;
  fq_fwd<<<grid_for(n), kThreads, 0, l.stream>>>(l.fin(0), l.fin(1), l.fout(0), n, q.groups, std::max<int64_t>(q.inner, 1),
                                                 q.qmin, q.qmax);
  check_launch(l.op);
}

void fq_backward_op(const Launch& l) {
  const tdq_cu_tensor& x = l.in[1];
  const Quant q = quant_of(l, x);
  const int64_t nsteps = numel(l.in[2]);
  check_steps(l, l.fin(2), nsteps, q.per_tensor);
  const int64_t n = numel(x);
  const int64_t per_step = nsteps ? n / nsteps : 0;
  const double g = l.has("grad_scale") ? l.num("grad_scale", 1.0) : 1.0 / std::sqrt(double(per_step) * q.qmax);
  Scratch acc(sizeof(double) * q.groups);
  TDQ_CU_CHECK(cudaMemsetAsync(acc.p, 0, sizeof(double) * q.groups, l.stream));
  if (n > 0) {
    const int64_t rows = q.outer * q.groups;
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>((q.inner + 4095) / 4096, (int64_t{1} << 16) / rows + 1));
    fq_bwd<<<static_cast<unsigned>(rows * chunks), kThreads, 0, l.stream>>>(l.fin(0), l.fin(1), l.fin(2), l.fout(0),
                                                                            acc.as<double>(), q.groups, q.inner, chunks,
                                                                            q.qmin, q.qmax);
  }
  fq_finish<<<grid_for(q.groups), kThreads, 0, l.stream>>>(acc.as<double>(), l.fout(1), q.groups, g);
  check_launch(l.op);
}

}  // namespace

TDQ_CU_OP("fake_quant_forward", fq_forward_op);
TDQ_CU_OP("fake_quant_backward", fq_backward_op);

}  // namespace tdqcu
