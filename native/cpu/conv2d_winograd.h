// Winograd F(2x2, 3x3) for the forward of 3x3, stride-1, padding-1 ('same')
// convolutions at the AVX-512 level (conv2d_winograd.cpp). Each 2x2 block of
// output pixels (a tile) is computed from the 4x4 input patch under it as
//   Y = A^T [ sum_c (G g_oc G^T) .* (B^T d_c B) ] A
// so the 9 products per output pixel and input channel of the direct
// convolution become 16 per tile of 4 pixels: 2.25x fewer multiplications,
// done as 16 GEMMs (one per element xi of the 4x4 transformed tile):
//   M_xi (O, tiles) = U_xi (O, C) . V_xi (C, tiles).
#pragma once
#include <cstdint>

#include "../core/registry.h"

namespace tdq {

// Whether the Winograd path takes this convolution: AVX-512 level, 3x3 kernel,
// stride 1, padding 1, enough channels for the GEMMs to dominate the
// transforms, and enough tiles per GEMM (N * tiles per sample) to fill the
// 32-wide register tile. The environment variable TDQ_CONV_WINOGRAD (read at
// every call) selects: "0" off (the implicit GEMM), "ref" the plain reference
// below in place of the fast path (tests), anything else / unset the fast path.
enum class WinogradMode { off, fast, ref };
WinogradMode winograd_mode();
bool winograd_f2_applies(const ExecContext& ctx, int64_t N, int64_t C, int64_t H, int64_t W, int64_t O,
                         int64_t kh, int64_t kw, int64_t stride, int64_t pad);

// Whether the chunks of this (applying) convolution have fewer than 64 tiles
// (an 8x8 map at batch 1): then the 16 products are run transposed,
// M_xi^T (tiles, O) = V_xi^T . U_xi^T, the tiles on the register tile's 8-row
// side and the output channels on its 32 columns, with U^T kept as B panels
// (winograd_f2_pack_weights_t / winograd_f2_forward_t).
bool winograd_f2_transposed(int64_t N, int64_t C, int64_t H, int64_t W, int64_t O);
int64_t winograd_f2_packed_size_t(const ExecContext& ctx, int64_t O, int64_t C);
void winograd_f2_pack_weights_t(const ExecContext& ctx, const float* w, int64_t O, int64_t C, float* packed);
void winograd_f2_forward_t(const ExecContext& ctx, const float* x, int64_t N, int64_t C, int64_t H, int64_t W,
                           const float* packed, int64_t O, const float* bias, const float* chan, const float* res,
                           float* y);

// Floats of the transformed, packed weights (16 GEMM A operands).
int64_t winograd_f2_packed_size(const ExecContext& ctx, int64_t O, int64_t C);
// U_xi = (G w_oc G^T)[xi] for w (O, C, 3, 3), packed as 16 sgemm_pack_a blocks.
void winograd_f2_pack_weights(const ExecContext& ctx, const float* w, int64_t O, int64_t C, float* packed);

// y (N, O, H, W) = conv(x (N, C, H, W), w) + bias[o] + chan[n, o] + res[n, o, :, :]
// (each add optional: null), with w given as winograd_f2_pack_weights' output.
void winograd_f2_forward(const ExecContext& ctx, const float* x, int64_t N, int64_t C, int64_t H, int64_t W,
                         const float* packed, int64_t O, const float* bias, const float* chan, const float* res,
                         float* y);

// The plain reference of the same algorithm (scalar loops, double
// accumulation, unpacked weights w (O, C, 3, 3)): for tests and as the
// definition of the fast path.
void winograd_f2_forward_ref(const float* x, int64_t N, int64_t C, int64_t H, int64_t W, const float* w, int64_t O,
                             const float* bias, float* y);

}  // namespace tdq
