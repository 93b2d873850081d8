// SiLU and GELU (exact erf form and the tanh approximation), forward and
// backward, as torch.nn.functional.silu / gelu(approximate='none'|'tanh'),
// with a scalar reference and AVX2 / AVX-512 paths chosen by ctx.cpu_level.
#include <cmath>
#include <string>

#include "../core/registry.h"
#include "nn_simd.h"

namespace tdq {
namespace {

using namespace nnsimd;

constexpr float kSqrt1_2 = 0.70710678118654752f;    // 1 / sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;  // 1 / sqrt(2 pi)
constexpr float kSqrt2OverPi = 0.79788456080286536f; // sqrt(2 / pi)
constexpr float kGeluC = 0.044715f;

// The formulas are written once over the vector width W (see nn_simd.h): W = 1
// runs them on floats with libm's exp / erfc (the reference), W = 8 / 16 with
// the vector exp and erfc below.

// erfc(z) for W lanes. W = 1 is libm's. Vectors use the Chebyshev fit of
// Press et al. (Numerical Recipes, erfcc): erfc(|z|) = t exp(-z^2 + P(t)),
// t = 1 / (1 + |z|/2), with a relative error below 1.2e-7 for every z >= 0,
// so the small values for large |z| are as accurate as the large ones;
// erfc(-z) = 2 - erfc(z).
template <int W> TDQ_AINLINE Vf<W> v_erfc(const Vf<W>& z) {
  if constexpr (W == 1) {
    return std::erfc(z);
  } else {
    const Vf<W> a = z < 0.f ? -z : z;
    const Vf<W> t = 1.0f / (1.0f + 0.5f * a);
    Vf<W> p = t * 0.17087277f - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    const Vf<W> r = t * vexp<W>(p - a * a);
    return z < 0.f ? 2.0f - r : r;
  }
}

enum class Act { silu, gelu_erf, gelu_tanh };

// f(x). The forms avoid 1 + (-1 + tiny) for large negative x: erfc instead of
// 1 + erf, and 1 + tanh(u) written as 2 sigmoid(2u).
template <int W, Act A> TDQ_AINLINE Vf<W> act_f(const Vf<W>& x) {
  if constexpr (A == Act::silu) {
    return x / (1.0f + vexp<W>(-x));
  } else if constexpr (A == Act::gelu_erf) {
    return 0.5f * x * v_erfc<W>(-x * kSqrt1_2);
  } else {
    // 0.5 x (1 + tanh u) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3)
    const Vf<W> u = kSqrt2OverPi * (x + kGeluC * x * x * x);
    return x / (1.0f + vexp<W>(-2.0f * u));
  }
}

// f'(x)
template <int W, Act A> TDQ_AINLINE Vf<W> act_grad(const Vf<W>& x) {
  if constexpr (A == Act::silu) {
    const Vf<W> s = 1.0f / (1.0f + vexp<W>(-x));
    return s * (1.0f + x * (1.0f - s));
  } else if constexpr (A == Act::gelu_erf) {
    return 0.5f * v_erfc<W>(-x * kSqrt1_2) + x * kInvSqrt2Pi * vexp<W>(-0.5f * x * x);
  } else {
    const Vf<W> u = kSqrt2OverPi * (x + kGeluC * x * x * x);
    const Vf<W> s = 1.0f / (1.0f + vexp<W>(-2.0f * u));  // (1 + tanh u) / 2; 1 - tanh^2 u = 4 s (1 - s)
    return s + 2.0f * x * s * (1.0f - s) * kSqrt2OverPi * (1.0f + 3.0f * kGeluC * x * x);
  }
}

// y[i] = f(x[i]), or with Grad gx[i] = gy[i] f'(x[i]), for i in [b, e).
template <int W, Act A, bool Grad>
TDQ_AINLINE void act_range(const float* x, const float* gy, float* y, int64_t b, int64_t e) {
  int64_t i = b;
  if constexpr (W > 1) {
    for (; i + W <= e; i += W) {
      const Vf<W> v = vload<W>(x + i);
      if constexpr (Grad) vstore<W>(y + i, vload<W>(gy + i) * act_grad<W, A>(v));
      else vstore<W>(y + i, act_f<W, A>(v));
    }
  }
  for (; i < e; ++i) {
    if constexpr (Grad) y[i] = gy[i] * act_grad<1, A>(x[i]);
    else y[i] = act_f<1, A>(x[i]);
  }
}

using ActFn = void (*)(const float*, const float*, float*, int64_t, int64_t);

template <Act A, bool G> void act_ref(const float* x, const float* gy, float* y, int64_t b, int64_t e) {
  act_range<1, A, G>(x, gy, y, b, e);
}
#if TDQ_NN_X86
template <Act A, bool G> TDQ_AVX2 void act_avx2(const float* x, const float* gy, float* y, int64_t b, int64_t e) {
  act_range<8, A, G>(x, gy, y, b, e);
}
template <Act A, bool G> TDQ_AVX512 void act_avx512(const float* x, const float* gy, float* y, int64_t b, int64_t e) {
  act_range<16, A, G>(x, gy, y, b, e);
}
#endif

template <Act A, bool G> ActFn pick(CpuLevel l) {
#if TDQ_NN_X86
  if (l == CpuLevel::avx512) return act_avx512<A, G>;
  if (l == CpuLevel::avx2) return act_avx2<A, G>;
#endif
  return act_ref<A, G>;
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

// inputs: (x) or (gy, x)
template <Act A, bool Grad> void act_cpu(OpCall& c, const ExecContext& ctx) {
  const float* x = c.inputs[Grad ? 1 : 0].f32();
  const float* gy = Grad ? c.inputs[0].f32() : nullptr;
  float* y = c.outputs[0].f32();
  const ActFn fn = pick<A, Grad>(ctx.cpu_level);
  ctx.parallel_for(c.outputs[0].numel(), 1 << 14, [&](int64_t b, int64_t e) { fn(x, gy, y, b, e); });
}

void silu_cpu(OpCall& c, const ExecContext& ctx) { act_cpu<Act::silu, false>(c, ctx); }
void silu_backward_cpu(OpCall& c, const ExecContext& ctx) { act_cpu<Act::silu, true>(c, ctx); }
void gelu_cpu(OpCall& c, const ExecContext& ctx) {
  if (gelu_tanh_mode(c.attrs)) act_cpu<Act::gelu_tanh, false>(c, ctx);
  else act_cpu<Act::gelu_erf, false>(c, ctx);
}
void gelu_backward_cpu(OpCall& c, const ExecContext& ctx) {
  if (gelu_tanh_mode(c.attrs)) act_cpu<Act::gelu_tanh, true>(c, ctx);
  else act_cpu<Act::gelu_erf, true>(c, ctx);
}

}  // namespace

TDQ_REGISTER_OP({"silu", 1, 1, infer_act, silu_cpu, {}});
TDQ_REGISTER_OP({"silu_backward", 2, 2, infer_act_backward, silu_backward_cpu, {}});
TDQ_REGISTER_OP({"gelu", 1, 1, infer_act, gelu_cpu, {}});
TDQ_REGISTER_OP({"gelu_backward", 2, 2, infer_act_backward, gelu_backward_cpu, {}});

}  // namespace tdq
