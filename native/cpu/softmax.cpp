// Softmax along one dimension, numerically stable (the maximum is taken out
// before exponentiating), and its backward gx = y * (gy - sum(gy * y)).
// x is seen as (outer, L, inner) around the softmax dim. The last dim
// (inner == 1) walks contiguous rows; other dims work on a block of inner
// positions at once so that every memory access stays contiguous.
#include <algorithm>
#include <cmath>
#include <limits>

#include "../core/registry.h"

namespace tdq {
namespace {

struct SoftmaxDims {
  int64_t outer = 1, L = 1, inner = 1;
};

int64_t softmax_dim(const Attrs& a, const Tensor& x) {
  const int64_t d = a.get_int("dim", -1), nd = std::max<int64_t>(x.dim(), 1);
  TDQ_CHECK_RANGE(d >= -nd && d < nd, a.op, ": attribute 'dim' (", d, ") out of range for 'x' of shape ",
                  shape_str(x.shape));
  return d < 0 ? d + nd : d;
}

SoftmaxDims dims_of(const Tensor& x, int64_t dim) {
  SoftmaxDims s;
  if (x.dim() == 0) return s;  // a scalar is a softmax over one element
  for (int64_t i = 0; i < dim; ++i) s.outer *= x.shape[i];
  s.L = x.shape[dim];
  for (int64_t i = dim + 1; i < x.dim(); ++i) s.inner *= x.shape[i];
  return s;
}

std::vector<TensorMeta> infer_softmax(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "x", DType::f32);
  softmax_dim(a, in[0]);
  return {{in[0].shape, DType::f32}};
}

// softmax_backward(gy, y; dim) -> gx
std::vector<TensorMeta> infer_softmax_backward(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "gy", DType::f32);
  check_dtype(a, in[1], "y", DType::f32);
  check_shape(a, in[1], "y", in[0].shape);
  softmax_dim(a, in[0]);
  return {{in[0].shape, DType::f32}};
}

constexpr int64_t kInnerBlock = 64;

void softmax_cpu(OpCall& c, const ExecContext& ctx) {
  const Tensor& x = c.inputs[0];
  if (x.numel() == 0) return;
  const SoftmaxDims s = dims_of(x, softmax_dim(c.attrs, x));
  const float* px = x.f32();
  float* py = c.outputs[0].f32();
  if (s.inner == 1) {
    ctx.parallel_for(s.outer, std::max<int64_t>(1, 8192 / s.L), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const float* xr = px + r * s.L;
        float* yr = py + r * s.L;
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t i = 0; i < s.L; ++i) mx = std::max(mx, xr[i]);
        double sum = 0;
        for (int64_t i = 0; i < s.L; ++i) {
          yr[i] = std::exp(xr[i] - mx);
          sum += yr[i];
        }
        const float inv = static_cast<float>(1.0 / sum);
        for (int64_t i = 0; i < s.L; ++i) yr[i] *= inv;
      }
    });
    return;
  }
  const int64_t nblk = (s.inner + kInnerBlock - 1) / kInnerBlock;
  ctx.parallel_for(s.outer * nblk, std::max<int64_t>(1, 8192 / (s.L * kInnerBlock)), [&](int64_t b, int64_t e) {
    float mx[kInnerBlock];
    double sum[kInnerBlock];
    for (int64_t t = b; t < e; ++t) {
      const int64_t o = t / nblk, i0 = (t % nblk) * kInnerBlock, n = std::min(kInnerBlock, s.inner - i0);
      const float* xo = px + o * s.L * s.inner + i0;
      float* yo = py + o * s.L * s.inner + i0;
      std::fill(mx, mx + n, -std::numeric_limits<float>::infinity());
      std::fill(sum, sum + n, 0.0);
      for (int64_t l = 0; l < s.L; ++l)
        for (int64_t i = 0; i < n; ++i) mx[i] = std::max(mx[i], xo[l * s.inner + i]);
      for (int64_t l = 0; l < s.L; ++l)
        for (int64_t i = 0; i < n; ++i) {
          const float v = std::exp(xo[l * s.inner + i] - mx[i]);
          yo[l * s.inner + i] = v;
          sum[i] += v;
        }
      for (int64_t i = 0; i < n; ++i) mx[i] = static_cast<float>(1.0 / sum[i]);  // reused as 1/sum
      for (int64_t l = 0; l < s.L; ++l)
        for (int64_t i = 0; i < n; ++i) yo[l * s.inner + i] *= mx[i];
    }
  });
}

void softmax_backward_cpu(OpCall& c, const ExecContext& ctx) {
  const Tensor& gyt = c.inputs[0];
  if (gyt.numel() == 0) return;
  const SoftmaxDims s = dims_of(gyt, softmax_dim(c.attrs, gyt));
  const float *gy = gyt.f32(), *y = c.inputs[1].f32();
  float* gx = c.outputs[0].f32();
  if (s.inner == 1) {
    ctx.parallel_for(s.outer, std::max<int64_t>(1, 8192 / s.L), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const float *g = gy + r * s.L, *yr = y + r * s.L;
        float* o = gx + r * s.L;
        double dot = 0;
        for (int64_t i = 0; i < s.L; ++i) dot += static_cast<double>(g[i]) * yr[i];
        const float d = static_cast<float>(dot);
        for (int64_t i = 0; i < s.L; ++i) o[i] = yr[i] * (g[i] - d);
      }
    });
    return;
  }
  const int64_t nblk = (s.inner + kInnerBlock - 1) / kInnerBlock;
  ctx.parallel_for(s.outer * nblk, std::max<int64_t>(1, 8192 / (s.L * kInnerBlock)), [&](int64_t b, int64_t e) {
    double dot[kInnerBlock];
    float dotf[kInnerBlock];
    for (int64_t t = b; t < e; ++t) {
      const int64_t o = t / nblk, i0 = (t % nblk) * kInnerBlock, n = std::min(kInnerBlock, s.inner - i0);
      const int64_t base = o * s.L * s.inner + i0;
      std::fill(dot, dot + n, 0.0);
      for (int64_t l = 0; l < s.L; ++l)
        for (int64_t i = 0; i < n; ++i) dot[i] += static_cast<double>(gy[base + l * s.inner + i]) * y[base + l * s.inner + i];
      for (int64_t i = 0; i < n; ++i) dotf[i] = static_cast<float>(dot[i]);
      for (int64_t l = 0; l < s.L; ++l)
        for (int64_t i = 0; i < n; ++i) {
          const int64_t k = base + l * s.inner + i;
          gx[k] = y[k] * (gy[k] - dotf[i]);
        }
    }
  });
}

}  // namespace

TDQ_REGISTER_OP({"softmax", 1, 1, infer_softmax, softmax_cpu, {}});
TDQ_REGISTER_OP({"softmax_backward", 2, 2, infer_softmax_backward, softmax_backward_cpu, {}});

}  // namespace tdq
