// Exact integer Winograd F(2x2, 3x3) for qconv2d's 3x3 stride-1 convolutions.
//
// The direct path (qconv2d.cpp + qgemm) sums S = sum_{c,i,j} (x - zp) * q over
// the 9 taps with vpdpbusd. Here the same S comes from 2x2 output tiles:
//   d = the tile's 4x4 patch of centered levels x - zp (int, the padding 0:
//       the direct path pads with the zero point, i.e. centered 0)
//   V = B^T d B      entries of B^T 0/±1:  |V| <= 4 * 255 = 1020   (int16)
//   U = G2 g G2^T    G2 = 2G = [[2,0,0],[1,1,1],[1,-1,1],[0,0,2]] (integer):
//                    |U| <= 9 * 128 = 1152                          (int16)
//   M = sum_c U ⊙ V  (16 GEMMs over the channels: int16 pairs into int32,
//                    vpdpwssd / vpmaddwd / scalar)
//   Y = A^T M A = 4 * S   (A^T = [[1,1,1,0],[0,1,-1,-1]])
// F(2,3) is exact over the rationals and G2 = 2G scales each side by 2, so Y
// is 4 * S exactly. The int32 sums wrap (modular arithmetic; vpdpwssd and
// vpaddd do not saturate, and a vpmaddwd pair cannot overflow at these
// ranges), so M and the transform are exact mod 2^32, and Y is exact as soon
// as the true 4 * S fits int32: |4 S| <= 4 * 9 * C * 255 * 128 < 2^31, i.e.
// C <= 1827 (qwinograd_exact; larger C stays on the direct path). S = Y / 4
// then takes the direct path's epilogue (qgemm.h):
//   y = fl(fl(float(S) * fl(step[s] * wstep[o])) + bias[o])     (bias 0 if none)
// and acc - zc there is S too (mod 2^32, and S fits), so the outputs are the
// direct path's bit for bit at every CPU level.
//
// TDQ_QCONV_WINOGRAD (read per call): unset = automatic (qwinograd_applies:
// currently never, see there), 1 = every eligible call, 0 = never (direct path), ref =
// the plain reference below (int64 arithmetic, no wrap-around) for tests.
#pragma once
#include <cstdint>

#include "../core/registry.h"

namespace tdq {

enum class QWinogradMode { off, automatic, always, ref };
QWinogradMode qwinograd_mode();

// One call's geometry: N samples (N, C, H, W) -> (N, O, Ho, Wo), 3x3, stride 1,
// padding pad (Ho = H + 2 pad - 2).
struct QWinoGeom {
  int64_t N, C, H, W, O, pad, Ho, Wo;
  int64_t th() const { return (Ho + 1) / 2; }  // tile rows
  int64_t tw() const { return (Wo + 1) / 2; }  // tile columns
};

// 4 * 9 * C * 255 * 128 < 2^31: the int32 result is exact.
bool qwinograd_exact(int64_t C);
// Whether a qconv2d call (g.N: the call's samples; kernel kh x kw, stride,
// chunks of nb samples) takes
// the Winograd path in `mode` at `level`.
bool qwinograd_applies(QWinogradMode mode, CpuLevel level, const QWinoGeom& g, int64_t kh, int64_t kw,
                       int64_t stride, int64_t nb);

// The transformed weights of qweight_pack's (O, 9 * round_up4(C)) int8 rows:
// int16 U, blocks of 32 output channels: u[((ob * 16 + xi) * Cp/2 + q) * 64 +
// 2 * oo + r] = U[o = 32 ob + oo, c = 2q + r, xi] (0 past O). Size in 4-byte words.
int64_t qwinograd_weights_words(int64_t O, int64_t C);
void qwinograd_pack_weights(const int8_t* w, int64_t O, int64_t C, int16_t* u);

// y (N, O, Ho, Wo) from the channel-interleaved levels x4 (qconv2d.cpp: word
// (s * Cq + cq) * H * W + p holds channels 4cq..4cq+3 as bytes, zero point zp),
// steps[s] the samples' activation steps, wstep[O], bias[O] or null.
void qwinograd_forward(const ExecContext& ctx, const QWinoGeom& g, const uint32_t* x4, int32_t zp, const int16_t* u,
                       const float* wstep, const float* bias, const float* steps, float* y);
// The plain reference: the same transforms in int64 from the packed int8 rows.
void qwinograd_forward_ref(const QWinoGeom& g, const uint32_t* x4, int32_t zp, const int8_t* w, const float* wstep,
                           const float* bias, const float* steps, float* y);

}  // namespace tdq
