// cuBLAS and cuDNN, loaded at run time (vendor.cu) where present: the
// libraries are not needed to build or to run the backend. Each entry point
// returns false when the library is absent, failed to load, or is switched
// off (option "kernels" = "own", or env TDQ_CUDA_KERNELS=own); the caller then
// runs its own kernel. Errors of a loaded library throw CuError.
#pragma once
#include <string>

#include "common.cuh"

namespace tdqcu {

// Matmul / convolution arithmetic (option "precision", env TDQ_CUDA_PRECISION):
// fp32; or operands rounded to fp16 / bf16 with fp32 accumulation (tensors
// stay float32 at the interface; tensor cores).
enum class Precision { fp32, fp16, bf16 };
Precision precision();
const char* precision_name(Precision p);

// The integer GEMM of qlinear / qconv2d (option "int8", env TDQ_CUDA_INT8):
// WMMA on the 8-bit tensor cores (default) or dp4a; both exact, same results.
enum class Int8Kernel { wmma, dp4a };
Int8Kernel int8_kernel();

namespace vendor {

bool enabled();  // the "kernels" option allows cuBLAS / cuDNN
// One line: what was loaded from where, or why not.
std::string describe();

// Row-major, batched: C_b (M, N) = alpha op(A_b) op(B_b) + beta C_b, op(A) (M, K),
// op(B) (K, N); lda / ldb the row lengths of A / B as stored, sa / sb / sc
// batch strides (0: shared). Precision as precision().
bool gemm(cudaStream_t s, bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          int64_t sa, const float* B, int64_t ldb, int64_t sb, float beta, float* C, int64_t sc, int64_t batch);

struct ConvGeom {
  int64_t N, C, H, W, O, kh, kw, stride, pad, Ho, Wo;
};
// y = conv(x, w) (NCHW, OIHW; no bias); gx = conv_transpose(gy, w); gw = corr(x, gy).
bool conv_forward(cudaStream_t s, const ConvGeom& g, const float* x, const float* w, float* y);
bool conv_backward_data(cudaStream_t s, const ConvGeom& g, const float* gy, const float* w, float* gx);
bool conv_backward_filter(cudaStream_t s, const ConvGeom& g, const float* gy, const float* x, float* gw);

}  // namespace vendor

// fp32 -> fp16 / bf16 copies (elementwise.cu's cast kernels), into raw 2-byte buffers.
void round_to_half(cudaStream_t s, const float* x, void* out, int64_t n, Precision p);
void widen_half(cudaStream_t s, const void* x, float* out, int64_t n, Precision p);

}  // namespace tdqcu
