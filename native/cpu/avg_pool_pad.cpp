// avg_pool2d_padded(x; kernel, stride, padding, count_include_pad):
// (N, C, H, W) -> (N, C, Ho, Wo), Ho = (H + 2 * padding - kernel) / stride + 1,
// as torch.nn.functional.avg_pool2d(x, kernel, stride, padding,
// count_include_pad=...) with ceil_mode=False. The zero padding counts in the
// divisor only with count_include_pad (torch's default); the FID Inception
// averages over the real pixels alone (count_include_pad=False). The same
// kernels serve the unpadded avg_pool2d of the UNets (padding 0).
// avg_pool2d_padded_backward(gy; kernel, stride, padding, count_include_pad,
// shape) -> the input's shape: each input pixel gathers gy / divisor from the
// windows that contain it, so every output is written by one thread.
#include <algorithm>

#include <string>

#include "../core/registry.h"

namespace tdq {
namespace {

struct Pool {
  int64_t k, s, p;
  bool include_pad;
};

Pool pool_attrs(const Attrs& a) {
  Pool p{a.get_int("kernel"), 0, 0, a.get_bool("count_include_pad", true)};
  p.s = a.get_int("stride", p.k);
  p.p = a.get_int("padding", 0);
  TDQ_CHECK_RANGE(p.k >= 1, a.op, ": attribute 'kernel' must be at least 1, got ", p.k);
  TDQ_CHECK_RANGE(p.s >= 1, a.op, ": attribute 'stride' must be at least 1, got ", p.s);
  TDQ_CHECK_RANGE(p.p >= 0 && 2 * p.p <= p.k, a.op, ": attribute 'padding' must be in [0, kernel / 2] = [0, ", p.k / 2,
                  "], got ", p.p);
  return p;
}

Shape pooled_shape(const Attrs& a, const Shape& x, const char* arg) {
  const Pool p = pool_attrs(a);
  TDQ_CHECK_RANGE(x[2] + 2 * p.p >= p.k && x[3] + 2 * p.p >= p.k, a.op, ": argument '", arg, "' of shape ",
                  shape_str(x), p.p ? " (padded by " + std::to_string(p.p) + ")" : std::string(),
                  " is smaller than the kernel ", p.k, "x", p.k);
  return {x[0], x[1], (x[2] + 2 * p.p - p.k) / p.s + 1, (x[3] + 2 * p.p - p.k) / p.s + 1};
}

std::vector<TensorMeta> infer_forward(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "x", DType::f32);
  check_rank(a, in[0], "x", 4);
  return {{pooled_shape(a, in[0].shape, "x"), DType::f32}};
}

std::vector<TensorMeta> infer_backward(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "gy", DType::f32);
  const Shape xs = a.get_ints("shape");
  TDQ_CHECK_RANGE(xs.size() == 4, a.op, ": attribute 'shape' (the input's shape) must have 4 dimensions, got ",
                  shape_str(xs));
  for (auto d : xs) TDQ_CHECK_RANGE(d >= 0, a.op, ": attribute 'shape' ", shape_str(xs), " has a negative dimension");
  check_shape(a, in[0], "gy", pooled_shape(a, xs, "shape"));
  return {{xs, DType::f32}};
}

// Output index o along one axis of length n: the clipped range [lo, hi) it
// averages and the number of positions its divisor counts along this axis.
struct Span {
  int64_t lo, hi, count;
};

inline Span span(const Pool& p, int64_t n, int64_t o) {
  const int64_t start = o * p.s - p.p, end = std::min(start + p.k, n + p.p);
  Span sp{std::max<int64_t>(start, 0), std::min(end, n), 0};
  sp.count = p.include_pad ? end - start : sp.hi - sp.lo;
  return sp;
}

// (N, C, H, W) -> (N, C, Ho, Wo); one task per output row.
void avg_pool2d_padded_forward(OpCall& c, const ExecContext& ctx) {
  const Tensor& x = c.inputs[0];
  const Tensor& y = c.outputs[0];
  const Pool p = pool_attrs(c.attrs);
  const int64_t h = x.shape[2], w = x.shape[3], ho = y.shape[2], wo = y.shape[3];
  const int64_t rows = y.shape[0] * y.shape[1] * ho;
  const float* px = x.f32();
  float* py = y.f32();
  ctx.parallel_for(rows, std::max<int64_t>(1, 2048 / std::max<int64_t>(wo * p.k * p.k, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t plane = r / ho;
      const Span si = span(p, h, r % ho);
      const float* src = px + plane * h * w;
      float* o = py + r * wo;
      for (int64_t j = 0; j < wo; ++j) {
        const Span sj = span(p, w, j);
        float acc = 0.f;
        for (int64_t u = si.lo; u < si.hi; ++u)
          for (int64_t v = sj.lo; v < sj.hi; ++v) acc += src[u * w + v];
        o[j] = acc / static_cast<float>(si.count * sj.count);
      }
    }
  });
}

// The outputs whose windows cover input position q along an axis: [first, last].
inline void covering(int64_t q, const Pool& p, int64_t n_out, int64_t& first, int64_t& last) {
  const int64_t t = q + p.p;  // position in the padded axis
  first = t < p.k ? 0 : (t - p.k) / p.s + 1;
  last = std::min(t / p.s, n_out - 1);
}

void avg_pool2d_padded_backward(OpCall& c, const ExecContext& ctx) {
  const Tensor& gy = c.inputs[0];
  Tensor& gx = c.outputs[0];
  const Pool p = pool_attrs(c.attrs);
  const int64_t h = gx.shape[2], w = gx.shape[3], ho = gy.shape[2], wo = gy.shape[3];
  const int64_t rows = gx.shape[0] * gx.shape[1] * h;
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
        for (int64_t i = i0; i <= i1; ++i) {
          const int64_t ci = span(p, h, i).count;
          for (int64_t j = j0; j <= j1; ++j) acc += g[i * wo + j] / static_cast<float>(ci * span(p, w, j).count);
        }
        o[t] = acc;
      }
    }
  });
}

}  // namespace

TDQ_REGISTER_OP({"avg_pool2d_padded", 1, 1, infer_forward, avg_pool2d_padded_forward, {}});
TDQ_REGISTER_OP({"avg_pool2d_padded_backward", 1, 1, infer_backward, avg_pool2d_padded_backward, {}});
// The unpadded pool of the UNets (torch's avg_pool2d(x, k, s)) is the same op with padding 0.
TDQ_REGISTER_OP({"avg_pool2d", 1, 1, infer_forward, avg_pool2d_padded_forward, {}});
TDQ_REGISTER_OP({"avg_pool2d_backward", 1, 1, infer_backward, avg_pool2d_padded_backward, {}});

}  // namespace tdq
