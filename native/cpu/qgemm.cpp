// Integer execution of quantized layers: the int8 GEMM driver and its scalar
// micro-kernel (qgemm.h), and the ops around it:
//
// quantize_act(x, step; bits, signed, zero_point = 0) -> q
//   q = clamp(round(x / s) + zero_point, qmin, qmax), round half to even: the
//   integer levels of fake_quant_forward (fake_quant.cpp), which returns
//   (q - zero_point) * s. uint8 output for signed = false (qmin 0, qmax 2^bits - 1),
//   int8 for signed = true (symmetric: zero_point must be 0). step: [] or [1],
//   one step for all of x, or [x.shape[0]], one per sample (per-timestep steps
//   of a diffusion batch). A NaN input gives the zero point.
//
// qweight_pack(w, step; bits) -> (packed int8 [O, Kp], row_sums int32 [O])
//   Weights once per model into the kernels' layout: w (O, ...) float32 is
//   quantized per output channel, q = clamp(round(w / step[o]), -2^(bits-1),
//   2^(bits-1) - 1) (fake_quant 'channel' on axis 0, signed); an int8 w is taken
//   as already-quantized levels and checked against that range. Rows are laid
//   out and zero-padded as qweight_row_length (qgemm.h) says: 4-D (O, C, kH, kW)
//   tap-major with channels padded to a multiple of 4, anything else flattened
//   and padded to a multiple of 4. row_sums[o] = sum of row o's levels (for the
//   zero-point correction). The step stays the caller's tensor.
//
// int4_pack(q int8) -> uint8 [ceil(n / 2)]  and  int4_unpack(p uint8; shape) -> int8
//   4-bit weight storage, two per byte: element 2i in the low nibble, 2i + 1 in
//   the high nibble, as 4-bit two's complement (-8..7). The kernels always run
//   int8: 4-bit weights are unpacked once at load time (int4_unpack, then
//   qweight_pack), not in the inner loop, so W4 costs the same as W8 at run time
//   and an eighth of fp32 in storage.
//
// qlinear(x, act_step, packed, wstep, row_sums, bias?; weight_shape [O, K], zero_point) -> y float32 (..., O)
//   y = (x - zp) · q^T * (act_step * wstep) + bias over the last axis of x (K),
//   x uint8 (zero point 'zero_point', default 0) or int8 (symmetric). act_step
//   as for quantize_act ([x.shape[0]]: one step per index of axis 0).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "nn_simd.h"
#include "qgemm.h"

namespace tdq {
namespace qgemm_detail {
namespace {

// Keeps the compiler from fusing the product into the following add (the
// build may have -ffp-contract=fast): the epilogue rounds twice, as documented.
TDQ_AINLINE void opaque(float& v) {
#if TDQ_NN_X86
  asm("" : "+x"(v));
#else
  asm volatile("" : "+r"(v));
#endif
}

constexpr int kMRScalar = 4;

void ukr_scalar(int64_t kq, const int8_t* w, int64_t ldw, const uint8_t* panel, const QTile& t) {
  int32_t acc[kMRScalar][kNR] = {};
  const int8_t* rows[kMRScalar];
  for (int i = 0; i < kMRScalar; ++i) rows[i] = w + std::min(i, t.mr - 1) * ldw;
  for (int64_t q = 0; q < kq; ++q) {
    const uint8_t* a = panel + q * kNR * 4;
    for (int i = 0; i < kMRScalar; ++i) {
      const int8_t* wi = rows[i] + 4 * q;
      const int32_t w0 = wi[0], w1 = wi[1], w2 = wi[2], w3 = wi[3];
      for (int j = 0; j < kNR; ++j)
        acc[i][j] += a[4 * j] * w0 + a[4 * j + 1] * w1 + a[4 * j + 2] * w2 + a[4 * j + 3] * w3;
    }
  }
  for (int i = 0; i < t.mr; ++i) {
    const float b = t.bias ? t.bias[i] : 0.f;
    float* yi = t.y + i * t.row_stride;
    for (int j = 0; j < t.nr; ++j) {
      const float s = t.col_step[j] * t.wstep[i];
      float v = static_cast<float>(acc[i][j] - t.zc[i]) * s;
      opaque(v);
      yi[t.col_off[j]] = v + b;
    }
  }
}

}  // namespace

const QKernel& qkernel_scalar() {
  static const QKernel k{kMRScalar, ukr_scalar, "scalar"};
  return k;
}

const QKernel& qkernel_for(CpuLevel level) {
  if (level == CpuLevel::avx512) return cpu_features().avx512vnni ? qkernel_avx512_vnni() : qkernel_avx2();
  if (level == CpuLevel::avx2) return qkernel_avx2();
  return qkernel_scalar();
}

}  // namespace qgemm_detail

using namespace qgemm_detail;

QScratch::QScratch(int slot, size_t bytes) {
  constexpr size_t kKeep = size_t{16} << 20;
  struct Slots {
    std::unique_ptr<uint8_t[]> p[4];
    size_t n[4] = {};
  };
  thread_local Slots slots;
  if (bytes > kKeep) {
    own_.reset(new uint8_t[bytes]);
    p_ = own_.get();
    return;
  }
  if (slots.n[slot] < bytes) {
    slots.p[slot].reset(new uint8_t[bytes]);
    slots.n[slot] = bytes;
  }
  p_ = slots.p[slot].get();
}

namespace {

// The weights as the level's kernel reads them (widened to int16 once per call
// where QKernel::wide_weights), and its row stride in bytes.
const int8_t* kernel_weights(const QKernel& k, int64_t M, int64_t kq, const int8_t* w, std::unique_ptr<QScratch>& buf,
                             int64_t& ldw) {
  ldw = kq * 4;
  if (!k.wide_weights) return w;
  buf.reset(new QScratch(3, static_cast<size_t>(M * kq * 4) * sizeof(int16_t)));
  int16_t* wide = reinterpret_cast<int16_t*>(buf->get());
  for (int64_t i = 0; i < M * kq * 4; ++i) wide[i] = w[i];
  ldw = kq * 8;
  return reinterpret_cast<const int8_t*>(wide);
}

TDQ_AINLINE void run_tile(const QKernel& k, int64_t M, int64_t cols, int64_t kq, const int8_t* w, int64_t ldw,
                          const uint8_t* panel, int64_t p, int64_t i0, const int32_t* zc, const float* wstep,
                          const float* bias, const float* col_step, const int64_t* col_off, float* y,
                          int64_t row_stride) {
  const int64_t j0 = p * kNR;
  QTile t;
  t.mr = static_cast<int>(std::min<int64_t>(k.mr, M - i0));
  t.nr = static_cast<int>(std::min<int64_t>(kNR, cols - j0));
  t.zc = zc + i0;
  t.wstep = wstep + i0;
  t.bias = bias ? bias + i0 : nullptr;
  t.col_step = col_step + j0;
  t.col_off = col_off + j0;
  t.contig = true;
  for (int j = 1; j < t.nr && t.contig; ++j) t.contig = t.col_off[j] == t.col_off[0] + j;
  t.y = y + i0 * row_stride;
  t.row_stride = row_stride;
  k.ukr(kq, w + i0 * ldw, ldw, panel, t);
}

}  // namespace

void qgemm(const ExecContext& ctx, int64_t M, int64_t cols, int64_t kq, const int8_t* w, const uint8_t* panels,
           const int32_t* zc, const float* wstep, const float* bias, const float* col_step, const int64_t* col_off,
           float* y, int64_t row_stride) {
  if (M == 0 || cols == 0) return;
  const QKernel& k = qkernel_for(ctx.cpu_level);
  const int64_t mblocks = (M + k.mr - 1) / k.mr, npanels = (cols + kNR - 1) / kNR;
  int64_t ldw;
  std::unique_ptr<QScratch> wide_buf;
  w = kernel_weights(k, M, kq, w, wide_buf, ldw);
  // Tiles panel-major: consecutive tiles share a panel (kept in L1) and stream
  // the weights (kept in L2).
  ctx.parallel_for(mblocks * npanels, std::max<int64_t>(1, 4096 / std::max<int64_t>(kq, 1)), [&](int64_t b, int64_t e) {
    for (int64_t tix = b; tix < e; ++tix) {
      const int64_t p = tix / mblocks, i0 = (tix % mblocks) * k.mr;
      run_tile(k, M, cols, kq, w, ldw, panels + p * kq * kNR * 4, p, i0, zc, wstep, bias, col_step, col_off, y,
               row_stride);
    }
  });
}

void qgemm_pack(const ExecContext& ctx, int64_t M, int64_t cols, int64_t kq, const int8_t* w, const QPackFn& pack,
                const int32_t* zc, const float* wstep, const float* bias, const float* col_step, const int64_t* col_off,
                float* y, int64_t row_stride) {
  if (M == 0 || cols == 0) return;
  const QKernel& k = qkernel_for(ctx.cpu_level);
  const int64_t mblocks = (M + k.mr - 1) / k.mr, npanels = (cols + kNR - 1) / kNR;
  // Few panels (a batch of one, small feature maps) would leave threads idle:
  // then every panel is packed once into a shared buffer (at most 4 per
  // thread, so bounded), and qgemm runs the tiles of all (panel, row block)
  // pairs in parallel.
  const int64_t threads = ctx.pool ? ctx.pool->size() : 1;
  if (threads > 1 && npanels < 4 * threads) {
    QScratch all(2, static_cast<size_t>(npanels * kq * kNR * 4));
    uint8_t* panels = all.get();
    ctx.parallel_for(npanels, 1, [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) pack(p, panels + p * kq * kNR * 4);
    });
    qgemm(ctx, M, cols, kq, w, panels, zc, wstep, bias, col_step, col_off, y, row_stride);
    return;
  }
  int64_t ldw;
  std::unique_ptr<QScratch> wide_buf;
  w = kernel_weights(k, M, kq, w, wide_buf, ldw);
  // About 256k multiply-adds per task at least.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, M * kq * 4 * kNR));
  ctx.parallel_for(npanels, grain, [&](int64_t b, int64_t e) {
    QScratch buf(2, static_cast<size_t>(kq * kNR * 4));  // this worker's panel
    for (int64_t p = b; p < e; ++p) {
      pack(p, buf.get());
      for (int64_t mb = 0; mb < mblocks; ++mb)
        run_tile(k, M, cols, kq, w, ldw, buf.get(), p, mb * k.mr, zc, wstep, bias, col_step, col_off, y, row_stride);
    }
  });
}

// ---- argument checks shared with qconv2d.cpp ---------------------------------

void check_positive_steps(const Tensor& s, const char* arg) {
  const float* p = s.f32();
  for (int64_t i = 0; i < s.numel(); ++i)
    TDQ_CHECK_RANGE(p[i] > 0 && std::isfinite(p[i]), "quantizer step '", arg, "'[", i, "] = ", p[i],
                    " must be positive and finite");
}

void check_act_step(const Attrs& a, const Tensor& s, int64_t n, const Shape& xshape) {
  check_dtype(a, s, "act_step", DType::f32);
  const bool one = s.numel() == 1 && s.dim() <= 1;
  const bool per_sample = s.dim() == 1 && s.shape[0] == n;
  TDQ_CHECK_RANGE(one || per_sample, a.op, ": argument 'act_step' must have shape [], [1] or [", n,
                  "] (one step per sample of 'x' ", shape_str(xshape), "), got ", shape_str(s.shape));
}

int64_t qweight_row_length(const Shape& w) {
  if (w.size() == 4) return w[2] * w[3] * round_up4(w[1]);
  return round_up4(w[0] ? shape_numel(w) / w[0] : 0);
}

void check_qweights(const Attrs& a, const std::vector<Tensor>& in, size_t iw, int64_t K, int64_t Kp) {
  check_dtype(a, in[iw], "packed", DType::i8);
  check_rank(a, in[iw], "packed", 2);
  const int64_t O = in[iw].shape[0];
  TDQ_CHECK_RANGE(in[iw].shape[1] == Kp, a.op, ": argument 'packed' ", shape_str(in[iw].shape), " must have ", Kp,
                  " columns here (pack the weights with qweight_pack)");
  check_dtype(a, in[iw + 1], "wstep", DType::f32);
  check_shape(a, in[iw + 1], "wstep", {O});
  check_dtype(a, in[iw + 2], "row_sums", DType::i32);
  check_shape(a, in[iw + 2], "row_sums", {O});
  if (in.size() > iw + 3 && in[iw + 3].defined()) {
    check_dtype(a, in[iw + 3], "bias", DType::f32);
    check_shape(a, in[iw + 3], "bias", {O});
  }
  // int32 accumulation: |sum| <= K * 255 * 128 must stay below 2^31.
  TDQ_CHECK_RANGE(K >= 1 && K <= 65000, a.op, ": reduction length K = ", K,
                  " is out of range for int32 accumulation (1..65000)");
}

int64_t activation_zero_point(const Attrs& a, const Tensor& x) {
  TDQ_CHECK_TYPE(x.dtype == DType::u8 || x.dtype == DType::i8 || x.dtype == DType::f32, a.op,
                 ": argument 'x' must be uint8 or int8 (from quantize_act) or float32 (quantized here), got ",
                 dtype_name(x.dtype));
  if (x.dtype == DType::f32) return qact_spec(a, x).add;
  const int64_t zp = a.get_int("zero_point", 0);
  if (x.dtype == DType::i8) {
    TDQ_CHECK_RANGE(zp == 0, a.op, ": attribute 'zero_point' must be 0 for int8 (symmetric) 'x', got ", zp);
    return 128;
  }
  TDQ_CHECK_RANGE(zp >= 0 && zp <= 255, a.op, ": attribute 'zero_point' must be in 0..255 for uint8 'x', got ", zp);
  return zp;
}

QActSpec qact_spec(const Attrs& a, const Tensor& x) {
  QActSpec q;
  // The real zero point, step floor and table column: for float32 x how the op
  // quantizes it; for uint8 / int8 levels (qgroup_norm_act) how they were made,
  // which the epilogue needs (the step, and z added back).
  const double off = a.get_float("offset", 0.0), fl = a.get_float("step_floor", 0.0);
  TDQ_CHECK_RANGE(std::isfinite(off), a.op, ": attribute 'offset' must be finite, got ", off);
  TDQ_CHECK_RANGE(std::isfinite(fl) && fl >= 0, a.op, ": attribute 'step_floor' must be finite and >= 0, got ", fl);
  q.offset = static_cast<float>(off), q.floor = static_cast<float>(fl);
  q.column = a.get_int("column", -1);
  TDQ_CHECK_RANGE(q.column >= -1, a.op, ": attribute 'column' must be -1 or a column index, got ", q.column);
  if (x.dtype != DType::f32) return q;
  q.quantize = true;
  TDQ_CHECK_TYPE(a.has("bits") && a.has("signed"), a.op,
                 ": float32 'x' is quantized inside the op and needs attributes 'bits' and 'signed'");
  q.bits = a.get_int("bits");
  TDQ_CHECK_RANGE(q.bits >= 2 && q.bits <= 8, a.op, ": attribute 'bits' must be an integer from 2 to 8, got ", q.bits);
  q.is_signed = a.get_bool("signed", false);
  TDQ_CHECK_RANGE(a.get_int("zero_point", 0) == 0, a.op,
                  ": attribute 'zero_point' is for uint8 'x'; float32 'x' takes a real zero point as 'offset'");
  q.shifted = a.get_bool("input_shifted", false);
  const int64_t half = int64_t{1} << (q.bits - 1);
  if (q.is_signed) q.lo = static_cast<float>(-half), q.hi = static_cast<float>(half - 1), q.add = 128;
  else q.lo = 0.f, q.hi = static_cast<float>(2 * half - 1), q.add = 0;
  return q;
}

void check_act_steps_shape(const Attrs& a, const QActSpec& q, const Tensor& s, int64_t n, const Shape& xshape) {
  if (q.column < 0) return check_act_step(a, s, n, xshape);
  check_dtype(a, s, "act_step", DType::f32);
  TDQ_CHECK_RANGE(s.dim() == 2 && (s.shape[0] == 1 || s.shape[0] == n) && q.column < s.shape[1], a.op,
                  ": argument 'act_step' must be a (1 or ", n, ", Q) table of steps with Q > column ", q.column,
                  " (one row per sample of 'x' ", shape_str(xshape), "), got ", shape_str(s.shape));
}

void act_steps(const Attrs& a, const QActSpec& q, const Tensor& s, int64_t n, const Shape& xshape, float* out) {
  check_act_steps_shape(a, q, s, n, xshape);
  const float* p = s.f32();
  const int64_t rows = q.column < 0 ? s.numel() : s.shape[0], ld = q.column < 0 ? 1 : s.shape[1];
  const int64_t col = q.column < 0 ? 0 : q.column;
  for (int64_t i = 0; i < n; ++i) {
    const float raw = p[(rows == 1 ? 0 : i) * ld + col];
    const float v = raw < q.floor ? q.floor : raw;  // clamp(step, floor): NaN stays NaN
    TDQ_CHECK_RANGE(v > 0 && std::isfinite(v), "quantizer step 'act_step' of sample ", i, " = ", v,
                    " must be positive and finite");
    out[i] = v;
  }
}

namespace {

// ---- quantize_act ----------------------------------------------------------------

struct ActQuant {
  bool is_signed;
  int64_t bits, zp;
  float lo, hi;  // clamp limits of round(x / s): qmin - zp, qmax - zp
};

ActQuant act_quant_spec(const Attrs& a) {
  ActQuant q;
  q.bits = a.get_int("bits");
  TDQ_CHECK_RANGE(q.bits >= 2 && q.bits <= 8, a.op, ": attribute 'bits' must be an integer from 2 to 8, got ", q.bits);
  TDQ_CHECK_TYPE(a.has("signed"), a.op, ": missing attribute 'signed'");
  q.is_signed = a.get_bool("signed", false);
  q.zp = a.get_int("zero_point", 0);
  int64_t qmin, qmax;
  if (q.is_signed) {
    TDQ_CHECK_RANGE(q.zp == 0, a.op, ": attribute 'zero_point' must be 0 for signed (symmetric) quantization, got ", q.zp);
    qmin = -(int64_t{1} << (q.bits - 1)), qmax = (int64_t{1} << (q.bits - 1)) - 1;
  } else {
    qmin = 0, qmax = (int64_t{1} << q.bits) - 1;
    TDQ_CHECK_RANGE(q.zp >= qmin && q.zp <= qmax, a.op, ": attribute 'zero_point' must be in 0..", qmax, " for ",
                    q.bits, "-bit unsigned quantization, got ", q.zp);
  }
  q.lo = static_cast<float>(qmin - q.zp), q.hi = static_cast<float>(qmax - q.zp);
  return q;
}

std::vector<TensorMeta> infer_quantize_act(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "x", DType::f32);
  const ActQuant q = act_quant_spec(a);
  check_act_step(a, in[1], in[0].dim() >= 1 ? in[0].shape[0] : 1, in[0].shape);
  return {{in[0].shape, q.is_signed ? DType::i8 : DType::u8}};
}

// out[i] = clamp(round(x / s), lo, hi) + zp as bytes (T = int8_t or uint8_t).
// Clamp first, then round by the 1.5 * 2^23 trick (round half to even for
// |v| < 2^22; the limits are integers, so this equals round-then-clamp, as in
// fake_quant.cpp). NaN becomes 0 before the zero point is added.
template <int W, typename T>
TDQ_AINLINE void quantize_row_w(const float* x, T* out, int64_t n, float s, float lo, float hi, int32_t zp,
                                float off = 0.f) {
  using namespace nnsimd;
  int64_t i = 0;
  if constexpr (W > 1) {
    const Vf<W> vlo = vsplat<W>(lo), vhi = vsplat<W>(hi), zero{};
    for (; i + W <= n; i += W) {
      Vf<W> v = (vload<W>(x + i) - off) / s;  // x - 0 is x, bit for bit
      v = v == v ? v : zero;
      v = vlo > v ? vlo : v;
      v = vhi < v ? vhi : v;
      const Vf<W> r = (v + 12582912.0f) - 12582912.0f;
      const Vi<W> qi = __builtin_convertvector(r, Vi<W>) + zp;
      typedef T Vb __attribute__((vector_size(W)));
      if constexpr (W == 8) {
        // The low byte of each lane (in range: exact). A shuffle, because GCC 12
        // narrows an 8 x int32 conversion lane by lane on AVX2.
        typedef T Vb32 __attribute__((vector_size(32)));
        const Vb32 bytes = reinterpret_cast<const Vb32&>(qi);
        const Vb qb = __builtin_shufflevector(bytes, bytes, 0, 4, 8, 12, 16, 20, 24, 28);
        std::memcpy(out + i, &qb, W);
      } else {
        const Vb qb = __builtin_convertvector(qi, Vb);  // in range: truncation is exact (vpmovdb)
        std::memcpy(out + i, &qb, W);
      }
    }
  }
  for (; i < n; ++i) {
    float v = (x[i] - off) / s;
    if (v != v) v = 0.f;
    const float r = std::min(std::max(std::nearbyint(v), lo), hi);
    out[i] = static_cast<T>(static_cast<int32_t>(r) + zp);
  }
}

template <typename T> void quantize_row_scalar(const float* x, T* o, int64_t n, float s, float lo, float hi, int32_t zp) {
  quantize_row_w<1, T>(x, o, n, s, lo, hi, zp);
}
#if TDQ_NN_X86
template <typename T>
TDQ_AVX2 void quantize_row_avx2(const float* x, T* o, int64_t n, float s, float lo, float hi, int32_t zp) {
  quantize_row_w<8, T>(x, o, n, s, lo, hi, zp);
}
template <typename T>
TDQ_AVX512 void quantize_row_avx512(const float* x, T* o, int64_t n, float s, float lo, float hi, int32_t zp) {
  quantize_row_w<16, T>(x, o, n, s, lo, hi, zp);
}
#endif
// Four channels at once, interleaved (Quant4Fn, qgemm.h): the levels of
// quantize_row_w, word i = byte(x[0][i]) | byte(x[1][i]) << 8 | ... (channels
// c >= nch give the byte `add`, level 0).
template <int W>
TDQ_AINLINE void quant4_w(const float* const* x, int nch, uint32_t* out, int64_t n, float s, float lo, float hi,
                          int32_t add, float off) {
  using namespace nnsimd;
  int64_t i = 0;
  if constexpr (W > 1) {
    const Vf<W> vlo = vsplat<W>(lo), vhi = vsplat<W>(hi), zero{};
    for (; i + W <= n; i += W) {
      typedef uint32_t Vu __attribute__((vector_size(W * sizeof(uint32_t))));
      Vu word = Vu{} + static_cast<uint32_t>(add) * 0x01010101u;
      for (int c = 0; c < nch; ++c) {
        Vf<W> v = (vload<W>(x[c] + i) - off) / s;
        v = v == v ? v : zero;
        v = vlo > v ? vlo : v;
        v = vhi < v ? vhi : v;
        const Vf<W> r = (v + 12582912.0f) - 12582912.0f;
        const Vi<W> qi = __builtin_convertvector(r, Vi<W>);  // level; + add gives the byte
        word += reinterpret_cast<const Vu&>(qi) << (8 * c);  // mod 2^32: byte c becomes add + level (0..255)
      }
      std::memcpy(out + i, &word, sizeof word);
    }
  }
  for (; i < n; ++i) {
    uint32_t word = static_cast<uint32_t>(add) * 0x01010101u;
    for (int c = 0; c < nch; ++c) {
      float v = (x[c][i] - off) / s;
      if (v != v) v = 0.f;
      const float r = std::min(std::max(std::nearbyint(v), lo), hi);
      word += static_cast<uint32_t>(static_cast<int32_t>(r)) << (8 * c);
    }
    out[i] = word;
  }
}

void q4_scalar(const float* const* x, int nch, uint32_t* o, int64_t n, float s, float lo, float hi, int32_t add,
               float off) {
  quant4_w<1>(x, nch, o, n, s, lo, hi, add, off);
}
#if TDQ_NN_X86
TDQ_AVX2 void q4_avx2(const float* const* x, int nch, uint32_t* o, int64_t n, float s, float lo, float hi, int32_t add,
                      float off) {
  quant4_w<8>(x, nch, o, n, s, lo, hi, add, off);
}
TDQ_AVX512 void q4_avx512(const float* const* x, int nch, uint32_t* o, int64_t n, float s, float lo, float hi,
                          int32_t add, float off) {
  quant4_w<16>(x, nch, o, n, s, lo, hi, add, off);
}
#endif

// With an offset, bytes out (QuantRowFn, qgemm.h).
void qrow_scalar(const float* x, uint8_t* o, int64_t n, float s, float lo, float hi, int32_t add, float off) {
  quantize_row_w<1, uint8_t>(x, o, n, s, lo, hi, add, off);
}
#if TDQ_NN_X86
TDQ_AVX2 void qrow_avx2(const float* x, uint8_t* o, int64_t n, float s, float lo, float hi, int32_t add, float off) {
  quantize_row_w<8, uint8_t>(x, o, n, s, lo, hi, add, off);
}
TDQ_AVX512 void qrow_avx512(const float* x, uint8_t* o, int64_t n, float s, float lo, float hi, int32_t add,
                            float off) {
  quantize_row_w<16, uint8_t>(x, o, n, s, lo, hi, add, off);
}
#endif

template <typename T> void quantize_act_t(OpCall& c, const ExecContext& ctx, const ActQuant& q) {
  const Tensor &x = c.inputs[0], &s = c.inputs[1];
  auto row = quantize_row_scalar<T>;
#if TDQ_NN_X86
  if (ctx.cpu_level == CpuLevel::avx512) row = quantize_row_avx512<T>;
  else if (ctx.cpu_level == CpuLevel::avx2) row = quantize_row_avx2<T>;
#endif
  const int64_t n = x.numel();
  if (n == 0) return;
  const int64_t samples = s.numel() == 1 ? 1 : x.shape[0], per = n / samples;
  constexpr int64_t kBlock = 4096;
  const int64_t per_sample_blocks = (per + kBlock - 1) / kBlock;
  const float *px = x.f32(), *ps = s.f32();
  T* po = c.outputs[0].data<T>();
  ctx.parallel_for(samples * per_sample_blocks, 4, [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) {
      const int64_t smp = u / per_sample_blocks, off = smp * per + (u % per_sample_blocks) * kBlock;
      const int64_t len = std::min(kBlock, (smp + 1) * per - off);
      row(px + off, po + off, len, ps[smp], q.lo, q.hi, static_cast<int32_t>(q.zp));
    }
  });
}

void quantize_act(OpCall& c, const ExecContext& ctx) {
  const ActQuant q = act_quant_spec(c.attrs);
  check_positive_steps(c.inputs[1], "act_step");
  if (q.is_signed) quantize_act_t<int8_t>(c, ctx, q);
  else quantize_act_t<uint8_t>(c, ctx, q);
}

// ---- qweight_pack ------------------------------------------------------------------

std::vector<TensorMeta> infer_qweight_pack(const std::vector<Tensor>& in, const Attrs& a) {
  const Tensor &w = in[0], &s = in[1];
  TDQ_CHECK_TYPE(w.dtype == DType::f32 || w.dtype == DType::i8, a.op,
                 ": argument 'w' must be float32 (weights) or int8 (quantized levels), got ", dtype_name(w.dtype));
  TDQ_CHECK_RANGE(w.dim() >= 2 && w.shape[0] >= 1 && w.numel() >= 1, a.op,
                  ": argument 'w' must be (O, ...) with at least 2 dimensions and no zero size, got ", shape_str(w.shape));
  const int64_t bits = a.get_int("bits");
  TDQ_CHECK_RANGE(bits >= 2 && bits <= 8, a.op, ": attribute 'bits' must be an integer from 2 to 8, got ", bits);
  check_dtype(a, s, "step", DType::f32);
  check_shape(a, s, "step", {w.shape[0]});
  return {{{w.shape[0], qweight_row_length(w.shape)}, DType::i8}, {{w.shape[0]}, DType::i32}};
}

void qweight_pack(OpCall& c, const ExecContext& ctx) {
  const Tensor &w = c.inputs[0], &s = c.inputs[1];
  const int64_t bits = c.attrs.get_int("bits");
  const int32_t qmin = -(1 << (bits - 1)), qmax = (1 << (bits - 1)) - 1;
  const int64_t O = w.shape[0], K = w.numel() / O, Kp = qweight_row_length(w.shape);
  // Row position of flattened weight index k (see qweight_row_length).
  const bool conv = w.dim() == 4;
  const int64_t C = conv ? w.shape[1] : K, taps = conv ? w.shape[2] * w.shape[3] : 1, Cp = conv ? round_up4(C) : Kp;
  int8_t* out = c.outputs[0].data<int8_t>();
  int32_t* sums = c.outputs[1].data<int32_t>();
  if (w.dtype == DType::f32) {
    check_positive_steps(s, "step");
  } else {
    const int8_t* q = w.data<int8_t>();
    for (int64_t i = 0; i < w.numel(); ++i)
      TDQ_CHECK_RANGE(q[i] >= qmin && q[i] <= qmax, c.attrs.op, ": argument 'w' (int8 levels) element ", i, " = ",
                      int(q[i]), " is outside the ", bits, "-bit range ", qmin, "..", qmax);
  }
  ctx.parallel_for(O, 1, [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o) {
      int8_t* row = out + o * Kp;
      std::memset(row, 0, static_cast<size_t>(Kp));
      int32_t sum = 0;
      for (int64_t k = 0; k < K; ++k) {
        int8_t v;
        if (w.dtype == DType::f32) {
          const float r = std::nearbyint(w.f32()[o * K + k] / s.f32()[o]);  // as fake_quant: x / s, half to even
          v = static_cast<int8_t>(r < qmin ? qmin : r > qmax ? qmax : r);  // NaN -> 0
        } else {
          v = w.data<int8_t>()[o * K + k];
        }
        const int64_t ci = k / taps, tap = k % taps;  // flattened (c, i, j): c = k / taps, tap = i * kW + j
        row[tap * Cp + ci] = v;
        sum += v;
      }
      sums[o] = sum;
    }
  });
}

// ---- int4 storage -----------------------------------------------------------------

std::vector<TensorMeta> infer_int4_pack(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "q", DType::i8);
  return {{{(in[0].numel() + 1) / 2}, DType::u8}};
}

void int4_pack(OpCall& c, const ExecContext&) {
  const int8_t* q = c.inputs[0].data<int8_t>();
  const int64_t n = c.inputs[0].numel();
  for (int64_t i = 0; i < n; ++i)
    TDQ_CHECK_RANGE(q[i] >= -8 && q[i] <= 7, c.attrs.op, ": argument 'q' element ", i, " = ", int(q[i]),
                    " is outside the 4-bit range -8..7");
  uint8_t* p = c.outputs[0].data<uint8_t>();
  for (int64_t i = 0; i < n; i += 2) {
    const uint8_t lo = static_cast<uint8_t>(q[i]) & 0xF, hi = i + 1 < n ? static_cast<uint8_t>(q[i + 1]) & 0xF : 0;
    p[i / 2] = static_cast<uint8_t>(lo | (hi << 4));
  }
}

std::vector<TensorMeta> infer_int4_unpack(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "packed", DType::u8);
  const Shape shape = a.get_ints("shape");
  for (int64_t d : shape)
    TDQ_CHECK_RANGE(d >= 0, a.op, ": attribute 'shape' must have non-negative sizes, got ", shape_str(shape));
  TDQ_CHECK_RANGE(in[0].dim() == 1 && in[0].shape[0] == (shape_numel(shape) + 1) / 2, a.op, ": argument 'packed' ",
                  shape_str(in[0].shape), " must have shape [", (shape_numel(shape) + 1) / 2, "] for shape ",
                  shape_str(shape), " (two 4-bit values per byte)");
  return {{shape, DType::i8}};
}

void int4_unpack(OpCall& c, const ExecContext&) {
  const uint8_t* p = c.inputs[0].data<uint8_t>();
  int8_t* q = c.outputs[0].data<int8_t>();
  const int64_t n = c.outputs[0].numel();
  for (int64_t i = 0; i < n; ++i) {
    const int v = (p[i / 2] >> ((i & 1) * 4)) & 0xF;
    q[i] = static_cast<int8_t>(v >= 8 ? v - 16 : v);
  }
}

// ---- qlinear -------------------------------------------------------------------------

std::vector<TensorMeta> infer_qlinear(const std::vector<Tensor>& in, const Attrs& a) {
  const Tensor& x = in[0];
  activation_zero_point(a, x);
  TDQ_CHECK_RANGE(x.dim() >= 1, a.op, ": argument 'x' must have at least 1 dimension, got ", shape_str(x.shape));
  const int64_t K = x.shape.back();
  // The float weights' shape (packed rows are padded, so it names K).
  const Shape ws = a.get_ints("weight_shape");
  TDQ_CHECK_RANGE(ws.size() == 2 && ws[0] >= 1 && ws[1] >= 1, a.op,
                  ": attribute 'weight_shape' must be [O, K] with positive sizes, got ", shape_str(ws));
  TDQ_CHECK_RANGE(ws[1] == K, a.op, ": weight_shape ", shape_str(ws), " expects ", ws[1],
                  " input features but argument 'x' ", shape_str(x.shape), " has ", K);
  TDQ_CHECK_RANGE(in[2].dim() == 2 && in[2].shape[0] == ws[0], a.op, ": argument 'packed' ", shape_str(in[2].shape),
                  " must have ", ws[0], " rows for weight_shape ", shape_str(ws));
  check_qweights(a, in, 2, K, round_up4(K));
  check_act_steps_shape(a, qact_spec(a, x), in[1], x.shape[0], x.shape);
  Shape ys = x.shape;
  ys.back() = in[2].shape[0];
  return {{ys, DType::f32}};
}

void qlinear(OpCall& c, const ExecContext& ctx) {
  const Tensor &x = c.inputs[0], &as = c.inputs[1], &wp = c.inputs[2], &ws = c.inputs[3], &rs = c.inputs[4];
  const Tensor* bias = c.inputs.size() > 5 && c.inputs[5].defined() ? &c.inputs[5] : nullptr;
  const int64_t zp = activation_zero_point(c.attrs, x);
  const QActSpec q = qact_spec(c.attrs, x);
  const uint8_t flip = x.dtype == DType::i8 ? 0x80 : 0;
  const int64_t N = x.shape[0];
  std::vector<float> steps(static_cast<size_t>(N));
  act_steps(c.attrs, q, as, N, x.shape, steps.data());
  check_positive_steps(ws, "wstep");
  const int64_t K = x.shape.back(), O = wp.shape[0], Kp = round_up4(K), kq = Kp / 4;
  const int64_t R = K ? x.numel() / K : 0;
  if (R == 0) return;
  const int64_t per_sample = R / N;
  const int32_t* prs = rs.data<int32_t>();
  std::vector<int32_t> zc(static_cast<size_t>(O));
  for (int64_t o = 0; o < O; ++o) zc[o] = static_cast<int32_t>(zp * prs[o]);
  // A real zero point z (QActSpec): bias' = bias + z * wstep * rowsum.
  std::vector<float> bias2;
  if (q.offset != 0.f) {
    bias2.resize(static_cast<size_t>(O));
    for (int64_t o = 0; o < O; ++o) {
      const float zw = q.offset * ws.f32()[o];
      const float corr = zw * static_cast<float>(prs[o]);
      bias2[o] = bias ? bias->f32()[o] + corr : corr;
    }
  }
  const float* pb = !bias2.empty() ? bias2.data() : bias ? bias->f32() : nullptr;
  const QuantRowFn qrow = quant_row_for(ctx.cpu_level);
  const float off = q.shifted ? 0.f : q.offset;
  const uint8_t* px = q.quantize ? nullptr : x.data<uint8_t>();
  const float* pxf = q.quantize ? x.f32() : nullptr;
  float* y = c.outputs[0].f32();
  constexpr int64_t kRows = 512;  // rows of x per chunk (bounded scratch)
  QScratch panels(0, static_cast<size_t>(qpanel_bytes(std::min(R, kRows), kq)));
  std::vector<float> col_step(static_cast<size_t>(std::min(R, kRows)));
  std::vector<int64_t> col_off(col_step.size());
  for (int64_t r0 = 0; r0 < R; r0 += kRows) {
    const int64_t nr = std::min(kRows, R - r0);
    uint8_t* pan = panels.get();
    // panel layout (qgemm.h): 4 consecutive k of one row are already together in x.
    ctx.parallel_for(nr, 16, [&](int64_t b, int64_t e) {
      std::vector<uint8_t> qbuf(q.quantize ? static_cast<size_t>(K) : 0);
      for (int64_t j = b; j < e; ++j) {
        const uint8_t* xr;
        if (q.quantize) {
          qrow(pxf + (r0 + j) * K, qbuf.data(), K, steps[(r0 + j) / per_sample], q.lo, q.hi, q.add, off);
          xr = qbuf.data();
        } else {
          xr = px + (r0 + j) * K;
        }
        uint8_t* dst = pan + (j / kNR) * kq * kNR * 4 + (j % kNR) * 4;
        for (int64_t q = 0; q < kq; ++q, dst += kNR * 4)
          for (int r = 0; r < 4; ++r) dst[r] = 4 * q + r < K ? static_cast<uint8_t>(xr[4 * q + r] ^ flip) : 0;
      }
    });
    for (int64_t j = 0; j < nr; ++j) {
      col_step[j] = steps[(r0 + j) / per_sample];
      col_off[j] = j * O;
    }
    qgemm(ctx, O, nr, kq, wp.data<int8_t>(), pan, zc.data(), ws.f32(), pb, col_step.data(),
          col_off.data(), y + r0 * O, 1);
  }
}

}  // namespace

Quant4Fn quant4_for(CpuLevel level) {
#if TDQ_NN_X86
  if (level == CpuLevel::avx512) return q4_avx512;
  if (level == CpuLevel::avx2) return q4_avx2;
#endif
  (void)level;
  return q4_scalar;
}

QuantRowFn quant_row_for(CpuLevel level) {
#if TDQ_NN_X86
  if (level == CpuLevel::avx512) return qrow_avx512;
  if (level == CpuLevel::avx2) return qrow_avx2;
#endif
  (void)level;
  return qrow_scalar;
}

TDQ_REGISTER_OP({"quantize_act", 2, 2, infer_quantize_act, quantize_act, {}});
TDQ_REGISTER_OP({"qweight_pack", 2, 2, infer_qweight_pack, qweight_pack, {}});
TDQ_REGISTER_OP({"int4_pack", 1, 1, infer_int4_pack, int4_pack, {}});
TDQ_REGISTER_OP({"int4_unpack", 1, 1, infer_int4_unpack, int4_unpack, {}});
TDQ_REGISTER_OP({"qlinear", 5, 6, infer_qlinear, qlinear, {}});

}  // namespace tdq
