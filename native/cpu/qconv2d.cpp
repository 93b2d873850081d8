// Quantized 2-D convolution in integer arithmetic (dilation 1, groups 1):
//
// qconv2d(x, act_step, packed, wstep, row_sums, bias?; kernel_size [kH, kW],
//         stride = 1, padding = 0, zero_point = 0) -> y float32 (N, O, Ho, Wo)
//   y[n, o] = sum_{c,i,j} (x - zp)[n, c, ...] * q[o, c, i, j] * (act_step[n] * wstep[o]) + bias[o]
//   x (N, C, H, W): uint8 levels with zero point 'zero_point', or int8 levels
//   (symmetric), from quantize_act; the padding is the zero point (real 0).
//   act_step: [] / [1], or [N] (one step per sample). packed, row_sums: from
//   qweight_pack of the (O, C, kH, kW) weights; wstep: their steps [O].
//   The result equals conv2d_forward(fake_quant(x), fake_quant(w), bias) up to
//   float rounding: the integer sum is exact, and the epilogue (qgemm.h) rounds
//   three times; conv2d_forward's float sum rounds once per term.
//
// im2col straight into the GEMM's activation panels (qgemm.h), a chunk of
// samples at a time (bounded scratch); whole chunks per thread when the batch
// has enough of them, otherwise the GEMM's tiles are spread over the threads.
#include <algorithm>
#include <cstring>
#include <memory>

#include "gemm.h"
#include "qgemm.h"

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
  const Shape ks = a.get_ints("kernel_size");
  TDQ_CHECK_RANGE(ks.size() == 2 && ks[0] >= 1 && ks[1] >= 1, a.op,
                  ": attribute 'kernel_size' must be [kH, kW] with positive sizes, got ", shape_str(ks));
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
  const QConvGeom g = qconv_geometry(in, a);
  check_qweights(a, in, 2, g.K());
  check_act_step(a, in[1], g.N, in[0].shape);
  return {{{g.N, in[2].shape[0], g.Ho, g.Wo}, DType::f32}};
}

inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// The plane of tap (c, ki, kj) of one sample: plane[oh * Wo + ow] = x[c, ih, iw]
// under output (oh, ow), or `pad` where (ih, iw) is padding. Raw bytes (the
// int8 -> uint8 flip is applied when the taps are joined).
void fill_plane(const QConvGeom& g, const uint8_t* xc, int64_t ki, int64_t kj, int64_t lo, int64_t hi, uint8_t pad,
                uint8_t* plane) {
  const int64_t W = g.W, Wo = g.Wo, P = g.P();
  const int64_t oh_lo = std::clamp<int64_t>(floor_div(g.pad - ki + g.stride - 1, g.stride), 0, g.Ho);
  const int64_t oh_hi = std::clamp<int64_t>(floor_div(g.H - 1 + g.pad - ki, g.stride) + 1, oh_lo, g.Ho);
  if (g.stride == 1 && Wo == W) {
    // 'Same' width, stride 1: the plane is x shifted by delta; one copy, then
    // the rows and edge columns that hang over the padding.
    const int64_t delta = (ki - g.pad) * W + (kj - g.pad);
    const int64_t b = oh_lo * W, e = oh_hi * W;  // plane range whose rows are inside
    std::memset(plane, pad, static_cast<size_t>(b));
    if (e > b) {
      // plane[p] = xc[p + delta] for p in [b, e), clipped to the input
      const int64_t cb = std::max(b, -delta), ce = std::min(e, g.H * W - delta);
      if (cb > b) std::memset(plane + b, pad, static_cast<size_t>(cb - b));
      if (ce > cb) std::memcpy(plane + cb, xc + cb + delta, static_cast<size_t>(ce - cb));
      if (e > std::max(ce, cb)) std::memset(plane + std::max(ce, cb), pad, static_cast<size_t>(e - std::max(ce, cb)));
      if (lo > 0 || hi < Wo)
        for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {
          for (int64_t ow = 0; ow < lo; ++ow) plane[oh * W + ow] = pad;
          for (int64_t ow = hi; ow < Wo; ++ow) plane[oh * W + ow] = pad;
        }
    }
    std::memset(plane + e, pad, static_cast<size_t>(P - e));
    return;
  }
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    uint8_t* d = plane + oh * Wo;
    if (oh < oh_lo || oh >= oh_hi) {
      std::memset(d, pad, static_cast<size_t>(Wo));
      continue;
    }
    const uint8_t* src = xc + (oh * g.stride - g.pad + ki) * W - g.pad + kj;
    for (int64_t ow = 0; ow < lo; ++ow) d[ow] = pad;
    if (g.stride == 1) std::memcpy(d + lo, src + lo, static_cast<size_t>(hi - lo));
    else
      for (int64_t ow = lo; ow < hi; ++ow) d[ow] = src[ow * g.stride];
    for (int64_t ow = hi; ow < Wo; ++ow) d[ow] = pad;
  }
}

// Fills quads [q0, q1) of the panels for samples [0, nb) of x (already offset
// to the chunk's first sample). Column j = s * P + oh * Wo + ow. `flip` (0x80
// for int8 x) turns int8 levels into uint8 levels with zero point 128;
// `pad_byte` is the uint8 zero point.
void im2col_panels(const QConvGeom& g, const uint8_t* x, int64_t nb, uint8_t flip, uint8_t pad_byte, int64_t kq,
                   int64_t q0, int64_t q1, uint8_t* panels) {
  const int64_t K = g.K(), P = g.P(), HW = g.H * g.W, kk = g.kh * g.kw;
  std::vector<uint8_t> planes(static_cast<size_t>(4 * P));
  uint8_t* pl[4] = {planes.data(), planes.data() + P, planes.data() + 2 * P, planes.data() + 3 * P};
  const uint32_t fmask = uint32_t{flip} * 0x01010101u;
  const uint8_t raw_pad = pad_byte ^ flip;
  for (int64_t q = q0; q < q1; ++q) {
    // The 4 k of this group: channel, kernel offsets, and the output columns
    // [lo, hi) that read inside the input row.
    struct Tap {
      bool real;
      int64_t c, ki, kj, lo, hi;
    } taps[4];
    for (int r = 0; r < 4; ++r) {
      Tap& t = taps[r];
      const int64_t k = 4 * q + r;
      t.real = k < K;
      if (!t.real) continue;
      t.c = k / kk, t.ki = k / g.kw % g.kh, t.kj = k % g.kw;
      t.lo = std::clamp<int64_t>(floor_div(g.pad - t.kj + g.stride - 1, g.stride), 0, g.Wo);
      t.hi = std::clamp<int64_t>(floor_div(g.W - 1 + g.pad - t.kj, g.stride) + 1, t.lo, g.Wo);
    }
    for (int64_t s = 0; s < nb; ++s) {
      for (int r = 0; r < 4; ++r) {
        const Tap& t = taps[r];
        if (!t.real) std::memset(pl[r], flip, static_cast<size_t>(P));  // level 0 after the flip; its weights are 0
        else fill_plane(g, x + (s * g.C + t.c) * HW, t.ki, t.kj, t.lo, t.hi, raw_pad, pl[r]);
      }
      // Join the 4 planes into 4-byte groups, in runs that stay inside one panel.
      int64_t p = 0;
      while (p < P) {
        const int64_t j = s * P + p;
        const int64_t run = std::min(P - p, kNR - j % kNR);
        uint32_t* dst = reinterpret_cast<uint32_t*>(panels + ((j / kNR) * kq + q) * kNR * 4) + j % kNR;
        const uint8_t *r0 = pl[0] + p, *r1 = pl[1] + p, *r2 = pl[2] + p, *r3 = pl[3] + p;
        for (int64_t u = 0; u < run; ++u)
          dst[u] = (uint32_t{r0[u]} | uint32_t{r1[u]} << 8 | uint32_t{r2[u]} << 16 | uint32_t{r3[u]} << 24) ^ fmask;
        p += run;
      }
    }
  }
}

void qconv2d(OpCall& c, const ExecContext& ctx) {
  const Tensor &x = c.inputs[0], &as = c.inputs[1], &wp = c.inputs[2], &ws = c.inputs[3], &rs = c.inputs[4];
  const Tensor* bias = c.inputs.size() > 5 && c.inputs[5].defined() ? &c.inputs[5] : nullptr;
  const int64_t zp = activation_zero_point(c.attrs, x);
  const uint8_t flip = x.dtype == DType::i8 ? 0x80 : 0;
  QConvGeom g = qconv_geometry(c.inputs, c.attrs);
  g.O = wp.shape[0];
  check_positive_steps(as, "act_step");
  check_positive_steps(ws, "wstep");
  const int64_t K = g.K(), kq = round_up4(K) / 4, P = g.P(), O = g.O;
  if (g.N == 0 || P == 0) return;
  std::vector<int32_t> zc(static_cast<size_t>(O));
  for (int64_t o = 0; o < O; ++o) zc[o] = static_cast<int32_t>(zp * int64_t{rs.data<int32_t>()[o]});
  // Samples per chunk: at least 128 columns, at most 8 MiB of panels.
  int64_t nb = std::clamp<int64_t>((128 + P - 1) / P, 1, g.N);
  nb = std::max<int64_t>(1, std::min(nb, (int64_t{8} << 20) / std::max<int64_t>(1, round_up4(K) * P)));
  const int64_t chunks = (g.N + nb - 1) / nb, threads = ctx.pool ? ctx.pool->size() : 1;
  const uint8_t* px = x.data<uint8_t>();
  const float* pas = as.f32();
  float* y = c.outputs[0].f32();
  const int8_t* w = wp.data<int8_t>();
  const float* pb = bias ? bias->f32() : nullptr;

  // Scratch of one worker: panels for nb samples (not zeroed: every byte read
  // is written first), and the columns' steps and output offsets.
  struct Scratch {
    std::unique_ptr<uint8_t[]> pan;
    std::vector<float> cstep;
    std::vector<int64_t> coff;
    explicit Scratch(int64_t cols, int64_t bytes)
        : pan(new uint8_t[static_cast<size_t>(bytes)]), cstep(static_cast<size_t>(cols)), coff(static_cast<size_t>(cols)) {}
  };
  const int64_t max_cols = nb * P, pan_bytes = qpanel_bytes(max_cols, kq);

  // One chunk [n0, n0 + cnt) with the given context.
  auto run_chunk = [&](const ExecContext& cx, int64_t n0, int64_t cnt, Scratch& sc) {
    const int64_t cols = cnt * P;
    const uint8_t* xs = px + n0 * g.C * g.H * g.W;
    uint8_t* pan = sc.pan.get();
    cx.parallel_for(kq, std::max<int64_t>(1, 4096 / std::max<int64_t>(cols, 1)), [&](int64_t b, int64_t e) {
      im2col_panels(g, xs, cnt, flip, static_cast<uint8_t>(zp), kq, b, e, pan);
    });
    for (int64_t s = 0; s < cnt; ++s) {
      const float st = pas[as.numel() == 1 ? 0 : n0 + s];
      for (int64_t p = 0; p < P; ++p) sc.cstep[s * P + p] = st, sc.coff[s * P + p] = s * O * P + p;
    }
    qgemm(cx, O, cols, kq, w, pan, zc.data(), ws.f32(), pb, sc.cstep.data(), sc.coff.data(), y + n0 * O * P, P);
  };

  if (threads > 1 && chunks >= threads) {
    const ExecContext serial = serial_context(ctx);
    ctx.parallel_for(chunks, 1, [&](int64_t b, int64_t e) {
      Scratch sc(max_cols, pan_bytes);
      for (int64_t ch = b; ch < e; ++ch) {
        const int64_t n0 = ch * nb;
        run_chunk(serial, n0, std::min(nb, g.N - n0), sc);
      }
    });
  } else {
    Scratch sc(max_cols, pan_bytes);
    for (int64_t n0 = 0; n0 < g.N; n0 += nb) run_chunk(ctx, n0, std::min(nb, g.N - n0), sc);
  }
}

}  // namespace

TDQ_REGISTER_OP({"qconv2d", 5, 6, infer_qconv2d, qconv2d, {}});

}  // namespace tdq
