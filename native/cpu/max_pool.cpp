// max_pool2d(x; kernel, stride, padding): (N, C, H, W) -> (N, C, Ho, Wo) with
// Ho = (H + 2 * padding - kernel) / stride + 1 (floor), square windows, the
// padding acting as -inf: torch.nn.functional.max_pool2d(x, kernel, stride,
// padding) with ceil_mode=False, dilation 1. NaN wins over any number (as
// torch propagates it), and among equal maxima the first in row-major window
// order is the argmax, which the backward uses.
// max_pool2d_backward(gy, x; kernel, stride, padding) -> gx of x's shape:
// each gy element goes to its window's argmax, recomputed from x. Windows may
// overlap (stride < kernel), so one task owns a whole (n, c) plane and adds
// into it: no atomics, and the sums happen in a fixed order.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "../core/registry.h"

namespace tdq {
namespace {

struct Pool {
  int64_t k, s, p;
};

Pool pool_attrs(const Attrs& a) {
  Pool p{a.get_int("kernel"), 0, 0};
  p.s = a.get_int("stride", p.k);
  p.p = a.get_int("padding", 0);
  TDQ_CHECK_RANGE(p.k >= 1, a.op, ": attribute 'kernel' must be at least 1, got ", p.k);
  TDQ_CHECK_RANGE(p.s >= 1, a.op, ": attribute 'stride' must be at least 1, got ", p.s);
  // As torch: a window must never lie wholly in the padding, so every output
  // has at least one real input under it.
  TDQ_CHECK_RANGE(p.p >= 0 && 2 * p.p <= p.k, a.op, ": attribute 'padding' must be in [0, kernel / 2] = [0, ", p.k / 2,
                  "], got ", p.p);
  return p;
}

Shape pooled_shape(const Attrs& a, const Shape& x, const char* arg) {
  const Pool p = pool_attrs(a);
  TDQ_CHECK_RANGE(x[2] + 2 * p.p >= p.k && x[3] + 2 * p.p >= p.k, a.op, ": argument '", arg, "' of shape ",
                  shape_str(x), " (padded by ", p.p, ") is smaller than the kernel ", p.k, "x", p.k);
  return {x[0], x[1], (x[2] + 2 * p.p - p.k) / p.s + 1, (x[3] + 2 * p.p - p.k) / p.s + 1};
}

std::vector<TensorMeta> infer_max_pool(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "x", DType::f32);
  check_rank(a, in[0], "x", 4);
  return {{pooled_shape(a, in[0].shape, "x"), DType::f32}};
}

std::vector<TensorMeta> infer_max_pool_backward(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "gy", DType::f32);
  check_dtype(a, in[1], "x", DType::f32);
  check_rank(a, in[1], "x", 4);
  check_shape(a, in[0], "gy", pooled_shape(a, in[1].shape, "x"));
  return {{in[1].shape, DType::f32}};
}

// The window of output (i, j) clipped to the image: rows [r0, r1), cols [c0, c1).
struct Window {
  int64_t r0, r1, c0, c1;
};

inline Window window(const Pool& p, int64_t h, int64_t w, int64_t i, int64_t j) {
  const int64_t r = i * p.s - p.p, c = j * p.s - p.p;
  return {std::max<int64_t>(r, 0), std::min(r + p.k, h), std::max<int64_t>(c, 0), std::min(c + p.k, w)};
}

// The offset (within the plane) of the window's maximum.
inline int64_t argmax(const float* plane, int64_t w, const Window& win) {
  int64_t best = win.r0 * w + win.c0;
  float m = plane[best];
  for (int64_t u = win.r0; u < win.r1; ++u)
    for (int64_t v = win.c0; v < win.c1; ++v) {
      const float x = plane[u * w + v];
      if (x > m || (std::isnan(x) && !std::isnan(m))) m = x, best = u * w + v;
    }
  return best;
}

// (N, C, H, W) -> (N, C, Ho, Wo); one task per output row.
void max_pool2d_forward(OpCall& c, const ExecContext& ctx) {
  const Tensor& x = c.inputs[0];
  const Tensor& y = c.outputs[0];
  const Pool p = pool_attrs(c.attrs);
  const int64_t h = x.shape[2], w = x.shape[3], ho = y.shape[2], wo = y.shape[3];
  const int64_t rows = y.shape[0] * y.shape[1] * ho;
  const float* px = x.f32();
  float* py = y.f32();
  ctx.parallel_for(rows, std::max<int64_t>(1, 2048 / std::max<int64_t>(wo * p.k * p.k, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t plane = r / ho, i = r % ho;
      const float* src = px + plane * h * w;
      float* o = py + r * wo;
      for (int64_t j = 0; j < wo; ++j) o[j] = src[argmax(src, w, window(p, h, w, i, j))];
    }
  });
}

// (N, C, Ho, Wo), x (N, C, H, W) -> (N, C, H, W); one task per plane.
void max_pool2d_backward(OpCall& c, const ExecContext& ctx) {
  const Tensor& gy = c.inputs[0];
  const Tensor& x = c.inputs[1];
  Tensor& gx = c.outputs[0];
  const Pool p = pool_attrs(c.attrs);
  const int64_t h = x.shape[2], w = x.shape[3], ho = gy.shape[2], wo = gy.shape[3];
  const int64_t planes = x.shape[0] * x.shape[1];
  const float* pg = gy.f32();
  const float* px = x.f32();
  float* po = gx.f32();
  ctx.parallel_for(planes, 1, [&](int64_t b, int64_t e) {
    for (int64_t q = b; q < e; ++q) {
      const float* src = px + q * h * w;
      const float* g = pg + q * ho * wo;
      float* o = po + q * h * w;
      std::memset(o, 0, sizeof(float) * static_cast<size_t>(h * w));
      for (int64_t i = 0; i < ho; ++i)
        for (int64_t j = 0; j < wo; ++j) o[argmax(src, w, window(p, h, w, i, j))] += g[i * wo + j];
    }
  });
}

}  // namespace

TDQ_REGISTER_OP({"max_pool2d", 1, 1, infer_max_pool, max_pool2d_forward, {}});
TDQ_REGISTER_OP({"max_pool2d_backward", 2, 2, infer_max_pool_backward, max_pool2d_backward, {}});

}  // namespace tdq
