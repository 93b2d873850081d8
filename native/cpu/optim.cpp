// Optimizer and parameter-maintenance ops. All of them update their inputs in
// place and return no outputs, so a parameter keeps its storage (and JS
// identity) for a whole run:
//   adam_step(param, grad, exp_avg, exp_avg_sq; lr, beta1, beta2, eps,
//             weight_decay, decoupled, step)   torch.optim.Adam / AdamW
//   grad_norm_sq(x0, ..., xk) -> []             sum of squares of all inputs
//   clip_scale_(norm, g0, ..., gk; max_norm)    g *= min(1, max_norm / (norm + 1e-6))
//   copy_(dst, src)                             dst <- src (load_state_dict)
// Adam's update must give the same bits at every CPU level (a run resumed on
// another machine continues identically). sqrt, div, mul and add are
// correctly rounded in every width; only GCC's fusing of a*b+c into an FMA in
// the AVX-512 code would change the bits, so fusing is off in this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include "../core/registry.h"
#include "nn_simd.h"

namespace tdq {
namespace {

// ---- adam_step ------------------------------------------------------------
// Scalars of one step, computed in double as torch does in Python, then
// rounded to float once (torch passes them to float32 kernels the same way).
struct AdamScalars {
  float b1, omb1, b2, omb2, eps, wd, decay, step_size, bc2_sqrt;
  bool decoupled;
};

AdamScalars adam_scalars(const Attrs& a) {
  const double lr = a.get_float("lr"), beta1 = a.get_float("beta1", 0.9), beta2 = a.get_float("beta2", 0.999);
  const double wd = a.get_float("weight_decay", 0);
  const double step = static_cast<double>(a.get_int("step"));
  AdamScalars s;
  s.decoupled = a.get_bool("decoupled", false);
  s.b1 = static_cast<float>(beta1);
  s.omb1 = static_cast<float>(1 - beta1);
  s.b2 = static_cast<float>(beta2);
  s.omb2 = static_cast<float>(1 - beta2);
  s.eps = static_cast<float>(a.get_float("eps", 1e-8));
  s.wd = static_cast<float>(s.decoupled ? 0.0 : wd);
  // AdamW shrinks the parameter before the Adam update: p *= 1 - lr * wd.
  s.decay = static_cast<float>(s.decoupled ? 1 - lr * wd : 1.0);
  s.step_size = static_cast<float>(lr / (1 - std::pow(beta1, step)));
  s.bc2_sqrt = static_cast<float>(std::sqrt(1 - std::pow(beta2, step)));
  return s;
}

std::vector<TensorMeta> infer_adam_step(const std::vector<Tensor>& in, const Attrs& a) {
  const char* names[] = {"param", "grad", "exp_avg", "exp_avg_sq"};
  for (int i = 0; i < 4; ++i) {
    check_dtype(a, in[i], names[i], DType::f32);
    if (i) check_shape(a, in[i], names[i], in[0].shape);
  }
  for (int i = 0; i < 4; ++i)
    for (int j = i + 1; j < 4; ++j)
      TDQ_CHECK_RANGE(in[i].storage != in[j].storage, a.op, ": arguments '", names[i], "' and '", names[j],
                      "' share storage; each must be its own tensor");
  TDQ_CHECK_TYPE(a.has("lr"), a.op, ": attribute 'lr' is required");
  TDQ_CHECK_TYPE(a.has("step"), a.op, ": attribute 'step' is required");
  const double lr = a.get_float("lr"), beta1 = a.get_float("beta1", 0.9), beta2 = a.get_float("beta2", 0.999);
  const double eps = a.get_float("eps", 1e-8), wd = a.get_float("weight_decay", 0);
  TDQ_CHECK_RANGE(std::isfinite(lr) && lr >= 0, a.op, ": attribute 'lr' must be a finite number >= 0, got ", lr);
  TDQ_CHECK_RANGE(beta1 >= 0 && beta1 < 1, a.op, ": attribute 'beta1' must be in [0, 1), got ", beta1);
  TDQ_CHECK_RANGE(beta2 >= 0 && beta2 < 1, a.op, ": attribute 'beta2' must be in [0, 1), got ", beta2);
  TDQ_CHECK_RANGE(std::isfinite(eps) && eps >= 0, a.op, ": attribute 'eps' must be a finite number >= 0, got ", eps);
  TDQ_CHECK_RANGE(std::isfinite(wd) && wd >= 0, a.op, ": attribute 'weight_decay' must be a finite number >= 0, got ", wd);
  const double step = a.get_float("step");
  TDQ_CHECK_RANGE(step >= 1 && step <= 9007199254740992.0 && step == std::floor(step), a.op,
                  ": attribute 'step' must be an integer >= 1 (the count including this step), got ", step);
  return {};
}

void adam_step_ref(const AdamScalars& s, float* p, const float* g, float* m, float* v, int64_t b, int64_t e) {
  for (int64_t i = b; i < e; ++i) {
    float pi = p[i] * s.decay;
    const float gi = g[i] + s.wd * pi;
    const float mi = s.b1 * m[i] + s.omb1 * gi;
    const float vi = s.b2 * v[i] + s.omb2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    const float denom = std::sqrt(vi) / s.bc2_sqrt + s.eps;
    p[i] = pi - s.step_size * (mi / denom);
  }
}

// One body for every width (nn_simd.h): the scalar reference above finishes
// the tail; W = 8 / 16 run as AVX2 / AVX-512 and give the reference's bits.
template <int W>
TDQ_AINLINE void adam_step_w(const AdamScalars& s, float* p, const float* g, float* m, float* v, int64_t b, int64_t e) {
  using namespace nnsimd;
  int64_t i = b;
  if constexpr (W > 1) {
    for (; i + W <= e; i += W) {
      const Vf<W> pi = vload<W>(p + i) * s.decay;
      const Vf<W> gi = vload<W>(g + i) + s.wd * pi;
      const Vf<W> mi = s.b1 * vload<W>(m + i) + s.omb1 * gi;
      const Vf<W> vi = s.b2 * vload<W>(v + i) + s.omb2 * (gi * gi);
      vstore<W>(m + i, mi);
      vstore<W>(v + i, vi);
      const Vf<W> denom = vsqrt<W>(vi) / s.bc2_sqrt + s.eps;
      vstore<W>(p + i, pi - s.step_size * (mi / denom));
    }
  }
  adam_step_ref(s, p, g, m, v, i, e);
}

#if TDQ_NN_X86
TDQ_AVX2 void adam_step_avx2(const AdamScalars& s, float* p, const float* g, float* m, float* v, int64_t b, int64_t e) {
  adam_step_w<8>(s, p, g, m, v, b, e);
}
TDQ_AVX512 void adam_step_avx512(const AdamScalars& s, float* p, const float* g, float* m, float* v, int64_t b,
                                 int64_t e) {
  adam_step_w<16>(s, p, g, m, v, b, e);
}
#else
constexpr auto adam_step_avx2 = adam_step_ref, adam_step_avx512 = adam_step_ref;
#endif

void adam_step_cpu(OpCall& c, const ExecContext& ctx) {
  const AdamScalars s = adam_scalars(c.attrs);
  float* p = c.inputs[0].f32();
  const float* g = c.inputs[1].f32();
  float *m = c.inputs[2].f32(), *v = c.inputs[3].f32();
  auto kernel = ctx.cpu_level == CpuLevel::avx512 ? adam_step_avx512
                : ctx.cpu_level == CpuLevel::avx2 ? adam_step_avx2
                                                  : adam_step_ref;
  ctx.parallel_for(c.inputs[0].numel(), 1 << 14, [&](int64_t b, int64_t e) { kernel(s, p, g, m, v, b, e); });
}

// ---- grad_norm_sq -----------------------------------------------------------
// Fixed-size blocks summed in a fixed order: the result does not depend on the
// thread count.
constexpr int64_t kNormBlock = 1 << 15;

double sum_sq_ref(const float* x, int64_t n) {
  double acc = 0;
  for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(x[i]) * x[i];
  return acc;
}

// Lane k sums the squares of elements k, k + W, ... in double; the lanes are
// then added in order.
template <int W> TDQ_AINLINE double sum_sq_w(const float* x, int64_t n) {
  using namespace nnsimd;
  Vd<W> acc{};
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const Vd<W> d = to_double<W>(vload<W>(x + i));
    acc += d * d;
  }
  return hsum_d<W>(acc) + sum_sq_ref(x + i, n - i);
}

#if TDQ_NN_X86
TDQ_AVX2 double sum_sq_avx2(const float* x, int64_t n) { return sum_sq_w<8>(x, n); }
TDQ_AVX512 double sum_sq_avx512(const float* x, int64_t n) { return sum_sq_w<16>(x, n); }
#else
constexpr auto sum_sq_avx2 = sum_sq_ref, sum_sq_avx512 = sum_sq_ref;
#endif

std::vector<TensorMeta> infer_grad_norm_sq(const std::vector<Tensor>& in, const Attrs& a) {
  for (size_t i = 0; i < in.size(); ++i) {
    const std::string arg = "x" + std::to_string(i);
    check_dtype(a, in[i], arg.c_str(), DType::f32);
  }
  return {{{}, DType::f32}};
}

void grad_norm_sq_cpu(OpCall& c, const ExecContext& ctx) {
  struct Block {
    const float* x;
    int64_t n;
  };
  std::vector<Block> blocks;
  for (const Tensor& t : c.inputs)
    for (int64_t o = 0; o < t.numel(); o += kNormBlock) blocks.push_back({t.f32() + o, std::min(kNormBlock, t.numel() - o)});
  auto kernel = ctx.cpu_level == CpuLevel::avx512 ? sum_sq_avx512
                : ctx.cpu_level == CpuLevel::avx2 ? sum_sq_avx2
                                                  : sum_sq_ref;
  std::vector<double> part(blocks.size(), 0.0);
  ctx.parallel_for(static_cast<int64_t>(blocks.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) part[k] = kernel(blocks[k].x, blocks[k].n);
  });
  double total = 0;
  for (double p : part) total += p;
  c.outputs[0].f32()[0] = static_cast<float>(total);
}

// ---- clip_scale_ -------------------------------------------------------------
std::vector<TensorMeta> infer_clip_scale(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "norm", DType::f32);
  TDQ_CHECK_RANGE(in[0].numel() == 1, a.op, ": argument 'norm' must have one element, got shape ", shape_str(in[0].shape));
  for (size_t i = 1; i < in.size(); ++i) {
    const std::string arg = "g" + std::to_string(i - 1);
    check_dtype(a, in[i], arg.c_str(), DType::f32);
    TDQ_CHECK_RANGE(in[i].storage != in[0].storage, a.op, ": argument '", arg, "' shares storage with 'norm'");
  }
  TDQ_CHECK_TYPE(a.has("max_norm"), a.op, ": attribute 'max_norm' is required");
  const double mx = a.get_float("max_norm");
  TDQ_CHECK_RANGE(std::isfinite(mx) && mx > 0, a.op, ": attribute 'max_norm' must be a finite number > 0, got ", mx);
  return {};
}

void clip_scale_cpu(OpCall& c, const ExecContext& ctx) {
  // float arithmetic, as torch.nn.utils.clip_grad_norm_ does on float32 tensors
  const float norm = c.inputs[0].f32()[0];
  const float coef = static_cast<float>(c.attrs.get_float("max_norm")) / (norm + 1e-6f);
  if (!(coef < 1.0f) && !std::isnan(coef)) return;  // scaling by 1 changes nothing
  for (size_t k = 1; k < c.inputs.size(); ++k) {
    float* g = c.inputs[k].f32();
    ctx.parallel_for(c.inputs[k].numel(), 1 << 15, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) g[i] *= coef;
    });
  }
}

// ---- copy_ -----------------------------------------------------------------
std::vector<TensorMeta> infer_copy(const std::vector<Tensor>& in, const Attrs& a) {
  check_defined(a, in[0], "dst");
  check_dtype(a, in[1], "src", in[0].dtype);
  check_shape(a, in[1], "src", in[0].shape);
  return {};
}

void copy_cpu(OpCall& c, const ExecContext& ctx) {
  const Tensor &dst = c.inputs[0], &src = c.inputs[1];
  if (dst.storage == src.storage) return;
  auto* d = dst.data<uint8_t>();
  const auto* s = src.data<uint8_t>();
  ctx.parallel_for(static_cast<int64_t>(dst.nbytes()), 1 << 20, [&](int64_t b, int64_t e) {
    std::memcpy(d + b, s + b, static_cast<size_t>(e - b));
  });
}

}  // namespace

TDQ_REGISTER_OP({"adam_step", 4, 4, infer_adam_step, adam_step_cpu, {}});
TDQ_REGISTER_OP({"grad_norm_sq", 1, 4096, infer_grad_norm_sq, grad_norm_sq_cpu, {}});
TDQ_REGISTER_OP({"clip_scale_", 1, 4097, infer_clip_scale, clip_scale_cpu, {}});
TDQ_REGISTER_OP({"copy_", 2, 2, infer_copy, copy_cpu, {}});

}  // namespace tdq
