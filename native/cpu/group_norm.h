// group_norm.cpp's per-group forward arithmetic, written once over a vector
// width W (nn_simd.h) and shared with qnorm.cpp, so that the fused GroupNorm
// (+ SiLU) + quantization op quantizes the very floats group_norm_forward
// writes (same sums, same rounding, same contraction: both inline these
// helpers into kernels built for the same CPU level).
//
// Per (n, g) group of m elements:
//   (mean, var) = gn_moments<W>(x, m)           one pass, in double
//   rstd = 1 / sqrt(var + eps)
//   mhi = float(mean), mlo = float(mean - mhi)  the mean as a float plus its rounding error
//   per channel: scale = float(rstd * weight[c]), shift = bias[c],
//   y = gn_norm<W, Silu>(x, mhi, mlo, scale, shift)
#pragma once
#include <algorithm>
#include <cstdint>

#include "nn_simd.h"

namespace tdq {
namespace gn {

using namespace nnsimd;

// sum (p[i] - c)^2 in double W lanes
template <int W> TDQ_AINLINE double gn_sum_sq_dev(const float* p, int64_t n, double c) {
  Vd<W> acc{};
  int64_t i = 0;
  if constexpr (W > 1)
    for (; i + W <= n; i += W) {
      const Vd<W> d = to_double<W>(vload<W>(p + i)) - c;
      acc += d * d;
    }
  double s = hsum_d<W>(acc);
  for (; i < n; ++i) s += (p[i] - c) * (p[i] - c);
  return s;
}

// Mean and biased variance of p[0..n) in one pass: the sums of d = p[i] - c
// and d^2 in double W lanes, shifted by the group's first element c. d is
// exact in double (two floats), d^2 and the sums round at about n 2^-53
// (worst case), so var = S2/n - (S1/n)^2 has a relative error of about
// (1 + (mean - c)^2 / var) n 2^-53. Where (mean - c)^2 / var * n > 2^20 (the
// first element far out: the ratio is at most n), the variance is summed
// again around the mean (a second pass), so the error stays under
// (2^20 + n) 2^-53 either way: far below a float's 2^-24.
template <int W> TDQ_AINLINE void gn_moments(const float* p, int64_t n, double& mean, double& var) {
  if (n <= 0) {
    mean = 0, var = 0;
    return;
  }
  const double c = p[0];
  Vd<W> a1{}, a2{};
  int64_t i = 0;
  if constexpr (W > 1)
    for (; i + W <= n; i += W) {
      const Vd<W> d = to_double<W>(vload<W>(p + i)) - c;
      a1 += d;
      a2 += d * d;
    }
  double s1 = hsum_d<W>(a1), s2 = hsum_d<W>(a2);
  for (; i < n; ++i) {
    const double d = p[i] - c;
    s1 += d, s2 += d * d;
  }
  const double mo = s1 / n;
  mean = c + mo;
  var = std::max(s2 / n - mo * mo, 0.0);
  if (mo * mo * static_cast<double>(n) > 1048576.0 * var) var = gn_sum_sq_dev<W>(p, n, mean) / n;
}

template <int W> TDQ_AINLINE Vf<W> gn_silu(const Vf<W>& z) { return z / (1.0f + vexp<W>(-z)); }

// ((x - mhi) - mlo) * scale + shift, then silu when Silu: one vector (W > 1)
// or one element (W = 1: the scalar formula, std::exp, which group_norm_forward
// also uses for the n % W tail of each channel row at the vector levels)
template <int W, bool Silu> TDQ_AINLINE Vf<W> gn_norm(Vf<W> x, float mhi, float mlo, float scale, float shift) {
  Vf<W> z = ((x - mhi) - mlo) * scale + shift;
  if constexpr (Silu) z = gn_silu<W>(z);
  return z;
}

}  // namespace gn
}  // namespace tdq
