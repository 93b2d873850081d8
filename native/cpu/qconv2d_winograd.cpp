// Exact integer Winograd F(2x2, 3x3) for qconv2d (see qconv2d_winograd.h for
// the arithmetic and why it is bit for bit the direct path).
//
// Data flow of one call (a chunk of qconv2d's samples):
//   xc  (N, Hp, Wp, Cw) int16: centered levels, channels fastest, zero border
//       (Hp = 2 th + 2, Wp = 2 tw + 2: every tile's 4x4 patch lies inside;
//       Cw = C rounded up to 8);
//   per panel of 32 tiles (tile t = (s * th + a) * tw + b):
//     V (16, 32, Cw) int16      input transform, vectors over the channels;
//     per block of 32 output channels:
//       M (16, 32 tiles, 32 o) int32   16 GEMMs: M[xi][t][o] = sum_c V[xi][t][c] U[xi][c][o]
//                                      (micro-kernel: MR tiles x 32 o, one int32
//                                      broadcast of a channel pair of V per row)
//       output transform Y = A^T M A, S = Y / 4, the epilogue, y (N, O, Ho, Wo).
// Parallel over (panel, block group) items; the panel's input transform is
// redone per block group only where there are fewer panels than threads.
#include "qconv2d_winograd.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "qgemm.h"

namespace tdq {
namespace {

constexpr int kTP = 32;  // tiles per panel
constexpr int kOB = 32;  // output channels per block
// Strides between the 16 xi planes of V and M padded by one cache line: plain
// power-of-two strides (4 or 8 KiB) put the 16 planes of one tile into the
// same L1 set, which the transforms' 16 streams then keep evicting.
constexpr int64_t kVPad = 32, kMPad = 16;  // int16, int32 elements
// G2 = 2G of F(2, 3): U = G2 g G2^T.
constexpr int kG2[4][3] = {{2, 0, 0}, {1, 1, 1}, {1, -1, 1}, {0, 0, 2}};

// ---- micro-kernels: m[i][oo] = sum_q v_i[2q..2q+1] . u[q][oo][0..1] (mod 2^32) ----
// v: mr rows (tiles) of ldv int16, u: [npairs][32][2] int16, m: [mr][32] int32.
using WinoKernelFn = void (*)(int64_t npairs, const int16_t* v, int64_t ldv, int mr, const int16_t* u, int32_t* m);
struct WinoKernel {
  int mr;
  WinoKernelFn fn;
};

void wk_scalar(int64_t np, const int16_t* v, int64_t ldv, int mr, const int16_t* u, int32_t* m) {
  for (int i = 0; i < mr; ++i) {
    const int16_t* vi = v + i * ldv;
    uint32_t acc[kOB] = {};
    for (int64_t q = 0; q < np; ++q) {
      const int32_t a0 = vi[2 * q], a1 = vi[2 * q + 1];
      const int16_t* uq = u + q * 2 * kOB;
      // a pair's sum fits int32 (|V| <= 1020, |U| <= 1152); the running sum wraps
      for (int oo = 0; oo < kOB; ++oo) acc[oo] += static_cast<uint32_t>(a0 * uq[2 * oo] + a1 * uq[2 * oo + 1]);
    }
    for (int oo = 0; oo < kOB; ++oo) m[i * kOB + oo] = static_cast<int32_t>(acc[oo]);
  }
}

#if defined(__x86_64__)
inline int32_t pair_at(const int16_t* p, int64_t q) {
  int32_t w;
  std::memcpy(&w, p + 2 * q, 4);
  return w;
}

// AVX2: 4 tiles x 16 output channels per pass (8 ymm accumulators), two passes.
__attribute__((target("avx2"))) void wk_avx2(int64_t np, const int16_t* v, int64_t ldv, int mr, const int16_t* u,
                                             int32_t* m) {
  const int16_t* r0 = v;
  const int16_t* r1 = v + std::min(1, mr - 1) * ldv;
  const int16_t* r2 = v + std::min(2, mr - 1) * ldv;
  const int16_t* r3 = v + std::min(3, mr - 1) * ldv;
  for (int h = 0; h < 2; ++h) {
    __m256i l0 = _mm256_setzero_si256(), l1 = l0, l2 = l0, l3 = l0, h0 = l0, h1 = l0, h2 = l0, h3 = l0;
    const int16_t* uh = u + h * 32;
    for (int64_t q = 0; q < np; ++q) {
      const __m256i a0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(uh + q * 64));
      const __m256i a1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(uh + q * 64 + 16));
#define TDQ_ROW(ri, l, hh)                                  \
  {                                                         \
    const __m256i b = _mm256_set1_epi32(pair_at(ri, q));    \
    l = _mm256_add_epi32(l, _mm256_madd_epi16(b, a0));      \
    hh = _mm256_add_epi32(hh, _mm256_madd_epi16(b, a1));    \
  }
      TDQ_ROW(r0, l0, h0) TDQ_ROW(r1, l1, h1) TDQ_ROW(r2, l2, h2) TDQ_ROW(r3, l3, h3)
#undef TDQ_ROW
    }
    const __m256i lo[4] = {l0, l1, l2, l3}, hi[4] = {h0, h1, h2, h3};
    for (int i = 0; i < mr; ++i) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(m + i * kOB + h * 16), lo[i]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(m + i * kOB + h * 16 + 8), hi[i]);
    }
  }
}

// AVX-512 VNNI: 8 tiles x 32 output channels (16 zmm accumulators), vpdpwssd
// (the non-saturating one).
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void wk_vnni(int64_t np, const int16_t* v,
                                                                             int64_t ldv, int mr, const int16_t* u,
                                                                             int32_t* m) {
  const int16_t* r0 = v;
  const int16_t* r1 = v + std::min(1, mr - 1) * ldv;
  const int16_t* r2 = v + std::min(2, mr - 1) * ldv;
  const int16_t* r3 = v + std::min(3, mr - 1) * ldv;
  const int16_t* r4 = v + std::min(4, mr - 1) * ldv;
  const int16_t* r5 = v + std::min(5, mr - 1) * ldv;
  const int16_t* r6 = v + std::min(6, mr - 1) * ldv;
  const int16_t* r7 = v + std::min(7, mr - 1) * ldv;
  __m512i c00 = _mm512_setzero_si512(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
          c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
  for (int64_t q = 0; q < np; ++q) {
    const __m512i a0 = _mm512_loadu_si512(u + q * 64), a1 = _mm512_loadu_si512(u + q * 64 + 32);
#define TDQ_ROW(ri, ca, cb)                                 \
  {                                                         \
    const __m512i b = _mm512_set1_epi32(pair_at(ri, q));    \
    ca = _mm512_dpwssd_epi32(ca, b, a0);                    \
    cb = _mm512_dpwssd_epi32(cb, b, a1);                    \
  }
    TDQ_ROW(r0, c00, c01) TDQ_ROW(r1, c10, c11) TDQ_ROW(r2, c20, c21) TDQ_ROW(r3, c30, c31)
    TDQ_ROW(r4, c40, c41) TDQ_ROW(r5, c50, c51) TDQ_ROW(r6, c60, c61) TDQ_ROW(r7, c70, c71)
#undef TDQ_ROW
  }
  const __m512i lo[8] = {c00, c10, c20, c30, c40, c50, c60, c70}, hi[8] = {c01, c11, c21, c31, c41, c51, c61, c71};
  for (int i = 0; i < mr; ++i) {
    _mm512_storeu_si512(m + i * kOB, lo[i]);
    _mm512_storeu_si512(m + i * kOB + 16, hi[i]);
  }
}
#endif

WinoKernel wino_kernel_for(CpuLevel level) {
#if defined(__x86_64__)
  if (level == CpuLevel::avx512 && cpu_features().avx512vnni) return {8, wk_vnni};
  if (level != CpuLevel::scalar) return {4, wk_avx2};
#endif
  (void)level;
  return {4, wk_scalar};
}

// ---- transforms (plain loops over the channels / output channels) -------------

// Channels of the transformed tensors: a multiple of 8 (one SSE2 vector).
inline int64_t wino_channels(int64_t C) { return (C + 7) / 8 * 8; }

// The centered, zero-bordered (N, Hp, Wp, Cw) int16 copy of x4, rows [r0, r1)
// of N * Hp (channels past C: 0).
void center_rows(const QWinoGeom& g, const uint32_t* x4, int32_t zp, int64_t r0, int64_t r1, int16_t* xc) {
  const int64_t Cq = round_up4(g.C) / 4, Cw = wino_channels(g.C), HW = g.H * g.W, Hp = 2 * g.th() + 2,
                Wp = 2 * g.tw() + 2;
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t s = row / Hp, ih = row % Hp - g.pad;
    int16_t* d = xc + row * Wp * Cw;
    if (ih < 0 || ih >= g.H) {
      std::memset(d, 0, static_cast<size_t>(Wp * Cw) * sizeof(int16_t));
      continue;
    }
    for (int64_t c = 0; c < Wp; ++c, d += Cw) {
      const int64_t iw = c - g.pad;
      if (iw < 0 || iw >= g.W) {
        std::memset(d, 0, static_cast<size_t>(Cw) * sizeof(int16_t));
        continue;
      }
      const uint32_t* src = x4 + s * Cq * HW + ih * g.W + iw;
      for (int64_t cq = 0; cq < Cq; ++cq) {
        const uint32_t word = src[cq * HW];
        for (int r = 0; r < 4; ++r) d[4 * cq + r] = static_cast<int16_t>(static_cast<int32_t>((word >> (8 * r)) & 255u) - zp);
      }
      for (int64_t ch = 4 * Cq; ch < Cw; ++ch) d[ch] = 0;
    }
  }
}

// V[xi][c] (xi = 4i + j, stride vs between xi) = (B^T d B)[i][j] of the 4x4
// patch at `base` (rows rs apart, columns Cw apart), every channel c < Cw (a
// multiple of 8): 8 channels per SSE2 vector (GCC vector extension).
typedef int16_t v8i16 __attribute__((vector_size(16)));
inline v8i16 ld8(const int16_t* p) {
  v8i16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void st8(int16_t* p, v8i16 v) { std::memcpy(p, &v, sizeof v); }

void input_tile(const int16_t* base, int64_t rs, int64_t Cw, int16_t* v, int64_t vs) {
  for (int64_t c = 0; c < Cw; c += 8) {
    v8i16 e[4][4];
    for (int r = 0; r < 4; ++r) {
      const int16_t* p = base + r * rs + c;
      const v8i16 d0 = ld8(p), d1 = ld8(p + Cw), d2 = ld8(p + 2 * Cw), d3 = ld8(p + 3 * Cw);
      e[r][0] = d0 - d2, e[r][1] = d1 + d2, e[r][2] = d2 - d1, e[r][3] = d1 - d3;
    }
    for (int j = 0; j < 4; ++j) {
      st8(v + j * vs + c, e[0][j] - e[2][j]);
      st8(v + (4 + j) * vs + c, e[1][j] + e[2][j]);
      st8(v + (8 + j) * vs + c, e[2][j] - e[1][j]);
      st8(v + (12 + j) * vs + c, e[1][j] - e[3][j]);
    }
  }
}

// The epilogue of one output (qgemm.h): fl(fl(float(S) * fl(step * wstep)) + bias).
inline float epilogue(int32_t S, float step, float wstep, float bias) {
  const float v = static_cast<float>(S), s = step * wstep;
  const float p = v * s;
  return p + bias;
}

// Y = A^T M A of the 32 output channels of one tile, m[xi * ms + oo] (mod
// 2^32), then the epilogue: out[k][oo] = y of pixel k (row k / 2, column k % 2)
// from S = Y / 4, 4 channels per SSE2 vector. ws[oo] = fl(step * wstep[o]), b[oo] the bias.
typedef uint32_t v4u32 __attribute__((vector_size(16)));
typedef int32_t v4i32 __attribute__((vector_size(16)));
typedef float v4f32 __attribute__((vector_size(16)));
void output_tile(const int32_t* m, int64_t ms, const float* ws, const float* b, float out[4][kOB]) {
  for (int oo = 0; oo < kOB; oo += 4) {
    v4u32 t[2][4];
    for (int c = 0; c < 4; ++c) {
      v4u32 m0, m1, m2, m3;
      std::memcpy(&m0, m + c * ms + oo, 16);
      std::memcpy(&m1, m + (4 + c) * ms + oo, 16);
      std::memcpy(&m2, m + (8 + c) * ms + oo, 16);
      std::memcpy(&m3, m + (12 + c) * ms + oo, 16);
      t[0][c] = m0 + m1 + m2, t[1][c] = m1 - m2 - m3;
    }
    v4f32 wv, bv;
    std::memcpy(&wv, ws + oo, 16);
    std::memcpy(&bv, b + oo, 16);
    for (int i = 0; i < 2; ++i) {
      // 4 S in int32 (exact by qwinograd_exact): an exact arithmetic shift back
      const v4i32 s0 = reinterpret_cast<v4i32>(t[i][0] + t[i][1] + t[i][2]) >> 2;
      const v4i32 s1 = reinterpret_cast<v4i32>(t[i][1] - t[i][2] - t[i][3]) >> 2;
      v4f32 p0 = __builtin_convertvector(s0, v4f32) * wv, p1 = __builtin_convertvector(s1, v4f32) * wv;
      p0 = p0 + bv, p1 = p1 + bv;  // baseline SSE2: no fused multiply-add
      std::memcpy(&out[2 * i][oo], &p0, 16);
      std::memcpy(&out[2 * i + 1][oo], &p1, 16);
    }
  }
}

}  // namespace

QWinogradMode qwinograd_mode() {
  const char* s = std::getenv("TDQ_QCONV_WINOGRAD");
  if (!s || !*s) return QWinogradMode::automatic;
  if (std::strcmp(s, "0") == 0) return QWinogradMode::off;
  if (std::strcmp(s, "ref") == 0) return QWinogradMode::ref;
  return QWinogradMode::always;
}

bool qwinograd_exact(int64_t C) { return 4 * 9 * C * 255 * 128 < (int64_t{1} << 31); }

bool qwinograd_applies(QWinogradMode mode, CpuLevel level, const QWinoGeom& g, int64_t kh, int64_t kw,
                       int64_t stride, int64_t nb) {
  if (mode == QWinogradMode::off || kh != 3 || kw != 3 || stride != 1 || !qwinograd_exact(g.C)) return false;
  if (mode != QWinogradMode::automatic) return true;
  // Off by default: on the 2-core AVX-512 VNNI EPYC the whole DDPM b8 int
  // forward took 15-20 % more CPU time with it (bench/results/int-exec.md),
  // although single convs at batch 8 with 16x16 / 32x32 maps timed 1.5-2.2x
  // faster alone. At VNNI the int16 pairs of vpdpwssd do half the
  // multiply-adds of vpdpbusd's int8 quads, which leaves Winograd's 2.25x
  // fewer products at ~1.1x fewer instructions before the transforms.
  (void)level, (void)nb;
  return false;
}

int64_t qwinograd_weights_words(int64_t O, int64_t C) {
  const int64_t Op = (O + kOB - 1) / kOB * kOB;
  return Op * 16 * wino_channels(C) / 2;
}

void qwinograd_pack_weights(const int8_t* w, int64_t O, int64_t C, int16_t* u) {
  const int64_t Cp = round_up4(C), Kp = 9 * Cp, Cw = wino_channels(C);
  std::memset(u, 0, static_cast<size_t>(qwinograd_weights_words(O, C)) * 4);
  for (int64_t o = 0; o < O; ++o) {
    const int64_t ob = o / kOB, oo = o % kOB;
    for (int64_t c = 0; c < C; ++c) {
      int gt[3][3];
      for (int t = 0; t < 9; ++t) gt[t / 3][t % 3] = w[o * Kp + t * Cp + c];
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) {
          int v = 0;
          for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) v += kG2[a][i] * gt[i][j] * kG2[b][j];
          u[((ob * 16 + 4 * a + b) * (Cw / 2) + c / 2) * 2 * kOB + 2 * oo + c % 2] = static_cast<int16_t>(v);
        }
    }
  }
}

void qwinograd_forward(const ExecContext& ctx, const QWinoGeom& g, const uint32_t* x4, int32_t zp, const int16_t* u,
                       const float* wstep, const float* bias, const float* steps, float* y) {
  const int64_t Cw = wino_channels(g.C), th = g.th(), tw = g.tw(), Hp = 2 * th + 2, Wp = 2 * tw + 2;
  const int64_t T = g.N * th * tw, P = g.Ho * g.Wo, npanels = (T + kTP - 1) / kTP, nob = (g.O + kOB - 1) / kOB;
  const int64_t threads = ctx.pool ? ctx.pool->size() : 1;
  if (T == 0) return;
  QScratch xcb(0, static_cast<size_t>(g.N * Hp * Wp * Cw) * sizeof(int16_t));
  int16_t* xc = reinterpret_cast<int16_t*>(xcb.get());
  ctx.parallel_for(g.N * Hp, 4, [&](int64_t b, int64_t e) { center_rows(g, x4, zp, b, e, xc); });
  const WinoKernel k = wino_kernel_for(ctx.cpu_level);
  // Block groups per panel: enough items for the threads.
  const int64_t ng = std::clamp<int64_t>((2 * threads + npanels - 1) / npanels, 1, nob);
  const int64_t vs = kTP * Cw + kVPad, ms = kTP * kOB + kMPad;  // xi plane strides of V and M
  ctx.parallel_for(npanels * ng, 1, [&](int64_t b, int64_t e) {
    QScratch vb(2, static_cast<size_t>(16 * vs) * sizeof(int16_t));
    QScratch mb(3, static_cast<size_t>(16 * ms) * sizeof(int32_t) + sizeof(float) * kTP * 4 * kOB);
    int16_t* V = reinterpret_cast<int16_t*>(vb.get());  // (16, kTP, Cw), planes vs apart
    int32_t* M = reinterpret_cast<int32_t*>(mb.get());  // (16, kTP, kOB), planes ms apart
    float* out = reinterpret_cast<float*>(M + 16 * ms);  // (kTP, 4, kOB): the panel's outputs
    for (int64_t item = b; item < e; ++item) {
      const int64_t p = item / ng, gi = item % ng, ob0 = nob * gi / ng, ob1 = nob * (gi + 1) / ng;
      const int64_t t0 = p * kTP;
      const int nt = static_cast<int>(std::min<int64_t>(kTP, T - t0));
      for (int tt = 0; tt < nt; ++tt) {
        const int64_t t = t0 + tt, s = t / (th * tw), a = t / tw % th, bc = t % tw;
        input_tile(xc + ((s * Hp + 2 * a) * Wp + 2 * bc) * Cw, Wp * Cw, Cw, V + tt * Cw, vs);
      }
      for (int64_t ob = ob0; ob < ob1; ++ob) {
        const int no = static_cast<int>(std::min<int64_t>(kOB, g.O - ob * kOB));
        for (int xi = 0; xi < 16; ++xi)
          for (int tt = 0; tt < nt; tt += k.mr)
            k.fn(Cw / 2, V + xi * vs + tt * Cw, Cw, std::min(k.mr, nt - tt), u + (ob * 16 + xi) * Cw * kOB,
                 M + xi * ms + tt * kOB);
        // the epilogue's per-channel factors of this block (0 past O)
        float wsb[kOB] = {}, bb[kOB] = {};
        for (int oo = 0; oo < no; ++oo) bb[oo] = bias ? bias[ob * kOB + oo] : 0.f;
        int64_t s_prev = -1;
        for (int tt = 0; tt < nt; ++tt) {
          const int64_t s = (t0 + tt) / (th * tw);
          if (s != s_prev) {
            for (int oo = 0; oo < no; ++oo) wsb[oo] = steps[s] * wstep[ob * kOB + oo];
            s_prev = s;
          }
          output_tile(M + tt * kOB, ms, wsb, bb, reinterpret_cast<float(*)[kOB]>(out + tt * 4 * kOB));
        }
        // y row by row (one output channel at a time: sequential stores)
        for (int oo = 0; oo < no; ++oo)
          for (int tt = 0; tt < nt; ++tt) {
            const int64_t t = t0 + tt, s = t / (th * tw), oh0 = 2 * (t / tw % th), ow0 = 2 * (t % tw);
            float* yo = y + (s * g.O + ob * kOB + oo) * P;
            const float* ot = out + tt * 4 * kOB + oo;
            for (int q = 0; q < 4; ++q) {
              const int64_t oh = oh0 + q / 2, ow = ow0 + q % 2;
              if (oh < g.Ho && ow < g.Wo) yo[oh * g.Wo + ow] = ot[q * kOB];
            }
          }
      }
    }
  });
}

void qwinograd_forward_ref(const QWinoGeom& g, const uint32_t* x4, int32_t zp, const int8_t* w, const float* wstep,
                           const float* bias, const float* steps, float* y) {
  const int64_t Cp = round_up4(g.C), Cq = Cp / 4, Kp = 9 * Cp, HW = g.H * g.W, P = g.Ho * g.Wo;
  // centered level of channel c at (s, ih, iw); 0 over the padding
  auto xcent = [&](int64_t s, int64_t c, int64_t ih, int64_t iw) -> int64_t {
    if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return 0;
    const uint32_t word = x4[(s * Cq + c / 4) * HW + ih * g.W + iw];
    return static_cast<int64_t>((word >> (8 * (c % 4))) & 255u) - zp;
  };
  const int BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
  const int AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
  std::vector<int64_t> U(static_cast<size_t>(g.O * g.C * 16));  // (O, C, 4, 4)
  for (int64_t o = 0; o < g.O; ++o)
    for (int64_t c = 0; c < g.C; ++c)
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) {
          int64_t v = 0;
          for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) v += kG2[a][i] * int64_t{w[o * Kp + (i * 3 + j) * Cp + c]} * kG2[b][j];
          U[((o * g.C + c) * 4 + a) * 4 + b] = v;
        }
  std::vector<int64_t> V(static_cast<size_t>(g.C * 16));  // (C, 4, 4) of one tile
  for (int64_t s = 0; s < g.N; ++s)
    for (int64_t ta = 0; ta < g.th(); ++ta)
      for (int64_t tb = 0; tb < g.tw(); ++tb) {
        const int64_t ih0 = 2 * ta - g.pad, iw0 = 2 * tb - g.pad;
        for (int64_t c = 0; c < g.C; ++c)
          for (int a = 0; a < 4; ++a)
            for (int b = 0; b < 4; ++b) {
              int64_t v = 0;
              for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) v += BT[a][i] * xcent(s, c, ih0 + i, iw0 + j) * BT[b][j];
              V[(c * 4 + a) * 4 + b] = v;
            }
        for (int64_t o = 0; o < g.O; ++o) {
          int64_t m[4][4] = {};
          for (int64_t c = 0; c < g.C; ++c)
            for (int xi = 0; xi < 16; ++xi) m[xi / 4][xi % 4] += U[(o * g.C + c) * 16 + xi] * V[c * 16 + xi];
          for (int i = 0; i < 2; ++i)
            for (int j = 0; j < 2; ++j) {
              const int64_t oh = 2 * ta + i, ow = 2 * tb + j;
              if (oh >= g.Ho || ow >= g.Wo) continue;
              int64_t Y = 0;
              for (int a = 0; a < 4; ++a)
                for (int b = 0; b < 4; ++b) Y += AT[i][a] * m[a][b] * AT[j][b];
              TDQ_CHECK(Y % 4 == 0, "qconv2d winograd reference: 4 * S = ", Y, " is not a multiple of 4");
              y[(s * g.O + o) * P + oh * g.Wo + ow] =
                  epilogue(static_cast<int32_t>(Y / 4), steps[s], wstep[o], bias ? bias[o] : 0.f);
            }
        }
      }
}

}  // namespace tdq
