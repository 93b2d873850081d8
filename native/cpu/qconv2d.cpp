// Quantized 2-D convolution in integer arithmetic (dilation 1, groups 1):
//
// qconv2d(x, act_step, packed, wstep, row_sums, bias?; weight_shape [O, C, kH, kW],
//         stride = 1, padding = 0, zero_point = 0) -> y float32 (N, O, Ho, Wo)
//   y[n, o] = sum_{c,i,j} (x - zp)[n, c, ...] * q[o, c, i, j] * (act_step[n] * wstep[o]) + bias[o]
//   x (N, C, H, W): uint8 levels with zero point 'zero_point', or int8 levels
//   (symmetric), from quantize_act; the padding is the zero point (real 0).
//   Levels of x - z (a real zero point z, from qgroup_norm_act) take 'offset'
//   z (and 'column' / 'step_floor' as the levels were made): z * weights is
//   added back in the epilogue, the padding being real 0, as for float32 x.
//   act_step: [] / [1], or [N] (one step per sample). packed, row_sums: from
//   qweight_pack of the (O, C, kH, kW) weights; wstep: their steps [O].
//   The result equals conv2d_forward(fake_quant(x), fake_quant(w), bias) up to
//   float rounding: the integer sum is exact, and the epilogue (qgemm.h) rounds
//   three times; conv2d_forward's float sum rounds once per term.
//   Optional inputs 6 add_channel (N, O) and 7 residual (N, O, Ho, Wo), float32:
//   y = residual + (y + add_channel[n, o]), each add rounded as the separate
//   add ops round it (y + c first, then residual + that), so the result is bit
//   for bit qconv2d followed by add(y, c[:, :, None, None]) and add(residual, y);
//   done per chunk of samples right after its GEMM, while y is in cache (a
//   UNet residual block's time embedding and skip connection: no pass and no
//   tensor of their own).
//
// The input channels interleaved in groups of 4 (quantized on the way for
// float32 x), then im2col one activation panel (qgemm.h) at a time, by the
// GEMM worker that uses it next (qgemm_pack: the panel stays in L1); a chunk
// of samples at a time (bounded scratch); whole chunks per thread when the
// batch has enough of them, otherwise the panels are spread over the threads.
#include <algorithm>
#include <cstring>
#include <memory>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "gemm.h"
#include "qconv2d_winograd.h"
#include "qgemm.h"
#include "weight_cache.h"

namespace tdq {
namespace {

using qgemm_detail::kNR;

struct QConvGeom {
  int64_t N, C, H, W, O, kh, kw, stride, pad, Ho, Wo;
  int64_t P() const { return Ho * Wo; }
  int64_t K() const { return C * kh * kw; }
};

QConvGeom qconv_geometry(const std::vector<Tensor>& in, const Attrs& a) {
  const Tensor& x = in[0];
  check_rank(a, x, "x", 4);
  QConvGeom g{};
  // The float weights' shape: packed rows pad the channels, so it names C and
  // the kernel size (qweight_row_length).
  const Shape ws = a.get_ints("weight_shape");
  TDQ_CHECK_RANGE(ws.size() == 4 && ws[0] >= 1 && ws[1] >= 1 && ws[2] >= 1 && ws[3] >= 1, a.op,
                  ": attribute 'weight_shape' must be [O, C, kH, kW] with positive sizes, got ", shape_str(ws));
  TDQ_CHECK_RANGE(in[2].dim() == 2 && in[2].shape[0] == ws[0], a.op, ": argument 'packed' ", shape_str(in[2].shape),
                  " must have ", ws[0], " rows for weight_shape ", shape_str(ws));
  TDQ_CHECK_RANGE(x.shape[1] == ws[1], a.op, ": weight_shape ", shape_str(ws), " expects ", ws[1],
                  " input channels but argument 'x' ", shape_str(x.shape), " has ", x.shape[1]);
  const Shape ks = {ws[2], ws[3]};
  g.stride = a.get_int("stride", 1);
  g.pad = a.get_int("padding", 0);
  TDQ_CHECK_RANGE(g.stride >= 1, a.op, ": attribute 'stride' must be a positive integer, got ", g.stride);
  TDQ_CHECK_RANGE(g.pad >= 0, a.op, ": attribute 'padding' must be >= 0, got ", g.pad);
  TDQ_CHECK_RANGE(a.get_int("dilation", 1) == 1, a.op, ": attribute 'dilation' must be 1");
  TDQ_CHECK_RANGE(a.get_int("groups", 1) == 1, a.op, ": attribute 'groups' must be 1");
  g.N = x.shape[0], g.C = x.shape[1], g.H = x.shape[2], g.W = x.shape[3];
  g.kh = ks[0], g.kw = ks[1];
  TDQ_CHECK_RANGE(g.C >= 1, a.op, ": argument 'x' ", shape_str(x.shape), " must have at least one channel");
  TDQ_CHECK_RANGE(g.H + 2 * g.pad >= g.kh && g.W + 2 * g.pad >= g.kw, a.op, ": kernel ", g.kh, "x", g.kw,
                  " is larger than the padded input ", g.H + 2 * g.pad, "x", g.W + 2 * g.pad, " (argument 'x' ",
                  shape_str(x.shape), ", padding ", g.pad, ")");
  g.Ho = (g.H + 2 * g.pad - g.kh) / g.stride + 1;
  g.Wo = (g.W + 2 * g.pad - g.kw) / g.stride + 1;
  return g;
}

std::vector<TensorMeta> infer_qconv2d(const std::vector<Tensor>& in, const Attrs& a) {
  activation_zero_point(a, in[0]);
  const QActSpec q = qact_spec(a, in[0]);
  const QConvGeom g = qconv_geometry(in, a);
  check_qweights(a, in, 2, g.K(), g.kh * g.kw * round_up4(g.C));
  check_act_steps_shape(a, q, in[1], g.N, in[0].shape);
  const int64_t O = in[2].shape[0];
  if (in.size() > 6 && in[6].defined()) {
    check_dtype(a, in[6], "add_channel", DType::f32);
    check_shape(a, in[6], "add_channel", {g.N, O});
  }
  if (in.size() > 7 && in[7].defined()) {
    check_dtype(a, in[7], "residual", DType::f32);
    check_shape(a, in[7], "residual", {g.N, O, g.Ho, g.Wo});
  }
  return {{{g.N, O, g.Ho, g.Wo}, DType::f32}};
}

inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// x4: the samples' channels interleaved in groups of 4, one uint32 per pixel:
// x4[(s * Cq + cq) * HW + p] = bytes x[s, 4cq + r, p] ^ flip for r = 0..3 (a
// channel past C reads as the zero point; its weights are 0). Channel groups
// [cq0, cq1) of samples [0, nb).
void interleave_channels(const QConvGeom& g, const uint8_t* x, int64_t nb, uint8_t flip, uint8_t zp, int64_t cq0,
                         int64_t cq1, uint32_t* x4) {
  const int64_t HW = g.H * g.W, Cq = round_up4(g.C) / 4;
  const uint32_t fmask = uint32_t{flip} * 0x01010101u;
  const uint8_t raw_zp = zp ^ flip;
  std::vector<uint8_t> zrow(static_cast<size_t>(HW), raw_zp);
  for (int64_t s = 0; s < nb; ++s)
    for (int64_t cq = cq0; cq < cq1; ++cq) {
      const uint8_t* r[4];
      for (int i = 0; i < 4; ++i) r[i] = 4 * cq + i < g.C ? x + (s * g.C + 4 * cq + i) * HW : zrow.data();
      uint32_t* d = x4 + (s * Cq + cq) * HW;
      for (int64_t p = 0; p < HW; ++p)
        d[p] = (uint32_t{r[0][p]} | uint32_t{r[1][p]} << 8 | uint32_t{r[2][p]} << 16 | uint32_t{r[3][p]} << 24) ^ fmask;
    }
}

// As interleave_channels for float32 x, quantizing on the way (QActSpec):
// byte = level + q.add, the step of sample s is steps[s]; a channel past C
// reads as level 0 (byte q.add). With `panels`, the words go straight into
// the GEMM's panel layout (qgemm.h) instead, column j = s * HW + p, quad cq:
// a 1x1 convolution with stride 1 and no padding needs no im2col.
void interleave_quantize(const QConvGeom& g, const float* x, int64_t nb, const QActSpec& q, Quant4Fn q4,
                         const float* steps, int64_t cq0, int64_t cq1, uint32_t* x4, bool panels) {
  const int64_t HW = g.H * g.W, Cq = round_up4(g.C) / 4;
  const float off = q.shifted ? 0.f : q.offset;
  for (int64_t s = 0; s < nb; ++s)
    for (int64_t cq = cq0; cq < cq1; ++cq) {
      const int nch = static_cast<int>(std::min<int64_t>(4, g.C - 4 * cq));
      const float* rows[4];
      for (int i = 0; i < 4; ++i) rows[i] = x + (s * g.C + 4 * cq + std::min(i, nch - 1)) * HW;
      if (!panels) {
        q4(rows, nch, x4 + (s * Cq + cq) * HW, HW, steps[s], q.lo, q.hi, q.add, off);
        continue;
      }
      for (int64_t p = 0; p < HW;) {  // runs inside one panel
        const int64_t j = s * HW + p, len = std::min(HW - p, kNR - j % kNR);
        const float* r[4] = {rows[0] + p, rows[1] + p, rows[2] + p, rows[3] + p};
        q4(r, nch, x4 + ((j / kNR) * Cq + cq) * kNR + j % kNR, len, steps[s], q.lo, q.hi, q.add, off);
        p += len;
      }
    }
}

// The real zero point's border correction (QActSpec): output pixels where some
// taps fall on the padding, and per (pixel, o) fl(fl(z * wstep[o]) * (sum of
// row o's weights over the taps inside the input - row sum)); d is (border
// pixels, O). The row sums over the taps come from the packed rows.
struct BorderCorr {
  std::vector<int64_t> pix;
  std::vector<float> d;
};
// Sum of n int8 values (exact).
int32_t sum_i8_scalar(const int8_t* p, int64_t n) {
  int32_t a = 0;
  for (int64_t i = 0; i < n; ++i) a += p[i];
  return a;
}
#if defined(__x86_64__)
// 32 bytes at a time: vpsadbw of the bytes + 128 (as unsigned) against 0, less 128 per byte.
__attribute__((target("avx2"))) int32_t sum_i8_avx2(const int8_t* p, int64_t n) {
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80)), zero = _mm256_setzero_si256();
  __m256i acc = zero;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i v = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)), flip);
    acc = _mm256_add_epi64(acc, _mm256_sad_epu8(v, zero));
  }
  alignas(32) int64_t l[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(l), acc);
  return static_cast<int32_t>(l[0] + l[1] + l[2] + l[3] - 128 * i) + sum_i8_scalar(p + i, n - i);
}
#endif

BorderCorr border_correction(const QConvGeom& g, const int8_t* w, const float* wstep, const int32_t* rsum, float z,
                             CpuLevel level) {
  BorderCorr bc;
  const int64_t taps = g.kh * g.kw, Cp = round_up4(g.C), Kp = taps * Cp, O = g.O;
  std::vector<uint8_t> vh(static_cast<size_t>(g.Ho * g.kh)), vw(static_cast<size_t>(g.Wo * g.kw));
  std::vector<int64_t> bad_h(static_cast<size_t>(g.Ho)), bad_w(static_cast<size_t>(g.Wo));
  for (int64_t oh = 0; oh < g.Ho; ++oh)
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t ih = oh * g.stride - g.pad + i;
      vh[oh * g.kh + i] = ih >= 0 && ih < g.H;
      bad_h[oh] += !vh[oh * g.kh + i];
    }
  for (int64_t ow = 0; ow < g.Wo; ++ow)
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t iw = ow * g.stride - g.pad + j;
      vw[ow * g.kw + j] = iw >= 0 && iw < g.W;
      bad_w[ow] += !vw[ow * g.kw + j];
    }
  for (int64_t oh = 0; oh < g.Ho; ++oh)
    for (int64_t ow = 0; ow < g.Wo; ++ow)
      if (bad_h[oh] || bad_w[ow]) bc.pix.push_back(oh * g.Wo + ow);
  if (bc.pix.empty()) return bc;
  // per (o, tap) weight sums; the padded channels C..Cp hold 0
  std::vector<int32_t> tsum(static_cast<size_t>(O * taps));
  auto sum8 = sum_i8_scalar;
#if defined(__x86_64__)
  if (level != CpuLevel::scalar) sum8 = sum_i8_avx2;
#endif
  for (int64_t o = 0; o < O; ++o)
    for (int64_t t = 0; t < taps; ++t) tsum[o * taps + t] = sum8(w + o * Kp + t * Cp, Cp);
  // Border pixels fall into a few classes (which kernel rows and columns are
  // inside): one sum per class and output channel.
  auto class_of = [](const std::vector<uint8_t>& v, int64_t n, int64_t k, std::vector<int64_t>& cls) {
    std::vector<int64_t> first;  // representative index of each class
    cls.assign(static_cast<size_t>(n), 0);
    for (int64_t a = 0; a < n; ++a) {
      size_t c = 0;
      while (c < first.size() && !std::equal(v.begin() + a * k, v.begin() + (a + 1) * k, v.begin() + first[c] * k)) ++c;
      if (c == first.size()) first.push_back(a);
      cls[a] = static_cast<int64_t>(c);
    }
    return first;
  };
  std::vector<int64_t> ch, cw;
  const std::vector<int64_t> fh = class_of(vh, g.Ho, g.kh, ch), fw = class_of(vw, g.Wo, g.kw, cw);
  const int64_t nch = static_cast<int64_t>(fh.size()), ncw = static_cast<int64_t>(fw.size());
  std::vector<float> dcls(static_cast<size_t>(nch * ncw * O));
  for (int64_t a = 0; a < nch; ++a)
    for (int64_t b = 0; b < ncw; ++b)
      for (int64_t o = 0; o < O; ++o) {
        int32_t v = 0;
        for (int64_t i = 0; i < g.kh; ++i)
          for (int64_t j = 0; j < g.kw; ++j)
            if (vh[fh[a] * g.kh + i] && vw[fw[b] * g.kw + j]) v += tsum[o * taps + i * g.kw + j];
        const float zw = z * wstep[o];
        dcls[(a * ncw + b) * O + o] = zw * static_cast<float>(v - rsum[o]);
      }
  bc.d.resize(bc.pix.size() * static_cast<size_t>(O));
  for (size_t k = 0; k < bc.pix.size(); ++k) {
    const int64_t oh = bc.pix[k] / g.Wo, ow = bc.pix[k] % g.Wo;
    std::memcpy(&bc.d[k * O], &dcls[(ch[oh] * ncw + cw[ow]) * O], static_cast<size_t>(O) * sizeof(float));
  }
  return bc;
}

// im2col of panel p alone (columns [32p, min(32p + 32, cols)) of the chunk's
// samples), all kq quads, into dst (kq * 128 bytes, qgemm.h layout): quad
// q = tap * Cq + cq (tap = i * kW + j), the order of qweight_pack's conv rows;
// column j = s * P + oh * Wo + ow holds x4 under output (oh, ow) for that tap,
// or the zero point (pad4) over the padding. The panel's columns fall into a
// few runs of one output row each.
void im2col_panel(const QConvGeom& g, const uint32_t* x4, int64_t cols, uint32_t pad4, int64_t kq, int64_t p,
                  uint8_t* dst_bytes) {
  const int64_t P = g.P(), HW = g.H * g.W, Cq = round_up4(g.C) / 4, Wo = g.Wo;
  struct Run {
    int64_t s, oh, ow, len, c0;
  };
  Run runs[kNR];
  int nruns = 0;
  for (int64_t j = p * kNR, end = std::min(cols, j + kNR); j < end;) {
    const int64_t s = j / P, r = j % P, oh = r / Wo, ow = r % Wo, len = std::min(Wo - ow, end - j);
    runs[nruns++] = {s, oh, ow, len, j - p * kNR};
    j += len;
  }
  (void)kq;  // kq = taps * Cq
  uint32_t* const dst0 = reinterpret_cast<uint32_t*>(dst_bytes);
  for (int64_t tap = 0, taps = g.kh * g.kw; tap < taps; ++tap) {
    const int64_t ki = tap / g.kw, kj = tap % g.kw;
    // outputs ow in [lo, hi) read inside the input's width for this tap
    const int64_t lo = std::clamp<int64_t>(floor_div(g.pad - kj + g.stride - 1, g.stride), 0, Wo);
    const int64_t hi = std::clamp<int64_t>(floor_div(g.W - 1 + g.pad - kj, g.stride) + 1, lo, Wo);
    uint32_t* const dtap = dst0 + tap * Cq * kNR;  // quad q = tap * Cq + cq at dtap + cq * kNR
    for (int i = 0; i < nruns; ++i) {
      const Run& rn = runs[i];
      const int64_t ih = rn.oh * g.stride - g.pad + ki, e = rn.ow + rn.len;
      const bool inside = ih >= 0 && ih < g.H;
      const int64_t a = inside ? std::clamp(lo, rn.ow, e) : e, b = inside ? std::clamp(hi, a, e) : e;
      // src[ow * stride] for channel group 0; + cq * HW for the others
      const uint32_t* src = x4 + rn.s * Cq * HW + (inside ? ih * g.W : 0) - g.pad + kj;
      uint32_t* d = dtap + rn.c0 - rn.ow;  // d[ow]
      for (int64_t cq = 0; cq < Cq; ++cq, d += kNR, src += HW) {
        for (int64_t u = rn.ow; u < a; ++u) d[u] = pad4;
        if (g.stride == 1) {
          if (b > a) std::memcpy(d + a, src + a, static_cast<size_t>(b - a) * 4);
        } else {
          for (int64_t u = a; u < b; ++u) d[u] = src[u * g.stride];
        }
        for (int64_t u = b; u < e; ++u) d[u] = pad4;
      }
    }
  }
}

// y[p] = fl(y[p] + c), and y[p] = fl(r[p] + y[p]): the separate add ops' roundings.
void add_row(float* y, float c, int64_t n) {
  for (int64_t p = 0; p < n; ++p) y[p] = y[p] + c;
}
void add_residual_row(float* y, const float* r, int64_t n) {
  for (int64_t p = 0; p < n; ++p) y[p] = r[p] + y[p];
}

void qconv2d(OpCall& c, const ExecContext& ctx) {
  const Tensor &x = c.inputs[0], &as = c.inputs[1], &wp = c.inputs[2], &ws = c.inputs[3], &rs = c.inputs[4];
  const Tensor* bias = c.inputs.size() > 5 && c.inputs[5].defined() ? &c.inputs[5] : nullptr;
  const float* addc = c.inputs.size() > 6 && c.inputs[6].defined() ? c.inputs[6].f32() : nullptr;
  const float* resid = c.inputs.size() > 7 && c.inputs[7].defined() ? c.inputs[7].f32() : nullptr;
  const int64_t zp = activation_zero_point(c.attrs, x);
  const QActSpec q = qact_spec(c.attrs, x);
  const uint8_t flip = x.dtype == DType::i8 ? 0x80 : 0;
  QConvGeom g = qconv_geometry(c.inputs, c.attrs);
  g.O = wp.shape[0];
  std::vector<float> steps(static_cast<size_t>(g.N));
  act_steps(c.attrs, q, as, g.N, x.shape, steps.data());
  check_positive_steps(ws, "wstep");
  const int64_t Cq = round_up4(g.C) / 4, kq = g.kh * g.kw * Cq, P = g.P(), O = g.O, HW = g.H * g.W;
  if (g.N == 0 || P == 0) return;
  const int32_t* prs = rs.data<int32_t>();
  std::vector<int32_t> zc(static_cast<size_t>(O));
  for (int64_t o = 0; o < O; ++o) zc[o] = static_cast<int32_t>(zp * int64_t{prs[o]});
  // A real zero point z: bias' = bias + z * wstep * rowsum, and the border fix-up.
  // (float32 x quantized here, or uint8 levels of x - z from qgroup_norm_act)
  const bool zfix = q.offset != 0.f;
  std::vector<float> bias2;
  BorderCorr bc;
  if (zfix) {
    bias2.resize(static_cast<size_t>(O));
    for (int64_t o = 0; o < O; ++o) {
      const float zw = q.offset * ws.f32()[o];
      const float corr = zw * static_cast<float>(prs[o]);
      bias2[o] = bias ? bias->f32()[o] + corr : corr;
    }
    bc = border_correction(g, wp.data<int8_t>(), ws.f32(), prs, q.offset, ctx.cpu_level);
  }
  const Quant4Fn q4 = quant4_for(ctx.cpu_level);
  // 1x1, stride 1, no padding, float32 x: quantize straight into the panels.
  const bool direct = q.quantize && g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad == 0;
  // Samples per chunk: at least 128 columns, at most 8 MiB of interleaved input.
  int64_t nb = std::clamp<int64_t>((128 + P - 1) / P, 1, g.N);
  nb = std::max<int64_t>(1, std::min(nb, (int64_t{8} << 20) / std::max<int64_t>(1, 4 * Cq * HW)));
  const int64_t chunks = (g.N + nb - 1) / nb, threads = ctx.pool ? ctx.pool->size() : 1;
  // 3x3 stride 1: the exact integer Winograd path (qconv2d_winograd.h), its
  // transformed weights kept with the packed ones from the first call
  // (WeightPackCache kind 4: packed int8 rows are inference-only).
  const QWinogradMode wmode = qwinograd_mode();
  const QWinoGeom wg{g.N, g.C, g.H, g.W, O, g.pad, g.Ho, g.Wo};
  const bool wino = !direct && qwinograd_applies(wmode, ctx.cpu_level, wg, g.kh, g.kw, g.stride, nb);
  std::shared_ptr<const float> wino_u;
  if (wino && wmode != QWinogradMode::ref)
    wino_u = WeightPackCache::instance().get(ctx, wp, 4, O, kq * 4, qwinograd_weights_words(O, g.C), [&](float* dst) {
      qwinograd_pack_weights(wp.data<int8_t>(), O, g.C, reinterpret_cast<int16_t*>(dst));
    }, /*keep_first=*/true);
  const uint8_t* px = q.quantize ? nullptr : x.data<uint8_t>();
  const float* pxf = q.quantize ? x.f32() : nullptr;
  float* y = c.outputs[0].f32();
  const int8_t* w = wp.data<int8_t>();
  const float* pb = zfix ? bias2.data() : bias ? bias->f32() : nullptr;

  // Scratch of one worker: the interleaved input of nb samples, and the
  // columns' steps and output offsets. The panels are made one at a time by
  // the GEMM's workers (qgemm_pack), each while it is in L1.
  struct Scratch {
    QScratch x4_buf;
    std::vector<float> cstep;
    std::vector<int64_t> coff;
    Scratch(int64_t cols, int64_t x4_words)
        : x4_buf(1, static_cast<size_t>(x4_words) * 4), cstep(static_cast<size_t>(cols)),
          coff(static_cast<size_t>(cols)) {}
  };
  const int64_t max_cols = nb * P;
  // x4 words: the interleaved planes, or the panels of the direct 1x1 path
  const int64_t x4_words = std::max(nb * Cq * HW, direct ? qpanel_bytes(max_cols, Cq) / 4 : 0);

  // One chunk [n0, n0 + cnt) with the given context.
  auto run_chunk = [&](const ExecContext& cx, int64_t n0, int64_t cnt, Scratch& sc) {
    const int64_t cols = cnt * P;
    uint32_t* x4 = reinterpret_cast<uint32_t*>(sc.x4_buf.get());
    cx.parallel_for(Cq, std::max<int64_t>(1, 4096 / std::max<int64_t>(cnt * HW, 1)), [&](int64_t b, int64_t e) {
      if (q.quantize)
        interleave_quantize(g, pxf + n0 * g.C * HW, cnt, q, q4, steps.data() + n0, b, e, x4, direct);
      else
        interleave_channels(g, px + n0 * g.C * HW, cnt, flip, static_cast<uint8_t>(zp), b, e, x4);
    });
    for (int64_t s = 0; s < cnt; ++s) {
      const float st = steps[n0 + s];
      for (int64_t p = 0; p < P; ++p) sc.cstep[s * P + p] = st, sc.coff[s * P + p] = s * O * P + p;
    }
    const uint32_t pad4 = static_cast<uint32_t>(zp) * 0x01010101u;
    if (wino) {
      const QWinoGeom cg{cnt, g.C, g.H, g.W, O, g.pad, g.Ho, g.Wo};
      if (wmode == QWinogradMode::ref)
        qwinograd_forward_ref(cg, x4, static_cast<int32_t>(zp), w, ws.f32(), pb, steps.data() + n0, y + n0 * O * P);
      else
        qwinograd_forward(cx, cg, x4, static_cast<int32_t>(zp), reinterpret_cast<const int16_t*>(wino_u.get()),
                          ws.f32(), pb, steps.data() + n0, y + n0 * O * P);
    } else if (direct)
      qgemm(cx, O, cols, kq, w, reinterpret_cast<const uint8_t*>(x4), zc.data(), ws.f32(), pb, sc.cstep.data(),
            sc.coff.data(), y + n0 * O * P, P);
    else
      qgemm_pack(cx, O, cols, kq, w, [&](int64_t p, uint8_t* dst) { im2col_panel(g, x4, cols, pad4, kq, p, dst); },
               zc.data(), ws.f32(), pb, sc.cstep.data(), sc.coff.data(), y + n0 * O * P, P);
    // After the GEMM, per output row (sample, channel) while the chunk's
    // output is in cache: the border fix-up, then the epilogue's adds.
    const bool border = zfix && !bc.pix.empty();
    if (!border && !addc && !resid) return;
    cx.parallel_for(cnt * O, std::max<int64_t>(1, 2048 / P), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t o = r % O;
        float* yo = y + (n0 * O + r) * P;
        if (border)
          for (size_t k = 0; k < bc.pix.size(); ++k) yo[bc.pix[k]] += bc.d[k * O + o];
        if (addc) add_row(yo, addc[n0 * O + r], P);
        if (resid) add_residual_row(yo, resid + (n0 * O + r) * P, P);
      }
    });
  };

  if (threads > 1 && chunks >= threads) {
    const ExecContext serial = serial_context(ctx);
    ctx.parallel_for(chunks, 1, [&](int64_t b, int64_t e) {
      Scratch sc(max_cols, x4_words);
      for (int64_t ch = b; ch < e; ++ch) {
        const int64_t n0 = ch * nb;
        run_chunk(serial, n0, std::min(nb, g.N - n0), sc);
      }
    });
  } else {
    Scratch sc(max_cols, x4_words);
    for (int64_t n0 = 0; n0 < g.N; n0 += nb) run_chunk(ctx, n0, std::min(nb, g.N - n0), sc);
  }
}

}  // namespace

TDQ_REGISTER_OP({"qconv2d", 5, 8, infer_qconv2d, qconv2d, {}});

}  // namespace tdq
