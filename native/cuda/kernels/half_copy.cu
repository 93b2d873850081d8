// The fp32 <-> fp16 / bf16 copies of the reduced-precision matmuls and
// convolutions (vendor.cuh). The `cast` op itself is in copy_ops.cu.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "vendor.cuh"

namespace tdqcu {

namespace {

template <typename H> __global__ void to_half_kernel(const float* x, H* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = static_cast<H>(x[i]);
}
template <typename H> __global__ void from_half_kernel(const H* x, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = static_cast<float>(x[i]);
}

}  // namespace

void round_to_half(cudaStream_t s, const float* x, void* out, int64_t n, Precision p) {
  if (n <= 0) return;
  if (p == Precision::bf16) to_half_kernel<<<grid_for(n), kThreads, 0, s>>>(x, static_cast<__nv_bfloat16*>(out), n);
  else to_half_kernel<<<grid_for(n), kThreads, 0, s>>>(x, static_cast<__half*>(out), n);
  check_launch("round_to_half");
}

void widen_half(cudaStream_t s, const void* x, float* out, int64_t n, Precision p) {
  if (n <= 0) return;
  if (p == Precision::bf16)
    from_half_kernel<<<grid_for(n), kThreads, 0, s>>>(static_cast<const __nv_bfloat16*>(x), out, n);
  else from_half_kernel<<<grid_for(n), kThreads, 0, s>>>(static_cast<const __half*>(x), out, n);
  check_launch("widen_half");
}


}  // namespace tdqcu
