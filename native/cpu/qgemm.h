// Integer GEMM for quantized convolutions and linear layers:
//
//   y[i, j] = float(acc[i, j] - zc[i]) * (col_step[j] * wstep[i]) + bias[i]
//   acc[i, j] = sum_k a[j, k] * w[i, k]         (exact, int32)
//
// with w int8 weights (per-output-channel symmetric, rows i = output channels),
// a uint8 activations (column j = one output pixel or one input row), zc[i] =
// zero_point * sum_k w[i, k] (the zero-point correction, precomputed per call
// from the packed weights' row sums), col_step[j] the activation step of the
// sample column j belongs to and wstep[i] the weight step of row i.
//
// The float epilogue is three roundings, in this order and never fused:
//   v = fl(acc - zc)   (int32 -> float, round to nearest even)
//   s = fl(col_step * wstep),  y = fl(fl(v * s) + bias)
// so every CPU level gives the same bits (the test checks this against a JS
// reference), and y differs from the exact y* = (acc - zc) * a_step * w_step + bias
// by |y - y*| <= 2^-24 * (3 * |acc - zc| * a_step * w_step + |y|) to first order
// (three relative roundings of the product, one of the sum). The float
// convolution of fake-quantized tensors rounds once per term instead, so the
// two agree to about sqrt(K) * 2^-24 relative; the tests bound the relative
// 2-norm difference by 1e-6 at every CPU level.
//
// Layouts (one for every level, so packed weights do not depend on the level):
//   weights: int8 rows of Kp bytes, Kp a multiple of 4, zero where no real k
//   (qweight_row_length);
//   activations: panels of kNR = 32 columns, panel p holding
//     a[32p + c, 4q + r] at byte (p * kq + q) * 128 + c * 4 + r   (kq = Kp / 4)
//   i.e. for each group of 4 consecutive k, the 4 bytes of one column together:
//   the operand shape of vpdpbusd (4 u8 x s8 products per int32 lane).
// Columns past the end of a panel and k past K may hold anything: the tail
// weights are zero, and tail columns are never written out.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "../core/registry.h"

namespace tdq {
namespace qgemm_detail {

constexpr int kNR = 32;  // columns per activation panel and per micro-tile

// The epilogue of one micro-tile: rows i < mr, columns j < nr (valid counts).
struct QTile {
  int mr = 0, nr = 0;
  const int32_t* zc = nullptr;      // [mr]
  const float* wstep = nullptr;     // [mr]
  const float* bias = nullptr;      // [mr] or null (then + 0)
  const float* col_step = nullptr;  // [nr]
  const int64_t* col_off = nullptr; // [nr]: y index of column j is row * row_stride + col_off[j]
  bool contig = false;              // col_off[j] == col_off[0] + j for every j < nr
  float* y = nullptr;               // output base (row 0 of this tile)
  int64_t row_stride = 0;
};

// Computes one tile: acc over kq groups of 4 k, then the epilogue. Rows at or
// past t.mr repeat the last valid row (read, never written).
using QMicroKernel = void (*)(int64_t kq, const int8_t* w, int64_t ldw, const uint8_t* panel, const QTile& t);

struct QKernel {
  int mr;
  QMicroKernel ukr;
  const char* name;
  // The kernel reads the weights widened to int16 (w then points at int16 rows,
  // ldw in bytes): the driver widens them once per call.
  bool wide_weights = false;
};

const QKernel& qkernel_scalar();
const QKernel& qkernel_avx2();         // qgemm_avx2.cpp
const QKernel& qkernel_avx512_vnni();  // qgemm_avx512.cpp
// The kernel for a level: scalar; avx2; avx512 uses VNNI where the CPU has it
// and the AVX2 kernel otherwise.
const QKernel& qkernel_for(CpuLevel level);

}  // namespace qgemm_detail

inline int64_t round_up4(int64_t k) { return (k + 3) / 4 * 4; }
inline int64_t qpanel_bytes(int64_t cols, int64_t kq) {
  return (cols + qgemm_detail::kNR - 1) / qgemm_detail::kNR * kq * qgemm_detail::kNR * 4;
}

// Scratch memory of the calling thread that keeps its pages from call to call
// (a fresh allocation of a few hundred KiB costs page faults every time, which
// on a VM rivals the arithmetic): slot 0..3, grown on demand and kept for the
// thread's lifetime up to 16 MiB per slot; larger requests get a buffer of
// their own. Not zeroed. Two live QScratch of one thread must use different slots.
class QScratch {
 public:
  QScratch(int slot, size_t bytes);
  uint8_t* get() const { return p_; }

 private:
  uint8_t* p_ = nullptr;
  std::unique_ptr<uint8_t[]> own_;
};

// y[i, j] as in the header comment, for M rows and `cols` columns of packed
// activation panels. Parallel over micro-tiles through ctx.parallel_for.
void qgemm(const ExecContext& ctx, int64_t M, int64_t cols, int64_t kq, const int8_t* w, const uint8_t* panels,
           const int32_t* zc, const float* wstep, const float* bias, const float* col_step, const int64_t* col_off,
           float* y, int64_t row_stride);

// As qgemm, but the panels are made on the fly: pack(p, dst) writes panel p
// (kq * 128 bytes, qgemm.h layout) into a buffer of the calling worker, which
// then runs every row block of that panel while it is in L1 (no buffer of all
// panels). Parallel over panels; where there are too few panels for the
// threads (a batch of one, small maps) the panels are packed once into one
// buffer and qgemm spreads their row blocks over the threads. The results are
// those of qgemm, bit for bit.
using QPackFn = std::function<void(int64_t p, uint8_t* dst)>;
void qgemm_pack(const ExecContext& ctx, int64_t M, int64_t cols, int64_t kq, const int8_t* w, const QPackFn& pack,
                const int32_t* zc, const float* wstep, const float* bias, const float* col_step, const int64_t* col_off,
                float* y, int64_t row_stride);

// The packed row length of weights of shape w (O, ...): for 4-D conv weights
// (O, C, kH, kW), kH * kW * round_up(C, 4), k = (i * kW + j) * round_up(C, 4) + c
// (tap-major, channels fastest: 4 consecutive k are 4 channels of one tap, so
// the convolution's im2col moves 4-byte groups of a channel-interleaved input);
// otherwise round_up(K, 4) with k the flattened index. The padding is zero.
int64_t qweight_row_length(const Shape& w);
// Validates the (packed weights, weight steps, row sums, bias) arguments of a
// quantized op at inputs [iw, iw + 3]: packed rows of Kp bytes for a reduction
// over K real terms.
void check_qweights(const Attrs& a, const std::vector<Tensor>& in, size_t iw, int64_t K, int64_t Kp);
// Validates an activation step tensor: shape [] / [1], or [n] for one step per sample.
void check_act_step(const Attrs& a, const Tensor& s, int64_t n, const Shape& xshape);
// Throws RangeError unless every step is positive and finite.
void check_positive_steps(const Tensor& s, const char* arg);
// The uint8 zero point of the activations: attribute 'zero_point' (0..255,
// default 0) for uint8 x; 128 for int8 x, which the kernels read as x + 128;
// for float32 x (quantized inside the op, QActSpec) 128 when signed, else 0.
int64_t activation_zero_point(const Attrs& a, const Tensor& x);

// ---- activation quantization inside qconv2d / qlinear (float32 x) ------------
//
// With float32 x the op quantizes x itself (no quantize_act, no uint8 tensor):
//   attributes bits (2..8), signed, offset (real zero point z, default 0),
//   input_shifted (default false: x - z is taken here; true: x is already
//   x - z, e.g. PACT-clipped), step_floor (default 0), column (default -1);
//   level = clamp(round(fl(x - z) / s), qmin, qmax) exactly as quantize_act
//   on fl(x - z) (fake_quant's levels), s = max(act_step, step_floor) of the
//   sample. Levels are stored as bytes level + (signed ? 128 : 0), so the GEMM
//   sees uint8 with zero point 128 (signed) or 0 (unsigned).
//   column >= 0: act_step is a (1 or N, Q) table of steps (one step_table_lookup
//   per forward, shared by every layer) and the sample's step is its row's
//   element `column`: TDQ and static quantizers take the same kernel path.
//   z != 0: the levels are of x - z, so y gets z * sum of the sample's valid
//   weights * wstep added back (bias' = bias + fl(fl(z * wstep) * rowsum) in
//   the GEMM epilogue; at conv borders, where zero padding means real 0 and not
//   z, the taps outside the input are taken out again: + fl(fl(z * wstep) *
//   (valid sum - rowsum))).
// uint8 / int8 x (levels made outside, e.g. by qgroup_norm_act) takes the
// same 'offset', 'step_floor' and 'column' attributes, which then say how the
// levels were made: the epilogue adds z back and reads the sample's step.
struct QActSpec {
  bool quantize = false;  // x is float32
  bool is_signed = false, shifted = false;
  int64_t bits = 8, column = -1;
  float offset = 0.f, floor = 0.f;
  float lo = 0.f, hi = 0.f;  // clamp limits of round(v)
  int32_t add = 0;           // byte = level + add (128 signed, 0 unsigned)
};
QActSpec qact_spec(const Attrs& a, const Tensor& x);
// The (floored) step of each of n samples; checks the step tensor's shape
// against column (see above) and that every step used is positive and finite.
void act_steps(const Attrs& a, const QActSpec& q, const Tensor& s, int64_t n, const Shape& xshape, float* out);
void check_act_steps_shape(const Attrs& a, const QActSpec& q, const Tensor& s, int64_t n, const Shape& xshape);
// bytes[i] = clamp(round(fl(x[i] - offset) / s), lo, hi) + add, at a CPU level
// (the kernel of quantize_act: every level gives the same bytes).
using QuantRowFn = void (*)(const float* x, uint8_t* out, int64_t n, float s, float lo, float hi, int32_t add,
                            float offset);
QuantRowFn quant_row_for(CpuLevel level);
// Four channel rows x[0..nch) at once, interleaved: out[i] holds the bytes of
// x[c][i] (as QuantRowFn) at bits 8c..8c+7; channels nch..3 give `add`.
using Quant4Fn = void (*)(const float* const* x, int nch, uint32_t* out, int64_t n, float s, float lo, float hi,
                          int32_t add, float offset);
Quant4Fn quant4_for(CpuLevel level);

}  // namespace tdq
