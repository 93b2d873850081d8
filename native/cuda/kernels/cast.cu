// cast(x; dtype) as native/cpu/cast.cpp: float32 <-> float16 (round to
// nearest even), any -> float32, float -> int8 / uint8 / int32 saturating and
// truncating toward zero (NaN -> 0), a copy when the dtype is unchanged.
// (float -> int32 at exactly 2^31 saturates to 2^31 - 1 here; the CPU's C
// cast gives -2^31 there.)
// Also the fp32 <-> fp16 / bf16 copies of the reduced-precision matmuls and
// convolutions (vendor.cuh).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "vendor.cuh"

namespace tdqcu {

namespace {

enum : int { kF32 = 0, kF16 = 1, kI8 = 2, kU8 = 3, kI32 = 4 };

__device__ __forceinline__ float load_as_float(const void* p, int dt, int64_t i) {
  switch (dt) {
    case kF16: return __half2float(static_cast<const __half*>(p)[i]);
    case kI8: return static_cast<const int8_t*>(p)[i];
    case kU8: return static_cast<const uint8_t*>(p)[i];
    case kI32: return static_cast<float>(static_cast<const int32_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

__device__ __forceinline__ float sat(float v, float lo, float hi) { return v != v ? 0.f : fminf(fmaxf(v, lo), hi); }

__global__ void cast_kernel(const void* x, int dx, void* y, int dy, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = load_as_float(x, dx, i);
    switch (dy) {
      case kF32: static_cast<float*>(y)[i] = v; break;
      case kF16: static_cast<__half*>(y)[i] = __float2half_rn(v); break;
      case kI8: static_cast<int8_t*>(y)[i] = static_cast<int8_t>(sat(v, -128.f, 127.f)); break;
      case kU8: static_cast<uint8_t*>(y)[i] = static_cast<uint8_t>(sat(v, 0.f, 255.f)); break;
      case kI32: static_cast<int32_t*>(y)[i] = __float2int_rz(sat(v, -2147483648.f, 2147483648.f)); break;
    }
  }
}

size_t dsize(int dt) { return dt == kF32 || dt == kI32 ? 4 : dt == kF16 ? 2 : 1; }

void cast_op(const Launch& l) {
  const tdq_cu_tensor &x = l.in[0], &y = l.out[0];
  const int64_t n = numel(x);
  if (n == 0) return;
  if (x.dtype == y.dtype) {
    TDQ_CU_CHECK(cudaMemcpyAsync(y.data, x.data, static_cast<size_t>(n) * dsize(x.dtype), cudaMemcpyDeviceToDevice,
                                 l.stream));
    return;
  }
  cast_kernel<<<grid_for(n), kThreads, 0, l.stream>>>(x.data, x.dtype, y.data, y.dtype, n);
  check_launch(l.op);
}

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

TDQ_CU_OP("cast", cast_op);

}  // namespace tdqcu
