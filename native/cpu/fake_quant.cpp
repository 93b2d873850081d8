// Fake quantization with a learnable step (LSQ, Esser et al., ICLR 2020).
//
// fake_quant_forward(x, step; bits, signed, granularity, axis) -> y
//   y = clamp(round(x / s), qmin, qmax) * s, round half to even (torch.round),
//   signed: qmin = -2^(bits-1), qmax = 2^(bits-1) - 1; unsigned: 0, 2^bits - 1.
//   granularity 'tensor':  step shape [] or [1], one s for all of x;
//               'channel': step shape [x.shape[axis]] (weights (O, I, kh, kw): axis 0);
//               'sample':  step shape [x.shape[axis]], axis 0 by default: one s per
//                          batch element (each sample of a diffusion batch has its
//                          own timestep, hence its own activation step).
//   'channel' and 'sample' compute the same thing; the name records intent.
//
// fake_quant_backward(gy, x, step; same attrs, grad_scale) -> (dx, dstep)
//   dx = gy where qmin <= x/s <= qmax (inclusive, as torch.clamp's gradient), else 0
//   (straight-through estimator through round).
//   dstep[a] = g * sum over the elements e that share s_a of gy_e * t_e, with
//     t = round(x/s) - x/s inside the range, qmin below it, qmax above it
//   and the LSQ gradient scale g = 1 / sqrt(numel_per_step * qmax), where
//   numel_per_step = x.numel() / step.numel(). Attribute grad_scale (> 0) replaces g
//   (grad_scale = 1 gives the plain gradient of sum(gy * y)).
//
// Steps are data, so infer can only check their dtype and shape. A step that is
// not positive and finite makes the kernel throw before writing anything; the
// stream records the error and the next data()/sync() rejects with it.
#include <cmath>

#include "../core/registry.h"
#include "nn_simd.h"

namespace tdq {
namespace {

struct QuantSpec {
  float qmin = 0, qmax = 0;
  std::string granularity;
  int64_t outer = 1, groups = 1, inner = 1;  // x viewed as (outer, groups, inner); s indexed by group
};

QuantSpec quant_spec(const Attrs& a, const Tensor& x, const Tensor& s) {
  check_dtype(a, x, "x", DType::f32);
  check_dtype(a, s, "step", DType::f32);
  QuantSpec q;
  const int64_t bits = a.get_int("bits");
  TDQ_CHECK_RANGE(bits >= 2 && bits <= 8, a.op, ": attribute 'bits' must be an integer from 2 to 8, got ", bits);
  TDQ_CHECK_TYPE(a.has("signed"), a.op, ": missing attribute 'signed'");
  if (a.get_bool("signed", true)) {
    q.qmin = -static_cast<float>(int64_t{1} << (bits - 1));
    q.qmax = static_cast<float>((int64_t{1} << (bits - 1)) - 1);
  } else {
    q.qmin = 0;
    q.qmax = static_cast<float>((int64_t{1} << bits) - 1);
  }
  q.granularity = a.get_string("granularity", "tensor");
  if (q.granularity == "tensor") {
    TDQ_CHECK_RANGE(s.numel() == 1 && s.dim() <= 1, a.op, ": argument 'step' must have shape [] or [1] for ",
                    "granularity 'tensor', got ", shape_str(s.shape));
    q.inner = x.numel();
  } else {
    TDQ_CHECK_RANGE(q.granularity == "channel" || q.granularity == "sample", a.op,
                    ": attribute 'granularity' must be 'tensor', 'channel' or 'sample', got '", q.granularity, "'");
    const int64_t nd = x.dim();
    TDQ_CHECK_RANGE(nd >= 1, a.op, ": argument 'x' must have at least 1 dimension for granularity '", q.granularity,
                    "', got shape ", shape_str(x.shape));
    int64_t axis = a.get_int("axis", 0);
    TDQ_CHECK_RANGE(axis >= -nd && axis < nd, a.op, ": attribute 'axis' = ", axis, " is out of range for 'x' of shape ",
                    shape_str(x.shape));
    if (axis < 0) axis += nd;
    TDQ_CHECK_RANGE(s.dim() == 1 && s.shape[0] == x.shape[axis], a.op, ": argument 'step' must have shape [",
                    x.shape[axis], "] (one step per index of axis ", axis, " of 'x' ", shape_str(x.shape),
                    ", granularity '", q.granularity, "'), got ", shape_str(s.shape));
    for (int64_t d = 0; d < axis; ++d) q.outer *= x.shape[d];
    q.groups = x.shape[axis];
    for (int64_t d = axis + 1; d < nd; ++d) q.inner *= x.shape[d];
  }
  if (a.has("grad_scale")) {
    const double g = a.get_float("grad_scale");
    TDQ_CHECK_RANGE(std::isfinite(g) && g > 0, a.op, ": attribute 'grad_scale' must be positive and finite, got ", g);
  }
  return q;
}

std::vector<TensorMeta> infer_forward(const std::vector<Tensor>& in, const Attrs& a) {
  quant_spec(a, in[0], in[1]);
  return {{in[0].shape, DType::f32}};
}

std::vector<TensorMeta> infer_backward(const std::vector<Tensor>& in, const Attrs& a) {
  quant_spec(a, in[1], in[2]);
  check_dtype(a, in[0], "gy", DType::f32);
  check_shape(a, in[0], "gy", in[1].shape);
  return {{in[1].shape, DType::f32}, {in[2].shape, DType::f32}};
}

void check_steps(const Tensor& s, const QuantSpec& q) {
  const float* p = s.f32();
  for (int64_t i = 0; i < s.numel(); ++i) {
    if (p[i] > 0 && std::isfinite(p[i])) continue;
    if (q.granularity == "tensor")
      fail(ErrorKind::Range, "quantizer step 'step' = ", p[i], " must be positive and finite");
    fail(ErrorKind::Range, "quantizer step 'step'[", i, "] = ", p[i], " must be positive and finite (granularity '",
         q.granularity, "')");
  }
}

// ---- forward rows: y[i] = clamp(round(x[i] / s), qmin, qmax) * s -------------
// Division (not a multiply by 1/s) and round-half-even keep every level the
// same bit for bit, and equal to PyTorch's float32 x / s then torch.round.
void fq_forward_ref(const float* x, float* y, int64_t n, float s, float qmin, float qmax) {
  for (int64_t i = 0; i < n; ++i) {
    const float r = std::nearbyint(x[i] / s);
    y[i] = std::min(std::max(r, qmin), qmax) * s;
  }
}

// Wider rows (nn_simd.h): the value is clamped first and then rounded by the
// 1.5 * 2^23 trick, which is round-half-even for |v| < 2^22; the levels are
// integers, so clamp-then-round equals round-then-clamp, and a NaN stays NaN
// through both, as in the reference. The sign bit is copied back so that a
// value that rounds to zero keeps its sign, as nearbyint does.
template <int W> TDQ_AINLINE nnsimd::Vf<W> round_clamped(const nnsimd::Vf<W>& v, float qmin, float qmax) {
  using namespace nnsimd;
  const Vf<W> lo = vsplat<W>(qmin), hi = vsplat<W>(qmax);
  Vf<W> c = lo > v ? lo : v;  // NaN compares false and passes through
  c = hi < c ? hi : c;
  const Vf<W> r = (c + 12582912.0f) - 12582912.0f;
  return (Vf<W>)((Vi<W>)r | ((Vi<W>)c & (int32_t)0x80000000));
}

template <int W> TDQ_AINLINE void fq_forward_w(const float* x, float* y, int64_t n, float s, float qmin, float qmax) {
  using namespace nnsimd;
  int64_t i = 0;
  for (; i + W <= n; i += W) vstore<W>(y + i, round_clamped<W>(vload<W>(x + i) / s, qmin, qmax) * s);
  fq_forward_ref(x + i, y + i, n - i, s, qmin, qmax);
}

// ---- backward rows: dx, and the row's sum of gy * t (see the header) ---------
double fq_backward_ref(const float* gy, const float* x, float* dx, int64_t n, float s, float qmin, float qmax) {
  double acc = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i] / s;
    const bool inside = v >= qmin && v <= qmax;
    dx[i] = inside ? gy[i] : 0.f;
    const float t = inside ? std::nearbyint(v) - v : (v < qmin ? qmin : qmax);
    acc += static_cast<double>(gy[i]) * t;
  }
  return acc;
}

// Wider rows: the row's sum is kept in double lanes (the terms have random
// signs and the sum is much smaller than their magnitudes, so float lanes would
// lose digits), added in lane order at the end.
template <int W>
TDQ_AINLINE double fq_backward_w(const float* gy, const float* x, float* dx, int64_t n, float s, float qmin, float qmax) {
  using namespace nnsimd;
  const Vf<W> lo = vsplat<W>(qmin), hi = vsplat<W>(qmax), zero{};
  Vd<W> acc{};
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const Vf<W> g = vload<W>(gy + i);
    const Vf<W> v = vload<W>(x + i) / s;
    const Vi<W> inside = (v >= lo) & (v <= hi);
    vstore<W>(dx + i, inside ? g : zero);
    const Vf<W> frac = round_clamped<W>(v, qmin, qmax) - v;
    const Vf<W> edge = v < lo ? lo : hi;
    acc += to_double<W>(g * (inside ? frac : edge));
  }
  return hsum_d<W>(acc) + fq_backward_ref(gy + i, x + i, dx + i, n - i, s, qmin, qmax);
}

#if TDQ_NN_X86
TDQ_AVX2 void fq_forward_avx2(const float* x, float* y, int64_t n, float s, float qmin, float qmax) {
  fq_forward_w<8>(x, y, n, s, qmin, qmax);
}
TDQ_AVX512 void fq_forward_avx512(const float* x, float* y, int64_t n, float s, float qmin, float qmax) {
  fq_forward_w<16>(x, y, n, s, qmin, qmax);
}
TDQ_AVX2 double fq_backward_avx2(const float* gy, const float* x, float* dx, int64_t n, float s, float qmin, float qmax) {
  return fq_backward_w<8>(gy, x, dx, n, s, qmin, qmax);
}
TDQ_AVX512 double fq_backward_avx512(const float* gy, const float* x, float* dx, int64_t n, float s, float qmin,
                                     float qmax) {
  return fq_backward_w<16>(gy, x, dx, n, s, qmin, qmax);
}
#else
constexpr auto fq_forward_avx2 = fq_forward_ref, fq_forward_avx512 = fq_forward_ref;
constexpr auto fq_backward_avx2 = fq_backward_ref, fq_backward_avx512 = fq_backward_ref;
#endif

// Work is cut into blocks of at most kBlock elements of one (outer, group)
// row. The cut depends only on the shapes, so the per-block partial sums of
// dstep, and their fixed-order total, do not depend on the thread count.
constexpr int64_t kBlock = 2048;

struct Blocks {
  int64_t per_row, count;
  Blocks(const QuantSpec& q) : per_row(std::max<int64_t>(1, (q.inner + kBlock - 1) / kBlock)),
                               count(q.outer * q.groups * per_row) {}
  // Block u covers x[offset, offset + len) and uses step[group].
  void locate(const QuantSpec& q, int64_t u, int64_t& offset, int64_t& len, int64_t& group) const {
    const int64_t b = u % per_row, row = u / per_row;
    group = row % q.groups;
    offset = row * q.inner + b * kBlock;
    len = std::min(kBlock, q.inner - b * kBlock);
  }
};

void fake_quant_forward(OpCall& c, const ExecContext& ctx) {
  const Tensor &x = c.inputs[0], &s = c.inputs[1];
  const QuantSpec q = quant_spec(c.attrs, x, s);
  check_steps(s, q);
  if (x.numel() == 0) return;
  auto row = ctx.cpu_level == CpuLevel::avx512 ? fq_forward_avx512
             : ctx.cpu_level == CpuLevel::avx2 ? fq_forward_avx2
                                               : fq_forward_ref;
  const Blocks blocks(q);
  const float *px = x.f32(), *ps = s.f32();
  float* py = c.outputs[0].f32();
  ctx.parallel_for(blocks.count, std::max<int64_t>(1, 16384 / std::min(kBlock, q.inner)), [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) {
      int64_t off, len, grp;
      blocks.locate(q, u, off, len, grp);
      row(px + off, py + off, len, ps[grp], q.qmin, q.qmax);
    }
  });
}

void fake_quant_backward(OpCall& c, const ExecContext& ctx) {
  const Tensor &gy = c.inputs[0], &x = c.inputs[1], &s = c.inputs[2];
  const QuantSpec q = quant_spec(c.attrs, x, s);
  check_steps(s, q);
  float* ds = c.outputs[1].f32();
  const int64_t per_step = x.numel() / s.numel();
  if (per_step == 0) {
    for (int64_t i = 0; i < s.numel(); ++i) ds[i] = 0.f;
    return;
  }
  const double g = c.attrs.has("grad_scale") ? c.attrs.get_float("grad_scale")
                                             : 1.0 / std::sqrt(static_cast<double>(per_step) * q.qmax);
  auto row = ctx.cpu_level == CpuLevel::avx512 ? fq_backward_avx512
             : ctx.cpu_level == CpuLevel::avx2 ? fq_backward_avx2
                                               : fq_backward_ref;
  const Blocks blocks(q);
  std::vector<double> partial(static_cast<size_t>(blocks.count));
  const float *pg = gy.f32(), *px = x.f32(), *ps = s.f32();
  float* pdx = c.outputs[0].f32();
  ctx.parallel_for(blocks.count, std::max<int64_t>(1, 16384 / std::min(kBlock, q.inner)), [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) {
      int64_t off, len, grp;
      blocks.locate(q, u, off, len, grp);
      partial[u] = row(pg + off, px + off, pdx + off, len, ps[grp], q.qmin, q.qmax);
    }
  });
  std::vector<double> total(static_cast<size_t>(q.groups), 0.0);
  for (int64_t u = 0; u < blocks.count; ++u) total[(u / blocks.per_row) % q.groups] += partial[u];
  for (int64_t a = 0; a < q.groups; ++a) ds[a] = static_cast<float>(g * total[a]);
}

}  // namespace

TDQ_REGISTER_OP({"fake_quant_forward", 2, 2, infer_forward, fake_quant_forward, {}});
TDQ_REGISTER_OP({"fake_quant_backward", 3, 3, infer_backward, fake_quant_backward, {}});

}  // namespace tdq
