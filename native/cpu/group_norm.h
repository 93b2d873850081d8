// group_norm.cpp's forward kernels for one CPU level, shared with qnorm.cpp so
// that the fused GroupNorm (+ SiLU) + quantization op quantizes the very floats
// group_norm_forward writes (same sums, same rounding, same contraction).
#pragma once
#include <cstdint>

#include "../core/registry.h"

namespace tdq {

struct GnForwardKernels {
  // sum p[i] and sum (p[i] - c)^2 over a group, in double
  double (*sum)(const float*, int64_t);
  double (*sum_sq_dev)(const float*, int64_t, double);
  // y[i] = ((x[i] - mhi) - mlo) * scale + shift (then silu(y) for the silu kernels)
  void (*apply)(const float* x, float* y, int64_t n, float mhi, float mlo, float scale, float shift);
};

// The kernels group_norm_forward runs at this level (silu: the fused GroupNorm + SiLU).
// Per group: mean = sum / m, var = sum_sq_dev(mean) / m, rstd = 1 / sqrt(var + eps),
// mhi = float(mean), mlo = float(mean - mhi), scale = float(rstd * weight[c]), shift = bias[c].
GnForwardKernels group_norm_forward_kernels(CpuLevel level, bool silu);

}  // namespace tdq
