// resize_bilinear(x; size [Ho, Wo], mode): (N, C, H, W) -> (N, C, Ho, Wo),
// bilinear interpolation without antialiasing. Where output index o samples
// the input along an axis of length n (scale = n / n_out):
//   "half_pixel"    src = max((o + 0.5) * scale - 0.5, 0): torch's
//                   F.interpolate(mode='bilinear', align_corners=False), the
//                   resize of pytorch-fid's InceptionV3;
//   "align_corners" src = o * (n - 1) / (n_out - 1) (0 when n_out = 1):
//                   align_corners=True;
//   "asymmetric"    src = o * scale: TF1's tf.image.resize_bilinear with its
//                   defaults (no half-pixel centers), the resize inside the
//                   original TF FID Inception graph.
// The two taps are floor(src) and the next one clamped to the edge, weighted
// by the fractional part.
// An axis whose length does not change is copied, as torch does.
// resize_bilinear_backward(gy; size, mode, shape) -> the input's shape; taps
// of neighbouring outputs share inputs, so one task owns a whole (n, c) plane.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "../core/registry.h"

namespace tdq {
namespace {

enum class Mode { half_pixel, align_corners, asymmetric };

Mode mode_attr(const Attrs& a) {
  const std::string m = a.get_string("mode", "half_pixel");
  if (m == "half_pixel") return Mode::half_pixel;
  if (m == "align_corners") return Mode::align_corners;
  if (m == "asymmetric") return Mode::asymmetric;
  fail(ErrorKind::Range, a.op, ": attribute 'mode' must be 'half_pixel', 'align_corners' or 'asymmetric', got '", m,
       "'");
}

std::vector<int64_t> size_attr(const Attrs& a) {
  const auto s = a.get_ints("size");
  TDQ_CHECK_RANGE(s.size() == 2, a.op, ": attribute 'size' must be [height, width], got ", shape_str(s));
  TDQ_CHECK_RANGE(s[0] >= 1 && s[1] >= 1, a.op, ": attribute 'size' must be positive, got ", shape_str(s));
  return s;
}

void check_input_hw(const Attrs& a, const Shape& x, const char* arg) {
  TDQ_CHECK_RANGE(x[2] >= 1 && x[3] >= 1, a.op, ": argument '", arg, "' of shape ", shape_str(x),
                  " has an empty image");
}

std::vector<TensorMeta> infer_forward(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "x", DType::f32);
  check_rank(a, in[0], "x", 4);
  check_input_hw(a, in[0].shape, "x");
  mode_attr(a);
  const auto s = size_attr(a);
  return {{{in[0].shape[0], in[0].shape[1], s[0], s[1]}, DType::f32}};
}

std::vector<TensorMeta> infer_backward(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "gy", DType::f32);
  mode_attr(a);
  const auto s = size_attr(a);
  const Shape xs = a.get_ints("shape");
  TDQ_CHECK_RANGE(xs.size() == 4, a.op, ": attribute 'shape' (the input's shape) must have 4 dimensions, got ",
                  shape_str(xs));
  for (auto d : xs) TDQ_CHECK_RANGE(d >= 0, a.op, ": attribute 'shape' ", shape_str(xs), " has a negative dimension");
  check_input_hw(a, xs, "shape");
  check_shape(a, in[0], "gy", {xs[0], xs[1], s[0], s[1]});
  return {{xs, DType::f32}};
}

// One axis: output o reads i0[o] with weight 1 - l[o] and i1[o] with l[o].
struct Taps {
  std::vector<int64_t> i0, i1;
  std::vector<float> l;
};

Taps taps(Mode mode, int64_t n, int64_t n_out) {
  Taps t;
  t.i0.resize(n_out), t.i1.resize(n_out), t.l.resize(n_out);
  // torch (CPU, float32 images) rounds the scale to float and then places the
  // samples in double; TF1 computes everything in float. Both reproduced, so
  // the taps agree with theirs to the last bit.
  const float scale = mode == Mode::align_corners ? (n_out > 1 ? static_cast<float>(n - 1) / static_cast<float>(n_out - 1) : 0.f)
                                                  : static_cast<float>(n) / static_cast<float>(n_out);
  for (int64_t o = 0; o < n_out; ++o) {
    int64_t a;
    float l;
    if (n == n_out) {
      a = o, l = 0.f;
    } else if (mode == Mode::asymmetric) {
      const float src = scale * static_cast<float>(o);
      a = std::min(static_cast<int64_t>(src), n - 1);
      l = src - static_cast<float>(a);
    } else {
      double src = static_cast<double>(scale) * (mode == Mode::half_pixel ? static_cast<double>(o) + 0.5 : static_cast<double>(o));
      if (mode == Mode::half_pixel) src = std::max(src - 0.5, 0.0);
      a = std::min(static_cast<int64_t>(src), n - 1);
      l = static_cast<float>(src - static_cast<double>(a));
    }
    t.i0[o] = a;
    t.i1[o] = std::min(a + 1, n - 1);
    t.l[o] = std::min(l, 1.f);
  }
  return t;
}

// (N, C, H, W) -> (N, C, Ho, Wo); one task per output row.
void resize_bilinear_forward(OpCall& c, const ExecContext& ctx) {
  const Tensor& x = c.inputs[0];
  const Tensor& y = c.outputs[0];
  const Mode mode = mode_attr(c.attrs);
  const int64_t h = x.shape[2], w = x.shape[3], ho = y.shape[2], wo = y.shape[3];
  const Taps th = taps(mode, h, ho), tw = taps(mode, w, wo);
  const int64_t rows = y.shape[0] * y.shape[1] * ho;
  const float* px = x.f32();
  float* py = y.f32();
  ctx.parallel_for(rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(wo, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t plane = r / ho, i = r % ho;
      const float* top = px + (plane * h + th.i0[i]) * w;
      const float* bot = px + (plane * h + th.i1[i]) * w;
      const float lh = th.l[i], kh = 1.f - lh;
      float* o = py + r * wo;
      for (int64_t j = 0; j < wo; ++j) {
        const int64_t a = tw.i0[j], bb = tw.i1[j];
        const float lw = tw.l[j], kw = 1.f - lw;
        o[j] = kh * (kw * top[a] + lw * top[bb]) + lh * (kw * bot[a] + lw * bot[bb]);
      }
    }
  });
}

void resize_bilinear_backward(OpCall& c, const ExecContext& ctx) {
  const Tensor& gy = c.inputs[0];
  Tensor& gx = c.outputs[0];
  const Mode mode = mode_attr(c.attrs);
  const int64_t h = gx.shape[2], w = gx.shape[3], ho = gy.shape[2], wo = gy.shape[3];
  const Taps th = taps(mode, h, ho), tw = taps(mode, w, wo);
  const int64_t planes = gx.shape[0] * gx.shape[1];
  const float* pg = gy.f32();
  float* po = gx.f32();
  ctx.parallel_for(planes, 1, [&](int64_t b, int64_t e) {
    for (int64_t q = b; q < e; ++q) {
      float* o = po + q * h * w;
      std::memset(o, 0, sizeof(float) * static_cast<size_t>(h * w));
      for (int64_t i = 0; i < ho; ++i) {
        const float* g = pg + (q * ho + i) * wo;
        float* top = o + th.i0[i] * w;
        float* bot = o + th.i1[i] * w;
        const float lh = th.l[i], kh = 1.f - lh;
        for (int64_t j = 0; j < wo; ++j) {
          const int64_t a = tw.i0[j], bb = tw.i1[j];
          const float lw = tw.l[j], kw = 1.f - lw;
          top[a] += kh * kw * g[j];
          top[bb] += kh * lw * g[j];
          bot[a] += lh * kw * g[j];
          bot[bb] += lh * lw * g[j];
        }
      }
    }
  });
}

}  // namespace

TDQ_REGISTER_OP({"resize_bilinear", 1, 1, infer_forward, resize_bilinear_forward, {}});
TDQ_REGISTER_OP({"resize_bilinear_backward", 1, 1, infer_backward, resize_bilinear_backward, {}});

}  // namespace tdq
