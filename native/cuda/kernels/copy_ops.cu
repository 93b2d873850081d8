// Data movement, as the CPU ops of the same names: cast (native/cpu/cast.cpp),
// copy_ (optim.cpp), concat, narrow / narrow_backward (concat.cpp,
// narrow.cpp: raw bytes, any dtype), pad2d / pad2d_backward (pad.cpp), and
// broadcast_to / sum_to (elementwise.cpp), which run the backend's own add and
// sum kernels as the CPU ops run theirs.
#include <cmath>
#include <cstring>
#include <limits>

#include "../../core/half.h"
#include "../../core/saturate.h"
#include "common.cuh"

namespace tdqcu {
namespace {

size_t elem_size(int dtype) { return dtype == 1 ? 2 : (dtype == 2 || dtype == 3) ? 1 : 4; }
size_t nbytes(const tdq_cu_tensor& t) { return static_cast<size_t>(numel(t)) * elem_size(t.dtype); }

// ---- cast: through float, integers saturating and truncating (cast.cpp) ----------
__device__ inline float load_as_float(const void* p, int dtype, int64_t i) {
  switch (dtype) {
    case 0: return static_cast<const float*>(p)[i];
    case 1: return tdq::half_to_float(static_cast<const uint16_t*>(p)[i]);
    case 2: return static_cast<const int8_t*>(p)[i];
    case 3: return static_cast<const uint8_t*>(p)[i];
    default: return static_cast<float>(static_cast<const int32_t*>(p)[i]);
  }
}
__global__ void cast_kernel(const void* x, int xt, void* y, int yt, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = load_as_float(x, xt, i);
    switch (yt) {
      case 0: static_cast<float*>(y)[i] = v; break;
      case 1: static_cast<uint16_t*>(y)[i] = tdq::float_to_half(v); break;
      case 2: static_cast<int8_t*>(y)[i] = tdq::saturate_cast<int8_t>(v); break;
      case 3: static_cast<uint8_t*>(y)[i] = tdq::saturate_cast<uint8_t>(v); break;
      default: static_cast<int32_t*>(y)[i] = tdq::saturate_cast<int32_t>(v); break;
    }
  }
}

void cast_op(const Launch& l) {
  const tdq_cu_tensor &x = l.in[0], &y = l.out[0];
  const int64_t n = numel(x);
  if (n == 0) return;
  if (x.dtype == y.dtype) {
    TDQ_CU_CHECK(cudaMemcpyAsync(y.data, x.data, nbytes(x), cudaMemcpyDeviceToDevice, l.stream));
    return;
  }
  cast_kernel<<<grid_for(n), kThreads, 0, l.stream>>>(x.data, x.dtype, y.data, y.dtype, n);
  check_launch(l.op);
}

// copy_(dst, src): in place, no outputs.
void copy_op(const Launch& l) {
  const tdq_cu_tensor &dst = l.in[0], &src = l.in[1];
  if (dst.data == src.data || nbytes(dst) == 0) return;
  TDQ_CU_CHECK(cudaMemcpyAsync(dst.data, src.data, nbytes(dst), cudaMemcpyDeviceToDevice, l.stream));
}

// ---- concat / narrow: rows of bytes, one 2-D copy each -------------------------------
int norm_dim(const Launch& l, int nd) {
  int d = static_cast<int>(l.integer("dim", 0));
  return d < 0 ? d + nd : d;
}
// (outer, dim, inner) of a shape split at dim.
void split(const tdq_cu_tensor& t, int dim, int64_t& outer, int64_t& inner) {
  outer = 1, inner = 1;
  for (int d = 0; d < dim; ++d) outer *= t.shape[d];
  for (int d = dim + 1; d < t.ndim; ++d) inner *= t.shape[d];
}
// `rows` rows of `width` bytes from src (pitch sp) to dst (pitch dp).
void copy_rows(void* dst, size_t dp, const void* src, size_t sp, size_t width, int64_t rows, cudaStream_t s) {
  if (!width || rows <= 0) return;
  if (rows == 1) {  // no pitch limit on a plain copy
    TDQ_CU_CHECK(cudaMemcpyAsync(dst, src, width, cudaMemcpyDeviceToDevice, s));
    return;
  }
  TDQ_CU_CHECK(cudaMemcpy2DAsync(dst, dp, src, sp, width, static_cast<size_t>(rows), cudaMemcpyDeviceToDevice, s));
}

void concat_op(const Launch& l) {
  const tdq_cu_tensor& y = l.out[0];
  const int dim = norm_dim(l, y.ndim);
  const size_t es = elem_size(y.dtype);
  int64_t outer, inner;
  split(y, dim, outer, inner);
  const size_t row = static_cast<size_t>(y.shape[dim] * inner) * es;
  size_t at = 0;
  for (int i = 0; i < l.nin; ++i) {
    const size_t bytes = static_cast<size_t>(l.in[i].shape[dim] * inner) * es;
    copy_rows(static_cast<uint8_t*>(y.data) + at, row, l.in[i].data, bytes, bytes, outer, l.stream);
    at += bytes;
  }
}

// narrow(x; dim, start, length) and narrow_backward(gy; dim, start, shape): `full` is the un-narrowed tensor.
template <bool Bwd> void narrow_op(const Launch& l) {
  const tdq_cu_tensor& full = Bwd ? l.out[0] : l.in[0];
  const tdq_cu_tensor& part = Bwd ? l.in[0] : l.out[0];
  const int dim = norm_dim(l, full.ndim);
  const size_t es = elem_size(full.dtype);
  int64_t outer, inner;
  split(full, dim, outer, inner);
  const size_t full_row = static_cast<size_t>(full.shape[dim] * inner) * es;
  const size_t part_row = static_cast<size_t>(part.shape[dim] * inner) * es;
  uint8_t* at = static_cast<uint8_t*>(full.data) + static_cast<size_t>(l.integer("start", 0) * inner) * es;
  if (Bwd) {
    if (nbytes(full)) TDQ_CU_CHECK(cudaMemsetAsync(full.data, 0, nbytes(full), l.stream));
    copy_rows(at, full_row, part.data, part_row, part_row, outer, l.stream);
  } else {
    copy_rows(part.data, part_row, at, full_row, part_row, outer, l.stream);
  }
}

// ---- pad2d: (..., H, W) <-> (..., H + t + b, W + l + r), zeros around ----------------
// One thread per element of the output: the padded tensor reads the small one
// (or writes 0); the cropped one reads the padded.
template <bool Crop>
__global__ void pad_kernel(const float* src, float* dst, int64_t n, int64_t H, int64_t W, int64_t BH, int64_t BW,
                           int64_t top, int64_t left) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    if (Crop) {  // dst small (planes, H, W)
      const int64_t x = i % W, y = (i / W) % H, p = i / (W * H);
      dst[i] = src[(p * BH + y + top) * BW + x + left];
    } else {  // dst big (planes, BH, BW)
      const int64_t x = i % BW - left, y = (i / BW) % BH - top, p = i / (BW * BH);
      dst[i] = (x >= 0 && x < W && y >= 0 && y < H) ? src[(p * H + y) * W + x] : 0.f;
    }
  }
}

template <bool Crop> void pad2d_op(const Launch& l) {
  const std::vector<double> p = l.nums("pads");  // left, right, top, bottom
  if (p.size() != 4) throw CuError(std::string(l.op) + ": pads must be [left, right, top, bottom]");
  const tdq_cu_tensor& big = Crop ? l.in[0] : l.out[0];
  const tdq_cu_tensor& small = Crop ? l.out[0] : l.in[0];
  const int64_t n = numel(l.out[0]);
  if (n == 0) return;
  const int nd = small.ndim;
  pad_kernel<Crop><<<grid_for(n), kThreads, 0, l.stream>>>(l.fin(0), l.fout(0), n, small.shape[nd - 2], small.shape[nd - 1],
                                                          big.shape[nd - 2], big.shape[nd - 1], static_cast<int64_t>(p[2]),
                                                          static_cast<int64_t>(p[0]));
  check_launch(l.op);
}

// ---- broadcast_to = x + 0 with broadcasting, sum_to = sum over the broadcast dims ----------
void launch_op(const Launch& l, const char* name, const tdq_cu_tensor* in, int nin, const tdq_cu_attr* attrs, int nattrs) {
  char err[1024] = {0};
  if (tdq_cuda_get_api(TDQ_CUDA_ABI_VERSION)->launch(name, in, nin, l.out, 1, attrs, nattrs, err, sizeof err))
    throw CuError(std::string(l.op) + ": " + err);
}

void broadcast_to_op(const Launch& l) {
  Scratch zero(sizeof(float));
  TDQ_CU_CHECK(cudaMemsetAsync(zero.p, 0, sizeof(float), l.stream));
  tdq_cu_tensor in[2] = {l.in[0], tdq_cu_tensor{}};
  in[1].data = zero.p;  // a 0-dimensional float 0
  launch_op(l, "add", in, 2, nullptr, 0);
}

void sum_to_op(const Launch& l) {
  const tdq_cu_tensor &x = l.in[0], &t = l.out[0];
  const int lead = x.ndim - t.ndim;
  std::vector<double> dims;
  for (int d = 0; d < x.ndim; ++d)
    if (d < lead || (t.shape[d - lead] == 1 && x.shape[d] != 1)) dims.push_back(d);
  // The kept dims are x's minus the summed ones: the same elements in the same order as `shape`.
  tdq_cu_attr a{};
  a.key = "dims";
  a.kind = TDQ_CU_ATTR_NUMS;
  a.nums = dims.data();
  a.n_nums = static_cast<int>(dims.size());
  if (dims.empty()) {
    const int64_t n = numel(x);
    if (n) TDQ_CU_CHECK(cudaMemcpyAsync(t.data, x.data, n * sizeof(float), cudaMemcpyDeviceToDevice, l.stream));
    return;
  }
  launch_op(l, "sum", &x, 1, &a, 1);
}

}  // namespace

TDQ_CU_OP("cast", cast_op);
TDQ_CU_OP("copy_", copy_op);
TDQ_CU_OP("concat", concat_op);
TDQ_CU_OP("narrow", narrow_op<false>);
TDQ_CU_OP("narrow_backward", narrow_op<true>);
TDQ_CU_OP("pad2d", pad2d_op<false>);
TDQ_CU_OP("pad2d_backward", pad2d_op<true>);
TDQ_CU_OP("broadcast_to", broadcast_to_op);
TDQ_CU_OP("sum_to", sum_to_op);

}  // namespace tdqcu
