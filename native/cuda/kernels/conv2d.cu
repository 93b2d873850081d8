// conv2d_forward (fp32) as an implicit GEMM, as native/cpu/conv2d.cpp:
// y (N, O, Ho, Wo) = W (O, C*kh*kw) x col(x) (C*kh*kw, N*Ho*Wo) + bias (O)
// + add_channel (N, O) + residual (N, O, Ho, Wo); square stride / padding,
// no dilation or groups. cuDNN (vendor.cuh) where it loads, then one pass for
// the bias and adds; otherwise our own kernels (in fp16 / bf16 the WMMA
// tensor-core GEMM of mma.cuh with the same gather), where the columns of col(x) are gathered from x while
// loading each tile into shared memory: no im2col buffer.
#include "mma.cuh"
#include "vendor.cuh"

namespace tdqcu {
namespace {

struct Geom {
  int64_t N, C, H, W, O, kh, kw, stride, pad, Ho, Wo;
};

constexpr int BM = 64, BN = 64, BK = 16;  // tile of O x columns, and K step
// 256 threads, each computing a 4 x 4 block of the 64 x 64 output tile.
__global__ void __launch_bounds__(256) conv_igemm(const float* __restrict__ x, const float* __restrict__ w,
                                                  const float* __restrict__ bias, const float* __restrict__ chan,
                                                  const float* __restrict__ res, float* __restrict__ y, Geom g) {
  __shared__ float As[BK][BM + 4];  // weights, k-major
  __shared__ float Bs[BK][BN + 4];  // gathered columns
  const int64_t K = g.C * g.kh * g.kw, P = g.Ho * g.Wo, Ncols = g.N * P;
  const int64_t o0 = int64_t(blockIdx.y) * BM, j0 = int64_t(blockIdx.x) * BN;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += BK) {
    // 64 x 16 weights and 16 x 64 columns: 4 values each per thread.
    for (int r = 0; r < 4; ++r) {
      const int idx = tid + r * 256;
      {
        const int mi = idx / BK, ki = idx % BK;
        const int64_t o = o0 + mi, k = k0 + ki;
        As[ki][mi] = (o < g.O && k < K) ? w[o * K + k] : 0.f;
      }
      {
        const int ki = idx / BN, ni = idx % BN;
        const int64_t k = k0 + ki, j = j0 + ni;
        float v = 0.f;
        if (k < K && j < Ncols) {
          const int64_t n = j / P, p = j % P, oh = p / g.Wo, ow = p % g.Wo;
          const int64_t c = k / (g.kh * g.kw), rr = k % (g.kh * g.kw), ki2 = rr / g.kw, kj = rr % g.kw;
          const int64_t ih = oh * g.stride - g.pad + ki2, iw = ow * g.stride - g.pad + kj;
          if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) v = x[((n * g.C + c) * g.H + ih) * g.W + iw];
        }
        Bs[ki][ni] = v;
      }
    }
    __syncthreads();
    tile_fma_4x4(As, Bs, ty, tx, acc);
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i) {
    const int64_t o = o0 + ty * 4 + i;
    if (o >= g.O) continue;
    for (int jj = 0; jj < 4; ++jj) {
      const int64_t j = j0 + tx * 4 + jj;
      if (j >= Ncols) continue;
      const int64_t n = j / P, p = j % P, yi = (n * g.O + o) * P + p;
      float v = acc[i][jj];
      if (bias) v += bias[o];
      if (chan) v += chan[n * g.O + o];
      if (res) v += res[yi];
      y[yi] = v;
    }
  }
}

// The reduced-precision path's operands and epilogue (mma.cuh).
struct LoadW {
  const float* w;
  int64_t K;
  __device__ float operator()(int64_t, int64_t o, int64_t k) const { return w[o * K + k]; }
};
struct LoadCol {  // col(x)[k, j], gathered as conv_igemm's
  const float* x;
  Geom g;
  __device__ float operator()(int64_t, int64_t k, int64_t j) const {
    const int64_t P = g.Ho * g.Wo, n = j / P, p = j % P, oh = p / g.Wo, ow = p % g.Wo;
    const int64_t c = k / (g.kh * g.kw), rr = k % (g.kh * g.kw), ki = rr / g.kw, kj = rr % g.kw;
    const int64_t ih = oh * g.stride - g.pad + ki, iw = ow * g.stride - g.pad + kj;
    return ih >= 0 && ih < g.H && iw >= 0 && iw < g.W ? x[((n * g.C + c) * g.H + ih) * g.W + iw] : 0.f;
  }
};
struct StoreConv {
  float* y;
  const float *bias, *chan, *res;
  int64_t O, P;
  __device__ void operator()(int64_t, int64_t o, int64_t j, float acc) const {
    const int64_t n = j / P, yi = (n * O + o) * P + j % P;
    float v = acc;
    if (bias) v += bias[o];
    if (chan) v += chan[n * O + o];
    if (res) v += res[yi];
    y[yi] = v;
  }
};

// After cuDNN: y += bias[o] + add_channel[n, o] + residual, in the order of conv_igemm's epilogue.
__global__ void conv_epilogue(float* __restrict__ y, const float* __restrict__ bias, const float* __restrict__ chan,
                              const float* __restrict__ res, int64_t O, int64_t P, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t no = i / P, o = no % O;
    float v = y[i];
    if (bias) v += bias[o];
    if (chan) v += chan[no];
    if (res) v += res[i];
    y[i] = v;
  }
}

void conv2d_forward_op(const Launch& l) {
  const tdq_cu_tensor &x = l.in[0], &w = l.in[1];
  Geom g{x.shape[0], x.shape[1], x.shape[2], x.shape[3], w.shape[0], w.shape[2], w.shape[3],
         l.integer("stride", 1), l.integer("padding", 0), 0, 0};
  g.Ho = (g.H + 2 * g.pad - g.kh) / g.stride + 1;
  g.Wo = (g.W + 2 * g.pad - g.kw) / g.stride + 1;
  const int64_t cols = g.N * g.Ho * g.Wo;
  if (cols == 0 || g.O == 0) return;
  const vendor::ConvGeom vg{g.N, g.C, g.H, g.W, g.O, g.kh, g.kw, g.stride, g.pad, g.Ho, g.Wo};
  if (vendor::conv_forward(l.stream, vg, l.fin(0), l.fin(1), l.fout(0))) {
    if (l.fin(2) || l.fin(3) || l.fin(4)) {
      const int64_t n = g.N * g.O * g.Ho * g.Wo;
      conv_epilogue<<<grid_for(n), kThreads, 0, l.stream>>>(l.fout(0), l.fin(2), l.fin(3), l.fin(4), g.O, g.Ho * g.Wo, n);
      check_launch(l.op);
    }
    return;
  }
  const Precision prec = precision();
  if (prec != Precision::fp32) {
    const int64_t K = g.C * g.kh * g.kw;
    launch_mma_gemm(l.op, l.stream, prec == Precision::bf16, g.O, cols, K, LoadW{l.fin(1), K}, LoadCol{l.fin(0), g},
                    StoreConv{l.fout(0), l.fin(2), l.fin(3), l.fin(4), g.O, g.Ho * g.Wo});
    return;
  }
  const dim3 grid(static_cast<unsigned>((cols + BN - 1) / BN), static_cast<unsigned>((g.O + BM - 1) / BM));
  if (grid.y > 65535) throw CuError("conv2d_forward: too many output channels for one launch");
  conv_igemm<<<grid, 256, 0, l.stream>>>(l.fin(0), l.fin(1), l.fin(2), l.fin(3), l.fin(4), l.fout(0), g);
  check_launch(l.op);
}

}  // namespace

TDQ_CU_OP("conv2d_forward", conv2d_forward_op);

}  // namespace tdqcu
