// Shared by the CUDA backend's kernels: the launch context an op gets (its
// tensors and attributes as passed through the C interface), error checks,
// the op table, and scratch memory from the caching allocator.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "../tdq_cuda_api.h"

namespace tdqcu {

struct CuError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

#define TDQ_CU_CHECK(expr)                                                                          \
  do {                                                                                              \
    cudaError_t e_ = (expr);                                                                        \
    if (e_ != cudaSuccess) throw ::tdqcu::CuError(std::string(#expr) + ": " + cudaGetErrorString(e_)); \
  } while (0)

// After a kernel launch: a bad configuration shows up here, a fault in the
// kernel at the next synchronisation.
inline void check_launch(const char* what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw CuError(std::string(what) + ": kernel launch failed: " + cudaGetErrorString(e));
}

inline int64_t numel(const tdq_cu_tensor& t) {
  int64_t n = 1;
  for (int i = 0; i < t.ndim; ++i) n *= t.shape[i];
  return n;
}

struct Launch {
  const char* op;
  const tdq_cu_tensor* in;
  int nin;
  const tdq_cu_tensor* out;
  int nout;
  const tdq_cu_attr* attrs;
  int nattrs;
  cudaStream_t stream;

  const tdq_cu_attr* find(const char* k) const {
    for (int i = 0; i < nattrs; ++i)
      if (std::string(attrs[i].key) == k) return &attrs[i];
    return nullptr;
  }
  bool has(const char* k) const { return find(k) != nullptr; }
  double num(const char* k, double dflt) const {
    const tdq_cu_attr* a = find(k);
    return a && (a->kind == TDQ_CU_ATTR_NUM || a->kind == TDQ_CU_ATTR_BOOL) ? a->num : dflt;
  }
  int64_t integer(const char* k, int64_t dflt) const { return static_cast<int64_t>(num(k, static_cast<double>(dflt))); }
  bool flag(const char* k, bool dflt) const { return num(k, dflt ? 1.0 : 0.0) != 0.0; }
  std::string str(const char* k, const std::string& dflt) const {
    const tdq_cu_attr* a = find(k);
    return a && a->kind == TDQ_CU_ATTR_STR && a->str ? std::string(a->str) : dflt;
  }
  std::vector<double> nums(const char* k) const {
    const tdq_cu_attr* a = find(k);
    if (!a) return {};
    if (a->kind == TDQ_CU_ATTR_NUM) return {a->num};
    if (a->kind != TDQ_CU_ATTR_NUMS) return {};
    return std::vector<double>(a->nums, a->nums + a->n_nums);
  }
  bool has_in(int i) const { return i < nin && in[i].data != nullptr; }
  const float* fin(int i) const { return has_in(i) ? static_cast<const float*>(in[i].data) : nullptr; }
  float* fout(int i) const { return static_cast<float*>(out[i].data); }
};

// The backend's one stream (runtime.cu), for work outside an op launch.
cudaStream_t backend_stream();

using OpFn = void (*)(const Launch&);
void register_op(const char* name, OpFn fn);
struct OpReg {
  OpReg(const char* name, OpFn fn) { register_op(name, fn); }
};
#define TDQ_CU_CONCAT_(a, b) a##b
#define TDQ_CU_CONCAT(a, b) TDQ_CU_CONCAT_(a, b)
#define TDQ_CU_OP(name, fn) static ::tdqcu::OpReg TDQ_CU_CONCAT(tdq_cu_op_, __LINE__)(name, fn)

// Device scratch from the caching allocator, freed (back to the cache) on
// scope exit; the stream orders its reuse after the kernels that used it.
void* cache_alloc(size_t bytes);
void cache_free(void* p);
struct Scratch {
  void* p = nullptr;
  explicit Scratch(size_t bytes) : p(bytes ? cache_alloc(bytes) : nullptr) {}
  ~Scratch() {
    if (p) cache_free(p);
  }
  template <typename T> T* as() const { return static_cast<T*>(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

constexpr int kThreads = 256;
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(b, int64_t{1} << 20)));
}

// Block-wide sum (blockDim.x a multiple of 32, at most 1024); every thread gets it.
template <typename T> __device__ inline T block_sum(T v) {
  __shared__ T part[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  const int nw = blockDim.x >> 5;
  T t = lane < nw ? part[lane] : T(0);
  for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
  return t;
}
__device__ inline float block_max(float v) {
  __shared__ float part[32];
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  const int nw = blockDim.x >> 5;
  float t = lane < nw ? part[lane] : -INFINITY;
  for (int o = 16; o > 0; o >>= 1) t = fmaxf(t, __shfl_xor_sync(0xffffffffu, t, o));
  return t;
}

// The shared tile GEMM step of gemm.cu, conv2d.cu and conv2d_backward.cu:
// acc (4 x 4 per thread) += As[:, ty*4 ..] x Bs[:, tx*4 ..] over the BK rows
// of one K step (As and Bs k-major in shared memory, padded rows).
template <int BK, int LDA, int LDB>
__device__ __forceinline__ void tile_fma_4x4(const float (&As)[BK][LDA], const float (&Bs)[BK][LDB], int ty, int tx,
                                             float (&acc)[4][4]) {
#pragma unroll
  for (int kk = 0; kk < BK; ++kk) {
    float a[4], b[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = As[kk][ty * 4 + i], b[i] = Bs[kk][tx * 4 + i];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
  }
}

}  // namespace tdqcu
