// Winograd F(2x2, 3x3) convolution forward (see conv2d_winograd.h).
//
// Matrices (Lavin & Gray, "Fast Algorithms for Convolutional Neural
// Networks"): B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],
// G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1], A^T = [1 1 1 0; 0 1 -1 -1].
// All their entries are 0, +-1 or +-1/2, so the transforms add no rounding
// beyond a few float additions: the result stays within the direct
// convolution's error (a relative 2-norm of about 1e-7 against float64).
//
// Fast path (AVX-512), per chunk of samples whose tiles (2x2 output blocks,
// numbered across the chunk) are the GEMMs' columns:
//   1. input transform: 16 tiles per vector, their 4x4 patches read with
//      masked gathers (the mask is the padding), written straight into the
//      32-column panel layout of the GEMM's B: V (16, tiles/32, C, 32);
//   2. 16 GEMMs M_xi (O, tiles) = U_xi . V_xi on the AVX-512 micro-kernel,
//      with U (the transformed weights) packed once and kept between calls
//      like the direct path's weights, and V read in place (no B packing);
//   3. output transform, 16 tiles per vector, plus bias / per-channel add /
//      residual, scattered into y (masked at odd edges).
// Threads: whole chunks per thread when the batch has enough of them, else
// each of the three steps is parallel inside.
#include "conv2d_winograd.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "gemm.h"

namespace tdq {
namespace {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// U = G g G^T for one 3x3 kernel g (row-major), as 16 values u[a*4 + b].
template <typename T>
void weight_transform(const float* g, T* u) {
  T t[4][3];
  for (int j = 0; j < 3; ++j) {
    const T g0 = g[j], g1 = g[3 + j], g2 = g[6 + j];
    t[0][j] = g0;
    t[1][j] = (g0 + g1 + g2) * T(0.5);
    t[2][j] = (g0 - g1 + g2) * T(0.5);
    t[3][j] = g2;
  }
  for (int i = 0; i < 4; ++i) {
    u[i * 4 + 0] = t[i][0];
    u[i * 4 + 1] = (t[i][0] + t[i][1] + t[i][2]) * T(0.5);
    u[i * 4 + 2] = (t[i][0] - t[i][1] + t[i][2]) * T(0.5);
    u[i * 4 + 3] = t[i][2];
  }
}

// Samples per chunk: about 256 tiles per GEMM (8 column panels), within 32
// MiB of V and M per chunk.
int64_t chunk_samples(int64_t N, int64_t T, int64_t C, int64_t O) {
  int64_t nb = std::min(N, std::max<int64_t>(1, ceil_div(256, T)));
  while (nb > 1 && 16 * (C + O) * (ceil_div(nb * T, 32) * 32) > (int64_t{8} << 20)) --nb;
  return nb;
}

// The tiles of a chunk of nb samples: tile t = (s, ty, tx) covers output
// pixels (2ty + i, 2tx + j), i, j < 2, from the input patch at rows 2ty - 1 + i
// and columns 2tx - 1 + j, i, j < 4 (padding 1). Per vector of 16 tiles: the
// lanes whose patch element (i, j) is inside the input, and whose output
// pixel (i, j) is inside the output (and t inside the chunk).
struct Tiles {
  int64_t Tt = 0, Tpad = 0, nvec = 0;  // tiles, rounded up to the 32-column panel, vectors of 16 in Tpad
  std::vector<int32_t> in_idx, out_idx, samp;
  std::vector<uint16_t> in_mask, out_mask;
  Tiles(int64_t nb, int64_t C, int64_t H, int64_t W, int64_t O) {
    const int64_t tH = (H + 1) / 2, tW = (W + 1) / 2, T = tH * tW;
    Tt = nb * T, Tpad = ceil_div(Tt, 32) * 32, nvec = Tpad / 16;
    in_idx.assign(Tpad, 0), out_idx.assign(Tpad, 0), samp.assign(Tpad, 0);
    in_mask.assign(nvec * 16, 0), out_mask.assign(nvec * 4, 0);
    for (int64_t t = 0; t < Tt; ++t) {
      const int64_t s = t / T, ty = t % T / tW, tx = t % tW;
      const int64_t ih0 = 2 * ty - 1, iw0 = 2 * tx - 1;
      const uint16_t bit = static_cast<uint16_t>(1u << (t % 16));
      in_idx[t] = static_cast<int32_t>(s * C * H * W + ih0 * W + iw0);
      out_idx[t] = static_cast<int32_t>(s * O * H * W + 2 * ty * W + 2 * tx);
      samp[t] = static_cast<int32_t>(s);
      for (int64_t i = 0; i < 4; ++i)
        for (int64_t j = 0; j < 4; ++j)
          if (ih0 + i >= 0 && ih0 + i < H && iw0 + j >= 0 && iw0 + j < W) in_mask[(t / 16) * 16 + i * 4 + j] |= bit;
      for (int64_t i = 0; i < 2; ++i)
        for (int64_t j = 0; j < 2; ++j)
          if (2 * ty + i < H && 2 * tx + j < W) out_mask[(t / 16) * 4 + i * 2 + j] |= bit;
    }
  }
};

// B^T d B of the 16 tiles of vector v (one tile a lane) of the channel plane xc,
// each tile's 4x4 input gathered under its border mask: out[4 i + j] = (B^T d B)[i][j].
__attribute__((target("avx512f"))) inline void input_tile_transform(const float* xc, int64_t W, const Tiles& tb,
                                                                    int64_t v, __m512 out[16]) {
  const __m512i idx = _mm512_loadu_si512(tb.in_idx.data() + v * 16);
  const uint16_t* mk = tb.in_mask.data() + v * 16;
  __m512 d[4][4];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j)
      d[i][j] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), static_cast<__mmask16>(mk[i * 4 + j]),
                                         _mm512_add_epi32(idx, _mm512_set1_epi32(static_cast<int>(i * W + j))),
                                         xc, 4);
  __m512 t[4][4];
  for (int j = 0; j < 4; ++j) {
    t[0][j] = _mm512_sub_ps(d[0][j], d[2][j]);
    t[1][j] = _mm512_add_ps(d[1][j], d[2][j]);
    t[2][j] = _mm512_sub_ps(d[2][j], d[1][j]);
    t[3][j] = _mm512_sub_ps(d[1][j], d[3][j]);
  }
  for (int i = 0; i < 4; ++i) {
    out[i * 4 + 0] = _mm512_sub_ps(t[i][0], t[i][2]);
    out[i * 4 + 1] = _mm512_add_ps(t[i][1], t[i][2]);
    out[i * 4 + 2] = _mm512_sub_ps(t[i][2], t[i][1]);
    out[i * 4 + 3] = _mm512_sub_ps(t[i][1], t[i][3]);
  }
}

// Step 1 for items [b, e) of (channel c, vector v): V[xi][v/2][c][(v%2)*16 ..].
__attribute__((target("avx512f"))) void input_transform(const float* x, int64_t C, int64_t HW, int64_t W,
                                                         const Tiles& tb, float* V, int64_t b, int64_t e) {
  const int64_t strideV = tb.Tpad * C;
  for (int64_t item = b; item < e; ++item) {
    const int64_t c = item / tb.nvec, v = item % tb.nvec;
    __m512 out[16];
    input_tile_transform(x + c * HW, W, tb, v, out);
    float* dst = V + (v / 2) * C * 32 + c * 32 + (v % 2) * 16;
    for (int xi = 0; xi < 16; ++xi) _mm512_store_ps(dst + xi * strideV, out[xi]);
  }
}

// Step 3 for items [b, e) of (output channel o, vector v); x, y, res, chan
// start at the chunk's first sample.
__attribute__((target("avx512f"))) void output_transform(const float* Mb, int64_t O, int64_t HW, int64_t W,
                                                          const Tiles& tb, const float* bias, const float* chan,
                                                          const float* res, float* y, int64_t nvu, int64_t b,
                                                          int64_t e) {
  const int64_t strideM = O * tb.Tpad;
  for (int64_t item = b; item < e; ++item) {
    const int64_t o = item / nvu, v = item % nvu;
    const float* src = Mb + o * tb.Tpad + v * 16;
    __m512 m[16];
    for (int xi = 0; xi < 16; ++xi) m[xi] = _mm512_load_ps(src + xi * strideM);
    __m512 s[2][4];
    for (int j = 0; j < 4; ++j) {
      s[0][j] = _mm512_add_ps(_mm512_add_ps(m[j], m[4 + j]), m[8 + j]);
      s[1][j] = _mm512_sub_ps(_mm512_sub_ps(m[4 + j], m[8 + j]), m[12 + j]);
    }
    __m512 out[4];
    for (int i = 0; i < 2; ++i) {
      out[i * 2 + 0] = _mm512_add_ps(_mm512_add_ps(s[i][0], s[i][1]), s[i][2]);
      out[i * 2 + 1] = _mm512_sub_ps(_mm512_sub_ps(s[i][1], s[i][2]), s[i][3]);
    }
    __m512 base = _mm512_set1_ps(bias ? bias[o] : 0.f);
    if (chan) {
      const __m512i si = _mm512_loadu_si512(tb.samp.data() + v * 16);
      const __m512i at = _mm512_mullo_epi32(si, _mm512_set1_epi32(static_cast<int>(O)));
      base = _mm512_add_ps(base, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), 0xffff, at, chan + o, 4));
    }
    const __m512i idx = _mm512_loadu_si512(tb.out_idx.data() + v * 16);
    const uint16_t* mk = tb.out_mask.data() + v * 4;
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j) {
        const __mmask16 k = static_cast<__mmask16>(mk[i * 2 + j]);
        const __m512i at = _mm512_add_epi32(idx, _mm512_set1_epi32(static_cast<int>(i * W + j)));
        __m512 val = _mm512_add_ps(out[i * 2 + j], base);
        if (res) val = _mm512_add_ps(val, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, at, res + o * HW, 4));
        _mm512_mask_i32scatter_ps(y + o * HW, k, at, val, 4);
      }
  }
}

}  // namespace

WinogradMode winograd_mode() {
  const char* s = std::getenv("TDQ_CONV_WINOGRAD");
  if (s && std::strcmp(s, "0") == 0) return WinogradMode::off;
  if (s && std::strcmp(s, "ref") == 0) return WinogradMode::ref;
  return WinogradMode::fast;
}

bool winograd_f2_applies(const ExecContext& ctx, int64_t N, int64_t C, int64_t H, int64_t W, int64_t O,
                         int64_t kh, int64_t kw, int64_t stride, int64_t pad) {
  const WinogradMode mode = winograd_mode();
  if (mode == WinogradMode::off) return false;
  // The reference runs at any level (tests); the fast path is AVX-512 only.
  if (mode == WinogradMode::fast && (ctx.cpu_level != CpuLevel::avx512 || gemm_nr(ctx) != 32)) return false;
  if (kh != 3 || kw != 3 || stride != 1 || pad != 1 || N < 1) return false;
  // From 32 channels each way the GEMMs (16 * C * O multiply-adds per tile)
  // outweigh the transforms (a few dozen vector operations per tile and
  // channel); from 64 tiles per GEMM the 32-column panels are mostly full
  // (an 8x8 map at batch 1 has 16 tiles and stays on the direct path).
  if (C < 32 || O < 32) return false;
  const int64_t T = ((H + 1) / 2) * ((W + 1) / 2);
  const int64_t nb = chunk_samples(N, T, C, O);
  // Under 64 tiles per chunk: the transposed products, from maps of 16 tiles
  // (7x7, 8x8) on; smaller maps stay on the direct path, whose weights are
  // 9/16 the bytes (they are read from memory once per call at batch 1).
  if (nb * T < 64 && T < 16) return false;
  // int32 gather / scatter indices within a chunk
  return nb * std::max(C, O) * H * W < (int64_t{1} << 31);
}

int64_t winograd_f2_packed_size(const ExecContext& ctx, int64_t O, int64_t C) {
  return 16 * sgemm_packed_a_size(ctx, O, C);
}

void winograd_f2_pack_weights(const ExecContext& ctx, const float* w, int64_t O, int64_t C, float* packed) {
  std::vector<float> u(static_cast<size_t>(16 * O * C));
  const int64_t OC = O * C;
  ctx.parallel_for(OC, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      float t[16];
      weight_transform<float>(w + i * 9, t);
      for (int xi = 0; xi < 16; ++xi) u[xi * OC + i] = t[xi];
    }
  });
  const int64_t sa = sgemm_packed_a_size(ctx, O, C);
  for (int xi = 0; xi < 16; ++xi) sgemm_pack_a(ctx, false, O, C, 1.f, u.data() + xi * OC, C, packed + xi * sa);
}

void winograd_f2_forward(const ExecContext& ctx, const float* x, int64_t N, int64_t C, int64_t H, int64_t W,
                         const float* packed, int64_t O, const float* bias, const float* chan, const float* res,
                         float* y) {
  const int64_t HW = H * W, T = ((H + 1) / 2) * ((W + 1) / 2);
  const int64_t nb = chunk_samples(N, T, C, O), chunks = ceil_div(N, nb);
  const int64_t threads = ctx.pool ? ctx.pool->size() : 1;
  const int64_t groups = threads > 1 && chunks >= threads ? threads : 1;
  const Tiles full(nb, C, H, W, O);
  const int64_t vn = 16 * C * full.Tpad, mn = 16 * O * full.Tpad, sa = sgemm_packed_a_size(ctx, O, C);
  Tensor scratch = ctx.scratch({groups, vn + mn});
  const ExecContext serial = serial_context(ctx);
  const ExecContext& gctx = groups > 1 ? serial : ctx;
  auto run_chunk = [&](int64_t gi, int64_t n0) {
    const int64_t cnt = std::min(nb, N - n0);
    Tiles part_storage = cnt == nb ? Tiles(0, 0, 0, 0, 0) : Tiles(cnt, C, H, W, O);
    const Tiles& tb = cnt == nb ? full : part_storage;
    float* V = scratch.f32() + gi * (vn + mn);
    float* Mb = V + vn;
    const float* xs = x + n0 * C * HW;
    gctx.parallel_for(C * tb.nvec, 4, [&](int64_t b, int64_t e) { input_transform(xs, C, HW, W, tb, V, b, e); });
    sgemm_batched_prepacked_panels(gctx, 16, O, tb.Tpad, C, packed, sa, V, C * tb.Tpad, Mb, tb.Tpad, O * tb.Tpad);
    const int64_t nvu = ceil_div(tb.Tt, 16);
    gctx.parallel_for(O * nvu, 4, [&](int64_t b, int64_t e) {
      output_transform(Mb, O, HW, W, tb, bias, chan ? chan + n0 * O : nullptr, res ? res + n0 * O * HW : nullptr,
                       y + n0 * O * HW, nvu, b, e);
    });
  };
  if (groups == 1) {
    for (int64_t k = 0; k < chunks; ++k) run_chunk(0, k * nb);
    return;
  }
  // Chunks go to groups by index (a fixed schedule: results do not depend on
  // which thread ran first; each chunk is computed the same way anyway).
  ctx.parallel_for(groups, 1, [&](int64_t b, int64_t e) {
    for (int64_t gi = b; gi < e; ++gi)
      for (int64_t k = gi; k < chunks; k += groups) run_chunk(gi, k * nb);
  });
}

bool winograd_f2_transposed(int64_t N, int64_t C, int64_t H, int64_t W, int64_t O) {
  const int64_t T = ((H + 1) / 2) * ((W + 1) / 2);
  return chunk_samples(N, T, C, O) * T < 64;
}

int64_t winograd_f2_packed_size_t(const ExecContext& ctx, int64_t O, int64_t C) {
  return 16 * sgemm_b_panels_size(ctx, C, O);
}

void winograd_f2_pack_weights_t(const ExecContext& ctx, const float* w, int64_t O, int64_t C, float* packed) {
  std::vector<float> u(static_cast<size_t>(16 * O * C));
  const int64_t OC = O * C;
  ctx.parallel_for(OC, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      float t[16];
      weight_transform<float>(w + i * 9, t);
      for (int xi = 0; xi < 16; ++xi) u[xi * OC + i] = t[xi];
    }
  });
  const int64_t sb = sgemm_b_panels_size(ctx, C, O);
  for (int xi = 0; xi < 16; ++xi) sgemm_pack_b_panels(ctx, true, C, O, u.data() + xi * OC, C, packed + xi * sb);
}

namespace {

// Step 1, transposed: V_xi^T (tiles, C) written straight in sgemm_pack_a's
// layout (8-row panels of tiles, K blocks of kc channels), items (c, v).
__attribute__((target("avx512f"))) void input_transform_t(const float* x, int64_t C, int64_t HW, int64_t W,
                                                           const Tiles& tb, int64_t Mpad, int64_t kc, int64_t strideA,
                                                           int64_t nv, float* A, int64_t b, int64_t e) {
  for (int64_t item = b; item < e; ++item) {
    const int64_t c = item / nv, v = item % nv;
    __m512 out[16];
    input_tile_transform(x + c * HW, W, tb, v, out);
    const int64_t pc = c / kc * kc, kcb = std::min(kc, C - pc), t0 = v * 16;
    float* lo = A + pc * Mpad + t0 * kcb + (c - pc) * 8;  // rows t0 .. t0+7: panel t0/8
    float* hi = lo + 8 * kcb;                               // rows t0+8 .. t0+15
    const bool upper = t0 + 8 < Mpad;
    for (int xi = 0; xi < 16; ++xi) {
      // lanes 0-7 to the first panel, lanes 8-15 to the second (masked stores)
      _mm512_mask_storeu_ps(lo + xi * strideA, 0x00ff, out[xi]);
      if (upper) _mm512_mask_storeu_ps(hi - 8 + xi * strideA, 0xff00, out[xi]);
    }
  }
}

// Step 3, transposed: M (16, tiles, O); items (tile t, 16 output channels).
__attribute__((target("avx512f"))) void output_transform_t(const float* Mb, int64_t O, int64_t H, int64_t W,
                                                            int64_t Tt, int64_t T, int64_t tW, const float* bias,
                                                            const float* chan, const float* res, float* y,
                                                            int64_t b, int64_t e) {
  const int64_t HW = H * W, ov = (O + 15) / 16, strideM = Tt * O;
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t item = b; item < e; ++item) {
    const int64_t t = item / ov, o0 = item % ov * 16;
    const __mmask16 om = static_cast<__mmask16>(O - o0 >= 16 ? 0xffff : (1u << (O - o0)) - 1);
    const float* src = Mb + t * O + o0;
    __m512 m[16];
    for (int xi = 0; xi < 16; ++xi) m[xi] = _mm512_maskz_loadu_ps(om, src + xi * strideM);
    __m512 s[2][4];
    for (int j = 0; j < 4; ++j) {
      s[0][j] = _mm512_add_ps(_mm512_add_ps(m[j], m[4 + j]), m[8 + j]);
      s[1][j] = _mm512_sub_ps(_mm512_sub_ps(m[4 + j], m[8 + j]), m[12 + j]);
    }
    __m512 out[4];
    for (int i = 0; i < 2; ++i) {
      out[i * 2 + 0] = _mm512_add_ps(_mm512_add_ps(s[i][0], s[i][1]), s[i][2]);
      out[i * 2 + 1] = _mm512_sub_ps(_mm512_sub_ps(s[i][1], s[i][2]), s[i][3]);
    }
    const int64_t sn = t / T, ty = t % T / tW, tx = t % tW;
    __m512 base = bias ? _mm512_maskz_loadu_ps(om, bias + o0) : _mm512_setzero_ps();
    if (chan) base = _mm512_add_ps(base, _mm512_maskz_loadu_ps(om, chan + sn * O + o0));
    // element offsets of output channel o0 + lane, pixel (0, 0) of the tile
    const __m512i at0 = _mm512_add_epi32(
        _mm512_mullo_epi32(_mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int>(o0))),
                           _mm512_set1_epi32(static_cast<int>(HW))),
        _mm512_set1_epi32(static_cast<int>(sn * O * HW + 2 * ty * W + 2 * tx)));
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j) {
        if (2 * ty + i >= H || 2 * tx + j >= W) continue;
        const __m512i at = _mm512_add_epi32(at0, _mm512_set1_epi32(static_cast<int>(i * W + j)));
        __m512 val = _mm512_add_ps(out[i * 2 + j], base);
        if (res) val = _mm512_add_ps(val, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), om, at, res, 4));
        _mm512_mask_i32scatter_ps(y, om, at, val, 4);
      }
  }
}

}  // namespace

void winograd_f2_forward_t(const ExecContext& ctx, const float* x, int64_t N, int64_t C, int64_t H, int64_t W,
                           const float* packed, int64_t O, const float* bias, const float* chan, const float* res,
                           float* y) {
  const int64_t HW = H * W, tW = (W + 1) / 2, T = ((H + 1) / 2) * tW;
  const int64_t nb = chunk_samples(N, T, C, O), chunks = ceil_div(N, nb);
  const int64_t threads = ctx.pool ? ctx.pool->size() : 1;
  const int64_t groups = threads > 1 && chunks >= threads ? threads : 1;
  const int64_t mr = gemm_mr(ctx), kc = gemm_kc(ctx);
  const int64_t Ttmax = nb * T, sa = sgemm_packed_a_size(ctx, Ttmax, C), sb = sgemm_b_panels_size(ctx, C, O);
  const int64_t per_group = (16 * sa + 15) / 16 * 16 + 16 * Ttmax * O;
  Tensor scratch = ctx.scratch({groups, per_group});
  const ExecContext serial = serial_context(ctx);
  const ExecContext& gctx = groups > 1 ? serial : ctx;
  const Tiles full(nb, C, H, W, O);
  auto run_chunk = [&](int64_t gi, int64_t n0) {
    const int64_t cnt = std::min(nb, N - n0);
    Tiles part_storage = cnt == nb ? Tiles(0, 0, 0, 0, 0) : Tiles(cnt, C, H, W, O);
    const Tiles& tb = cnt == nb ? full : part_storage;
    const int64_t Tt = tb.Tt, Mpad = ceil_div(Tt, mr) * mr, sac = sgemm_packed_a_size(ctx, Tt, C);
    float* A = scratch.f32() + gi * per_group;
    float* Mb = A + (16 * sa + 15) / 16 * 16;
    const int64_t nv = ceil_div(Tt, 16);
    const float* xs = x + n0 * C * HW;
    gctx.parallel_for(C * nv, 8, [&](int64_t b, int64_t e) { input_transform_t(xs, C, HW, W, tb, Mpad, kc, sac, nv, A, b, e); });
    sgemm_batched_prepacked_panels(gctx, 16, Tt, O, C, A, sac, packed, sb, Mb, O, Tt * O);
    const int64_t ov = ceil_div(O, 16);
    gctx.parallel_for(Tt * ov, 4, [&](int64_t b, int64_t e) {
      output_transform_t(Mb, O, H, W, Tt, T, tW, bias, chan ? chan + n0 * O : nullptr,
                         res ? res + n0 * O * HW : nullptr, y + n0 * O * HW, b, e);
    });
  };
  if (groups == 1) {
    for (int64_t k = 0; k < chunks; ++k) run_chunk(0, k * nb);
    return;
  }
  ctx.parallel_for(groups, 1, [&](int64_t b, int64_t e) {
    for (int64_t gi = b; gi < e; ++gi)
      for (int64_t k = gi; k < chunks; k += groups) run_chunk(gi, k * nb);
  });
}

void winograd_f2_forward_ref(const float* x, int64_t N, int64_t C, int64_t H, int64_t W, const float* w, int64_t O,
                             const float* bias, float* y) {
  const int64_t tH = (H + 1) / 2, tW = (W + 1) / 2, HW = H * W;
  std::vector<double> U(static_cast<size_t>(O * C * 16)), V(static_cast<size_t>(C * 16));
  for (int64_t i = 0; i < O * C; ++i) weight_transform<double>(w + i * 9, U.data() + i * 16);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t ty = 0; ty < tH; ++ty)
      for (int64_t tx = 0; tx < tW; ++tx) {
        // V_c = B^T d_c B for the 4x4 patch at (2ty - 1, 2tx - 1), zero outside x
        for (int64_t c = 0; c < C; ++c) {
          double d[4][4], t[4][4];
          for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) {
              const int64_t ih = 2 * ty - 1 + i, iw = 2 * tx - 1 + j;
              d[i][j] = ih >= 0 && ih < H && iw >= 0 && iw < W ? x[(n * C + c) * HW + ih * W + iw] : 0.0;
            }
          for (int j = 0; j < 4; ++j) {
            t[0][j] = d[0][j] - d[2][j];
            t[1][j] = d[1][j] + d[2][j];
            t[2][j] = d[2][j] - d[1][j];
            t[3][j] = d[1][j] - d[3][j];
          }
          double* v = V.data() + c * 16;
          for (int i = 0; i < 4; ++i) {
            v[i * 4 + 0] = t[i][0] - t[i][2];
            v[i * 4 + 1] = t[i][1] + t[i][2];
            v[i * 4 + 2] = t[i][2] - t[i][1];
            v[i * 4 + 3] = t[i][1] - t[i][3];
          }
        }
        for (int64_t o = 0; o < O; ++o) {
          double m[16] = {};
          for (int64_t c = 0; c < C; ++c)
            for (int xi = 0; xi < 16; ++xi) m[xi] += U[(o * C + c) * 16 + xi] * V[c * 16 + xi];
          double s[2][4];
          for (int j = 0; j < 4; ++j) {
            s[0][j] = m[j] + m[4 + j] + m[8 + j];
            s[1][j] = m[4 + j] - m[8 + j] - m[12 + j];
          }
          for (int i = 0; i < 2; ++i)
            for (int j = 0; j < 2; ++j) {
              const int64_t oh = 2 * ty + i, ow = 2 * tx + j;
              if (oh >= H || ow >= W) continue;
              const double val = j == 0 ? s[i][0] + s[i][1] + s[i][2] : s[i][1] - s[i][2] - s[i][3];
              y[(n * O + o) * HW + oh * W + ow] = static_cast<float>(val + (bias ? bias[o] : 0.f));
            }
        }
      }
}

}  // namespace tdq
