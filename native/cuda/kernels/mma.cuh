// The reduced-precision GEMM of our own (precision fp16 / bf16, vendor.cuh):
// tensor cores through WMMA, operands rounded to H (__half or __nv_bfloat16)
// while loading each tile, fp32 accumulation, fp32 out. One template for the
// matmuls (gemm.cu) and the implicit-GEMM convolution (conv2d.cu): the caller
// gives the loaders of A (M x K) and B (K x N) elements as floats, and the
// epilogue that stores C[m, n], each with the batch index z (blockIdx.z).
//   128 threads (4 warps) per 64 x 64 tile of C, each warp 32 x 32 (2 x 2
//   fragments of 16 x 16), K in steps of 16; the accumulators go through
//   shared memory to the epilogue.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include "common.cuh"

namespace tdqcu {

template <typename H> __device__ __forceinline__ H to_h(float v);
template <> __device__ __forceinline__ __half to_h<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 to_h<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

constexpr int kMmaBM = 64, kMmaBN = 64, kMmaBK = 16, kMmaThreads = 128;

// LoadA(z, m, k) / LoadB(z, k, n): floats (0 outside); Store(z, m, n, acc): writes C.
template <typename H, typename LoadA, typename LoadB, typename Store>
__global__ void __launch_bounds__(kMmaThreads)
    mma_gemm(int64_t M, int64_t N, int64_t K, LoadA la, LoadB lb, Store st) {
  using namespace nvcuda;
  __shared__ __align__(32) H As[kMmaBM][kMmaBK + 8];
  __shared__ __align__(32) H Bs[kMmaBK][kMmaBN + 8];
  __shared__ __align__(32) float Cs[kMmaBM][kMmaBN + 4];
  const int64_t m0 = int64_t(blockIdx.y) * kMmaBM, n0 = int64_t(blockIdx.x) * kMmaBN, z = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);
  for (int64_t k0 = 0; k0 < K; k0 += kMmaBK) {
    // 64 x 16 of A and 16 x 64 of B: 8 elements each per thread.
#pragma unroll
    for (int r = 0; r < 8; ++r) {
      const int idx = tid + r * kMmaThreads;
      {
        const int mi = idx / kMmaBK, ki = idx % kMmaBK;
        const int64_t m = m0 + mi, k = k0 + ki;
        As[mi][ki] = to_h<H>(m < M && k < K ? la(z, m, k) : 0.f);
      }
      {
        const int ki = idx / kMmaBN, ni = idx % kMmaBN;
        const int64_t k = k0 + ki, n = n0 + ni;
        Bs[ki][ni] = to_h<H>(k < K && n < N ? lb(z, k, n) : 0.f);
      }
    }
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, H, wmma::row_major> fa[2];
    wmma::fragment<wmma::matrix_b, 16, 16, 16, H, wmma::row_major> fb[2];
    for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], &As[wm + 16 * i][0], kMmaBK + 8);
    for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], &Bs[0][wn + 16 * j], kMmaBN + 8);
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    __syncthreads();
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&Cs[wm + 16 * i][wn + 16 * j], acc[i][j], kMmaBN + 4, wmma::mem_row_major);
  __syncthreads();
  for (int idx = tid; idx < kMmaBM * kMmaBN; idx += kMmaThreads) {
    const int mi = idx / kMmaBN, ni = idx % kMmaBN;
    const int64_t m = m0 + mi, n = n0 + ni;
    if (m < M && n < N) st(z, m, n, Cs[mi][ni]);
  }
}

// Launches mma_gemm in fp16 or bf16 (never fp32) over a grid of 64 x 64 tiles, batch z < Z.
template <typename LoadA, typename LoadB, typename Store>
void launch_mma_gemm(const char* op, cudaStream_t s, bool bf16, int64_t M, int64_t N, int64_t K, LoadA la, LoadB lb,
                     Store st, int64_t Z = 1) {
  const dim3 grid(static_cast<unsigned>((N + kMmaBN - 1) / kMmaBN), static_cast<unsigned>((M + kMmaBM - 1) / kMmaBM),
                  static_cast<unsigned>(Z));
  if (grid.y > 65535 || Z > 65535)
    throw CuError(std::string(op) + ": too many rows (" + std::to_string(M) + ") or batches (" + std::to_string(Z) +
                  ") for one launch");
  if (bf16) mma_gemm<__nv_bfloat16><<<grid, kMmaThreads, 0, s>>>(M, N, K, la, lb, st);
  else mma_gemm<__half><<<grid, kMmaThreads, 0, s>>>(M, N, K, la, lb, st);
  check_launch(op);
}

}  // namespace tdqcu
