// GroupNorm with PyTorch semantics: x (N, C, *) is split into G groups of
// C/G channels; each (n, g) group is normalised with its biased variance,
// y = (x - mean) / sqrt(var + eps) * weight[c] + bias[c].
// The forward also returns mean and rstd (N, G) so that the backward does not
// recompute the statistics. With the attribute silu, the forward returns
// silu(y) instead (the GroupNorm + SiLU pair of every UNet block in one pass,
// without y in memory), and the backward takes the bias as well to recompute
// y from x and the statistics.
//
// The loops over a group's elements are written once over a vector width W
// (nn_simd.h): W = 1 is the reference (the "scalar" CPU level), 8 and 16 the
// AVX2 / AVX-512 levels. The statistics are one pass over the group, in
// double in every width (gn_moments, group_norm.h).
#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/registry.h"
#include "group_norm.h"
#include "nn_simd.h"

namespace tdq {
namespace {

struct GnDims {
  int64_t N, C, G, HW;
};

GnDims gn_dims(const Tensor& x, int64_t G) {
  GnDims d{x.shape[0], x.shape[1], G, 1};
  for (int64_t i = 2; i < x.dim(); ++i) d.HW *= x.shape[i];
  return d;
}

void check_eps(const Attrs& a) {
  double eps = a.get_float("eps", 1e-5);
  TDQ_CHECK_RANGE(std::isfinite(eps) && eps >= 0, a.op, ": attribute 'eps' must be a finite number >= 0, got ", eps);
}

void check_affine(const Attrs& a, const Tensor& t, const char* arg, int64_t C) {
  if (!t.defined()) return;
  check_dtype(a, t, arg, DType::f32);
  TDQ_CHECK_RANGE(t.shape == Shape{C}, a.op, ": argument '", arg, "' must have shape [", C,
                  "] (one value per channel of x), got ", shape_str(t.shape));
}

using namespace nnsimd;

using gn::gn_moments;
using gn::gn_norm;
using gn::gn_silu;

template <int W> TDQ_AINLINE Vf<W> gn_silu_grad(const Vf<W>& z) {
  const Vf<W> sg = 1.0f / (1.0f + vexp<W>(-z));
  return sg * (1.0f + z * (1.0f - sg));
}

// y[i] = ((x[i] - mhi) - mlo) * scale + shift, then silu when Silu
template <int W, bool Silu>
TDQ_AINLINE void gn_apply(const float* x, float* y, int64_t n, float mhi, float mlo, float scale, float shift) {
  int64_t i = 0;
  if constexpr (W > 1)
    for (; i + W <= n; i += W) vstore<W>(y + i, gn_norm<W, Silu>(vload<W>(x + i), mhi, mlo, scale, shift));
  for (; i < n; ++i) y[i] = gn_norm<1, Silu>(x[i], mhi, mlo, scale, shift);
}

// One channel of the backward's first pass: s0 = sum g, s1 = sum g (x - mf),
// s2 = sum (x - mf), with g = gy, or with Silu g = gy silu'(z) (z recomputed
// from x), which is also written to g_out for the second pass.
template <int W, bool Silu>
TDQ_AINLINE void gn_bwd_sums(const float* gy, const float* x, float* g_out, int64_t n, float mf, float mhi, float mlo,
                             float scale, float shift, double& s0, double& s1, double& s2) {
  Vd<W> a0{}, a1{}, a2{};
  int64_t i = 0;
  if constexpr (W > 1)
    for (; i + W <= n; i += W) {
      const Vf<W> xv = vload<W>(x + i);
      Vf<W> g = vload<W>(gy + i);
      if constexpr (Silu) {
        g = g * gn_silu_grad<W>(gn_norm<W, false>(xv, mhi, mlo, scale, shift));
        vstore<W>(g_out + i, g);
      }
      const Vd<W> gd = to_double<W>(g), xc = to_double<W>(xv - mf);
      a0 += gd;
      a1 += gd * xc;
      a2 += xc;
    }
  s0 = hsum_d<W>(a0), s1 = hsum_d<W>(a1), s2 = hsum_d<W>(a2);
  for (; i < n; ++i) {
    float g = gy[i];
    if constexpr (Silu) {
      g = g * gn_silu_grad<1>(gn_norm<1, false>(x[i], mhi, mlo, scale, shift));
      g_out[i] = g;
    }
    const double gi = g, xc = x[i] - mf;
    s0 += gi, s1 += gi * xc, s2 += xc;
  }
}

// dx[i] = k1 g[i] - k2 ((x[i] - mf) - df) - k0
template <int W>
TDQ_AINLINE void gn_bwd_dx(const float* g, const float* x, float* dx, int64_t n, float k1, float k2, float k0, float mf,
                           float df) {
  int64_t i = 0;
  if constexpr (W > 1)
    for (; i + W <= n; i += W)
      vstore<W>(dx + i, k1 * vload<W>(g + i) - k2 * ((vload<W>(x + i) - mf) - df) - k0);
  for (; i < n; ++i) dx[i] = k1 * g[i] - k2 * ((x[i] - mf) - df) - k0;
}

struct GnKernels {
  void (*moments)(const float*, int64_t, double&, double&);
  void (*apply)(const float*, float*, int64_t, float, float, float, float);
  void (*bwd_sums)(const float*, const float*, float*, int64_t, float, float, float, float, float, double&, double&,
                   double&);
  void (*bwd_dx)(const float*, const float*, float*, int64_t, float, float, float, float, float);
};

template <int W, bool Silu> struct GnFns {
  static void moments(const float* p, int64_t n, double& mean, double& var) { gn_moments<W>(p, n, mean, var); }
  static void apply(const float* x, float* y, int64_t n, float a, float b, float c, float d) {
    gn_apply<W, Silu>(x, y, n, a, b, c, d);
  }
  static void sums(const float* gy, const float* x, float* go, int64_t n, float mf, float mhi, float mlo, float sc,
                   float sh, double& s0, double& s1, double& s2) {
    gn_bwd_sums<W, Silu>(gy, x, go, n, mf, mhi, mlo, sc, sh, s0, s1, s2);
  }
  static void dx(const float* g, const float* x, float* d, int64_t n, float k1, float k2, float k0, float mf, float df) {
    gn_bwd_dx<W>(g, x, d, n, k1, k2, k0, mf, df);
  }
};
#if TDQ_NN_X86
template <bool Silu> struct GnAvx512 {
  static TDQ_AVX512 void moments(const float* p, int64_t n, double& mean, double& var) {
    gn_moments<16>(p, n, mean, var);
  }
  static TDQ_AVX512 void apply(const float* x, float* y, int64_t n, float a, float b, float c, float d) {
    gn_apply<16, Silu>(x, y, n, a, b, c, d);
  }
  static TDQ_AVX512 void sums(const float* gy, const float* x, float* go, int64_t n, float mf, float mhi, float mlo,
                              float sc, float sh, double& s0, double& s1, double& s2) {
    gn_bwd_sums<16, Silu>(gy, x, go, n, mf, mhi, mlo, sc, sh, s0, s1, s2);
  }
  static TDQ_AVX512 void dx(const float* g, const float* x, float* d, int64_t n, float k1, float k2, float k0, float mf,
                            float df) {
    gn_bwd_dx<16>(g, x, d, n, k1, k2, k0, mf, df);
  }
};
template <bool Silu> struct GnAvx2 {
  static TDQ_AVX2 void moments(const float* p, int64_t n, double& mean, double& var) { gn_moments<8>(p, n, mean, var); }
  static TDQ_AVX2 void apply(const float* x, float* y, int64_t n, float a, float b, float c, float d) {
    gn_apply<8, Silu>(x, y, n, a, b, c, d);
  }
  static TDQ_AVX2 void sums(const float* gy, const float* x, float* go, int64_t n, float mf, float mhi, float mlo,
                            float sc, float sh, double& s0, double& s1, double& s2) {
    gn_bwd_sums<8, Silu>(gy, x, go, n, mf, mhi, mlo, sc, sh, s0, s1, s2);
  }
  static TDQ_AVX2 void dx(const float* g, const float* x, float* d, int64_t n, float k1, float k2, float k0, float mf,
                          float df) {
    gn_bwd_dx<8>(g, x, d, n, k1, k2, k0, mf, df);
  }
};
#endif
template <class F> GnKernels gn_table() { return {F::moments, F::apply, F::sums, F::dx}; }

GnKernels gn_kernels(CpuLevel level, bool silu) {
#if TDQ_NN_X86
  if (level == CpuLevel::avx512) return silu ? gn_table<GnAvx512<true>>() : gn_table<GnAvx512<false>>();
  if (level == CpuLevel::avx2) return silu ? gn_table<GnAvx2<true>>() : gn_table<GnAvx2<false>>();
#endif
  return silu ? gn_table<GnFns<1, true>>() : gn_table<GnFns<1, false>>();
}

// group_norm_forward(x (N,C,*), weight? (C), bias? (C); num_groups, eps)
//   -> y (N,C,*), mean (N,G), rstd (N,G)
std::vector<TensorMeta> infer_group_norm_forward(const std::vector<Tensor>& in, const Attrs& a) {
  const Tensor& x = in[0];
  check_dtype(a, x, "x", DType::f32);
  TDQ_CHECK_RANGE(x.dim() >= 2, a.op, ": argument 'x' must have shape (N, C, *), got ", shape_str(x.shape));
  const int64_t C = x.shape[1];
  const int64_t G = a.get_int("num_groups");
  TDQ_CHECK_RANGE(G >= 1, a.op, ": attribute 'num_groups' must be >= 1, got ", G);
  TDQ_CHECK_RANGE(C % G == 0, a.op, ": attribute 'num_groups' (", G, ") must divide the channel count of 'x' (C = ",
                  C, ", shape ", shape_str(x.shape), ")");
  check_eps(a);
  check_affine(a, in.size() > 1 ? in[1] : Tensor{}, "weight", C);
  check_affine(a, in.size() > 2 ? in[2] : Tensor{}, "bias", C);
  return {{x.shape, DType::f32}, {{x.shape[0], G}, DType::f32}, {{x.shape[0], G}, DType::f32}};
}

void group_norm_forward_cpu(OpCall& c, const ExecContext& ctx) {
  const Tensor& x = c.inputs[0];
  const GnDims d = gn_dims(x, c.attrs.get_int("num_groups"));
  const double eps = c.attrs.get_float("eps", 1e-5);
  const float* w = c.inputs.size() > 1 && c.inputs[1].defined() ? c.inputs[1].f32() : nullptr;
  const float* b = c.inputs.size() > 2 && c.inputs[2].defined() ? c.inputs[2].f32() : nullptr;
  const float* px = x.f32();
  float *py = c.outputs[0].f32(), *pm = c.outputs[1].f32(), *pr = c.outputs[2].f32();
  const int64_t cpg = d.C / d.G, m = cpg * d.HW;
  if (m == 0) {
    // Empty groups: nothing to normalise; keep the statistics defined.
    for (int64_t i = 0; i < d.N * d.G; ++i) pm[i] = 0.f, pr[i] = static_cast<float>(1.0 / std::sqrt(eps));
    return;
  }
  const GnKernels k = gn_kernels(ctx.cpu_level, c.attrs.get_bool("silu", false));
  // One (n, g) group per item: its elements are one contiguous block.
  ctx.parallel_for(d.N * d.G, std::max<int64_t>(1, (1 << 14) / m), [&](int64_t begin, int64_t end) {
    for (int64_t ng = begin; ng < end; ++ng) {
      const float* xg = px + ng * m;
      double mean, var;
      k.moments(xg, m, mean, var);
      const double rstd = 1.0 / std::sqrt(var + eps);
      pm[ng] = static_cast<float>(mean);
      pr[ng] = static_cast<float>(rstd);
      const int64_t g = ng % d.G;
      // The mean as a float plus its rounding error: x - mhi is exact for x
      // near the mean, so a large common offset costs no accuracy.
      const float mhi = static_cast<float>(mean), mlo = static_cast<float>(mean - mhi);
      for (int64_t kk = 0; kk < cpg; ++kk) {
        const int64_t ch = g * cpg + kk;
        const float scale = static_cast<float>(rstd * (w ? w[ch] : 1.0f)), shift = b ? b[ch] : 0.f;
        k.apply(xg + kk * d.HW, py + ng * m + kk * d.HW, d.HW, mhi, mlo, scale, shift);
      }
    }
  });
}

// group_norm_backward(gy (N,C,*), x, mean (N,G), rstd (N,G), weight? (C), bias? (C); num_groups, silu)
// (the bias is read only with silu, to recompute the forward's GroupNorm output)
//   -> dx (N,C,*), dweight (C), dbias (C)
std::vector<TensorMeta> infer_group_norm_backward(const std::vector<Tensor>& in, const Attrs& a) {
  const Tensor &gy = in[0], &x = in[1], &mean = in[2], &rstd = in[3];
  check_dtype(a, gy, "gy", DType::f32);
  TDQ_CHECK_RANGE(gy.dim() >= 2, a.op, ": argument 'gy' must have shape (N, C, *), got ", shape_str(gy.shape));
  check_dtype(a, x, "x", DType::f32);
  check_shape(a, x, "x", gy.shape);
  const int64_t N = gy.shape[0], C = gy.shape[1];
  const int64_t G = a.get_int("num_groups");
  TDQ_CHECK_RANGE(G >= 1 && C % G == 0, a.op, ": attribute 'num_groups' (", G,
                  ") must be >= 1 and divide the channel count of 'x' (C = ", C, ")");
  check_dtype(a, mean, "mean", DType::f32);
  check_shape(a, mean, "mean", {N, G});
  check_dtype(a, rstd, "rstd", DType::f32);
  check_shape(a, rstd, "rstd", {N, G});
  check_affine(a, in.size() > 4 ? in[4] : Tensor{}, "weight", C);
  check_affine(a, in.size() > 5 ? in[5] : Tensor{}, "bias", C);
  return {{gy.shape, DType::f32}, {{C}, DType::f32}, {{C}, DType::f32}};
}

void group_norm_backward_cpu(OpCall& c, const ExecContext& ctx) {
  const GnDims d = gn_dims(c.inputs[0], c.attrs.get_int("num_groups"));
  const float *gy = c.inputs[0].f32(), *x = c.inputs[1].f32(), *pm = c.inputs[2].f32(), *pr = c.inputs[3].f32();
  const float* w = c.inputs.size() > 4 && c.inputs[4].defined() ? c.inputs[4].f32() : nullptr;
  float *dx = c.outputs[0].f32(), *dw = c.outputs[1].f32(), *db = c.outputs[2].f32();
  const int64_t cpg = d.C / d.G, m = cpg * d.HW;
  // Per (n, c): sum gy and sum gy * (x - mean); the weight gradients reduce
  // these over n afterwards in a fixed order, so results do not depend on
  // the thread count.
  const bool silu = c.attrs.get_bool("silu", false);
  const float* bias = c.inputs.size() > 5 && c.inputs[5].defined() ? c.inputs[5].f32() : nullptr;
  const GnKernels kn = gn_kernels(ctx.cpu_level, silu);
  std::vector<double> sg(static_cast<size_t>(d.N * d.C)), sgx(static_cast<size_t>(d.N * d.C));
  ctx.parallel_for(d.N * d.G, std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(m, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t ng = begin; ng < end; ++ng) {
      const int64_t n = ng / d.G, g = ng % d.G;
      const float mf = pm[ng];
      const double rstd = pr[ng];
      // With silu, the GroupNorm output z is recomputed as the forward did,
      // the mean as the saved float plus its rounding error (one more pass
      // over x: without it, a large common offset in x costs z accuracy),
      // and the gradient reaching z, gy silu'(z), is kept in dx for the
      // second pass.
      double mean = mf, var;
      if (silu && m) kn.moments(x + ng * m, m, mean, var);
      const float mlo = static_cast<float>(mean - mf);
      // The saved mean is rounded to float; sum (x - mf) recovers the
      // rounding error delta in the same pass, and sum gy (x - mean) is then
      // sum gy (x - mf) - delta sum gy. A large common offset in x thus
      // costs the gradients no accuracy.
      double sdev = 0;
      for (int64_t k = 0; k < cpg; ++k) {
        const int64_t ch = g * cpg + k, off = ng * m + k * d.HW;
        const float scale = static_cast<float>(rstd * (w ? w[ch] : 1.0f)), shift = bias ? bias[ch] : 0.f;
        double s0, s1, s2;
        kn.bwd_sums(gy + off, x + off, dx + off, d.HW, mf, mf, mlo, scale, shift, s0, s1, s2);
        sg[n * d.C + ch] = s0;
        sgx[n * d.C + ch] = s1;
        sdev += s2;
      }
      const double delta = m ? sdev / m : 0.0;
      double a_sum = 0, b_sum = 0;  // sum_c w_c * sum gy, sum_c w_c * sum gy (x - mean)
      for (int64_t k = 0; k < cpg; ++k) {
        const int64_t ch = g * cpg + k;
        sgx[n * d.C + ch] -= delta * sg[n * d.C + ch];
        const double wc = w ? w[ch] : 1.0;
        a_sum += wc * sg[n * d.C + ch];
        b_sum += wc * sgx[n * d.C + ch];
      }
      // dx = rstd * (w*gy - mean(w*gy) - xhat * mean(w*gy*xhat)) over the group
      const double A = m ? a_sum / m : 0.0, B = m ? b_sum * rstd / m : 0.0;
      const float k2 = static_cast<float>(rstd * rstd * B), k0 = static_cast<float>(rstd * A);
      const float df = static_cast<float>(delta);
      for (int64_t k = 0; k < cpg; ++k) {
        const int64_t ch = g * cpg + k, off = ng * m + k * d.HW;
        const float k1 = static_cast<float>(rstd * (w ? w[ch] : 1.0f));
        kn.bwd_dx(silu ? dx + off : gy + off, x + off, dx + off, d.HW, k1, k2, k0, mf, df);
      }
    }
  });
  for (int64_t ch = 0; ch < d.C; ++ch) {
    double sw = 0, sb = 0;
    for (int64_t n = 0; n < d.N; ++n) {
      sw += sgx[n * d.C + ch] * pr[n * d.G + ch / cpg];
      sb += sg[n * d.C + ch];
    }
    dw[ch] = static_cast<float>(sw);
    db[ch] = static_cast<float>(sb);
  }
}

}  // namespace

TDQ_REGISTER_OP({"group_norm_forward", 1, 3, infer_group_norm_forward, group_norm_forward_cpu, {}});
TDQ_REGISTER_OP({"group_norm_backward", 4, 6, infer_group_norm_backward, group_norm_backward_cpu, {}});

}  // namespace tdq
