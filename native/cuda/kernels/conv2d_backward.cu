// conv2d_backward_input and conv2d_backward_weight (fp32) as implicit GEMMs,
// as native/cpu/conv2d.cpp (square stride / padding, no dilation or groups):
//   gx (N, C, H, W): gx[c, (n, ih, iw)] = sum over (o, ki, kj) of
//       W[o, c, ki, kj] * gy[n, o, oh, ow], where ih = oh * stride - pad + ki
//       (and the same for w): M = C, K = O*kh*kw, columns = N*H*W; the gy
//       value of each (column, k) pair is gathered (0 where no output pixel maps).
//   gW (O, C*kh*kw) = gy (O, N*Ho*Wo) x col(x)^T, col(x) gathered from x;
//       gb[o] (with attribute bias) = sum of gy over samples and pixels.
// cuDNN (vendor.cuh) where it loads; otherwise both are the tile loop of conv2d_forward (64 x 64 tiles, K in steps of 16),
// with different gathers; no col buffers.
#include "vendor.cuh"

namespace tdqcu {
namespace {

struct Geom {
  int64_t N, C, H, W, O, kh, kw, stride, pad, Ho, Wo;
};

constexpr int BM = 64, BN = 64, BK = 16;
enum Mode { kInput = 0, kWeight = 1 };

// A (M x K) and B (K x Ncols) elements of each mode, 0 outside.
template <int MODE>
__device__ __forceinline__ float load_a(const float* __restrict__ a, const Geom& g, int64_t m, int64_t k) {
  if (MODE == kInput) {
    // m = c, k = (o, ki, kj): W[o, c, ki, kj]
    const int64_t kk = g.kh * g.kw, o = k / kk, r = k % kk;
    return a[(o * g.C + m) * kk + r];
  } else {
    // m = o, k = (n, p): gy[n, o, p]
    const int64_t P = g.Ho * g.Wo, n = k / P, p = k % P;
    return a[(n * g.O + m) * P + p];
  }
}

template <int MODE>
__device__ __forceinline__ float load_b(const float* __restrict__ b, const Geom& g, int64_t k, int64_t j) {
  if (MODE == kInput) {
    // k = (o, ki, kj), j = (n, ih, iw): gy[n, o, oh, ow] where oh * stride = ih + pad - ki
    const int64_t kk = g.kh * g.kw, o = k / kk, r = k % kk, ki = r / g.kw, kj = r % g.kw;
    const int64_t HW = g.H * g.W, n = j / HW, q = j % HW, ih = q / g.W, iw = q % g.W;
    const int64_t th = ih + g.pad - ki, tw = iw + g.pad - kj;
    if (th < 0 || tw < 0 || th % g.stride || tw % g.stride) return 0.f;
    const int64_t oh = th / g.stride, ow = tw / g.stride;
    if (oh >= g.Ho || ow >= g.Wo) return 0.f;
    return b[((n * g.O + o) * g.Ho + oh) * g.Wo + ow];
  } else {
    // k = (n, p), j = (c, ki, kj): x[n, c, oh * stride - pad + ki, ow * stride - pad + kj]
    const int64_t P = g.Ho * g.Wo, n = k / P, p = k % P, oh = p / g.Wo, ow = p % g.Wo;
    const int64_t kk = g.kh * g.kw, c = j / kk, r = j % kk, ki = r / g.kw, kj = r % g.kw;
    const int64_t ih = oh * g.stride - g.pad + ki, iw = ow * g.stride - g.pad + kj;
    if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return 0.f;
    return b[((n * g.C + c) * g.H + ih) * g.W + iw];
  }
}

template <int MODE>
__global__ void __launch_bounds__(256) conv_bwd_igemm(const float* __restrict__ a, const float* __restrict__ b,
                                                      float* __restrict__ y, Geom g, int64_t M, int64_t K,
                                                      int64_t Ncols) {
  __shared__ float As[BK][BM + 4];
  __shared__ float Bs[BK][BN + 4];
  const int64_t m0 = int64_t(blockIdx.y) * BM, j0 = int64_t(blockIdx.x) * BN;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += BK) {
    for (int r = 0; r < 4; ++r) {
      const int idx = tid + r * 256;
      {
        const int mi = idx / BK, ki = idx % BK;
        const int64_t m = m0 + mi, k = k0 + ki;
        As[ki][mi] = (m < M && k < K) ? load_a<MODE>(a, g, m, k) : 0.f;
      }
      {
        const int ki = idx / BN, ni = idx % BN;
        const int64_t k = k0 + ki, j = j0 + ni;
        Bs[ki][ni] = (k < K && j < Ncols) ? load_b<MODE>(b, g, k, j) : 0.f;
      }
    }
    __syncthreads();
    tile_fma_4x4(As, Bs, ty, tx, acc);
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty * 4 + i;
    if (m >= M) continue;
    for (int jj = 0; jj < 4; ++jj) {
      const int64_t j = j0 + tx * 4 + jj;
      if (j >= Ncols) continue;
      if (MODE == kInput) {
        // row c, column (n, q) -> gx[n, c, q]
        const int64_t HW = g.H * g.W, n = j / HW, q = j % HW;
        y[(n * g.C + m) * HW + q] = acc[i][jj];
      } else {
        y[m * Ncols + j] = acc[i][jj];  // gW[o, (c, ki, kj)]
      }
    }
  }
}

// gb[o] = sum over n, p of gy[n, o, p]: one block per channel, summed in double.
__global__ void bias_grad(const float* __restrict__ gy, float* __restrict__ gb, int64_t N, int64_t O, int64_t P) {
  const int64_t o = blockIdx.x;
  double s = 0;
  for (int64_t i = threadIdx.x; i < N * P; i += blockDim.x) {
    const int64_t n = i / P, p = i % P;
    s += gy[(n * O + o) * P + p];
  }
  s = block_sum(s);
  if (threadIdx.x == 0) gb[o] = static_cast<float>(s);
}

Geom geometry(const Launch& l, const tdq_cu_tensor& x, const tdq_cu_tensor& w) {
  Geom g{x.shape[0], x.shape[1], x.shape[2], x.shape[3], w.shape[0], w.shape[2], w.shape[3],
         l.integer("stride", 1), l.integer("padding", 0), 0, 0};
  g.Ho = (g.H + 2 * g.pad - g.kh) / g.stride + 1;
  g.Wo = (g.W + 2 * g.pad - g.kw) / g.stride + 1;
  return g;
}

template <int MODE>
void launch(const Launch& l, const Geom& g, const float* a, const float* b, float* y, int64_t M, int64_t K,
            int64_t Ncols) {
  const dim3 grid(static_cast<unsigned>((Ncols + BN - 1) / BN), static_cast<unsigned>((M + BM - 1) / BM));
  if (grid.y > 65535) throw CuError(std::string(l.op) + ": too many rows (" + std::to_string(M) + ") for one launch");
  conv_bwd_igemm<MODE><<<grid, 256, 0, l.stream>>>(a, b, y, g, M, K, Ncols);
  check_launch(l.op);
}

vendor::ConvGeom vgeom(const Geom& g) { return {g.N, g.C, g.H, g.W, g.O, g.kh, g.kw, g.stride, g.pad, g.Ho, g.Wo}; }

// conv2d_backward_input(gy, weight; stride, padding, input_shape) -> gx
void conv2d_backward_input_op(const Launch& l) {
  const tdq_cu_tensor &gx = l.out[0], &w = l.in[1];
  const Geom g = geometry(l, gx, w);
  const int64_t M = g.C, K = g.O * g.kh * g.kw, Ncols = g.N * g.H * g.W;
  if (M == 0 || Ncols == 0) return;
  // K == 0 cannot happen (O, kh, kw >= 1); the kernel writes every element of gx.
  if (vendor::conv_backward_data(l.stream, vgeom(g), l.fin(0), l.fin(1), l.fout(0))) return;
  launch<kInput>(l, g, l.fin(1), l.fin(0), l.fout(0), M, K, Ncols);
}

// conv2d_backward_weight(gy, x; stride, padding, kernel_size, bias) -> gW [, gb]
void conv2d_backward_weight_op(const Launch& l) {
  const tdq_cu_tensor &x = l.in[1], &gw = l.out[0];
  const Geom g = geometry(l, x, gw);
  const int64_t M = g.O, K = g.N * g.Ho * g.Wo, Ncols = g.C * g.kh * g.kw;
  if (M > 0 && Ncols > 0 && !vendor::conv_backward_filter(l.stream, vgeom(g), l.fin(0), l.fin(1), l.fout(0)))
    launch<kWeight>(l, g, l.fin(0), l.fin(1), l.fout(0), M, K, Ncols);
  if (l.nout > 1 && g.O > 0) {
    bias_grad<<<static_cast<unsigned>(g.O), kThreads, 0, l.stream>>>(l.fin(0), l.fout(1), g.N, g.O, g.Ho * g.Wo);
    check_launch(l.op);
  }
}

}  // namespace

TDQ_CU_OP("conv2d_backward_input", conv2d_backward_input_op);
TDQ_CU_OP("conv2d_backward_weight", conv2d_backward_weight_op);

}  // namespace tdqcu
