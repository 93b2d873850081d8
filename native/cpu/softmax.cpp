// Softmax along one dimension, numerically stable (the maximum is taken out
// before exponentiating), and its backward gx = y * (gy - sum(gy * y)).
// x is seen as (outer, L, inner) around the softmax dim. The last dim
// (inner == 1) walks contiguous rows; other dims work on a block of inner
// positions at once so that every memory access stays contiguous. Scalar
// reference and AVX2 / AVX-512 paths (nn_simd.h) chosen by ctx.cpu_level.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "../core/registry.h"
#include "nn_simd.h"

namespace tdq {
namespace {

using namespace nnsimd;

struct SoftmaxDims {
  int64_t outer = 1, L = 1, inner = 1;
};

int64_t softmax_dim(const Attrs& a, const Tensor& x) {
  const int64_t d = a.get_int("dim", -1), nd = std::max<int64_t>(x.dim(), 1);
  TDQ_CHECK_RANGE(d >= -nd && d < nd, a.op, ": attribute 'dim' (", d, ") out of range for 'x' of shape ",
                  shape_str(x.shape));
  return d < 0 ? d + nd : d;
}

SoftmaxDims dims_of(const Tensor& x, int64_t dim) {
  SoftmaxDims s;
  if (x.dim() == 0) return s;  // a scalar is a softmax over one element
  for (int64_t i = 0; i < dim; ++i) s.outer *= x.shape[i];
  s.L = x.shape[dim];
  for (int64_t i = dim + 1; i < x.dim(); ++i) s.inner *= x.shape[i];
  return s;
}

std::vector<TensorMeta> infer_softmax(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "x", DType::f32);
  softmax_dim(a, in[0]);
  return {{in[0].shape, DType::f32}};
}

// softmax_backward(gy, y; dim) -> gx
std::vector<TensorMeta> infer_softmax_backward(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "gy", DType::f32);
  check_dtype(a, in[1], "y", DType::f32);
  check_shape(a, in[1], "y", in[0].shape);
  softmax_dim(a, in[0]);
  return {{in[0].shape, DType::f32}};
}

constexpr int64_t kInnerBlock = 64;

struct SmArgs {
  const float* x;  // forward: x; backward: y
  const float* g;  // backward: gy
  float* out;      // y or gx
  SoftmaxDims s;
  int64_t nblk;    // column blocks per outer index (inner > 1)
};

// Row r of a last-dim softmax. Sums accumulate in double (W lanes).
template <int W> TDQ_AINLINE void softmax_row(const float* x, float* y, int64_t L) {
  const float mx = row_max<W>(x, L);
  int64_t i = 0;
  double sum = 0;
  if constexpr (W > 1) {
    Vd<W> acc = Vd<W>{};
    const Vf<W> vm = vsplat<W>(mx);
    for (; i + W <= L; i += W) {
      const Vf<W> p = vexp<W>(vload<W>(x + i) - vm);
      vstore<W>(y + i, p);
      acc += to_double<W>(p);
    }
    sum = hsum_d<W>(acc);
  }
  for (; i < L; ++i) {
    y[i] = std::exp(x[i] - mx);
    sum += y[i];
  }
  scale_row<W>(y, L, static_cast<float>(1.0 / sum));
}

// gx = y * (gy - sum(gy * y)) along one row.
template <int W> TDQ_AINLINE void softmax_backward_row(const float* g, const float* y, float* gx, int64_t L) {
  int64_t i = 0;
  double dot = 0;
  if constexpr (W > 1) {
    Vd<W> acc = Vd<W>{};
    for (; i + W <= L; i += W) acc += to_double<W>(vload<W>(g + i) * vload<W>(y + i));
    dot = hsum_d<W>(acc);
  }
  for (; i < L; ++i) dot += static_cast<double>(g[i]) * y[i];
  const float d = static_cast<float>(dot);
  i = 0;
  if constexpr (W > 1) {
    const Vf<W> vd = vsplat<W>(d);
    for (; i + W <= L; i += W) vstore<W>(gx + i, vload<W>(y + i) * (vload<W>(g + i) - vd));
  }
  for (; i < L; ++i) gx[i] = y[i] * (g[i] - d);
}

template <int W> TDQ_AINLINE void acc_double(double* s, const Vf<W>& v) {
  Vd<W> a;
  std::memcpy(&a, s, sizeof a);
  a += to_double<W>(v);
  std::memcpy(s, &a, sizeof a);
}

// A softmax over dim for n <= kInnerBlock adjacent inner positions: element
// (l, i) at l * stride + i, so every pass reads rows of n contiguous floats.
template <int W> TDQ_AINLINE void softmax_cols(const float* x, float* y, int64_t L, int64_t stride, int64_t n) {
  float mx[kInnerBlock];
  double sum[kInnerBlock];
  std::fill(mx, mx + n, -std::numeric_limits<float>::infinity());
  std::fill(sum, sum + n, 0.0);
  for (int64_t l = 0; l < L; ++l) {
    const float* xl = x + l * stride;
    int64_t i = 0;
    if constexpr (W > 1)
      for (; i + W <= n; i += W) vstore<W>(mx + i, vmax<W>(vload<W>(mx + i), vload<W>(xl + i)));
    for (; i < n; ++i) mx[i] = std::max(mx[i], xl[i]);
  }
  for (int64_t l = 0; l < L; ++l) {
    const float* xl = x + l * stride;
    float* yl = y + l * stride;
    int64_t i = 0;
    if constexpr (W > 1)
      for (; i + W <= n; i += W) {
        const Vf<W> p = vexp<W>(vload<W>(xl + i) - vload<W>(mx + i));
        vstore<W>(yl + i, p);
        acc_double<W>(sum + i, p);
      }
    for (; i < n; ++i) {
      yl[i] = std::exp(xl[i] - mx[i]);
      sum[i] += yl[i];
    }
  }
  float inv[kInnerBlock];
  for (int64_t i = 0; i < n; ++i) inv[i] = static_cast<float>(1.0 / sum[i]);
  for (int64_t l = 0; l < L; ++l) {
    float* yl = y + l * stride;
    int64_t i = 0;
    if constexpr (W > 1)
      for (; i + W <= n; i += W) vstore<W>(yl + i, vload<W>(yl + i) * vload<W>(inv + i));
    for (; i < n; ++i) yl[i] *= inv[i];
  }
}

template <int W>
TDQ_AINLINE void softmax_backward_cols(const float* g, const float* y, float* gx, int64_t L, int64_t stride, int64_t n) {
  double dot[kInnerBlock];
  float d[kInnerBlock];
  std::fill(dot, dot + n, 0.0);
  for (int64_t l = 0; l < L; ++l) {
    const float *gl = g + l * stride, *yl = y + l * stride;
    int64_t i = 0;
    if constexpr (W > 1)
      for (; i + W <= n; i += W) acc_double<W>(dot + i, vload<W>(gl + i) * vload<W>(yl + i));
    for (; i < n; ++i) dot[i] += static_cast<double>(gl[i]) * yl[i];
  }
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<float>(dot[i]);
  for (int64_t l = 0; l < L; ++l) {
    const float *gl = g + l * stride, *yl = y + l * stride;
    float* ol = gx + l * stride;
    int64_t i = 0;
    if constexpr (W > 1)
      for (; i + W <= n; i += W) vstore<W>(ol + i, vload<W>(yl + i) * (vload<W>(gl + i) - vload<W>(d + i)));
    for (; i < n; ++i) ol[i] = yl[i] * (gl[i] - d[i]);
  }
}

// Items [b, e): rows when the softmax dim is the last one, else
// (outer index, column block) pairs.
template <int W, bool Back> TDQ_AINLINE void softmax_items(const SmArgs& a, int64_t b, int64_t e) {
  const SoftmaxDims& s = a.s;
  for (int64_t t = b; t < e; ++t) {
    if (s.inner == 1) {
      if constexpr (Back) softmax_backward_row<W>(a.g + t * s.L, a.x + t * s.L, a.out + t * s.L, s.L);
      else softmax_row<W>(a.x + t * s.L, a.out + t * s.L, s.L);
    } else {
      const int64_t o = t / a.nblk, i0 = (t % a.nblk) * kInnerBlock, n = std::min(kInnerBlock, s.inner - i0);
      const int64_t base = o * s.L * s.inner + i0;
      if constexpr (Back) softmax_backward_cols<W>(a.g + base, a.x + base, a.out + base, s.L, s.inner, n);
      else softmax_cols<W>(a.x + base, a.out + base, s.L, s.inner, n);
    }
  }
}

using SmFn = void (*)(const SmArgs&, int64_t, int64_t);
template <bool Back> void softmax_ref(const SmArgs& a, int64_t b, int64_t e) { softmax_items<1, Back>(a, b, e); }
#if TDQ_NN_X86
template <bool Back> TDQ_AVX2 void softmax_avx2(const SmArgs& a, int64_t b, int64_t e) { softmax_items<8, Back>(a, b, e); }
template <bool Back> TDQ_AVX512 void softmax_avx512(const SmArgs& a, int64_t b, int64_t e) { softmax_items<16, Back>(a, b, e); }
#endif

template <bool Back> void softmax_run(const SmArgs& a, const ExecContext& ctx) {
  SmFn fn = softmax_ref<Back>;
#if TDQ_NN_X86
  if (ctx.cpu_level == CpuLevel::avx512) fn = softmax_avx512<Back>;
  else if (ctx.cpu_level == CpuLevel::avx2) fn = softmax_avx2<Back>;
#endif
  const int64_t items = a.s.inner == 1 ? a.s.outer : a.s.outer * a.nblk;
  const int64_t per_item = a.s.L * std::min(a.s.inner, kInnerBlock);
  ctx.parallel_for(items, std::max<int64_t>(1, 8192 / std::max<int64_t>(per_item, 1)), [&](int64_t b, int64_t e) { fn(a, b, e); });
}

void softmax_cpu(OpCall& c, const ExecContext& ctx) {
  const Tensor& x = c.inputs[0];
  if (x.numel() == 0) return;
  const SoftmaxDims s = dims_of(x, softmax_dim(c.attrs, x));
  softmax_run<false>({x.f32(), nullptr, c.outputs[0].f32(), s, (s.inner + kInnerBlock - 1) / kInnerBlock}, ctx);
}

void softmax_backward_cpu(OpCall& c, const ExecContext& ctx) {
  const Tensor& gy = c.inputs[0];
  if (gy.numel() == 0) return;
  const SoftmaxDims s = dims_of(gy, softmax_dim(c.attrs, gy));
  softmax_run<true>({c.inputs[1].f32(), gy.f32(), c.outputs[0].f32(), s, (s.inner + kInnerBlock - 1) / kInnerBlock}, ctx);
}

}  // namespace

TDQ_REGISTER_OP({"softmax", 1, 1, infer_softmax, softmax_cpu, {}});
TDQ_REGISTER_OP({"softmax_backward", 2, 2, infer_softmax_backward, softmax_backward_cpu, {}});

}  // namespace tdq
