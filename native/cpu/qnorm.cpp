// GroupNorm (+ per-sample scale/shift) (+ SiLU) + activation quantization in
// one pass, writing the uint8 levels the next integer convolution reads
// (qconv2d on uint8 x with 'offset', qgemm.h): the UNet's
// conv(silu(group_norm(x))) without the two float tensors in between.
//
// qgroup_norm_act(x (N, C, *) f32, weight? (C), bias? (C), act_step,
//                 scale? (N, C), shift? (N, C);
//                 num_groups, eps = 1e-5, silu = true, bits, signed, offset = 0,
//                 step_floor = 0, column = -1) -> uint8 (N, C, *)
//   v = group_norm(x, weight, bias)           as group_norm_forward
//   v = fl(fl(v * fl(scale + 1)) + shift)     with scale/shift (use_scale_shift_norm:
//                                             mul(h, addScalar(scale, 1)) then add(shift))
//   v = v / (1 + exp(-v))                     with silu, as the silu op
//   byte = clamp(rne(fl(fl(v - offset) / s)), qmin, qmax) + (signed ? 128 : 0)
//   s = max(act_step of the sample, step_floor); act_step [] / [1] / [N], or a
//   (1 or N, Q) table read at `column` (QActSpec, qgemm.h).
//
// Two passes over each (n, g) group: its mean and variance in one pass
// (gn_moments, group_norm.h), then per channel row one pass that normalises,
// applies scale/shift and SiLU and writes the levels, the floats never stored.
// Both are written once over a vector width W (nn_simd.h): W = 1 is the plain
// reference (the "scalar" CPU level), 8 / 16 the AVX2 / AVX-512 levels.
//
// Exactness: the float rows are group_norm_forward's own, from the same inline
// helpers at the same CPU level (group_norm.h): without scale/shift the fused GroupNorm +
// SiLU (what the model runs in float, nn/fused.ts), so those levels are
// quantize_act(group_norm_silu(x)) bit for bit; with scale/shift the plain
// GroupNorm, then the two elementwise roundings and SiLU by the silu op's
// vector formula (the nn_simd.h exp). The silu op computes the last few
// elements of each of its thread chunks with the scalar std::exp: there a
// value can differ by an ulp before quantization, which changes a level only
// if it lies within that ulp of a rounding boundary (tests: equal up to one
// level at no more than 0.1 % of the elements). The quantization is fake_quant's.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "group_norm.h"
#include "nn_simd.h"
#include "qgemm.h"

namespace tdq {
namespace {

using namespace nnsimd;

// A channel row's constants: the norm's (group_norm.h), scale/shift, and the
// quantization of the sample.
struct RowParams {
  float mhi, mlo, scale, shift;  // gn_norm
  float mult, add_after;         // fl(scale + 1), shift (with scale/shift)
  float off, s, lo, hi;          // quantization
  int32_t add;
};

// Keeps a vector out of the compiler's reach (no contraction of a * b + c
// across this point): each operation rounds as the separate ops do.
template <int W> TDQ_AINLINE void barrier(Vf<W>& v) {
#if TDQ_NN_X86
  if constexpr (W == 16) asm("" : "+v"(v));
  else asm("" : "+x"(v));
#else
  asm volatile("" : "+r"(v));
#endif
}

// The row's constants as vectors, made once per row.
template <int W> struct RowConst {
  Vf<W> mult, add_after, off, s, lo, hi;
  Vi<W> add;
  explicit TDQ_AINLINE RowConst(const RowParams& r)
      : mult(vsplat<W>(r.mult)), add_after(vsplat<W>(r.add_after)), off(vsplat<W>(r.off)), s(vsplat<W>(r.s)),
        lo(vsplat<W>(r.lo)), hi(vsplat<W>(r.hi)), add(r.add - Vi<W>{}) {}
};

// Levels of the norm's float output z: [fl(fl(z * mult) + add_after)],
// [silu as the silu op], then fake_quant's clamp(rne(fl(fl(v - off) / s))).
template <int W, bool SS, bool PostSilu> TDQ_AINLINE Vi<W> levels(Vf<W> v, const RowConst<W>& k) {
  barrier<W>(v);
  if constexpr (SS) {
    v = v * k.mult;
    barrier<W>(v);
    v = v + k.add_after;
    barrier<W>(v);
  }
  if constexpr (PostSilu) {
    v = v / (1.0f + vexp<W>(-v));  // activation.cpp's act_f<W, silu>
    barrier<W>(v);
  }
  Vf<W> q = (v - k.off) / k.s;
  barrier<W>(q);
  if constexpr (W == 1) {
    // quantize_row_w's scalar form
    if (q != q) q = 0.f;
    const float rr = std::min(std::max(std::nearbyint(q), k.lo), k.hi);
    return static_cast<int32_t>(rr) + k.add;
  } else {
    const Vf<W> zero{};
    q = q == q ? q : zero;
    q = k.lo > q ? k.lo : q;
    q = k.hi < q ? k.hi : q;
    const Vf<W> rr = (q + 12582912.0f) - 12582912.0f;
    return __builtin_convertvector(rr, Vi<W>) + k.add;
  }
}

// The low bytes of W int32 lanes (in 0..255: exact).
template <int W> TDQ_AINLINE void store_bytes(const Vi<W>& b, uint8_t* out) {
  if constexpr (W == 1) {
    *out = static_cast<uint8_t>(b);
  } else if constexpr (W == 8) {
    // a shuffle: GCC 12 narrows an 8 x int32 conversion lane by lane on AVX2
    typedef uint8_t Vb __attribute__((vector_size(W)));
    typedef uint8_t Vb32 __attribute__((vector_size(32)));
    const Vb32 bytes = reinterpret_cast<const Vb32&>(b);
    const Vb qb = __builtin_shufflevector(bytes, bytes, 0, 4, 8, 12, 16, 20, 24, 28);
    std::memcpy(out, &qb, W);
  } else {
    typedef uint8_t Vb __attribute__((vector_size(W)));
    const Vb qb = __builtin_convertvector(b, Vb);
    std::memcpy(out, &qb, W);
  }
}

// One channel row of n elements: x (n) f32 -> out (n) levels. The row's
// floats are group_norm_forward's: W lanes by the vector formula, the n % W
// tail by the scalar one (gn_norm<1>, as group_norm_forward's tail); the tail's
// scale/shift, SiLU and quantization then run through the vector formula from
// a padded copy, as they did on the stored row.
template <int W, bool NormSilu, bool SS, bool PostSilu>
TDQ_AINLINE void row_w(const float* x, uint8_t* out, int64_t n, const RowParams& r) {
  const RowConst<W> k(r);
  int64_t i = 0;
  for (; i + W <= n; i += W)
    store_bytes<W>(levels<W, SS, PostSilu>(gn::gn_norm<W, NormSilu>(vload<W>(x + i), r.mhi, r.mlo, r.scale, r.shift), k),
                   out + i);
  if constexpr (W > 1)
    if (i < n) {
      float pad[W] = {};
      uint8_t ob[W];
      for (int64_t j = 0; j < n - i; ++j) pad[j] = gn::gn_norm<1, NormSilu>(x[i + j], r.mhi, r.mlo, r.scale, r.shift);
      store_bytes<W>(levels<W, SS, PostSilu>(vload<W>(pad), k), ob);
      std::memcpy(out + i, ob, static_cast<size_t>(n - i));
    }
}

// What follows the norm: with scale/shift the plain GroupNorm, then the two
// elementwise roundings and (silu) the silu op's formula; without, the fused
// GroupNorm + SiLU the model runs in float (nn/fused.ts), or the plain norm.
enum class Mode { norm, norm_silu, ss, ss_silu };

template <int W> TDQ_AINLINE void row_mode(Mode m, const float* x, uint8_t* o, int64_t n, const RowParams& r) {
  switch (m) {
    case Mode::norm: return row_w<W, false, false, false>(x, o, n, r);
    case Mode::norm_silu: return row_w<W, true, false, false>(x, o, n, r);
    case Mode::ss: return row_w<W, false, true, false>(x, o, n, r);
    case Mode::ss_silu: return row_w<W, false, true, true>(x, o, n, r);
  }
}

struct Kernels {
  void (*moments)(const float*, int64_t, double&, double&);
  void (*row)(Mode, const float*, uint8_t*, int64_t, const RowParams&);
};

template <int W> struct Plain {
  static void moments(const float* p, int64_t n, double& mean, double& var) { gn::gn_moments<W>(p, n, mean, var); }
  static void row(Mode m, const float* x, uint8_t* o, int64_t n, const RowParams& r) { row_mode<W>(m, x, o, n, r); }
};
#if TDQ_NN_X86
struct Avx2 {
  static TDQ_AVX2 void moments(const float* p, int64_t n, double& mean, double& var) { gn::gn_moments<8>(p, n, mean, var); }
  static TDQ_AVX2 void row(Mode m, const float* x, uint8_t* o, int64_t n, const RowParams& r) { row_mode<8>(m, x, o, n, r); }
};
struct Avx512 {
  static TDQ_AVX512 void moments(const float* p, int64_t n, double& mean, double& var) {
    gn::gn_moments<16>(p, n, mean, var);
  }
  static TDQ_AVX512 void row(Mode m, const float* x, uint8_t* o, int64_t n, const RowParams& r) {
    row_mode<16>(m, x, o, n, r);
  }
};
#endif

Kernels kernels_for(CpuLevel level) {
#if TDQ_NN_X86
  if (level == CpuLevel::avx512) return {Avx512::moments, Avx512::row};
  if (level == CpuLevel::avx2) return {Avx2::moments, Avx2::row};
#endif
  (void)level;
  return {Plain<1>::moments, Plain<1>::row};
}

struct Dims {
  int64_t N, C, G, HW;
};

Dims dims_of(const std::vector<Tensor>& in, const Attrs& a) {
  const Tensor& x = in[0];
  check_dtype(a, x, "x", DType::f32);
  TDQ_CHECK_RANGE(x.dim() >= 2, a.op, ": argument 'x' must have shape (N, C, *), got ", shape_str(x.shape));
  Dims d{x.shape[0], x.shape[1], a.get_int("num_groups"), 1};
  for (int64_t i = 2; i < x.dim(); ++i) d.HW *= x.shape[i];
  TDQ_CHECK_RANGE(d.G >= 1 && d.C % d.G == 0, a.op, ": attribute 'num_groups' (", d.G,
                  ") must be >= 1 and divide the channel count of 'x' (C = ", d.C, ", shape ", shape_str(x.shape), ")");
  const double eps = a.get_float("eps", 1e-5);
  TDQ_CHECK_RANGE(std::isfinite(eps) && eps >= 0, a.op, ": attribute 'eps' must be a finite number >= 0, got ", eps);
  for (size_t i : {size_t{1}, size_t{2}}) {
    if (in.size() <= i || !in[i].defined()) continue;
    const char* arg = i == 1 ? "weight" : "bias";
    check_dtype(a, in[i], arg, DType::f32);
    TDQ_CHECK_RANGE(in[i].shape == Shape{d.C}, a.op, ": argument '", arg, "' must have shape [", d.C,
                    "] (one value per channel of x), got ", shape_str(in[i].shape));
  }
  const bool has_scale = in.size() > 4 && in[4].defined(), has_shift = in.size() > 5 && in[5].defined();
  TDQ_CHECK_RANGE(has_scale == has_shift, a.op, ": arguments 'scale' and 'shift' go together");
  for (size_t i : {size_t{4}, size_t{5}}) {
    if (in.size() <= i || !in[i].defined()) continue;
    const char* arg = i == 4 ? "scale" : "shift";
    check_dtype(a, in[i], arg, DType::f32);
    TDQ_CHECK_RANGE(in[i].numel() == d.N * d.C && in[i].dim() >= 2 && in[i].shape[0] == d.N && in[i].shape[1] == d.C,
                    a.op, ": argument '", arg, "' must have shape (N, C) or (N, C, 1, 1) = (", d.N, ", ", d.C,
                    ") for 'x' ", shape_str(x.shape), ", got ", shape_str(in[i].shape));
  }
  return d;
}

std::vector<TensorMeta> infer_qgroup_norm_act(const std::vector<Tensor>& in, const Attrs& a) {
  dims_of(in, a);
  const QActSpec q = qact_spec(a, in[0]);
  TDQ_CHECK_RANGE(!q.shifted, a.op, ": attribute 'input_shifted' does not apply here");
  check_act_steps_shape(a, q, in[3], in[0].shape[0], in[0].shape);
  return {{in[0].shape, DType::u8}};
}

void qgroup_norm_act(OpCall& c, const ExecContext& ctx) {
  const Dims d = dims_of(c.inputs, c.attrs);
  const Tensor& x = c.inputs[0];
  const QActSpec q = qact_spec(c.attrs, x);
  std::vector<float> steps(static_cast<size_t>(d.N));
  act_steps(c.attrs, q, c.inputs[3], d.N, x.shape, steps.data());
  const double eps = c.attrs.get_float("eps", 1e-5);
  const bool silu = c.attrs.get_bool("silu", true);
  const float* w = c.inputs[1].defined() ? c.inputs[1].f32() : nullptr;
  const float* b = c.inputs[2].defined() ? c.inputs[2].f32() : nullptr;
  const float* sc = c.inputs.size() > 4 && c.inputs[4].defined() ? c.inputs[4].f32() : nullptr;
  const float* sh = sc ? c.inputs[5].f32() : nullptr;
  const float* px = x.f32();
  uint8_t* py = c.outputs[0].data<uint8_t>();
  const int64_t cpg = d.C / d.G, m = cpg * d.HW;
  if (d.N == 0 || m == 0) return;
  const Kernels k = kernels_for(ctx.cpu_level);
  const Mode mode = sc ? (silu ? Mode::ss_silu : Mode::ss) : (silu ? Mode::norm_silu : Mode::norm);
  ctx.parallel_for(d.N * d.G, std::max<int64_t>(1, (1 << 14) / m), [&](int64_t begin, int64_t end) {
    for (int64_t ng = begin; ng < end; ++ng) {
      const int64_t n = ng / d.G, g = ng % d.G;
      const float* xg = px + ng * m;
      double mean, var;
      k.moments(xg, m, mean, var);
      const double rstd = 1.0 / std::sqrt(var + eps);
      RowParams r{};
      r.mhi = static_cast<float>(mean), r.mlo = static_cast<float>(mean - r.mhi);
      r.off = q.offset, r.s = steps[n], r.lo = q.lo, r.hi = q.hi, r.add = q.add;
      for (int64_t kk = 0; kk < cpg; ++kk) {
        const int64_t ch = g * cpg + kk;
        r.scale = static_cast<float>(rstd * (w ? w[ch] : 1.0f)), r.shift = b ? b[ch] : 0.f;
        if (sc) {
          float m1 = sc[n * d.C + ch];
          m1 = m1 + 1.0f;
          r.mult = m1, r.add_after = sh[n * d.C + ch];
        }
        k.row(mode, xg + kk * d.HW, py + ng * m + kk * d.HW, d.HW, r);
      }
    }
  });
}

}  // namespace

TDQ_REGISTER_OP({"qgroup_norm_act", 4, 6, infer_qgroup_norm_act, qgroup_norm_act, {}});

}  // namespace tdq
