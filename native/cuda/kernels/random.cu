// full, rand, randn and dropout / dropout_backward, as the CPU ops of the same
// names (native/cpu/random.cpp, dropout.cpp). The random ones call the CPU's
// own Philox functions (native/core/philox.h, compiled for the device too):
// element i uses counter offset + i under key seed, so a seeded tensor has
// the same bits on both devices.
#include <cstring>

#include "../../core/half.h"
#include "../../core/philox.h"
#include "common.cuh"

namespace tdqcu {
namespace {


// Fills n elements of `bytes` bytes each with one bit pattern.
template <typename T> __global__ void fill_kernel(T* y, T v, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) y[i] = v;
}

// full(; shape, dtype, value): the value converted on the host as the CPU op does.
void full_op(const Launch& l) {
  const tdq_cu_tensor& y = l.out[0];
  const int64_t n = numel(y);
  if (n == 0) return;
  const double v = l.num("value", 0);
  switch (y.dtype) {
    case 0: fill_kernel<float><<<grid_for(n), kThreads, 0, l.stream>>>(static_cast<float*>(y.data), static_cast<float>(v), n); break;
    case 1: fill_kernel<uint16_t><<<grid_for(n), kThreads, 0, l.stream>>>(static_cast<uint16_t*>(y.data), tdq::float_to_half(static_cast<float>(v)), n); break;
    case 2: fill_kernel<int8_t><<<grid_for(n), kThreads, 0, l.stream>>>(static_cast<int8_t*>(y.data), static_cast<int8_t>(v), n); break;
    case 3: fill_kernel<uint8_t><<<grid_for(n), kThreads, 0, l.stream>>>(static_cast<uint8_t*>(y.data), static_cast<uint8_t>(v), n); break;
    case 4: fill_kernel<int32_t><<<grid_for(n), kThreads, 0, l.stream>>>(static_cast<int32_t*>(y.data), static_cast<int32_t>(v), n); break;
    default: throw CuError(std::string(l.op) + ": unknown dtype code " + std::to_string(y.dtype));
  }
  check_launch(l.op);
}

// rand: low + (high - low) * u, randn: mean + std * z, as random_cpu.
template <bool Normal>
__global__ void random_kernel(float* y, int64_t n, uint64_t seed, uint64_t offset, float shift, float width) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float r = Normal ? tdq::philox_normal(seed, offset + static_cast<uint64_t>(i))
                           : tdq::philox_uniform(seed, offset + static_cast<uint64_t>(i));
    y[i] = __fadd_rn(shift, __fmul_rn(width, r));  // no FMA: the CPU rounds the product first
  }
}

template <bool Normal> void random_op(const Launch& l) {
  const int64_t n = numel(l.out[0]);
  if (n == 0) return;
  const uint64_t seed = static_cast<uint64_t>(l.num("seed", 0)), offset = static_cast<uint64_t>(l.num("offset", 0));
  const float scale = static_cast<float>(l.num(Normal ? "std" : "high", 1.0));
  const float shift = static_cast<float>(l.num(Normal ? "mean" : "low", 0.0));
  const float width = Normal ? scale : scale - shift;
  random_kernel<Normal><<<grid_for(n), kThreads, 0, l.stream>>>(l.fout(0), n, seed, offset, shift, width);
  check_launch(l.op);
}

// dropout and its backward are one map: v * keep * scale, keep = (u >= p).
__global__ void dropout_kernel(const float* x, float* y, int64_t n, uint64_t seed, uint64_t offset, float p, float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const bool keep = tdq::philox_uniform(seed, offset + static_cast<uint64_t>(i)) >= p;
    y[i] = keep ? x[i] * scale : 0.f;
  }
}

void dropout_op(const Launch& l) {
  const int64_t n = numel(l.out[0]);
  if (n == 0) return;
  const double pd = l.num("p", 0);
  if (pd >= 1.0) {
    TDQ_CU_CHECK(cudaMemsetAsync(l.fout(0), 0, static_cast<size_t>(n) * sizeof(float), l.stream));
    return;
  }
  const uint64_t seed = static_cast<uint64_t>(l.num("seed", 0)), offset = static_cast<uint64_t>(l.num("offset", 0));
  dropout_kernel<<<grid_for(n), kThreads, 0, l.stream>>>(l.fin(0), l.fout(0), n, seed, offset, static_cast<float>(pd),
                                                        static_cast<float>(1.0 / (1.0 - pd)));
  check_launch(l.op);
}

}  // namespace

TDQ_CU_OP("full", full_op);
TDQ_CU_OP("rand", random_op<false>);
TDQ_CU_OP("randn", random_op<true>);
TDQ_CU_OP("dropout", dropout_op);
TDQ_CU_OP("dropout_backward", dropout_op);

}  // namespace tdqcu
