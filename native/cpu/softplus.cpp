// Softplus, the positive output of the TDQ module (step size = softplus(MLP(enc(t)))).
//
// softplus_forward(x; beta = 1, threshold = 20) -> y
//   y = log1p(exp(beta * x)) / beta, and y = x where beta * x > threshold
//   (torch.nn.functional.softplus). log1p keeps y > 0 and accurate for very
//   negative x: a step size must never round to 0, which log(1 + exp(x)) in
//   float32 does below x = -17.
// softplus_backward(gy, x; beta, threshold) -> dx
//   dx = gy * sigmoid(beta * x), and gy where beta * x > threshold.
// Plain loops: the op runs on (batch x 1) MLP outputs, never on feature maps.
#include <cmath>

#include "../core/registry.h"

namespace tdq {
namespace {

struct SoftplusAttrs {
  float beta, threshold;
};

SoftplusAttrs softplus_attrs(const Attrs& a) {
  const double beta = a.get_float("beta", 1.0), threshold = a.get_float("threshold", 20.0);
  TDQ_CHECK_RANGE(std::isfinite(beta) && beta > 0, a.op, ": attribute 'beta' must be positive and finite, got ", beta);
  TDQ_CHECK_RANGE(std::isfinite(threshold), a.op, ": attribute 'threshold' must be finite, got ", threshold);
  return {static_cast<float>(beta), static_cast<float>(threshold)};
}

std::vector<TensorMeta> infer_forward(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "x", DType::f32);
  softplus_attrs(a);
  return {{in[0].shape, DType::f32}};
}

std::vector<TensorMeta> infer_backward(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "gy", DType::f32);
  check_dtype(a, in[1], "x", DType::f32);
  check_shape(a, in[0], "gy", in[1].shape);
  softplus_attrs(a);
  return {{in[1].shape, DType::f32}};
}

void softplus_forward(OpCall& c, const ExecContext& ctx) {
  const SoftplusAttrs p = softplus_attrs(c.attrs);
  const float* x = c.inputs[0].f32();
  float* y = c.outputs[0].f32();
  ctx.parallel_for(c.outputs[0].numel(), 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float bx = p.beta * x[i];
      y[i] = bx > p.threshold ? x[i] : std::log1p(std::exp(bx)) / p.beta;
    }
  });
}

void softplus_backward(OpCall& c, const ExecContext& ctx) {
  const SoftplusAttrs p = softplus_attrs(c.attrs);
  const float *gy = c.inputs[0].f32(), *x = c.inputs[1].f32();
  float* dx = c.outputs[0].f32();
  ctx.parallel_for(c.outputs[0].numel(), 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float bx = p.beta * x[i];
      // sigmoid(bx) = 1 / (1 + exp(-bx)): exp(-bx) overflows to inf for very
      // negative bx, which correctly gives 0.
      dx[i] = bx > p.threshold ? gy[i] : gy[i] / (1.0f + std::exp(-bx));
    }
  });
}

}  // namespace

TDQ_REGISTER_OP({"softplus_forward", 1, 1, infer_forward, softplus_forward, {}});
TDQ_REGISTER_OP({"softplus_backward", 2, 2, infer_backward, softplus_backward, {}});

}  // namespace tdq
