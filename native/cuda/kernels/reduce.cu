// sum / mean over dims (keepdim), and softmax along one dim with its
// backward, as the CPU ops of the same names. Sums accumulate in double.
#include "common.cuh"

namespace tdqcu {
namespace {

struct RedGeom {
  int nk, nr;  // kept and reduced dims
  int64_t kshape[TDQ_CUDA_MAX_DIMS], kstride[TDQ_CUDA_MAX_DIMS];
  int64_t rshape[TDQ_CUDA_MAX_DIMS], rstride[TDQ_CUDA_MAX_DIMS];
  int64_t rcount;
};

// One block per output element; its threads share the reduced elements.
__global__ void reduce_kernel(const float* x, float* out, RedGeom g, double scale) {
  const int64_t o = blockIdx.x;
  int64_t rem = o, base = 0;
  for (int d = g.nk - 1; d >= 0; --d) {
    base += (rem % g.kshape[d]) * g.kstride[d];
    rem /= g.kshape[d];
  }
  double acc = 0;
  for (int64_t r = threadIdx.x; r < g.rcount; r += blockDim.x) {
    int64_t rr = r, off = base;
    for (int d = g.nr - 1; d >= 0; --d) {
      off += (rr % g.rshape[d]) * g.rstride[d];
      rr /= g.rshape[d];
    }
    acc += x[off];
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) out[o] = static_cast<float>(acc * scale);
}

template <bool Mean> void reduce_op(const Launch& l) {
  const tdq_cu_tensor& x = l.in[0];
  bool red[TDQ_CUDA_MAX_DIMS] = {};
  if (!l.has("dims")) {
    for (int d = 0; d < x.ndim; ++d) red[d] = true;
  } else {
    for (double dd : l.nums("dims")) {
      int d = static_cast<int>(dd);
      red[d < 0 ? d + x.ndim : d] = true;
    }
  }
  RedGeom g{};
  g.rcount = 1;
  int64_t st = 1, strides[TDQ_CUDA_MAX_DIMS];
  for (int d = x.ndim - 1; d >= 0; --d) strides[d] = st, st *= x.shape[d];
  for (int d = 0; d < x.ndim; ++d) {
    if (red[d]) {
      g.rshape[g.nr] = x.shape[d], g.rstride[g.nr++] = strides[d];
      g.rcount *= x.shape[d];
    } else {
      g.kshape[g.nk] = x.shape[d], g.kstride[g.nk++] = strides[d];
    }
  }
  const int64_t nout = numel(l.out[0]);
  if (nout == 0) return;
  const double scale = Mean ? (g.rcount ? 1.0 / static_cast<double>(g.rcount) : NAN) : 1.0;
  reduce_kernel<<<static_cast<unsigned>(nout), kThreads, 0, l.stream>>>(l.fin(0), l.fout(0), g, scale);
  check_launch(l.op);
}

// ---- softmax: x as (outer, L, inner); one block per (outer, inner) row ----------
__global__ void softmax_fwd(const float* x, float* y, int64_t L, int64_t inner) {
  const int64_t row = blockIdx.x, o = row / inner, i = row % inner;
  const float* xr = x + o * L * inner + i;
  float* yr = y + o * L * inner + i;
  float mx = -INFINITY;
  for (int64_t k = threadIdx.x; k < L; k += blockDim.x) mx = fmaxf(mx, xr[k * inner]);
  mx = block_max(mx);
  double s = 0;
  for (int64_t k = threadIdx.x; k < L; k += blockDim.x) s += expf(xr[k * inner] - mx);
  s = block_sum(s);
  const float inv = static_cast<float>(1.0 / s);
  for (int64_t k = threadIdx.x; k < L; k += blockDim.x) yr[k * inner] = expf(xr[k * inner] - mx) * inv;
}
__global__ void softmax_bwd(const float* gy, const float* y, float* gx, int64_t L, int64_t inner) {
  const int64_t row = blockIdx.x, o = row / inner, i = row % inner, base = o * L * inner + i;
  double s = 0;
  for (int64_t k = threadIdx.x; k < L; k += blockDim.x) s += double(gy[base + k * inner]) * y[base + k * inner];
  s = block_sum(s);
  const float sf = static_cast<float>(s);
  for (int64_t k = threadIdx.x; k < L; k += blockDim.x)
    gx[base + k * inner] = y[base + k * inner] * (gy[base + k * inner] - sf);
}

template <bool Bwd> void softmax_op(const Launch& l) {
  const tdq_cu_tensor& x = l.in[0];
  int64_t outer = 1, L = 1, inner = 1;
  if (x.ndim > 0) {
    int d = static_cast<int>(l.integer("dim", -1));
    if (d < 0) d += x.ndim;
    for (int k = 0; k < d; ++k) outer *= x.shape[k];
    L = x.shape[d];
    for (int k = d + 1; k < x.ndim; ++k) inner *= x.shape[k];
  }
  const int64_t rows = outer * inner;
  if (rows == 0 || L == 0) return;
  const int threads = L >= 1024 ? 512 : L >= 128 ? 128 : 32;
  if (Bwd) softmax_bwd<<<static_cast<unsigned>(rows), threads, 0, l.stream>>>(l.fin(0), l.fin(1), l.fout(0), L, inner);
  else softmax_fwd<<<static_cast<unsigned>(rows), threads, 0, l.stream>>>(l.fin(0), l.fout(0), L, inner);
  check_launch(l.op);
}

}  // namespace

TDQ_CU_OP("sum", reduce_op<false>);
TDQ_CU_OP("mean", reduce_op<true>);
TDQ_CU_OP("softmax", softmax_op<false>);
TDQ_CU_OP("softmax_backward", softmax_op<true>);

}  // namespace tdqcu
