// upsample_nearest2x(x): (N, C, H, W) -> (N, C, 2H, 2W), each pixel repeated
// over a 2x2 block. upsample_nearest2x_backward(gy): (N, C, 2H, 2W) ->
// (N, C, H, W), the sum of each 2x2 block.
#include <cstring>

#include "../core/registry.h"

namespace tdq {
namespace {

std::vector<TensorMeta> infer_upsample(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "x", DType::f32);
  check_rank(a, in[0], "x", 4);
  Shape s = in[0].shape;
  s[2] *= 2, s[3] *= 2;
  return {{s, DType::f32}};
}

std::vector<TensorMeta> infer_upsample_backward(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "gy", DType::f32);
  check_rank(a, in[0], "gy", 4);
  Shape s = in[0].shape;
  TDQ_CHECK_RANGE(s[2] % 2 == 0 && s[3] % 2 == 0, a.op, ": argument 'gy' must have even height and width, got shape ",
                  shape_str(s));
  s[2] /= 2, s[3] /= 2;
  return {{s, DType::f32}};
}

// (N, C, H, W) -> (N, C, 2H, 2W); one task per input row (two output rows).
void upsample_nearest2x_forward(OpCall& c, const ExecContext& ctx) {
  const Tensor& x = c.inputs[0];
  const int64_t w = x.shape[3], rows = x.shape[0] * x.shape[1] * x.shape[2];
  const float* px = x.f32();
  float* py = c.outputs[0].f32();
  ctx.parallel_for(rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(w, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* src = px + r * w;
      float* top = py + r * 4 * w;
      for (int64_t j = 0; j < w; ++j) top[2 * j] = top[2 * j + 1] = src[j];
      std::memcpy(top + 2 * w, top, static_cast<size_t>(2 * w) * sizeof(float));
    }
  });
}

void upsample_nearest2x_backward(OpCall& c, const ExecContext& ctx) {
  Tensor& gx = c.outputs[0];
  const int64_t w = gx.shape[3], rows = gx.shape[0] * gx.shape[1] * gx.shape[2];
  const float* pg = c.inputs[0].f32();
  float* po = gx.f32();
  ctx.parallel_for(rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(w, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* top = pg + r * 4 * w;
      const float* bot = top + 2 * w;
      float* o = po + r * w;
      for (int64_t j = 0; j < w; ++j) o[j] = (top[2 * j] + top[2 * j + 1]) + (bot[2 * j] + bot[2 * j + 1]);
    }
  });
}

}  // namespace

TDQ_REGISTER_OP({"upsample_nearest2x", 1, 1, infer_upsample, upsample_nearest2x_forward, {}});
TDQ_REGISTER_OP({"upsample_nearest2x_backward", 1, 1, infer_upsample_backward, upsample_nearest2x_backward, {}});

}  // namespace tdq
