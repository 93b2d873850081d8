// avg_pool2d(_padded) and upsample_nearest2x with their backward, as the CPU
// ops (native/cpu/avg_pool_pad.cpp, upsample.cpp): one thread per output
// element, summing in the CPU's order, so the results have the CPU's bits.
#include "common.cuh"

namespace tdqcu {
namespace {

struct Pool {
  int64_t k, s, p;
  bool include_pad;
};

// Output o along an axis of length n: the clipped input range [lo, hi) and its divisor count.
struct Span {
  int64_t lo, hi, count;
};
__device__ inline Span span(const Pool& p, int64_t n, int64_t o) {
  const int64_t start = o * p.s - p.p, end = min(start + p.k, n + p.p);
  Span sp{max(start, int64_t{0}), min(end, n), 0};
  sp.count = p.include_pad ? end - start : sp.hi - sp.lo;
  return sp;
}
// The outputs [first, last] whose windows cover input position q.
__device__ inline void covering(int64_t q, const Pool& p, int64_t n_out, int64_t& first, int64_t& last) {
  const int64_t t = q + p.p;
  first = t < p.k ? 0 : (t - p.k) / p.s + 1;
  last = min(t / p.s, n_out - 1);
}

// (N, C, H, W) -> (N, C, Ho, Wo)
__global__ void avg_pool_fwd(const float* x, float* y, int64_t n, int64_t h, int64_t w, int64_t ho, int64_t wo, Pool p) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = i % wo, r = (i / wo) % ho, plane = i / (wo * ho);
    const Span si = span(p, h, r), sj = span(p, w, j);
    const float* src = x + plane * h * w;
    float acc = 0.f;
    for (int64_t u = si.lo; u < si.hi; ++u)
      for (int64_t v = sj.lo; v < sj.hi; ++v) acc += src[u * w + v];
    y[i] = acc / static_cast<float>(si.count * sj.count);
  }
}

// gy (N, C, Ho, Wo) -> gx (N, C, H, W): each input pixel gathers from the windows covering it.
__global__ void avg_pool_bwd(const float* gy, float* gx, int64_t n, int64_t h, int64_t w, int64_t ho, int64_t wo, Pool p) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = e % w, q = (e / w) % h, plane = e / (w * h);
    int64_t i0, i1, j0, j1;
    covering(q, p, ho, i0, i1);
    covering(t, p, wo, j0, j1);
    const float* g = gy + plane * ho * wo;
    float acc = 0.f;
    for (int64_t i = i0; i <= i1; ++i) {
      const int64_t ci = span(p, h, i).count;
      for (int64_t j = j0; j <= j1; ++j) acc += g[i * wo + j] / static_cast<float>(ci * span(p, w, j).count);
    }
    gx[e] = acc;
  }
}

template <bool Bwd> void avg_pool_op(const Launch& l) {
  Pool p{l.integer("kernel", 1), 0, l.integer("padding", 0), l.flag("count_include_pad", true)};
  p.s = l.integer("stride", p.k);
  const tdq_cu_tensor& x = Bwd ? l.out[0] : l.in[0];  // (N, C, H, W)
  const tdq_cu_tensor& y = Bwd ? l.in[0] : l.out[0];  // (N, C, Ho, Wo)
  const int64_t n = numel(l.out[0]);
  if (n == 0) return;
  if (Bwd)
    avg_pool_bwd<<<grid_for(n), kThreads, 0, l.stream>>>(l.fin(0), l.fout(0), n, x.shape[2], x.shape[3], y.shape[2], y.shape[3], p);
  else
    avg_pool_fwd<<<grid_for(n), kThreads, 0, l.stream>>>(l.fin(0), l.fout(0), n, x.shape[2], x.shape[3], y.shape[2], y.shape[3], p);
  check_launch(l.op);
}

// (N, C, H, W) -> (N, C, 2H, 2W), and the 2x2 block sums back.
__global__ void upsample2x_fwd(const float* x, float* y, int64_t n, int64_t w) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % (2 * w), r = i / (2 * w);  // r: output row over all planes
    y[i] = x[(r / 2) * w + c / 2];
  }
}
__global__ void upsample2x_bwd(const float* gy, float* gx, int64_t n, int64_t w) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = i % w, r = i / w;
    const float* top = gy + r * 4 * w;
    const float* bot = top + 2 * w;
    gx[i] = (top[2 * j] + top[2 * j + 1]) + (bot[2 * j] + bot[2 * j + 1]);
  }
}

template <bool Bwd> void upsample_op(const Launch& l) {
  const int64_t n = numel(l.out[0]);
  if (n == 0) return;
  const int64_t w = Bwd ? l.out[0].shape[3] : l.in[0].shape[3];  // the small tensor's width
  if (Bwd) upsample2x_bwd<<<grid_for(n), kThreads, 0, l.stream>>>(l.fin(0), l.fout(0), n, w);
  else upsample2x_fwd<<<grid_for(n), kThreads, 0, l.stream>>>(l.fin(0), l.fout(0), n, w);
  check_launch(l.op);
}

}  // namespace

TDQ_CU_OP("avg_pool2d", avg_pool_op<false>);
TDQ_CU_OP("avg_pool2d_backward", avg_pool_op<true>);
TDQ_CU_OP("avg_pool2d_padded", avg_pool_op<false>);
TDQ_CU_OP("avg_pool2d_padded_backward", avg_pool_op<true>);
TDQ_CU_OP("upsample_nearest2x", upsample_op<false>);
TDQ_CU_OP("upsample_nearest2x_backward", upsample_op<true>);

}  // namespace tdqcu
