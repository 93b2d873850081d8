// add / sub / mul / div with NumPy broadcasting, and the activations silu and
// gelu (erf and tanh forms) with their backward, as the CPU ops of the same
// names (native/cpu/elementwise.cpp, activation.cpp).
#include "common.cuh"

namespace tdqcu {
namespace {

enum class Bin { add, sub, mul, div };

template <Bin B> __device__ inline float bin(float x, float y) {
  if constexpr (B == Bin::add) return x + y;
  else if constexpr (B == Bin::sub) return x - y;
  else if constexpr (B == Bin::mul) return x * y;
  else return x / y;
}

struct Bcast {
  int nd;
  int64_t shape[TDQ_CUDA_MAX_DIMS];
  int64_t sa[TDQ_CUDA_MAX_DIMS], sb[TDQ_CUDA_MAX_DIMS];
};

template <Bin B> __global__ void binary_same(const float* a, const float* b, float* o, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    o[i] = bin<B>(a[i], b[i]);
}

template <Bin B> __global__ void binary_bcast(const float* a, const float* b, float* o, int64_t n, Bcast bc) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t rem = i, oa = 0, ob = 0;
    for (int d = bc.nd - 1; d >= 0; --d) {
      const int64_t idx = rem % bc.shape[d];
      rem /= bc.shape[d];
      oa += idx * bc.sa[d];
      ob += idx * bc.sb[d];
    }
    o[i] = bin<B>(a[oa], b[ob]);
  }
}

// Element strides of t laid over the output shape (0 on broadcast dims).
void strides_over(const tdq_cu_tensor& t, const tdq_cu_tensor& out, int64_t* st) {
  int64_t acc = 1;
  for (int d = out.ndim - 1; d >= 0; --d) {
    const int td = d - (out.ndim - t.ndim);
    if (td < 0) {
      st[d] = 0;
      continue;
    }
    st[d] = t.shape[td] == 1 ? 0 : acc;
    acc *= t.shape[td];
  }
}

template <Bin B> void binary_op(const Launch& l) {
  const tdq_cu_tensor &a = l.in[0], &b = l.in[1], &o = l.out[0];
  const int64_t n = numel(o);
  if (n == 0) return;
  bool same = a.ndim == b.ndim && numel(a) == n && numel(b) == n;
  for (int d = 0; same && d < a.ndim; ++d) same = a.shape[d] == b.shape[d];
  if (same) {
    binary_same<B><<<grid_for(n), kThreads, 0, l.stream>>>(l.fin(0), l.fin(1), l.fout(0), n);
  } else {
    Bcast bc{};
    bc.nd = o.ndim;
    for (int d = 0; d < o.ndim; ++d) bc.shape[d] = o.shape[d];
    strides_over(a, o, bc.sa);
    strides_over(b, o, bc.sb);
    if (bc.nd == 0) bc.nd = 1, bc.shape[0] = 1, bc.sa[0] = bc.sb[0] = 0;
    binary_bcast<B><<<grid_for(n), kThreads, 0, l.stream>>>(l.fin(0), l.fin(1), l.fout(0), n, bc);
  }
  check_launch(l.op);
}

// ---- activations ------------------------------------------------------------------
enum class Act { silu, gelu_erf, gelu_tanh };
constexpr float kSqrt1_2 = 0.70710678118654752f, kInvSqrt2Pi = 0.39894228040143268f,
                kSqrt2OverPi = 0.79788456080286536f, kGeluC = 0.044715f;

template <Act A> __device__ inline float act_f(float x) {
  if constexpr (A == Act::silu) return x / (1.0f + expf(-x));
  else if constexpr (A == Act::gelu_erf) return 0.5f * x * erfcf(-x * kSqrt1_2);
  else {
    const float u = kSqrt2OverPi * (x + kGeluC * x * x * x);
    return x / (1.0f + expf(-2.0f * u));  // 0.5 x (1 + tanh u) = x sigmoid(2u)
  }
}
template <Act A> __device__ inline float act_df(float x) {
  if constexpr (A == Act::silu) {
    const float s = 1.0f / (1.0f + expf(-x));
    return s * (1.0f + x * (1.0f - s));
  } else if constexpr (A == Act::gelu_erf) {
    return 0.5f * erfcf(-x * kSqrt1_2) + x * kInvSqrt2Pi * expf(-0.5f * x * x);
  } else {
    const float u = kSqrt2OverPi * (x + kGeluC * x * x * x);
    const float t = tanhf(u);
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * kGeluC * x * x);
  }
}

template <Act A> __global__ void act_fwd(const float* x, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = act_f<A>(x[i]);
}
template <Act A> __global__ void act_bwd(const float* gy, const float* x, float* gx, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    gx[i] = gy[i] * act_df<A>(x[i]);
}

template <Act A> void run_act(const Launch& l, bool backward) {
  const int64_t n = numel(l.out[0]);
  if (n == 0) return;
  if (backward) act_bwd<A><<<grid_for(n), kThreads, 0, l.stream>>>(l.fin(0), l.fin(1), l.fout(0), n);
  else act_fwd<A><<<grid_for(n), kThreads, 0, l.stream>>>(l.fin(0), l.fout(0), n);
  check_launch(l.op);
}
void gelu_any(const Launch& l, bool backward) {
  if (l.str("approximate", "none") == "tanh") run_act<Act::gelu_tanh>(l, backward);
  else run_act<Act::gelu_erf>(l, backward);
}

}  // namespace

TDQ_CU_OP("add", binary_op<Bin::add>);
TDQ_CU_OP("sub", binary_op<Bin::sub>);
TDQ_CU_OP("mul", binary_op<Bin::mul>);
TDQ_CU_OP("div", binary_op<Bin::div>);
TDQ_CU_OP("silu", [](const Launch& l) { run_act<Act::silu>(l, false); });
TDQ_CU_OP("silu_backward", [](const Launch& l) { run_act<Act::silu>(l, true); });
TDQ_CU_OP("gelu", [](const Launch& l) { gelu_any(l, false); });
TDQ_CU_OP("gelu_backward", [](const Launch& l) { gelu_any(l, true); });

}  // namespace tdqcu
