// LayerNorm over the last dimension with PyTorch semantics (biased variance,
// eps inside the square root): x (..., D) is seen as (rows, D) and
// y = (x - mean) / sqrt(var + eps) * weight[d] + bias[d].
// The forward also returns mean and rstd (rows) for the backward.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/registry.h"

namespace tdq {
namespace {

double row_sum(const float* p, int64_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) s0 += p[i], s1 += p[i + 1], s2 += p[i + 2], s3 += p[i + 3];
  for (; i < n; ++i) s0 += p[i];
  return (s0 + s1) + (s2 + s3);
}

// Second pass of the two-pass variance (stable when |mean| >> std).
double row_sq_dev(const float* p, int64_t n, double c) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    double d0 = p[i] - c, d1 = p[i + 1] - c, d2 = p[i + 2] - c, d3 = p[i + 3] - c;
    s0 += d0 * d0, s1 += d1 * d1, s2 += d2 * d2, s3 += d3 * d3;
  }
  for (; i < n; ++i) {
    double d = p[i] - c;
    s0 += d * d;
  }
  return (s0 + s1) + (s2 + s3);
}

void check_param(const Attrs& a, const Tensor& t, const char* arg, int64_t D) {
  if (!t.defined()) return;
  check_dtype(a, t, arg, DType::f32);
  TDQ_CHECK_RANGE(t.shape == Shape{D}, a.op, ": argument '", arg, "' must have shape [", D,
                  "] (the last dimension of x), got ", shape_str(t.shape));
}

// layer_norm_forward(x (..., D), weight? (D), bias? (D); eps) -> y, mean (rows), rstd (rows)
std::vector<TensorMeta> infer_layer_norm_forward(const std::vector<Tensor>& in, const Attrs& a) {
  const Tensor& x = in[0];
  check_dtype(a, x, "x", DType::f32);
  TDQ_CHECK_RANGE(x.dim() >= 1 && x.shape.back() >= 1, a.op,
                  ": argument 'x' must have at least one dimension and a non-empty last dimension, got shape ",
                  shape_str(x.shape));
  const double eps = a.get_float("eps", 1e-5);
  TDQ_CHECK_RANGE(std::isfinite(eps) && eps >= 0, a.op, ": attribute 'eps' must be a finite number >= 0, got ", eps);
  const int64_t D = x.shape.back(), rows = x.numel() / D;
  check_param(a, in.size() > 1 ? in[1] : Tensor{}, "weight", D);
  check_param(a, in.size() > 2 ? in[2] : Tensor{}, "bias", D);
  return {{x.shape, DType::f32}, {{rows}, DType::f32}, {{rows}, DType::f32}};
}

void layer_norm_forward_cpu(OpCall& c, const ExecContext& ctx) {
  const Tensor& x = c.inputs[0];
  const int64_t D = x.shape.back(), rows = x.numel() / D;
  const double eps = c.attrs.get_float("eps", 1e-5);
  const float* w = c.inputs.size() > 1 && c.inputs[1].defined() ? c.inputs[1].f32() : nullptr;
  const float* b = c.inputs.size() > 2 && c.inputs[2].defined() ? c.inputs[2].f32() : nullptr;
  const float* px = x.f32();
  float *py = c.outputs[0].f32(), *pm = c.outputs[1].f32(), *pr = c.outputs[2].f32();
  ctx.parallel_for(rows, std::max<int64_t>(1, (1 << 14) / D), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = px + r * D;
      float* yr = py + r * D;
      const double mean = row_sum(xr, D) / D;
      const double rstd = 1.0 / std::sqrt(row_sq_dev(xr, D, mean) / D + eps);
      pm[r] = static_cast<float>(mean);
      pr[r] = static_cast<float>(rstd);
      // The mean as a float plus its rounding error: x - mhi is exact for x
      // near the mean, so a large common offset costs no accuracy.
      const float mhi = static_cast<float>(mean), mlo = static_cast<float>(mean - mhi), rf = static_cast<float>(rstd);
      if (w && b) for (int64_t i = 0; i < D; ++i) yr[i] = ((xr[i] - mhi) - mlo) * rf * w[i] + b[i];
      else if (w) for (int64_t i = 0; i < D; ++i) yr[i] = ((xr[i] - mhi) - mlo) * rf * w[i];
      else if (b) for (int64_t i = 0; i < D; ++i) yr[i] = ((xr[i] - mhi) - mlo) * rf + b[i];
      else for (int64_t i = 0; i < D; ++i) yr[i] = ((xr[i] - mhi) - mlo) * rf;
    }
  });
}

// layer_norm_backward(gy (..., D), x, mean (rows), rstd (rows), weight? (D))
//   -> dx (..., D), dweight (D), dbias (D)
std::vector<TensorMeta> infer_layer_norm_backward(const std::vector<Tensor>& in, const Attrs& a) {
  const Tensor &gy = in[0], &x = in[1];
  check_dtype(a, gy, "gy", DType::f32);
  TDQ_CHECK_RANGE(gy.dim() >= 1 && gy.shape.back() >= 1, a.op,
                  ": argument 'gy' must have a non-empty last dimension, got shape ", shape_str(gy.shape));
  check_dtype(a, x, "x", DType::f32);
  check_shape(a, x, "x", gy.shape);
  const int64_t D = gy.shape.back(), rows = gy.numel() / D;
  check_dtype(a, in[2], "mean", DType::f32);
  check_shape(a, in[2], "mean", {rows});
  check_dtype(a, in[3], "rstd", DType::f32);
  check_shape(a, in[3], "rstd", {rows});
  check_param(a, in.size() > 4 ? in[4] : Tensor{}, "weight", D);
  return {{gy.shape, DType::f32}, {{D}, DType::f32}, {{D}, DType::f32}};
}

void layer_norm_backward_cpu(OpCall& c, const ExecContext& ctx) {
  const int64_t D = c.inputs[0].shape.back(), rows = c.inputs[0].numel() / D;
  const float *gy = c.inputs[0].f32(), *x = c.inputs[1].f32(), *pm = c.inputs[2].f32(), *pr = c.inputs[3].f32();
  const float* w = c.inputs.size() > 4 && c.inputs[4].defined() ? c.inputs[4].f32() : nullptr;
  float *dx = c.outputs[0].f32(), *dw = c.outputs[1].f32(), *db = c.outputs[2].f32();
  // The weight gradients sum over rows. Rows are cut into a fixed number of
  // blocks (independent of the thread count) with one partial sum each, added
  // in order at the end: deterministic for any number of threads.
  const int64_t nb = std::max<int64_t>(1, std::min<int64_t>({rows, 64, (rows * D) >> 13}));
  const int64_t per = rows == 0 ? 0 : (rows + nb - 1) / nb;
  std::vector<double> pw(static_cast<size_t>(nb * D), 0.0), pb(static_cast<size_t>(nb * D), 0.0);
  ctx.parallel_for(nb, 1, [&](int64_t bb, int64_t be) {
    for (int64_t blk = bb; blk < be; ++blk) {
      double* aw = pw.data() + blk * D;
      double* ab = pb.data() + blk * D;
      for (int64_t r = blk * per; r < std::min(rows, (blk + 1) * per); ++r) {
        const float *g = gy + r * D, *xr = x + r * D;
        float* o = dx + r * D;
        const float mf = pm[r];
        const double rstd = pr[r];
        // sum (x - mf) recovers the float rounding error of the saved mean
        // (see group_norm.cpp): sum w gy (x - mean) = sum w gy (x - mf) - delta sum w gy.
        double sa = 0, sb = 0, sdev = 0;
        for (int64_t i = 0; i < D; ++i) {
          const double wg = static_cast<double>(g[i]) * (w ? w[i] : 1.0f);
          const double xc = xr[i] - mf;
          sa += wg;
          sb += wg * xc;
          sdev += xc;
        }
        const double delta = sdev / D;
        sb -= delta * sa;
        // dx = rstd * (w*gy - mean(w*gy) - xhat * mean(w*gy*xhat))
        const float k0 = static_cast<float>(rstd * sa / D), k2 = static_cast<float>(rstd * rstd * rstd * sb / D);
        const float rf = static_cast<float>(rstd), df = static_cast<float>(delta);
        for (int64_t i = 0; i < D; ++i) {
          const float xc = (xr[i] - mf) - df;
          aw[i] += static_cast<double>(g[i]) * xc * rstd;
          ab[i] += g[i];
          o[i] = rf * g[i] * (w ? w[i] : 1.0f) - k0 - k2 * xc;
        }
      }
    }
  });
  for (int64_t i = 0; i < D; ++i) {
    double sw = 0, sb = 0;
    for (int64_t blk = 0; blk < nb; ++blk) sw += pw[blk * D + i], sb += pb[blk * D + i];
    dw[i] = static_cast<float>(sw);
    db[i] = static_cast<float>(sb);
  }
}

}  // namespace

TDQ_REGISTER_OP({"layer_norm_forward", 1, 3, infer_layer_norm_forward, layer_norm_forward_cpu, {}});
TDQ_REGISTER_OP({"layer_norm_backward", 4, 5, infer_layer_norm_backward, layer_norm_backward_cpu, {}});

}  // namespace tdq
