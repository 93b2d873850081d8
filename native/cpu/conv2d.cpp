// 2-D convolution (dilation 1, groups 1) as im2col + GEMM, with both backward
// passes:
//   conv2d_forward(x, weight, bias?, add_channel?, residual?)
//                                          y  = W · col(x) + b [+ add_channel[n, o]] [+ residual]
//   conv2d_backward_input(gy, weight)      gx = col2im(W^T · gy)
//   conv2d_backward_weight(gy, x)          gW = sum_n gy_n · col(x_n)^T,  gb = sum gy
// with x (N, C, H, W), weight (O, C, kH, kW), y (N, O, Ho, Wo).
//
// col(x_n) is the (C*kH*kW, Ho*Wo) matrix whose column p holds the input patch
// under output pixel p. It is built for one sample at a time, or for a chunk
// of a few samples side by side, (C*kH*kW, nb*Ho*Wo), where maps are too small
// to make a GEMM wide enough on their own; the buffer stays bounded however
// large the batch is. A 1x1 convolution with stride 1 and no padding needs no
// col matrix at all: x_n already is (C, H*W). Threads take whole samples when
// the batch has enough of them (see BatchPlan).
//
// At the AVX-512 level the forward has two more paths: 3x3 'same'
// convolutions with enough channels go through Winograd F(2x2, 3x3)
// (conv2d_winograd.cpp), and maps of at most 16 output pixels per chunk
// through the transposed product y^T = col^T W^T (forward_small_maps).
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include <immintrin.h>  // SSE (baseline x86-64); AVX-512 only in functions with a target attribute

#include "../core/registry.h"
#include "conv2d_winograd.h"
#include "gemm.h"
#include "weight_cache.h"

namespace tdq {
namespace {

struct ConvGeom {
  int64_t N, C, H, W;     // input
  int64_t O, kh, kw;      // weight (O, C, kh, kw)
  int64_t stride, pad;
  int64_t Ho, Wo;         // output
  int64_t P() const { return Ho * Wo; }
  int64_t CKK() const { return C * kh * kw; }
  bool pointwise() const { return kh == 1 && kw == 1 && stride == 1 && pad == 0; }
};

// Validates stride/padding and the kernel against the (padded) input and
// fills in the output size. `x` and `w` are the shapes of the input and the
// weight; `xarg` names the tensor the input shape came from.
ConvGeom conv_geometry(const Attrs& at, const Shape& x, const Shape& w, const char* xarg) {
  ConvGeom g{};
  g.stride = at.get_int("stride", 1);
  g.pad = at.get_int("padding", 0);
  TDQ_CHECK_RANGE(g.stride >= 1, at.op, ": attribute 'stride' must be a positive integer, got ", g.stride);
  TDQ_CHECK_RANGE(g.pad >= 0, at.op, ": attribute 'padding' must be >= 0, got ", g.pad);
  TDQ_CHECK_RANGE(at.get_int("dilation", 1) == 1, at.op, ": attribute 'dilation' must be 1 (dilated convolution is not supported)");
  TDQ_CHECK_RANGE(at.get_int("groups", 1) == 1, at.op, ": attribute 'groups' must be 1 (grouped convolution is not supported)");
  g.N = x[0], g.C = x[1], g.H = x[2], g.W = x[3];
  g.O = w[0], g.kh = w[2], g.kw = w[3];
  TDQ_CHECK_RANGE(g.O >= 1 && w[1] >= 1 && g.kh >= 1 && g.kw >= 1, at.op,
                  ": argument 'weight' must have positive dimensions (O, C, kH, kW), got ", shape_str(w));
  TDQ_CHECK_RANGE(w[1] == g.C, at.op, ": argument 'weight' ", shape_str(w), " expects ", w[1],
                  " input channels but argument '", xarg, "' ", shape_str(x), " has ", g.C);
  TDQ_CHECK_RANGE(g.H + 2 * g.pad >= g.kh && g.W + 2 * g.pad >= g.kw, at.op, ": kernel ", g.kh, "x", g.kw,
                  " of argument 'weight' is larger than the padded input ", g.H + 2 * g.pad, "x", g.W + 2 * g.pad,
                  " (argument '", xarg, "' ", shape_str(x), ", padding ", g.pad, ")");
  g.Ho = (g.H + 2 * g.pad - g.kh) / g.stride + 1;
  g.Wo = (g.W + 2 * g.pad - g.kw) / g.stride + 1;
  return g;
}

// Samples per chunk: enough that the GEMM has at least `min_cols` columns,
// within a bound on the col buffer (16 MiB) so memory does not grow with the
// batch. The forward and input-gradient GEMMs run well from 64 columns (one
// 8x8 sample) now that the weights are packed once; below that (4x4 maps) the
// 32-wide register tiles would be half empty. The weight gradient sums over
// the columns, so it wants more of them (256) to write its (O, CKK) result
// less often.
int64_t chunk_samples(const ConvGeom& g, int64_t min_cols) {
  const int64_t P = std::max<int64_t>(g.P(), 1);
  int64_t nb = std::max<int64_t>(1, min_cols / P);
  nb = std::min(nb, std::max<int64_t>(1, (int64_t{4} << 20) / std::max<int64_t>(g.CKK() * P, 1)));
  return std::max<int64_t>(1, std::min(nb, g.N));
}

// How a batch is spread over the threads. With at least as many samples as
// threads, each thread is a group that takes whole chunks of samples and runs
// every step for them alone: no barrier between im2col and GEMM, no GEMM cut
// into slivers, no packing repeated per thread. With fewer samples there is
// one group, whose steps are parallel inside. Each group has its own scratch;
// the number of groups is capped so that all of it stays within 64 MiB.
struct BatchPlan {
  int64_t groups = 1;  // run in parallel, each with its own scratch
  int64_t nb = 1;      // samples per chunk
};

// Hands out chunks of samples to the groups as they ask: a group whose thread
// is slowed down (a shared machine) takes fewer, instead of holding up the rest.
struct ChunkQueue {
  std::atomic<int64_t> next{0};
  int64_t N, nb;
  ChunkQueue(int64_t n, int64_t chunk) : N(n), nb(chunk) {}
  // The next chunk [n0, n0 + count), or false when the batch is done.
  bool pop(int64_t& n0, int64_t& count) {
    n0 = next.fetch_add(nb);
    count = std::min(nb, N - n0);
    return n0 < N;
  }
};

BatchPlan batch_plan(const ExecContext& ctx, const ConvGeom& g, int64_t min_cols, int64_t scratch_per_sample,
                     int64_t scratch_fixed) {
  const int64_t threads = ctx.pool ? ctx.pool->size() : 1;
  BatchPlan p;
  p.nb = chunk_samples(g, min_cols);
  if (threads > 1 && g.N >= threads) {
    const int64_t nb = std::min(p.nb, (g.N + threads - 1) / threads);
    const int64_t per_group = nb * scratch_per_sample + scratch_fixed;
    const int64_t fit = (int64_t{16} << 20) / std::max<int64_t>(per_group, 1);
    if (fit >= 2) p.groups = std::min(threads, fit), p.nb = nb;
  }
  return p;
}

// Runs fn(group, context) for every group. Inside a group of a multi-group
// plan, the context's parallel_for runs inline: the group already has its
// thread, and sgemm then does not cut its work into tasks for threads it will
// not get.
template <typename F>
void for_each_group(const ExecContext& ctx, const BatchPlan& plan, F fn) {
  if (plan.groups == 1) return fn(int64_t{0}, ctx);
  const ExecContext serial = serial_context(ctx);
  ctx.parallel_for(plan.groups, 1, [&](int64_t b, int64_t e) {
    for (int64_t gi = b; gi < e; ++gi) fn(gi, serial);
  });
}

// W (O, CKK) packed for ctx's micro-kernel (WeightPackCache kind 0).
std::shared_ptr<const float> cached_packed_a(const ExecContext& ctx, const Tensor& w, int64_t O, int64_t CKK) {
  return WeightPackCache::instance().get(ctx, w, 0, O, CKK, std::max<int64_t>(1, sgemm_packed_a_size(ctx, O, CKK)),
                                         [&](float* dst) { sgemm_pack_a(ctx, false, O, CKK, 1.f, w.f32(), CKK, dst); });
}

inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// The output columns [lo, hi) whose input column iw = ow*stride - pad + kj lies
// inside [0, W); the others read padding.
void valid_columns(const ConvGeom& g, int64_t kj, int64_t& lo, int64_t& hi) {
  lo = std::clamp<int64_t>(floor_div(g.pad - kj + g.stride - 1, g.stride), 0, g.Wo);
  hi = std::clamp<int64_t>(floor_div(g.W - 1 + g.pad - kj, g.stride) + 1, lo, g.Wo);
}

// Row pieces of im2col. Feature-map rows are short (8..32 floats), so these
// are inline SSE loops (baseline x86-64) rather than memcpy/memset calls,
// whose call overhead costs more than the copy at these sizes.
inline void zero_run(float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) _mm_storeu_ps(dst + i, _mm_setzero_ps());
  for (; i < n; ++i) dst[i] = 0.f;
}

// dst[i] = src[i * stride] for i < n; src[(n-1) * stride] is the last element read.
inline void copy_run(float* dst, const float* src, int64_t n, int64_t stride) {
  int64_t i = 0;
  if (stride == 1) {
    for (; i + 4 <= n; i += 4) _mm_storeu_ps(dst + i, _mm_loadu_ps(src + i));
  } else if (stride == 2) {
    // Even elements of two 4-float loads; the second load ends at src[2i+7],
    // within the run while i + 4 < n.
    for (; i + 4 < n; i += 4) {
      const __m128 a = _mm_loadu_ps(src + 2 * i), b = _mm_loadu_ps(src + 2 * i + 4);
      _mm_storeu_ps(dst + i, _mm_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)));
    }
  }
  for (; i < n; ++i) dst[i] = src[i * stride];
}

// dst[i * stride] += src[i] for i < n (the scatter-add of col2im; dst is
// gx, src is dcol: separate buffers).
inline void add_run(float* dst, const float* src, int64_t n, int64_t stride) {
  int64_t i = 0;
  if (stride == 1)
    for (; i + 4 <= n; i += 4) _mm_storeu_ps(dst + i, _mm_add_ps(_mm_loadu_ps(dst + i), _mm_loadu_ps(src + i)));
  for (; i < n; ++i) dst[i * stride] += src[i];
}

// Writes col(x_s) for samples s in [0, nb) into col (CKK, ldcol), sample s at
// column offset s*P. Zero where the patch hangs over the padding.
void im2col(const ExecContext& ctx, const ConvGeom& g, const float* x, int64_t nb, float* col, int64_t ldcol) {
  const int64_t CKK = g.CKK(), P = g.P(), HW = g.H * g.W;
  ctx.parallel_for(nb * CKK, std::max<int64_t>(1, 8192 / std::max<int64_t>(P, 1)), [&](int64_t b, int64_t e) {
    for (int64_t idx = b; idx < e; ++idx) {
      const int64_t s = idx / CKK, r = idx % CKK;
      const int64_t c = r / (g.kh * g.kw), ki = r / g.kw % g.kh, kj = r % g.kw;
      const float* xc = x + (s * g.C + c) * HW;
      float* dst = col + r * ldcol + s * P;
      int64_t ow_lo, ow_hi;
      valid_columns(g, kj, ow_lo, ow_hi);
      if (g.stride == 1 && g.Wo == g.W) {
        // Stride 1, output as wide as the input ('same' padding): the col row
        // is the input plane shifted by delta, so one contiguous copy does
        // most of it; then zero what it read across row edges and the rows
        // that hang over the top and bottom padding.
        const int64_t W = g.W, delta = (ki - g.pad) * W + (kj - g.pad);
        const int64_t oh_lo = std::clamp<int64_t>(g.pad - ki, 0, g.Ho);
        const int64_t oh_hi = std::clamp<int64_t>(g.H + g.pad - ki, oh_lo, g.Ho);
        // dst indices [begin, end) whose source index (dst + delta) is in the plane
        const int64_t begin = std::max(oh_lo * W, -delta), end = std::max(begin, std::min(oh_hi * W, HW - delta));
        zero_run(dst, begin);
        copy_run(dst + begin, xc + begin + delta, end - begin, 1);
        zero_run(dst + end, P - end);
        if (ow_lo > 0 || ow_hi < W)
          for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {
            zero_run(dst + oh * W, ow_lo);
            zero_run(dst + oh * W + ow_hi, W - ow_hi);
          }
        continue;
      }
      for (int64_t oh = 0; oh < g.Ho; ++oh, dst += g.Wo) {
        const int64_t ih = oh * g.stride - g.pad + ki;
        if (ih < 0 || ih >= g.H) {
          zero_run(dst, g.Wo);
          continue;
        }
        const int64_t off = ih * g.W - g.pad + kj;  // + ow*stride: the input element under output ow
        zero_run(dst, ow_lo);
        copy_run(dst + ow_lo, xc + off + ow_lo * g.stride, ow_hi - ow_lo, g.stride);
        zero_run(dst + ow_hi, g.Wo - ow_hi);
      }
    }
  });
}

// Implicit im2col (the forward at the AVX-512 level, stride 1, output as large
// as the input: the 'same' 3x3 convolutions of a UNet, one sample per GEMM).
// The col row of (c, ki, kj) is the plane x_c shifted by
// delta = (ki-pad)*W + (kj-pad), zero where the tap falls into the padding;
// which columns are valid depends on (ki, kj) alone: it is the row mask of ki
// and the column mask of kj. So the GEMM's B panels are packed straight from
// x, 32 columns per masked load pair, and no col matrix is written or read
// back. Masked-out lanes are not read (AVX-512 masked loads do not fault).
// Tried and dropped: the same at the AVX2 level with vmaskmovps pairs into
// 16-wide panels, 5-10% slower than im2col + packing there (AMD Zen 4).
// What the packer needs of the geometry, computed once per call: for every
// 32-column panel q and tap t = ki*kw + kj, the lanes whose tap is inside the
// input (the row mask of ki and the column mask of kj), and for every col row
// r = (c, ki, kj) its tap and the offset of its shifted plane.
struct SameTables {
  std::vector<uint32_t> masks;  // (ceil(P/32), KK)
  std::vector<int64_t> off;     // (CKK)
  std::vector<int32_t> tap;     // (CKK)
  explicit SameTables(const ConvGeom& g) {
    const int64_t W = g.W, H = g.H, P = H * W, KK = g.kh * g.kw, CKK = g.C * KK;
    const int64_t panels = (P + 31) / 32;
    masks.assign(static_cast<size_t>(panels * KK), 0u);
    for (int64_t q = 0; q < panels; ++q)
      for (int64_t l = 0; l < 32 && q * 32 + l < P; ++l) {
        const int64_t p = q * 32 + l, oh = p / W, ow = p % W;
        for (int64_t ki = 0; ki < g.kh; ++ki)
          for (int64_t kj = 0; kj < g.kw; ++kj) {
            const int64_t ih = oh + ki - g.pad, iw = ow + kj - g.pad;
            if (ih >= 0 && ih < H && iw >= 0 && iw < W) masks[q * KK + ki * g.kw + kj] |= 1u << l;
          }
      }
    off.resize(static_cast<size_t>(CKK)), tap.resize(static_cast<size_t>(CKK));
    for (int64_t r = 0; r < CKK; ++r) {
      const int64_t c = r / KK, t = r % KK, ki = t / g.kw, kj = t % g.kw;
      off[r] = c * P + (ki - g.pad) * W + (kj - g.pad);
      tap[r] = static_cast<int32_t>(t);
    }
  }
};

struct SameConvPacker {
  const float* x;  // one sample, (C, H, W)
  const SameTables* t;
  int64_t KK;
};

__attribute__((target("avx512f"))) void pack_same_avx512(const void* self, int nr, int64_t k0, int64_t kc,
                                                          int64_t j0, int64_t nc, float* out) {
  const SameConvPacker& s = *static_cast<const SameConvPacker*>(self);
  TDQ_CHECK(nr == 32 && j0 % 32 == 0, "conv2d: implicit packing expects 32-wide panels, got ", nr, " at ", j0);
  const int64_t* off = s.t->off.data() + k0;
  const int32_t* tap = s.t->tap.data() + k0;
  for (int64_t q = 0; q * 32 < nc; ++q) {
    const int64_t p0 = j0 + q * 32;
    const uint32_t* mk = s.t->masks.data() + (p0 / 32) * s.KK;
    float* panel = out + q * 32 * kc;
    const float* xp = s.x + p0;
    for (int64_t k = 0; k < kc; ++k) {
      const uint32_t m = mk[tap[k]];
      const float* src = xp + off[k];
      _mm512_store_ps(panel + k * 32, _mm512_maskz_loadu_ps(static_cast<__mmask16>(m & 0xffff), src));
      _mm512_store_ps(panel + k * 32 + 16, _mm512_maskz_loadu_ps(static_cast<__mmask16>(m >> 16), src + 16));
    }
  }
}

// The adjoint of im2col: gx_s = sum over patches of dcol, for samples [0, nb)
// of the chunk (dcol is scratch and is partly overwritten). Each (sample, channel) plane is owned by one task, so the
// overlapping patches of neighbouring outputs add up without races.
void col2im(const ExecContext& ctx, const ConvGeom& g, float* dcol, int64_t ldcol, int64_t nb, float* gx) {
  const int64_t P = g.P(), HW = g.H * g.W, KK = g.kh * g.kw;
  ctx.parallel_for(nb * g.C, std::max<int64_t>(1, 8192 / std::max<int64_t>(KK * P, 1)), [&](int64_t b, int64_t e) {
    for (int64_t idx = b; idx < e; ++idx) {
      const int64_t s = idx / g.C, c = idx % g.C;
      float* xc = gx + (s * g.C + c) * HW;
      zero_run(xc, HW);
      for (int64_t ki = 0; ki < g.kh; ++ki) {
        for (int64_t kj = 0; kj < g.kw; ++kj) {
          const float* src = dcol + (c * KK + ki * g.kw + kj) * ldcol + s * P;
          int64_t ow_lo, ow_hi;
          valid_columns(g, kj, ow_lo, ow_hi);
          if (g.stride == 1 && g.Wo == g.W) {
            // As in im2col: the row adds onto the plane shifted by delta, in
            // one run. The entries that would wrap across a row edge belong
            // to the padding; they are zeroed in dcol (our scratch) first.
            float* d = dcol + (c * KK + ki * g.kw + kj) * ldcol + s * P;
            const int64_t W = g.W, delta = (ki - g.pad) * W + (kj - g.pad);
            const int64_t oh_lo = std::clamp<int64_t>(g.pad - ki, 0, g.Ho);
            const int64_t oh_hi = std::clamp<int64_t>(g.H + g.pad - ki, oh_lo, g.Ho);
            if (ow_lo > 0 || ow_hi < W)
              for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {
                zero_run(d + oh * W, ow_lo);
                zero_run(d + oh * W + ow_hi, W - ow_hi);
              }
            const int64_t begin = std::max(oh_lo * W, -delta), end = std::max(begin, std::min(oh_hi * W, HW - delta));
            add_run(xc + begin + delta, src + begin, end - begin, 1);
            continue;
          }
          for (int64_t oh = 0; oh < g.Ho; ++oh, src += g.Wo) {
            const int64_t ih = oh * g.stride - g.pad + ki;
            if (ih < 0 || ih >= g.H) continue;
            add_run(xc + ih * g.W + ow_lo * g.stride + kj - g.pad, src + ow_lo, ow_hi - ow_lo, g.stride);
          }
        }
      }
    }
  });
}

// (nb, O, P) samples -> (O, nb*P): gy of a chunk laid out as one GEMM operand.
void gather_chunk(const ExecContext& ctx, const float* src, int64_t nb, int64_t O, int64_t P, float* dst) {
  ctx.parallel_for(nb * O, std::max<int64_t>(1, 8192 / std::max<int64_t>(P, 1)), [&](int64_t b, int64_t e) {
    for (int64_t idx = b; idx < e; ++idx) {
      const int64_t s = idx / O, o = idx % O;
      std::memcpy(dst + o * nb * P + s * P, src + idx * P, sizeof(float) * P);
    }
  });
}

// ---- forward ---------------------------------------------------------------------
std::vector<TensorMeta> infer_conv2d_forward(const std::vector<Tensor>& in, const Attrs& at) {
  check_dtype(at, in[0], "x", DType::f32);
  check_dtype(at, in[1], "weight", DType::f32);
  check_rank(at, in[0], "x", 4);
  check_rank(at, in[1], "weight", 4);
  ConvGeom g = conv_geometry(at, in[0].shape, in[1].shape, "x");
  if (in.size() > 2 && in[2].defined()) {
    check_dtype(at, in[2], "bias", DType::f32);
    check_shape(at, in[2], "bias", {g.O});
  }
  if (in.size() > 3 && in[3].defined()) {
    check_dtype(at, in[3], "add_channel", DType::f32);
    check_shape(at, in[3], "add_channel", {g.N, g.O});
  }
  if (in.size() > 4 && in[4].defined()) {
    check_dtype(at, in[4], "residual", DType::f32);
    check_shape(at, in[4], "residual", {g.N, g.O, g.Ho, g.Wo});
  }
  return {{{g.N, g.O, g.Ho, g.Wo}, DType::f32}};
}

// What the forward adds to W · col(x): the bias (O), and optionally a
// per-sample, per-channel term (N, O) (a UNet block's time embedding) and a
// residual (N, O, Ho, Wo) (the block's skip connection). They are written
// into y before the GEMM, which then accumulates onto them (beta = 1), or
// added where a chunk's result is copied into y: no pass of their own.
struct ConvAdds {
  const float* bias = nullptr;
  const float* chan = nullptr;  // (N, O)
  const float* res = nullptr;   // (N, O, P)
  bool any() const { return bias || chan || res; }
  // Row o of sample n (P values): its constant part.
  float base(int64_t n, int64_t O, int64_t o) const {
    return (bias ? bias[o] : 0.f) + (chan ? chan[n * O + o] : 0.f);
  }
  // yn (O, P) of sample n = the adds alone.
  void init(int64_t n, int64_t O, int64_t P, float* yn) const {
    for (int64_t o = 0; o < O; ++o) {
      const float b = base(n, O, o);
      float* row = yn + o * P;
      if (res) {
        const float* r = res + (n * O + o) * P;
        for (int64_t p = 0; p < P; ++p) row[p] = r[p] + b;
      } else {
        std::fill(row, row + P, b);
      }
    }
  }
};

// Small maps at the AVX-512 level: chunks of at most 16 output pixels (4x4
// maps and smaller at batch 1, where the weights are the largest: 768
// channels in the LDM UNet). W . col(x) as above would fill at most half of
// the 32-wide register tile (a 2x2 map: 4 of 32 columns); transposed,
// y^T (cols, O) = col^T . W^T, the pixels are the tile's 8-row side and the
// output channels its 32 columns, so at most the last 8-row panel is partly
// empty. W^T is kept packed as B panels (the cache's kind 2); col^T, small,
// is packed per chunk; the (cols, O) result is transposed into y with the adds.
int64_t small_cols_max() {
  const char* s = std::getenv("TDQ_CONV_SMALL");
  return s && *s ? std::strtoll(s, nullptr, 10) : 16;
}
void forward_small_maps(const ExecContext& ctx, const ConvGeom& g, const BatchPlan& plan, const float* x,
                        const Tensor& w, const ConvAdds& adds, float* y) {
  const int64_t P = g.P(), CKK = g.CKK(), nbmax = plan.nb, colsmax = nbmax * P;
  const std::shared_ptr<const float> wpanels = WeightPackCache::instance().get(
      ctx, w, 2, g.O, CKK, std::max<int64_t>(1, sgemm_b_panels_size(ctx, CKK, g.O)),
      [&](float* dst) { sgemm_pack_b_panels(ctx, true, CKK, g.O, w.f32(), CKK, dst); });
  const int64_t col_n = CKK * colsmax, ap_n = sgemm_packed_a_size(ctx, colsmax, CKK), tmp_n = colsmax * g.O;
  auto round16 = [](int64_t n) { return (n + 15) / 16 * 16; };  // parts 64-byte aligned
  const int64_t per_group = round16(col_n) + round16(ap_n) + round16(tmp_n);
  Tensor scratch = ctx.scratch({plan.groups, per_group});
  ChunkQueue queue(g.N, nbmax);
  for_each_group(ctx, plan, [&](int64_t gi, const ExecContext& gctx) {
    float* col = scratch.f32() + gi * per_group;
    float* ap = col + round16(col_n);
    float* tmp = ap + round16(ap_n);
    int64_t n0, nb;
    while (queue.pop(n0, nb)) {
      const int64_t cols = nb * P;
      im2col(gctx, g, x + n0 * g.C * g.H * g.W, nb, col, cols);
      sgemm_pack_a(gctx, true, cols, CKK, 1.f, col, cols, ap);
      sgemm_batched_prepacked_panels(gctx, 1, cols, g.O, CKK, ap, 0, wpanels.get(), 0, tmp, g.O, 0);
      for (int64_t s = 0; s < nb; ++s)
        for (int64_t o = 0; o < g.O; ++o) {
          const int64_t n = n0 + s;
          float* dst = y + (n * g.O + o) * P;
          const float* src = tmp + s * P * g.O + o;
          const float bo = adds.base(n, g.O, o);
          const float* r = adds.res ? adds.res + (n * g.O + o) * P : nullptr;
          for (int64_t p = 0; p < P; ++p) dst[p] = r ? (src[p * g.O] + bo) + r[p] : src[p * g.O] + bo;
        }
    }
  });
}

void conv2d_forward(OpCall& c, const ExecContext& ctx) {
  const Tensor &x = c.inputs[0], &w = c.inputs[1];
  ConvAdds adds;
  adds.bias = c.inputs.size() > 2 && c.inputs[2].defined() ? c.inputs[2].f32() : nullptr;
  adds.chan = c.inputs.size() > 3 && c.inputs[3].defined() ? c.inputs[3].f32() : nullptr;
  adds.res = c.inputs.size() > 4 && c.inputs[4].defined() ? c.inputs[4].f32() : nullptr;
  const ConvGeom g = conv_geometry(c.attrs, x.shape, w.shape, "x");
  const int64_t P = g.P(), CKK = g.CKK();
  if (winograd_f2_applies(ctx, g.N, g.C, g.H, g.W, g.O, g.kh, g.kw, g.stride, g.pad)) {
    float* y = c.outputs[0].f32();
    if (winograd_mode() == WinogradMode::ref) {
      winograd_f2_forward_ref(x.f32(), g.N, g.C, g.H, g.W, w.f32(), g.O, adds.bias, y);
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t o = 0; o < g.O; ++o) {
          float* row = y + (n * g.O + o) * P;
          const float a = adds.chan ? adds.chan[n * g.O + o] : 0.f;
          for (int64_t p = 0; p < P; ++p) row[p] = (row[p] + a) + (adds.res ? adds.res[(n * g.O + o) * P + p] : 0.f);
        }
      return;
    }
    if (winograd_f2_transposed(g.N, g.C, g.H, g.W, g.O)) {
      const std::shared_ptr<const float> ut = WeightPackCache::instance().get(
          ctx, w, 3, g.O, CKK, winograd_f2_packed_size_t(ctx, g.O, g.C),
          [&](float* dst) { winograd_f2_pack_weights_t(ctx, w.f32(), g.O, g.C, dst); });
      winograd_f2_forward_t(ctx, x.f32(), g.N, g.C, g.H, g.W, ut.get(), g.O, adds.bias, adds.chan, adds.res, y);
      return;
    }
    const std::shared_ptr<const float> up = WeightPackCache::instance().get(
        ctx, w, 1, g.O, CKK, winograd_f2_packed_size(ctx, g.O, g.C),
        [&](float* dst) { winograd_f2_pack_weights(ctx, w.f32(), g.O, g.C, dst); });
    winograd_f2_forward(ctx, x.f32(), g.N, g.C, g.H, g.W, up.get(), g.O, adds.bias, adds.chan, adds.res, y);
    return;
  }
  // Scratch per sample of a chunk: its col columns and, when chunks hold
  // several samples, its (O, P) block of the GEMM result.
  const BatchPlan plan = batch_plan(ctx, g, 64, (CKK + g.O) * P, 0);
  const int64_t nbmax = plan.nb;
  if (ctx.cpu_level == CpuLevel::avx512 && gemm_nr(ctx) == 32 && nbmax * P <= small_cols_max()) {
    forward_small_maps(ctx, g, plan, x.f32(), w, adds, c.outputs[0].f32());
    return;
  }
  const bool direct = g.pointwise() && nbmax == 1;  // x_n is its own col matrix
  // B packed straight from x_n (see pack_same_avx512): no col matrix either.
  const bool implicit = !direct && nbmax == 1 && ctx.cpu_level == CpuLevel::avx512 && g.stride == 1 &&
                        g.Ho == g.H && g.Wo == g.W && gemm_nr(ctx) == 32;
  const int64_t col_n = direct || implicit ? 0 : CKK * nbmax * P, tmp_n = nbmax > 1 ? g.O * nbmax * P : 0;
  Tensor scratch = ctx.scratch({plan.groups, std::max<int64_t>(1, col_n + tmp_n)});
  float* y = c.outputs[0].f32();
  // The weights are the A of every chunk's GEMM: packed once, and kept for
  // the next call while they are unchanged.
  const std::shared_ptr<const float> wpack = cached_packed_a(ctx, w, g.O, CKK);
  const float* wp = wpack.get();
  std::unique_ptr<SameTables> same_tables;
  if (implicit) same_tables = std::make_unique<SameTables>(g);

  ChunkQueue queue(g.N, nbmax);
  for_each_group(ctx, plan, [&](int64_t gi, const ExecContext& gctx) {
    float* col = scratch.f32() + gi * std::max<int64_t>(1, col_n + tmp_n);
    float* tmp = col + col_n;
    int64_t n0, nb;
    while (queue.pop(n0, nb)) {
      const int64_t cols = nb * P;
      const float* xs = x.f32() + n0 * g.C * g.H * g.W;
      const float* colp = xs;
      if (implicit) {
        float* yn = y + n0 * g.O * P;
        if (adds.any()) adds.init(n0, g.O, P, yn);
        const SameConvPacker packer{xs, same_tables.get(), g.kh * g.kw};
        sgemm_prepacked_implicit_b(gctx, g.O, P, CKK, wp, BPacker{pack_same_avx512, &packer}, adds.any() ? 1.f : 0.f,
                                   yn, P);
        continue;
      }
      if (!direct) {
        im2col(gctx, g, xs, nb, col, cols);
        colp = col;
      }
      if (nbmax == 1) {
        // One sample: the GEMM writes y_n in place, on top of the bias.
        float* yn = y + n0 * g.O * P;
        if (adds.any()) adds.init(n0, g.O, P, yn);
        sgemm_prepacked(gctx, g.O, P, CKK, wp, false, colp, cols, adds.any() ? 1.f : 0.f, yn, P);
      } else {
        // (O, nb*P) -> (nb, O, P), adding the bias on the way.
        sgemm_prepacked(gctx, g.O, cols, CKK, wp, false, colp, cols, 0.f, tmp, cols);
        gctx.parallel_for(nb * g.O, std::max<int64_t>(1, 8192 / std::max<int64_t>(P, 1)), [&](int64_t b, int64_t e) {
          for (int64_t idx = b; idx < e; ++idx) {
            const int64_t s = idx / g.O, o = idx % g.O;
            const float* src = tmp + o * cols + s * P;
            float* dst = y + (n0 + s) * g.O * P + o * P;
            const float bo = adds.base(n0 + s, g.O, o);
            if (adds.res) {
              const float* r = adds.res + (n0 + s) * g.O * P + o * P;
              for (int64_t p = 0; p < P; ++p) dst[p] = (src[p] + bo) + r[p];
            } else {
              for (int64_t p = 0; p < P; ++p) dst[p] = src[p] + bo;
            }
          }
        });
      }
    }
  });
}

// ---- backward: input ---------------------------------------------------------------
// A stride-1 'same' convolution (output as large as the input, hence
// 2*pad = k-1) has as input gradient another 'same' convolution: of gy with
// the weights transposed over (O, C) and flipped in space,
//   gx[c, h, w] = sum_{o, ki, kj} W[o, c, kh-1-ki, kw-1-kj] gy[o, h+ki-pad, w+kj-pad],
// so at the AVX-512 level it runs as the forward's implicit GEMM: B packed
// straight from gy_n, no dcol matrix and no col2im pass.
bool same_implicit_ok(const ExecContext& ctx, const ConvGeom& g) {
  return ctx.cpu_level == CpuLevel::avx512 && g.stride == 1 && g.Ho == g.H && g.Wo == g.W && g.kh == 2 * g.pad + 1 &&
         g.kw == 2 * g.pad + 1 && gemm_nr(ctx) == 32;
}

void backward_input_same(const ExecContext& ctx, const ConvGeom& g, const float* gy, const float* w, float* gx,
                         const BatchPlan& plan) {
  const int64_t KK = g.kh * g.kw, OKK = g.O * KK, P = g.P();
  // Wf (C, O*KK): Wf[c][(o*kh + ki)*kw + kj] = W[o][c][kh-1-ki][kw-1-kj]
  Tensor wf = ctx.scratch({std::max<int64_t>(1, g.C * OKK)});
  float* wfp = wf.f32();
  ctx.parallel_for(g.C, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c)
      for (int64_t o = 0; o < g.O; ++o) {
        const float* src = w + (o * g.C + c) * KK;
        float* dst = wfp + c * OKK + o * KK;
        for (int64_t t = 0; t < KK; ++t) dst[t] = src[KK - 1 - t];
      }
  });
  Tensor wpack = ctx.scratch({std::max<int64_t>(1, sgemm_packed_a_size(ctx, g.C, OKK))});
  sgemm_pack_a(ctx, false, g.C, OKK, 1.f, wfp, OKK, wpack.f32());
  ConvGeom gt = g;  // the transposed convolution: O input channels
  gt.C = g.O, gt.O = g.C;
  const SameTables tables(gt);
  ChunkQueue queue(g.N, 1);
  for_each_group(ctx, plan, [&](int64_t, const ExecContext& gctx) {
    int64_t n0, nb;
    while (queue.pop(n0, nb)) {
      const SameConvPacker packer{gy + n0 * g.O * P, &tables, KK};
      sgemm_prepacked_implicit_b(gctx, g.C, P, OKK, wpack.f32(), BPacker{pack_same_avx512, &packer}, 0.f,
                                 gx + n0 * g.C * P, P);
    }
  });
}

// conv2d_backward_input(gy, weight; stride, padding, input_shape) -> gx
std::vector<TensorMeta> infer_conv2d_backward_input(const std::vector<Tensor>& in, const Attrs& at) {
  check_dtype(at, in[0], "gy", DType::f32);
  check_dtype(at, in[1], "weight", DType::f32);
  check_rank(at, in[1], "weight", 4);
  Shape xs = at.get_ints("input_shape");
  TDQ_CHECK_RANGE(xs.size() == 4 && std::all_of(xs.begin(), xs.end(), [](int64_t v) { return v >= 0; }), at.op,
                  ": attribute 'input_shape' must be 4 non-negative sizes (N, C, H, W), got ", shape_str(xs));
  ConvGeom g = conv_geometry(at, xs, in[1].shape, "input_shape");
  check_shape(at, in[0], "gy", {g.N, g.O, g.Ho, g.Wo});
  return {{xs, DType::f32}};
}

void conv2d_backward_input(OpCall& c, const ExecContext& ctx) {
  const Tensor &gy = c.inputs[0], &w = c.inputs[1];
  const ConvGeom g = conv_geometry(c.attrs, c.outputs[0].shape, w.shape, "input_shape");
  const int64_t P = g.P(), CKK = g.CKK(), HW = g.H * g.W;
  const BatchPlan plan = batch_plan(ctx, g, 64, (CKK + g.O) * P, 0);
  const int64_t nbmax = plan.nb;
  const bool direct = g.pointwise() && nbmax == 1;
  // (Not for a handful of input channels: the GEMM's M would be C, in
  // 8-row panels mostly empty.)
  if (!direct && nbmax == 1 && g.C >= 16 && same_implicit_ok(ctx, g))
    return backward_input_same(ctx, g, gy.f32(), w.f32(), c.outputs[0].f32(), plan);
  const int64_t dcol_n = direct ? 0 : CKK * nbmax * P, gyc_n = nbmax > 1 ? g.O * nbmax * P : 0;
  Tensor scratch = ctx.scratch({plan.groups, std::max<int64_t>(1, dcol_n + gyc_n)});
  float* gx = c.outputs[0].f32();
  // W^T (CKK, O) is the A of every chunk's GEMM: pack it once.
  Tensor wpack = ctx.scratch({std::max<int64_t>(1, sgemm_packed_a_size(ctx, CKK, g.O))});
  const float* wp = wpack.f32();
  sgemm_pack_a(ctx, true, CKK, g.O, 1.f, w.f32(), CKK, wpack.f32());

  ChunkQueue queue(g.N, nbmax);
  for_each_group(ctx, plan, [&](int64_t gi, const ExecContext& gctx) {
    float* dcol = scratch.f32() + gi * std::max<int64_t>(1, dcol_n + gyc_n);
    float* gyc = dcol + dcol_n;
    int64_t n0, nb;
    while (queue.pop(n0, nb)) {
      const int64_t cols = nb * P;
      const float* gys = gy.f32() + n0 * g.O * P;
      if (nbmax > 1) {
        gather_chunk(gctx, gys, nb, g.O, P, gyc);
        gys = gyc;
      }
      if (direct) {
        // 1x1: gx_n (C, HW) = W^T (C, O) · gy_n (O, HW)
        sgemm_prepacked(gctx, g.C, P, g.O, wp, false, gys, cols, 0.f, gx + n0 * g.C * HW, HW);
      } else {
        sgemm_prepacked(gctx, CKK, cols, g.O, wp, false, gys, cols, 0.f, dcol, cols);
        col2im(gctx, g, dcol, cols, nb, gx + n0 * g.C * HW);
      }
    }
  });
}

// ---- backward: weight (and bias) ---------------------------------------------------
// Direct weight gradient of a stride-1 'same' convolution at the AVX-512
// level: gW[o][r] = sum_n sum_p gy_n[o][p] * col(x_n)[r][p] needs neither the
// col matrix nor a transposed copy of it, because both operands run along p:
// gy rows are contiguous, and the col row of r = (c, ki, kj) is the plane x_c
// shifted by (ki-pad)*W + (kj-pad), zero where the tap falls into the padding
// (the masks of pack_same_avx512, per 16 pixels). A tile of 4 (o) x 4 (r)
// dot products is kept in 16 vector accumulators over all pixels of the
// chunk's samples and reduced once at the end (a transpose-add tree).
struct WgradSame {
  const ConvGeom* g;
  const float* x;           // first sample of the chunk (N, C, H, W)
  const float* gy;          // (N, O, P)
  int64_t nb;               // samples
  const uint16_t* masks;    // (ceil(P/16), KK): valid lanes of tap t in pixel block s
  const int64_t* off;       // (CKK): offset of col row r's shifted plane in x_n
  int64_t nblk;             // ceil(P/16)
};

// GCC 12's _mm512_shuffle_f32x4 starts from _mm512_undefined_ps(), which
// -Wuninitialized reports wherever it is inlined.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
// 16 vectors -> one vector of their 16 horizontal sums (lane i: sum of v[i]).
__attribute__((target("avx512f"), always_inline)) inline __m512 hsum16(const __m512* v) {
  // Each round halves the vectors, pairing the lanes of two of them.
  __m512 a[8], b[4], c[2];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    // lanes 0-7 of the result: v[2i] folded; lanes 8-15: v[2i+1] folded (pairwise 256-bit halves)
    const __m512 lo = _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 hi = _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2));
    a[i] = _mm512_add_ps(lo, hi);  // [v2i: 8 partial sums | v2i+1: 8 partial sums]
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    // 128-bit lanes: a = [A0 A1 | B0 B1] (A = v2i's, B = v2i+1's 4-float groups)
    const __m512 lo = _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0));
    const __m512 hi = _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1));
    b[i] = _mm512_add_ps(lo, hi);  // 128-bit lane q: 4 partial sums of vector 4i+q
  }
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) {
    // within 128-bit lanes: pairs of floats
    const __m512 lo = _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 hi = _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2));
    c[i] = _mm512_add_ps(lo, hi);
  }
  const __m512 lo = _mm512_shuffle_ps(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0));
  const __m512 hi = _mm512_shuffle_ps(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1));
  return _mm512_add_ps(lo, hi);
}

// conv2d_backward_weight(gy, x; stride, padding, kernel_size [kH, kW], bias) -> gW [, gb]
std::vector<TensorMeta> infer_conv2d_backward_weight(const std::vector<Tensor>& in, const Attrs& at) {
  check_dtype(at, in[0], "gy", DType::f32);
  check_dtype(at, in[1], "x", DType::f32);
  check_rank(at, in[0], "gy", 4);
  check_rank(at, in[1], "x", 4);
  Shape k = at.get_ints("kernel_size");
  TDQ_CHECK_RANGE(k.size() == 2, at.op, ": attribute 'kernel_size' must be [kH, kW], got ", shape_str(k));
  const Shape ws{in[0].shape[1], in[1].shape[1], k[0], k[1]};
  ConvGeom g = conv_geometry(at, in[1].shape, ws, "x");
  check_shape(at, in[0], "gy", {g.N, g.O, g.Ho, g.Wo});
  std::vector<TensorMeta> out{{ws, DType::f32}};
  if (at.get_bool("bias", false)) out.push_back({{g.O}, DType::f32});
  return out;
}

// Lane L of hsum16's result sums vector kHsumPerm[L] (found once by running
// it on vectors of known sums: the shuffle tree's order is easy to get wrong).
__attribute__((target("avx512f"))) std::array<int, 16> hsum16_perm() {
  alignas(64) __m512 v[16];
  for (int i = 0; i < 16; ++i) v[i] = _mm512_set1_ps(static_cast<float>(i));
  alignas(64) float out[16];
  _mm512_store_ps(out, hsum16(v));
  std::array<int, 16> perm{};
  for (int l = 0; l < 16; ++l) perm[l] = static_cast<int>(out[l] / 16.f + 0.5f);
  return perm;
}

// sums[i*TR + j] = sum over the chunk of gy[o0+i] . col[r0+j]
template <int TO, int TR>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void wgrad_tile(const WgradSame& s, int64_t o0, int64_t r0,
                                                                     float* sums) {
  const ConvGeom& g = *s.g;
  const int64_t P = g.P(), KK = g.kh * g.kw, CHW = g.C * g.H * g.W, OP = g.O * P;
  __m512 acc[32];
#pragma GCC unroll 32
  for (int i = 0; i < 32; ++i) acc[i] = _mm512_setzero_ps();
  int64_t tap[TR], off[TR];
  for (int j = 0; j < TR; ++j) tap[j] = (r0 + j) % KK, off[j] = s.off[r0 + j];
  const int64_t full = P / 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (P % 16)) - 1);
  for (int64_t n = 0; n < s.nb; ++n) {
    const float* xn = s.x + n * CHW;
    const float* gyn = s.gy + n * OP + o0 * P;
    // The full 16-pixel blocks, then the partial one (gy loads masked so as
    // not to read past the end of gy).
    for (int64_t blk = 0; blk < s.nblk; ++blk) {
      const int64_t p = blk * 16;
      const __mmask16 pm = blk < full ? static_cast<__mmask16>(0xffff) : tail;
      const uint16_t* mk = s.masks + blk * KK;
      __m512 gv[TO];
#pragma GCC unroll 4
      for (int i = 0; i < TO; ++i) gv[i] = _mm512_maskz_loadu_ps(pm, gyn + i * P + p);
#pragma GCC unroll 6
      for (int j = 0; j < TR; ++j) {
        const __m512 xv = _mm512_maskz_loadu_ps(static_cast<__mmask16>(mk[tap[j]]), xn + off[j] + p);
#pragma GCC unroll 4
        for (int i = 0; i < TO; ++i) acc[i * TR + j] = _mm512_fmadd_ps(gv[i], xv, acc[i * TR + j]);
      }
    }
  }
  // Reduced 16 at a time (the unused vectors of a smaller edge tile are zero).
  static const std::array<int, 16> perm = hsum16_perm();
  alignas(64) float out[16];
  _mm512_store_ps(out, hsum16(acc));
  for (int l = 0; l < 16; ++l)
    if (perm[l] < TO * TR) sums[perm[l]] = out[l];
  if constexpr (TO * TR > 16) {
    _mm512_store_ps(out, hsum16(acc + 16));
    for (int l = 0; l < 16; ++l)
      if (16 + perm[l] < TO * TR) sums[16 + perm[l]] = out[l];
  }
}

using WgradTileFn = void (*)(const WgradSame&, int64_t, int64_t, float*);
constexpr int kWgradTR = 4;  // tile: 4 rows of gW (o) x 4 columns (r): 16 accumulators (4 x 6 measured no faster)
template <int TO>
constexpr std::array<WgradTileFn, kWgradTR> wgrad_row() {
  return {wgrad_tile<TO, 1>, wgrad_tile<TO, 2>, wgrad_tile<TO, 3>, wgrad_tile<TO, 4>};
}
const std::array<std::array<WgradTileFn, kWgradTR>, 4> kWgradTiles{wgrad_row<1>(), wgrad_row<2>(), wgrad_row<3>(), wgrad_row<4>()};

// Rows [o_begin, o_end) of acc (O, CKK) = (or +=) the chunk's weight gradient.
void wgrad_rows(const WgradSame& s, int64_t o_begin, int64_t o_end, float* acc, bool accumulate) {
  const int64_t CKK = s.g->CKK();
  alignas(64) float sums[32];
  for (int64_t o0 = o_begin; o0 < o_end; o0 += 4) {
    const int64_t to = std::min<int64_t>(4, o_end - o0);
    for (int64_t r0 = 0; r0 < CKK; r0 += kWgradTR) {
      const int64_t tr = std::min<int64_t>(kWgradTR, CKK - r0);
      kWgradTiles[to - 1][tr - 1](s, o0, r0, sums);
      for (int64_t i = 0; i < to; ++i) {
        float* dst = acc + (o0 + i) * CKK + r0;
        for (int64_t j = 0; j < tr; ++j) dst[j] = accumulate ? dst[j] + sums[i * tr + j] : sums[i * tr + j];
      }
    }
  }
}

// For each block of 16 output pixels (stride-1 'same') and each tap (ki, kj):
// the lanes whose input pixel lies inside the map, masks[blk * kh * kw + ki * kw + kj].
std::vector<uint16_t> tap_masks16(const ConvGeom& g, int64_t nblk) {
  const int64_t P = g.P(), KK = g.kh * g.kw;
  std::vector<uint16_t> masks(static_cast<size_t>(nblk * KK));
  for (int64_t blk = 0; blk < nblk; ++blk)
    for (int64_t ki = 0; ki < g.kh; ++ki)
      for (int64_t kj = 0; kj < g.kw; ++kj) {
        uint32_t m = 0;
        for (int64_t l = 0; l < 16; ++l) {
          const int64_t p = blk * 16 + l, ih = p / g.W + ki - g.pad, iw = p % g.W + kj - g.pad;
          if (p < P && ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) m |= 1u << l;
        }
        masks[blk * KK + ki * g.kw + kj] = static_cast<uint16_t>(m);
      }
  return masks;
}

// The direct weight gradient (see WgradSame) for a whole batch. Threads take
// samples when there are enough (each group its own accumulator, chunk k to
// group k mod groups: a fixed summation order), else rows of gW.
void backward_weight_same(const ExecContext& ctx, const ConvGeom& g, const float* x, const float* gy, float* gw) {
  const int64_t P = g.P(), KK = g.kh * g.kw, CKK = g.CKK(), HW = g.H * g.W, WN = g.O * CKK;
  const int64_t nblk = (P + 15) / 16;
  const std::vector<uint16_t> masks = tap_masks16(g, nblk);
  std::vector<int64_t> off(static_cast<size_t>(CKK));
  for (int64_t r = 0; r < CKK; ++r) {
    const int64_t c = r / KK, ki = r % KK / g.kw, kj = r % g.kw;
    off[r] = c * HW + (ki - g.pad) * g.W + (kj - g.pad);
  }
  // Samples per chunk: about 1024 pixels, so the reduction at the end of a
  // tile is amortised over enough products.
  const int64_t nbs = std::clamp<int64_t>(1024 / std::max<int64_t>(P, 1), 1, std::max<int64_t>(g.N, 1));
  const int64_t chunks = (g.N + nbs - 1) / nbs;
  const int64_t threads = ctx.pool ? ctx.pool->size() : 1;
  auto chunk = [&](int64_t k) {
    const int64_t n0 = k * nbs;
    return WgradSame{&g, x + n0 * g.C * HW, gy + n0 * g.O * P, std::min(nbs, g.N - n0), masks.data(), off.data(), nblk};
  };
  if (g.N == 0) {
    std::fill(gw, gw + WN, 0.f);
    return;
  }
  if (threads <= 1 || chunks < threads) {
    // Rows of gW in parallel, every chunk in order.
    ctx.parallel_for((g.O + 3) / 4, 1, [&](int64_t b, int64_t e) {
      for (int64_t k = 0; k < chunks; ++k) wgrad_rows(chunk(k), b * 4, std::min(g.O, e * 4), gw, k > 0);
    });
    return;
  }
  const int64_t groups = std::min(threads, chunks);
  Tensor parts = ctx.scratch({std::max<int64_t>(1, (groups - 1) * WN)});
  ctx.parallel_for(groups, 1, [&](int64_t b, int64_t e) {
    for (int64_t gi = b; gi < e; ++gi) {
      float* acc = gi == 0 ? gw : parts.f32() + (gi - 1) * WN;
      for (int64_t k = gi; k < chunks; k += groups) wgrad_rows(chunk(k), 0, g.O, acc, k >= groups);
    }
  });
  ctx.parallel_for(WN, 4096, [&](int64_t b, int64_t e) {
    for (int64_t gi = 1; gi < groups; ++gi) {
      const float* part = parts.f32() + (gi - 1) * WN;
      for (int64_t i = b; i < e; ++i) gw[i] += part[i];
    }
  });
}

// ---- weight gradient as an implicit GEMM (AVX-512, stride-1 'same', P % 16 == 0)
//   gW (O, CKK) = sum over chunks of  gy_chunk (O, K) · B (K, CKK),
//   B[k][r] = col(x_s)[r][p]  with k = s*P + p (s: sample of the chunk),
// B packed straight from x: the col row of r = (c, ki, kj) is the plane x_c
// shifted by off[r], masked per 16 pixels by the tap's validity (the masks of
// WgradSame). Sixteen consecutive k of 32 columns are 32 masked loads,
// transposed in registers into the panel's k-major layout; no col matrix is
// written, and the GEMM runs with the forward's micro-kernel, its K split in
// the GEMM's fixed blocks (the sums' order does not depend on the thread
// count or on timing).
struct WgradImplicit {
  const float* x;          // first sample of the chunk (N, C, H, W)
  int64_t CHW, P, KK;
  const uint16_t* masks;   // (P/16, KK)
  const int64_t* off;      // (CKK)
  int64_t CKK;
};

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// r[i] (16 rows of 16) <- its transpose.
__attribute__((target("avx512f"), always_inline)) inline void transpose16(__m512* r) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88);
    t[4 + i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xdd);
    t[8 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88);
    t[12 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xdd);
  }
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd);
  }
}

__attribute__((target("avx512f"))) void pack_wgrad_avx512(const void* self, int nr, int64_t k0, int64_t kc,
                                                           int64_t j0, int64_t nc, float* out) {
  const WgradImplicit& s = *static_cast<const WgradImplicit*>(self);
  TDQ_CHECK(nr == 32 && k0 % 16 == 0 && kc % 16 == 0, "conv2d: implicit weight-gradient packing expects 32-wide panels and 16-row blocks, got ",
            nr, ", ", k0, ", ", kc);
  for (int64_t q = 0; q * 32 < nc; ++q) {
    const int64_t r0 = j0 + q * 32, nv = std::min<int64_t>(32, nc - q * 32);
    float* panel = out + q * 32 * kc;
    for (int64_t kb = 0; kb < kc; kb += 16) {
      const int64_t k = k0 + kb, smp = k / s.P, p = k % s.P;
      const float* xs = s.x + smp * s.CHW + p;
      const uint16_t* mk = s.masks + (p / 16) * s.KK;
      __m512 v[32];
      for (int64_t j = 0; j < 32; ++j) {
        if (j < nv) {
          const int64_t r = r0 + j;
          v[j] = _mm512_maskz_loadu_ps(static_cast<__mmask16>(mk[r % s.KK]), xs + s.off[r]);
        } else {
          v[j] = _mm512_setzero_ps();
        }
      }
      transpose16(v);
      transpose16(v + 16);
      float* dst = panel + kb * 32;
#pragma GCC unroll 16
      for (int t = 0; t < 16; ++t) {
        _mm512_store_ps(dst + t * 32, v[t]);
        _mm512_store_ps(dst + t * 32 + 16, v[16 + t]);
      }
    }
  }
}
#pragma GCC diagnostic pop

bool wgrad_implicit_ok(const ExecContext& ctx, const ConvGeom& g) {
  return same_implicit_ok(ctx, g) && g.P() % 16 == 0;
}

void backward_weight_implicit(const ExecContext& ctx, const ConvGeom& g, const float* x, const float* gy, float* gw) {
  const int64_t P = g.P(), KK = g.kh * g.kw, CKK = g.CKK(), HW = g.H * g.W, WN = g.O * CKK;
  if (g.N == 0) {
    std::fill(gw, gw + WN, 0.f);
    return;
  }
  const int64_t nblk = P / 16;
  const std::vector<uint16_t> masks = tap_masks16(g, nblk);
  std::vector<int64_t> off(static_cast<size_t>(CKK));
  for (int64_t r = 0; r < CKK; ++r) {
    const int64_t c = r / KK, ki = r % KK / g.kw, kj = r % g.kw;
    off[r] = c * HW + (ki - g.pad) * g.W + (kj - g.pad);
  }
  // Samples per GEMM: K = nb*P of at least 512, A (O, K) packed per chunk.
  const int64_t nb = std::clamp<int64_t>(512 / P, 1, g.N);
  const int64_t Kmax = nb * P;
  Tensor apack = ctx.scratch({std::max<int64_t>(1, sgemm_packed_a_size(ctx, g.O, Kmax))});
  Tensor gyc = ctx.scratch({nb > 1 ? g.O * Kmax : 1});
  for (int64_t n0 = 0; n0 < g.N; n0 += nb) {
    const int64_t cnt = std::min(nb, g.N - n0), K = cnt * P;
    const float* a = gy + n0 * g.O * P;
    if (cnt > 1) {
      gather_chunk(ctx, a, cnt, g.O, P, gyc.f32());
      a = gyc.f32();
    }
    sgemm_pack_a(ctx, false, g.O, K, 1.f, a, K, apack.f32());
    const WgradImplicit packer{x + n0 * g.C * HW, g.C * HW, P, KK, masks.data(), off.data(), CKK};
    sgemm_prepacked_implicit_b(ctx, g.O, CKK, K, apack.f32(), BPacker{pack_wgrad_avx512, &packer}, n0 > 0 ? 1.f : 0.f,
                               gw, CKK);
  }
}

// The weight gradient through im2col + GEMM (every other geometry and level).
void backward_weight_gemm(const ExecContext& ctx, const ConvGeom& g, const float* xd, const float* gyd, float* gw) {
  const int64_t P = g.P(), CKK = g.CKK(), WN = g.O * CKK;
  // Groups past the first accumulate into their own copy of gW (summed below).
  const BatchPlan plan = batch_plan(ctx, g, 256, (CKK + g.O) * P, WN);
  const int64_t nbmax = plan.nb;
  const bool direct = g.pointwise() && nbmax == 1;
  const int64_t col_n = direct ? 0 : CKK * nbmax * P, gyc_n = nbmax > 1 ? g.O * nbmax * P : 0;
  const int64_t per_group = col_n + gyc_n + WN;
  Tensor scratch = ctx.scratch({plan.groups, std::max<int64_t>(1, per_group)});

  std::vector<char> used(plan.groups, 0);  // which groups wrote their accumulator
  // Chunks go to groups by index (chunk k to group k mod groups), not from the
  // shared queue the other passes use: each group sums its chunks into its own
  // accumulator, so a timing-dependent assignment would change the order of
  // the float sums, and a gradient (hence a training run, and its resume)
  // would differ from run to run.
  const int64_t chunks = (g.N + nbmax - 1) / nbmax;
  for_each_group(ctx, plan, [&](int64_t gi, const ExecContext& gctx) {
    float* col = scratch.f32() + gi * std::max<int64_t>(1, per_group);
    float* gyc = col + col_n;
    float* acc = gi == 0 ? gw : gyc + gyc_n;
    for (int64_t k = gi; k < chunks; k += plan.groups) {
      const int64_t n0 = k * nbmax, nb = std::min(nbmax, g.N - n0);
      const int64_t cols = nb * P;
      const float* xs = xd + n0 * g.C * g.H * g.W;
      const float* colp = xs;
      if (!direct) {
        im2col(gctx, g, xs, nb, col, cols);
        colp = col;
      }
      const float* gys = gyd + n0 * g.O * P;
      if (nbmax > 1) {
        gather_chunk(gctx, gys, nb, g.O, P, gyc);
        gys = gyc;
      }
      // gW (O, CKK) += gy_chunk (O, cols) · col^T (cols, CKK); the first chunk overwrites.
      sgemm(gctx, false, true, g.O, CKK, cols, 1.f, gys, cols, colp, cols, used[gi] ? 1.f : 0.f, acc, CKK);
      used[gi] = 1;
    }
  });
  if (!used[0]) std::fill(gw, gw + WN, 0.f);  // no chunk reached group 0 (or N == 0)
  if (plan.groups > 1) {
    const float* parts = scratch.f32();
    ctx.parallel_for(WN, 4096, [&](int64_t b, int64_t e) {
      for (int64_t gi = 1; gi < plan.groups; ++gi) {
        if (!used[gi]) continue;
        const float* part = parts + gi * per_group + col_n + gyc_n;
        for (int64_t i = b; i < e; ++i) gw[i] += part[i];
      }
    });
  }

}

void conv2d_backward_weight(OpCall& c, const ExecContext& ctx) {
  const Tensor &gy = c.inputs[0], &x = c.inputs[1];
  const ConvGeom g = conv_geometry(c.attrs, x.shape, c.outputs[0].shape, "x");
  const int64_t P = g.P();
  float* gw = c.outputs[0].f32();
  // The direct kernel wins where the GEMM's M (= O) is small and its B
  // (the col matrix, packed) is reused by few rows: the narrow layers of a
  // small UNet (1-thread CPU time, batch 64, 32 -> 32 channels at 32x32:
  // 13.6 -> 10.2 ms). From 128 x 64 channels on, im2col + GEMM is as fast or
  // faster (its register tile reuses each load more).
  // The implicit GEMM (no col matrix) from 128 output channels on, where
  // its B panels, transposed in registers, serve enough rows; 1-thread CPU
  // time of the DDPM CIFAR-10 UNet's 3x3 layers at batch 8: 120-150 -> 140-165
  // GFLOP/s. Below that the direct kernel or im2col + GEMM measured faster
  // (fmnist-small, 32 and 64 channels), as for 1x1 convolutions, which need no
  // col matrix anyway.
  if (wgrad_implicit_ok(ctx, g) && !g.pointwise() && g.O >= 128) {
    backward_weight_implicit(ctx, g, x.f32(), gy.f32(), gw);
  } else if (same_implicit_ok(ctx, g) && g.O * g.C <= 64 * 64) {
    backward_weight_same(ctx, g, x.f32(), gy.f32(), gw);
  } else {
    backward_weight_gemm(ctx, g, x.f32(), gy.f32(), gw);
  }

  if (c.outputs.size() > 1) {
    // gb[o] = sum over samples and pixels of gy. Each row of P values is summed
    // in 16 independent float lanes (vectorisable, no serial add chain), the
    // row totals in double.
    float* gb = c.outputs[1].f32();
    const float* pg = gy.f32();
    ctx.parallel_for(g.O, 1, [&](int64_t b, int64_t e) {
      for (int64_t o = b; o < e; ++o) {
        double acc = 0;
        for (int64_t n = 0; n < g.N; ++n) {
          const float* src = pg + (n * g.O + o) * P;
          float lanes[16] = {};
          int64_t p = 0;
          for (; p + 16 <= P; p += 16)
            for (int l = 0; l < 16; ++l) lanes[l] += src[p + l];
          double row = 0;
          for (; p < P; ++p) row += src[p];
          for (int l = 0; l < 16; ++l) row += lanes[l];
          acc += row;
        }
        gb[o] = static_cast<float>(acc);
      }
    });
  }
}

}  // namespace

TDQ_REGISTER_OP({"conv2d_forward", 2, 5, infer_conv2d_forward, conv2d_forward, {}});
TDQ_REGISTER_OP({"conv2d_backward_input", 2, 2, infer_conv2d_backward_input, conv2d_backward_input, {}});
TDQ_REGISTER_OP({"conv2d_backward_weight", 2, 2, infer_conv2d_backward_weight, conv2d_backward_weight, {}});

}  // namespace tdq
