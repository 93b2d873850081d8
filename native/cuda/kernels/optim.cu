// adam_step, grad_norm_sq and clip_scale_, as the CPU ops (native/cpu/optim.cpp).
// adam_step and clip_scale_ update their inputs in place and have no outputs.
// Adam's scalars are computed on the host in double exactly as the CPU op does
// and its update is rounded one operation at a time (no FMA), so a step gives
// the CPU's bits. grad_norm_sq sums squares in double over the CPU's fixed
// blocks and adds the block sums in a fixed order: the same result every run.
#include <cmath>

#include "common.cuh"

namespace tdqcu {
namespace {

struct AdamScalars {
  float b1, omb1, b2, omb2, eps, wd, decay, step_size, bc2_sqrt;
};

AdamScalars adam_scalars(const Launch& l) {
  const double lr = l.num("lr", 0), beta1 = l.num("beta1", 0.9), beta2 = l.num("beta2", 0.999);
  const double wd = l.num("weight_decay", 0), step = static_cast<double>(l.integer("step", 1));
  const bool decoupled = l.flag("decoupled", false);
  AdamScalars s;
  s.b1 = static_cast<float>(beta1);
  s.omb1 = static_cast<float>(1 - beta1);
  s.b2 = static_cast<float>(beta2);
  s.omb2 = static_cast<float>(1 - beta2);
  s.eps = static_cast<float>(l.num("eps", 1e-8));
  s.wd = static_cast<float>(decoupled ? 0.0 : wd);
  s.decay = static_cast<float>(decoupled ? 1 - lr * wd : 1.0);
  s.step_size = static_cast<float>(lr / (1 - std::pow(beta1, step)));
  s.bc2_sqrt = static_cast<float>(std::sqrt(1 - std::pow(beta2, step)));
  return s;
}

__global__ void adam_kernel(AdamScalars s, float* p, const float* g, float* m, float* v, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float pi = __fmul_rn(p[i], s.decay);
    const float gi = __fadd_rn(g[i], __fmul_rn(s.wd, pi));
    const float mi = __fadd_rn(__fmul_rn(s.b1, m[i]), __fmul_rn(s.omb1, gi));
    const float vi = __fadd_rn(__fmul_rn(s.b2, v[i]), __fmul_rn(s.omb2, __fmul_rn(gi, gi)));
    m[i] = mi;
    v[i] = vi;
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bc2_sqrt), s.eps);
    p[i] = __fsub_rn(pi, __fmul_rn(s.step_size, __fdiv_rn(mi, denom)));
  }
}

// adam_step(param, grad, exp_avg, exp_avg_sq; lr, beta1, beta2, eps, weight_decay, decoupled, step)
void adam_op(const Launch& l) {
  const int64_t n = numel(l.in[0]);
  if (n == 0) return;
  float* p = static_cast<float*>(l.in[0].data);
  float* m = static_cast<float*>(l.in[2].data);
  float* v = static_cast<float*>(l.in[3].data);
  adam_kernel<<<grid_for(n), kThreads, 0, l.stream>>>(adam_scalars(l), p, l.fin(1), m, v, n);
  check_launch(l.op);
}

// ---- blocks of many tensors ---------------------------------------------------
// The inputs [first, nin) cut into blocks of at most kBlock elements (the CPU's
// kNormBlock), listed on the device: one CUDA block each.
constexpr int64_t kBlock = 1 << 15;
struct Piece {
  float* x;
  int64_t n;
};
struct Pieces {
  std::vector<Piece> host;
  Scratch dev;
  Pieces(const Launch& l, int first) : host(collect(l, first)), dev(host.size() * sizeof(Piece)) {
    // From pageable memory: the copy has read `host` when it returns.
    if (!host.empty())
      TDQ_CU_CHECK(cudaMemcpyAsync(dev.p, host.data(), host.size() * sizeof(Piece), cudaMemcpyHostToDevice, l.stream));
  }
  static std::vector<Piece> collect(const Launch& l, int first) {
    std::vector<Piece> v;
    for (int k = first; k < l.nin; ++k) {
      const int64_t n = numel(l.in[k]);
      for (int64_t o = 0; o < n; o += kBlock) v.push_back({static_cast<float*>(l.in[k].data) + o, std::min(kBlock, n - o)});
    }
    return v;
  }
};

__global__ void sum_sq_blocks(const Piece* pieces, double* part) {
  const Piece pc = pieces[blockIdx.x];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < pc.n; i += blockDim.x) acc += static_cast<double>(pc.x[i]) * pc.x[i];
  acc = block_sum(acc);
  if (threadIdx.x == 0) part[blockIdx.x] = acc;
}
__global__ void sum_parts(const double* part, int64_t n, float* out) {
  double acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += part[i];
  acc = block_sum(acc);
  if (threadIdx.x == 0) out[0] = static_cast<float>(acc);
}

// grad_norm_sq(x0, ..., xk) -> () float32: the sum of squares of all elements.
void grad_norm_sq_op(const Launch& l) {
  Pieces pcs(l, 0);
  const int64_t nb = static_cast<int64_t>(pcs.host.size());
  if (nb == 0) {
    TDQ_CU_CHECK(cudaMemsetAsync(l.fout(0), 0, sizeof(float), l.stream));
    return;
  }
  Scratch part(static_cast<size_t>(nb) * sizeof(double));
  sum_sq_blocks<<<static_cast<unsigned>(nb), kThreads, 0, l.stream>>>(pcs.dev.as<Piece>(), part.as<double>());
  check_launch(l.op);
  sum_parts<<<1, 1024, 0, l.stream>>>(part.as<double>(), nb, l.fout(0));
  check_launch(l.op);
}

// clip_scale_(norm, g0, ..., gk; max_norm): g *= max_norm / (norm + 1e-6) where that is below 1
// (or NaN), read from the device scalar `norm` without a copy to the host.
__global__ void clip_scale_blocks(const Piece* pieces, const float* norm, float max_norm) {
  const float coef = max_norm / (norm[0] + 1e-6f);
  if (!(coef < 1.0f) && !isnan(coef)) return;
  const Piece pc = pieces[blockIdx.x];
  for (int64_t i = threadIdx.x; i < pc.n; i += blockDim.x) pc.x[i] *= coef;
}

void clip_scale_op(const Launch& l) {
  Pieces pcs(l, 1);
  if (pcs.host.empty()) return;
  clip_scale_blocks<<<static_cast<unsigned>(pcs.host.size()), kThreads, 0, l.stream>>>(
      pcs.dev.as<Piece>(), l.fin(0), static_cast<float>(l.num("max_norm", 1)));
  check_launch(l.op);
}

}  // namespace

TDQ_CU_OP("adam_step", adam_op);
TDQ_CU_OP("grad_norm_sq", grad_norm_sq_op);
TDQ_CU_OP("clip_scale_", clip_scale_op);

}  // namespace tdqcu
