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
#include <immintrin.h>

#include <cmath>

#include "../core/registry.h"

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

__attribute__((target("avx2,fma"))) void fq_forward_avx2(const float* x, float* y, int64_t n, float s, float qmin,
                                                         float qmax) {
  const __m256 vs = _mm256_set1_ps(s), lo = _mm256_set1_ps(qmin), hi = _mm256_set1_ps(qmax);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 r = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + i), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // r as the second operand: max/min return it when it is NaN, as std::max/min do.
    r = _mm256_min_ps(hi, _mm256_max_ps(lo, r));
    _mm256_storeu_ps(y + i, _mm256_mul_ps(r, vs));
  }
  fq_forward_ref(x + i, y + i, n - i, s, qmin, qmax);
}

// GCC 12 warns inside its own AVX-512 headers (_mm512_undefined_ps as the
// pass-through of unmasked intrinsics): a known false positive.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) void fq_forward_avx512(const float* x, float* y, int64_t n,
                                                                              float s, float qmin, float qmax) {
  const __m512 vs = _mm512_set1_ps(s), lo = _mm512_set1_ps(qmin), hi = _mm512_set1_ps(qmax);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 r = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(x + i), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm512_min_ps(hi, _mm512_max_ps(lo, r));
    _mm512_storeu_ps(y + i, _mm512_mul_ps(r, vs));
  }
  fq_forward_ref(x + i, y + i, n - i, s, qmin, qmax);
}
#pragma GCC diagnostic pop

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

__attribute__((target("avx2,fma"))) double fq_backward_avx2(const float* gy, const float* x, float* dx, int64_t n,
                                                            float s, float qmin, float qmax) {
  const __m256 vs = _mm256_set1_ps(s), lo = _mm256_set1_ps(qmin), hi = _mm256_set1_ps(qmax);
  // Double accumulators: the terms have random signs and the sum is much
  // smaller than their magnitudes, so float lanes would lose digits.
  __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gy + i);
    const __m256 v = _mm256_div_ps(_mm256_loadu_ps(x + i), vs);
    const __m256 inside = _mm256_and_ps(_mm256_cmp_ps(v, lo, _CMP_GE_OQ), _mm256_cmp_ps(v, hi, _CMP_LE_OQ));
    _mm256_storeu_ps(dx + i, _mm256_and_ps(inside, g));
    const __m256 frac = _mm256_sub_ps(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), v);
    const __m256 edge = _mm256_blendv_ps(hi, lo, _mm256_cmp_ps(v, lo, _CMP_LT_OQ));
    const __m256 term = _mm256_mul_ps(g, _mm256_blendv_ps(edge, frac, inside));
    acc0 = _mm256_add_pd(acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(term)));
    acc1 = _mm256_add_pd(acc1, _mm256_cvtps_pd(_mm256_extractf128_ps(term, 1)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(acc0, acc1));
  double sum = 0;
  for (double l : lanes) sum += l;
  return sum + fq_backward_ref(gy + i, x + i, dx + i, n - i, s, qmin, qmax);
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // as for fq_forward_avx512
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) double fq_backward_avx512(const float* gy, const float* x,
                                                                                 float* dx, int64_t n, float s,
                                                                                 float qmin, float qmax) {
  const __m512 vs = _mm512_set1_ps(s), lo = _mm512_set1_ps(qmin), hi = _mm512_set1_ps(qmax);
  __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();  // double: see fq_backward_avx2
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 g = _mm512_loadu_ps(gy + i);
    const __m512 v = _mm512_div_ps(_mm512_loadu_ps(x + i), vs);
    const __mmask16 inside = _mm512_cmp_ps_mask(v, lo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(v, hi, _CMP_LE_OQ);
    _mm512_storeu_ps(dx + i, _mm512_maskz_mov_ps(inside, g));
    const __m512 frac = _mm512_sub_ps(_mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), v);
    const __m512 edge = _mm512_mask_mov_ps(hi, _mm512_cmp_ps_mask(v, lo, _CMP_LT_OQ), lo);
    const __m512 term = _mm512_mul_ps(g, _mm512_mask_mov_ps(edge, inside, frac));
    acc0 = _mm512_add_pd(acc0, _mm512_cvtps_pd(_mm512_castps512_ps256(term)));
    acc1 = _mm512_add_pd(acc1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(term), 1))));
  }
  alignas(64) double lanes[8];
  _mm512_store_pd(lanes, _mm512_add_pd(acc0, acc1));
  double sum = 0;
  for (double l : lanes) sum += l;
  return sum + fq_backward_ref(gy + i, x + i, dx + i, n - i, s, qmin, qmax);
}
#pragma GCC diagnostic pop

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
