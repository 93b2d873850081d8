// SiLU and GELU (exact erf form and the tanh approximation), forward and
// backward, as torch.nn.functional.silu / gelu(approximate='none'|'tanh').
// The formulas are arranged so that no 1 + (-1 + tiny) cancellation occurs
// for large negative inputs: erfc instead of 1 + erf, and 1 + tanh(u)
// written as 2 * sigmoid(2u).
#include <cmath>
#include <string>

#include "../core/registry.h"

namespace tdq {
namespace {

constexpr float kSqrt1_2 = 0.70710678118654752f;    // 1 / sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;  // 1 / sqrt(2 pi)
constexpr float kSqrt2OverPi = 0.79788456080286536f; // sqrt(2 / pi)
constexpr float kGeluC = 0.044715f;

inline float sigmoidf(float x) { return 1.0f / (1.0f + std::exp(-x)); }

inline float silu_f(float x) { return x / (1.0f + std::exp(-x)); }
inline float silu_grad(float x) {
  const float s = sigmoidf(x);
  return s * (1.0f + x * (1.0f - s));
}

inline float gelu_erf_f(float x) { return 0.5f * x * std::erfc(-x * kSqrt1_2); }
inline float gelu_erf_grad(float x) {
  return 0.5f * std::erfc(-x * kSqrt1_2) + x * kInvSqrt2Pi * std::exp(-0.5f * x * x);
}

// 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3)
inline float gelu_tanh_f(float x) {
  const float u = kSqrt2OverPi * (x + kGeluC * x * x * x);
  return x * sigmoidf(2.0f * u);
}
inline float gelu_tanh_grad(float x) {
  const float u = kSqrt2OverPi * (x + kGeluC * x * x * x);
  const float s = sigmoidf(2.0f * u);  // (1 + tanh u) / 2; 1 - tanh^2 u = 4 s (1 - s)
  return s + 2.0f * x * s * (1.0f - s) * kSqrt2OverPi * (1.0f + 3.0f * kGeluC * x * x);
}

bool gelu_tanh_mode(const Attrs& a) {
  const std::string m = a.get_string("approximate", "none");
  TDQ_CHECK_RANGE(m == "none" || m == "tanh", a.op, ": attribute 'approximate' must be 'none' or 'tanh', got '", m, "'");
  return m == "tanh";
}

std::vector<TensorMeta> infer_act(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "x", DType::f32);
  if (a.op.rfind("gelu", 0) == 0) gelu_tanh_mode(a);
  return {{in[0].shape, DType::f32}};
}

// *_backward(gy, x) -> gx = gy * f'(x)
std::vector<TensorMeta> infer_act_backward(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "gy", DType::f32);
  check_dtype(a, in[1], "x", DType::f32);
  check_shape(a, in[1], "x", in[0].shape);
  if (a.op.rfind("gelu", 0) == 0) gelu_tanh_mode(a);
  return {{in[0].shape, DType::f32}};
}

template <typename F>
void map1(OpCall& c, const ExecContext& ctx, F f) {
  const float* x = c.inputs[0].f32();
  float* y = c.outputs[0].f32();
  ctx.parallel_for(c.outputs[0].numel(), 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] = f(x[i]);
  });
}

template <typename F>
void map_grad(OpCall& c, const ExecContext& ctx, F fprime) {
  const float *gy = c.inputs[0].f32(), *x = c.inputs[1].f32();
  float* gx = c.outputs[0].f32();
  ctx.parallel_for(c.outputs[0].numel(), 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) gx[i] = gy[i] * fprime(x[i]);
  });
}

void silu_cpu(OpCall& c, const ExecContext& ctx) { map1(c, ctx, silu_f); }
void silu_backward_cpu(OpCall& c, const ExecContext& ctx) { map_grad(c, ctx, silu_grad); }
void gelu_cpu(OpCall& c, const ExecContext& ctx) {
  if (gelu_tanh_mode(c.attrs)) map1(c, ctx, gelu_tanh_f);
  else map1(c, ctx, gelu_erf_f);
}
void gelu_backward_cpu(OpCall& c, const ExecContext& ctx) {
  if (gelu_tanh_mode(c.attrs)) map_grad(c, ctx, gelu_tanh_grad);
  else map_grad(c, ctx, gelu_erf_grad);
}

}  // namespace

TDQ_REGISTER_OP({"silu", 1, 1, infer_act, silu_cpu, {}});
TDQ_REGISTER_OP({"silu_backward", 2, 2, infer_act_backward, silu_backward_cpu, {}});
TDQ_REGISTER_OP({"gelu", 1, 1, infer_act, gelu_cpu, {}});
TDQ_REGISTER_OP({"gelu_backward", 2, 2, infer_act_backward, gelu_backward_cpu, {}});

}  // namespace tdq
