// affine (s * x + t), lincomb (sum_k c_k x_k) and the unary maths sqrt,
// square, sin, cos, as the CPU ops (native/cpu/elementwise.cpp). Products and
// sums are rounded one at a time (no FMA), as the CPU reference does.
#include "common.cuh"

namespace tdqcu {
namespace {

enum class Un { sqrt, square, sin, cos };
template <Un U> __device__ inline float un(float x) {
  if constexpr (U == Un::sqrt) return __fsqrt_rn(x);
  else if constexpr (U == Un::square) return __fmul_rn(x, x);
  else if constexpr (U == Un::sin) return sinf(x);
  else return cosf(x);
}
template <Un U> __global__ void unary_kernel(const float* x, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) y[i] = un<U>(x[i]);
}
template <Un U> void unary_op(const Launch& l) {
  const int64_t n = numel(l.out[0]);
  if (n == 0) return;
  unary_kernel<U><<<grid_for(n), kThreads, 0, l.stream>>>(l.fin(0), l.fout(0), n);
  check_launch(l.op);
}

__global__ void affine_kernel(const float* x, float* y, int64_t n, float s, float t) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __fadd_rn(__fmul_rn(s, x[i]), t);
}
void affine_op(const Launch& l) {
  const int64_t n = numel(l.out[0]);
  if (n == 0) return;
  affine_kernel<<<grid_for(n), kThreads, 0, l.stream>>>(l.fin(0), l.fout(0), n, static_cast<float>(l.num("scale", 1)),
                                                       static_cast<float>(l.num("shift", 0)));
  check_launch(l.op);
}

// Up to 16 inputs (the CPU op's limit), passed by value.
struct LinComb {
  const float* x[16];
  float c[16];
  int k;
};
__global__ void lincomb_kernel(LinComb lc, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float acc = __fmul_rn(lc.c[0], lc.x[0][i]);
    for (int k = 1; k < lc.k; ++k) acc = __fadd_rn(acc, __fmul_rn(lc.c[k], lc.x[k][i]));
    y[i] = acc;
  }
}
void lincomb_op(const Launch& l) {
  const std::vector<double> c = l.nums("coeffs");
  if (l.nin < 1 || l.nin > 16 || static_cast<int>(c.size()) != l.nin)
    throw CuError(std::string(l.op) + ": " + std::to_string(l.nin) + " tensors (1 to 16) but " + std::to_string(c.size()) + " coeffs");
  LinComb lc{};
  lc.k = l.nin;
  for (int k = 0; k < l.nin; ++k) lc.x[k] = l.fin(k), lc.c[k] = static_cast<float>(c[k]);
  const int64_t n = numel(l.out[0]);
  if (n == 0) return;
  lincomb_kernel<<<grid_for(n), kThreads, 0, l.stream>>>(lc, l.fout(0), n);
  check_launch(l.op);
}

}  // namespace

TDQ_CU_OP("sqrt", unary_op<Un::sqrt>);
TDQ_CU_OP("square", unary_op<Un::square>);
TDQ_CU_OP("sin", unary_op<Un::sin>);
TDQ_CU_OP("cos", unary_op<Un::cos>);
TDQ_CU_OP("affine", affine_op);
TDQ_CU_OP("lincomb", lincomb_op);

}  // namespace tdqcu
