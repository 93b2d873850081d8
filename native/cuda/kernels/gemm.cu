// gemm, matmul and linear (fp32), as native/cpu/matmul.cpp:
//   gemm(a, b, c?; transA, transB, alpha, beta)  alpha op(a) op(b) + beta c, 2-D
//   matmul(a, b; transA, transB)                 2-D or batched (B, M, K); a 2-D operand is shared
//   linear(x, weight, bias?)                     x (..., in) W^T (out, in) + bias (out)
// cuBLAS (vendor.cuh) where it loads, in the configured precision; otherwise
// in fp16 / bf16 our WMMA tensor-core kernel (mma.cuh), and in fp32 one
// shared-memory tiled kernel: a 64 x 64 tile of C per block of 256 threads,
// each thread a 4 x 4 block of it, K in steps of 16; blockIdx.z is the batch.
#include "mma.cuh"
#include "vendor.cuh"

namespace tdqcu {
namespace {

struct GemmArgs {
  int64_t M, N, K, lda, ldb, sa, sb;  // sa / sb: batch strides (0: shared)
  bool tA, tB;
  float alpha, beta;
};

constexpr int BM = 64, BN = 64, BK = 16;

__global__ void __launch_bounds__(256) sgemm_tiled(const float* __restrict__ A, const float* __restrict__ B,
                                                   const float* __restrict__ C, const float* __restrict__ bias,
                                                   float* __restrict__ Y, GemmArgs g) {
  __shared__ float As[BK][BM + 4];
  __shared__ float Bs[BK][BN + 4];
  const int64_t batch = blockIdx.z;
  A += batch * g.sa;
  B += batch * g.sb;
  Y += batch * g.M * g.N;
  const int64_t m0 = int64_t(blockIdx.y) * BM, n0 = int64_t(blockIdx.x) * BN;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < g.K; k0 += BK) {
    for (int r = 0; r < 4; ++r) {
      const int idx = tid + r * 256;
      {
        const int mi = idx / BK, ki = idx % BK;
        const int64_t m = m0 + mi, k = k0 + ki;
        As[ki][mi] = (m < g.M && k < g.K) ? (g.tA ? A[k * g.lda + m] : A[m * g.lda + k]) : 0.f;
      }
      {
        const int ki = idx / BN, ni = idx % BN;
        const int64_t k = k0 + ki, n = n0 + ni;
        Bs[ki][ni] = (k < g.K && n < g.N) ? (g.tB ? B[n * g.ldb + k] : B[k * g.ldb + n]) : 0.f;
      }
    }
    __syncthreads();
    tile_fma_4x4(As, Bs, ty, tx, acc);
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty * 4 + i;
    if (m >= g.M) continue;
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx * 4 + j;
      if (n >= g.N) continue;
      float v = g.alpha * acc[i][j];
      if (C) v += g.beta * C[m * g.N + n];
      if (bias) v += bias[n];
      Y[m * g.N + n] = v;
    }
  }
}

// y (M, N) = bias broadcast over rows, or c (copied): the accumulator cuBLAS adds to.
__global__ void fill_rows(float* __restrict__ y, const float* __restrict__ bias, int64_t M, int64_t N) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < M * N; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = bias[i % N];
}

bool launch_vendor(const Launch& l, int64_t batch, const GemmArgs& g, const float* a, const float* b, const float* c,
                   const float* bias, float* y) {
  if (!vendor::enabled()) return false;
  float beta = 0.f;
  if (c || bias) {  // batch 1 here (gemm, linear)
    if (c) {
      TDQ_CU_CHECK(cudaMemcpyAsync(y, c, sizeof(float) * g.M * g.N, cudaMemcpyDeviceToDevice, l.stream));
      beta = g.beta;
    } else {
      fill_rows<<<grid_for(g.M * g.N), kThreads, 0, l.stream>>>(y, bias, g.M, g.N);
      check_launch(l.op);
      beta = 1.f;
    }
  }
  return vendor::gemm(l.stream, g.tA, g.tB, g.M, g.N, g.K, g.alpha, a, g.lda, g.sa, b, g.ldb, g.sb, beta, y, g.M * g.N,
                      batch);
}

// Element (r, c) of a row-major matrix with rows of ld, or of its transpose.
// (batch z at stride sz: 0 for a shared operand)
struct LoadMat {
  const float* p;
  int64_t ld, sz;
  bool t;
  __device__ float operator()(int64_t z, int64_t r, int64_t c) const {
    return t ? p[z * sz + c * ld + r] : p[z * sz + r * ld + c];
  }
};
struct StoreGemm {
  float* y;
  const float *c, *bias;
  float alpha, beta;
  int64_t M, N;
  __device__ void operator()(int64_t z, int64_t m, int64_t n, float acc) const {
    float v = alpha * acc;
    if (c) v += beta * c[m * N + n];
    if (bias) v += bias[n];
    y[(z * M + m) * N + n] = v;
  }
};

void launch(const Launch& l, int64_t batch, const GemmArgs& g, const float* a, const float* b, const float* c,
            const float* bias, float* y) {
  if (batch == 0 || g.M == 0 || g.N == 0) return;
  if (g.K > 0 && launch_vendor(l, batch, g, a, b, c, bias, y)) return;
  const Precision p = precision();
  if (p != Precision::fp32) {
    launch_mma_gemm(l.op, l.stream, p == Precision::bf16, g.M, g.N, g.K, LoadMat{a, g.lda, g.sa, g.tA},
                    LoadMat{b, g.ldb, g.sb, g.tB}, StoreGemm{y, c, bias, g.alpha, g.beta, g.M, g.N}, batch);
    return;
  }
  const dim3 grid(static_cast<unsigned>((g.N + BN - 1) / BN), static_cast<unsigned>((g.M + BM - 1) / BM),
                  static_cast<unsigned>(batch));
  if (grid.y > 65535 || grid.z > 65535)
    throw CuError(std::string(l.op) + ": too many rows (" + std::to_string(g.M) + ") or batches (" +
                  std::to_string(batch) + ") for one launch");
  sgemm_tiled<<<grid, 256, 0, l.stream>>>(a, b, c, bias, y, g);
  check_launch(l.op);
}

// The matrix sizes of matmul / gemm from the stored shapes (checked by the op's infer on the host).
GemmArgs dims(const Launch& l) {
  const tdq_cu_tensor &a = l.in[0], &b = l.in[1];
  GemmArgs g{};
  g.tA = l.flag("transA", false);
  g.tB = l.flag("transB", false);
  const int64_t ar = a.shape[a.ndim - 2], ac = a.shape[a.ndim - 1];
  const int64_t br = b.shape[b.ndim - 2], bc = b.shape[b.ndim - 1];
  g.M = g.tA ? ac : ar;
  g.K = g.tA ? ar : ac;
  g.N = g.tB ? br : bc;
  g.lda = ac;
  g.ldb = bc;
  g.alpha = 1.f;
  g.beta = 0.f;
  return g;
}

void matmul_op(const Launch& l) {
  GemmArgs g = dims(l);
  const tdq_cu_tensor &a = l.in[0], &b = l.in[1];
  int64_t batch = 1;
  if (a.ndim == 3 || b.ndim == 3) batch = a.ndim == 3 ? a.shape[0] : b.shape[0];
  g.sa = a.ndim == 3 ? g.M * g.K : 0;
  g.sb = b.ndim == 3 ? g.K * g.N : 0;
  launch(l, batch, g, l.fin(0), l.fin(1), nullptr, nullptr, l.fout(0));
}

void gemm_op(const Launch& l) {
  GemmArgs g = dims(l);
  g.alpha = static_cast<float>(l.num("alpha", 1));
  g.beta = static_cast<float>(l.num("beta", 0));
  // Without c, or with beta == 0, c is never read (as BLAS and the CPU op).
  const float* c = l.has_in(2) && g.beta != 0.f ? l.fin(2) : nullptr;
  launch(l, 1, g, l.fin(0), l.fin(1), c, nullptr, l.fout(0));
}

void linear_op(const Launch& l) {
  const tdq_cu_tensor& w = l.in[1];
  GemmArgs g{};
  g.N = w.shape[0];
  g.K = w.shape[1];
  g.M = g.N ? numel(l.out[0]) / g.N : 0;
  g.lda = g.K;
  g.ldb = g.K;
  g.tB = true;
  g.alpha = 1.f;
  launch(l, 1, g, l.fin(0), l.fin(1), nullptr, l.fin(2), l.fout(0));
}

}  // namespace

TDQ_CU_OP("gemm", gemm_op);
TDQ_CU_OP("matmul", matmul_op);
TDQ_CU_OP("linear", linear_op);

}  // namespace tdqcu
