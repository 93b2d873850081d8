// pad2d: constant padding of the last two dims by (left, right, top, bottom),
// for the asymmetric padding of the DDPM downsampler; its backward crops.
#include <algorithm>

#include "../core/registry.h"

namespace tdq {
namespace {

struct Pads {
  int64_t l, r, t, b;
};

Pads read_pads(const Attrs& a) {
  auto p = a.get_ints("pads");
  TDQ_CHECK_RANGE(p.size() == 4, a.op, ": pads must be [left, right, top, bottom], got ", p.size(), " values");
  for (auto v : p) TDQ_CHECK_RANGE(v >= 0, a.op, ": pads must be non-negative");
  return {p[0], p[1], p[2], p[3]};
}

std::vector<TensorMeta> infer_pad2d(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "x", DType::f32);
  TDQ_CHECK_RANGE(in[0].dim() >= 2, a.op, ": x must have at least 2 dimensions, got ", shape_str(in[0].shape));
  Pads p = read_pads(a);
  Shape s = in[0].shape;
  s[s.size() - 1] += p.l + p.r;
  s[s.size() - 2] += p.t + p.b;
  return {{s, DType::f32}};
}

std::vector<TensorMeta> infer_pad2d_backward(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "gy", DType::f32);
  Pads p = read_pads(a);
  Shape s = in[0].shape;
  TDQ_CHECK_RANGE(s.size() >= 2 && s[s.size() - 1] > p.l + p.r && s[s.size() - 2] > p.t + p.b, a.op,
                  ": gy of shape ", shape_str(s), " is smaller than the padding");
  s[s.size() - 1] -= p.l + p.r;
  s[s.size() - 2] -= p.t + p.b;
  return {{s, DType::f32}};
}

// Copies the (H, W) planes of `small` into / out of the padded planes of `big`.
template <bool Crop>
void pad_planes(const Tensor& src, Tensor& dst, const Pads& p, const ExecContext& ctx) {
  const Tensor& big = Crop ? src : dst;
  const Tensor& small = Crop ? dst : src;
  const int64_t H = small.size(-2), W = small.size(-1), BW = big.size(-1), BH = big.size(-2);
  const int64_t planes = small.numel() / std::max<int64_t>(H * W, 1);
  const float* s = src.f32();
  float* d = dst.f32();
  ctx.parallel_for(planes, 16, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      if (!Crop) std::fill(d + n * BH * BW, d + (n + 1) * BH * BW, 0.f);
      for (int64_t y = 0; y < H; ++y) {
        const int64_t bi = n * BH * BW + (y + p.t) * BW + p.l, si = n * H * W + y * W;
        if (Crop) std::copy(s + bi, s + bi + W, d + si);
        else std::copy(s + si, s + si + W, d + bi);
      }
    }
  });
}

void pad2d_forward(OpCall& c, const ExecContext& ctx) { pad_planes<false>(c.inputs[0], c.outputs[0], read_pads(c.attrs), ctx); }
void pad2d_backward(OpCall& c, const ExecContext& ctx) { pad_planes<true>(c.inputs[0], c.outputs[0], read_pads(c.attrs), ctx); }

}  // namespace

TDQ_REGISTER_OP({"pad2d", 1, 1, infer_pad2d, pad2d_forward, {}});
TDQ_REGISTER_OP({"pad2d_backward", 1, 1, infer_pad2d_backward, pad2d_backward, {}});

}  // namespace tdq
