// avg_pool2d(x; kernel, stride): (N, C, H, W) -> (N, C, Ho, Wo) with
// Ho = (H - kernel) / stride + 1 (floor), no padding, square windows: as
// torch.nn.functional.avg_pool2d(x, kernel, stride). avg_pool2d_backward(gy;
// kernel, stride, shape) -> the input's shape: each input pixel gathers
// gy / kernel^2 from the windows that contain it (overlapping when stride <
// kernel), so every output is written by one thread and no atomics are needed.
#include <algorithm>

#include "../core/registry.h"

namespace tdq {
namespace {

struct Pool {
  int64_t k, s;
};

Pool pool_attrs(const Attrs& a) {
  Pool p{a.get_int("kernel"), 0};
  p.s = a.get_int("stride", p.k);
  TDQ_CHECK_RANGE(p.k >= 1, a.op, ": attribute 'kernel' must be at least 1, got ", p.k);
  TDQ_CHECK_RANGE(p.s >= 1, a.op, ": attribute 'stride' must be at least 1, got ", p.s);
  return p;
}

Shape pooled_shape(const Attrs& a, const Shape& x, const char* arg) {
  Pool p = pool_attrs(a);
  TDQ_CHECK_RANGE(x[2] >= p.k && x[3] >= p.k, a.op, ": argument '", arg, "' of shape ", shape_str(x),
                  " is smaller than the kernel ", p.k, "x", p.k);
  return {x[0], x[1], (x[2] - p.k) / p.s + 1, (x[3] - p.k) / p.s + 1};
}

std::vector<TensorMeta> infer_avg_pool(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "x", DType::f32);
  check_rank(a, in[0], "x", 4);
  return {{pooled_shape(a, in[0].shape, "x"), DType::f32}};
}

std::vector<TensorMeta> infer_avg_pool_backward(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "gy", DType::f32);
  const Shape xs = a.get_ints("shape");
  TDQ_CHECK_RANGE(xs.size() == 4, a.op, ": attribute 'shape' (the input's shape) must have 4 dimensions, got ",
                  shape_str(xs));
  for (auto d : xs) TDQ_CHECK_RANGE(d >= 0, a.op, ": attribute 'shape' ", shape_str(xs), " has a negative dimension");
  check_shape(a, in[0], "gy", pooled_shape(a, xs, "shape"));
  return {{xs, DType::f32}};
}

void avg_pool2d_forward(OpCall& c, const ExecContext& ctx) {
  const Tensor& x = c.inputs[0];
  const Tensor& y = c.outputs[0];
  const Pool p = pool_attrs(c.attrs);
  const int64_t h = x.shape[2], w = x.shape[3], ho = y.shape[2], wo = y.shape[3];
  const int64_t rows = y.shape[0] * y.shape[1] * ho;
  const float inv = 1.0f / static_cast<float>(p.k * p.k);
  const float* px = x.f32();
  float* py = y.f32();
  ctx.parallel_for(rows, std::max<int64_t>(1, 2048 / std::max<int64_t>(wo * p.k * p.k, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t plane = r / ho, i = r % ho;
      const float* src = px + (plane * h + i * p.s) * w;
      float* o = py + r * wo;
      for (int64_t j = 0; j < wo; ++j) {
        float acc = 0.f;
        for (int64_t u = 0; u < p.k; ++u)
          for (int64_t v = 0; v < p.k; ++v) acc += src[u * w + j * p.s + v];
        o[j] = acc * inv;
      }
    }
  });
}

// The windows covering position q along one axis: first..last (inclusive).
inline void covering(int64_t q, const Pool& p, int64_t n_out, int64_t& first, int64_t& last) {
  first = q < p.k ? 0 : (q - p.k) / p.s + 1;
  last = std::min(q / p.s, n_out - 1);
}

void avg_pool2d_backward(OpCall& c, const ExecContext& ctx) {
  const Tensor& gy = c.inputs[0];
  Tensor& gx = c.outputs[0];
  const Pool p = pool_attrs(c.attrs);
  const int64_t h = gx.shape[2], w = gx.shape[3], ho = gy.shape[2], wo = gy.shape[3];
  const int64_t rows = gx.shape[0] * gx.shape[1] * h;
  const float inv = 1.0f / static_cast<float>(p.k * p.k);
  const float* pg = gy.f32();
  float* po = gx.f32();
  ctx.parallel_for(rows, std::max<int64_t>(1, 2048 / std::max<int64_t>(w, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t plane = r / h, q = r % h;
      int64_t i0, i1;
      covering(q, p, ho, i0, i1);
      const float* g = pg + plane * ho * wo;
      float* o = po + r * w;
      for (int64_t t = 0; t < w; ++t) {
        int64_t j0, j1;
        covering(t, p, wo, j0, j1);
        float acc = 0.f;
        for (int64_t i = i0; i <= i1; ++i)
          for (int64_t j = j0; j <= j1; ++j) acc += g[i * wo + j];
        o[t] = acc * inv;
      }
    }
  });
}

}  // namespace

TDQ_REGISTER_OP({"avg_pool2d", 1, 1, infer_avg_pool, avg_pool2d_forward, {}});
TDQ_REGISTER_OP({"avg_pool2d_backward", 1, 1, infer_avg_pool_backward, avg_pool2d_backward, {}});

}  // namespace tdq
