// narrow(x; dim, start, length): the slice [start, start+length) of x along
// `dim` (a copy). narrow_backward(gy; dim, start, shape): gy placed into zeros
// of the input's shape. Both work on raw bytes (any dtype).
#include <cstring>

#include "../core/registry.h"

namespace tdq {
namespace {

int64_t norm_dim(const Attrs& a, int64_t nd) {
  const int64_t d = a.get_int("dim");
  TDQ_CHECK_RANGE(d >= -nd && d < nd, a.op, ": attribute 'dim' = ", d, " is out of range for a ", nd,
                  "-dimensional tensor (expected ", -nd, " to ", nd - 1, ")");
  return d < 0 ? d + nd : d;
}

// Checks start/length against the full (input) shape; returns the sliced shape.
Shape narrowed(const Attrs& a, const Shape& full, int64_t dim) {
  const int64_t start = a.get_int("start"), length = a.get_int("length");
  TDQ_CHECK_RANGE(start >= 0 && start <= full[dim], a.op, ": attribute 'start' = ", start,
                  " is out of range for dimension ", dim, " of size ", full[dim]);
  TDQ_CHECK_RANGE(length >= 0 && start + length <= full[dim], a.op, ": attribute 'length' = ", length,
                  " with start ", start, " exceeds dimension ", dim, " of size ", full[dim]);
  Shape s = full;
  s[dim] = length;
  return s;
}

std::vector<TensorMeta> infer_narrow(const std::vector<Tensor>& in, const Attrs& a) {
  check_defined(a, in[0], "x");
  TDQ_CHECK_RANGE(in[0].dim() >= 1, a.op, ": argument 'x' must have at least 1 dimension, got shape ",
                  shape_str(in[0].shape));
  return {{narrowed(a, in[0].shape, norm_dim(a, in[0].dim())), in[0].dtype}};
}

std::vector<TensorMeta> infer_narrow_backward(const std::vector<Tensor>& in, const Attrs& a) {
  check_defined(a, in[0], "gy");
  const Shape full = a.get_ints("shape");
  for (auto d : full)
    TDQ_CHECK_RANGE(d >= 0, a.op, ": attribute 'shape' ", shape_str(full), " has a negative dimension");
  TDQ_CHECK_RANGE(!full.empty(), a.op, ": attribute 'shape' must have at least 1 dimension");
  const Shape want = narrowed(a, full, norm_dim(a, static_cast<int64_t>(full.size())));
  check_shape(a, in[0], "gy", want);
  return {{full, in[0].dtype}};
}

// Copies rows of `len` bytes between a packed buffer and a strided one:
// packed row o <-> strided bytes [o*stride + off, +len).
void copy_rows(uint8_t* dst, const uint8_t* src, int64_t outer, size_t dst_stride, size_t src_stride, size_t len,
               const ExecContext& ctx) {
  if (!len) return;
  ctx.parallel_for(outer, std::max<int64_t>(1, static_cast<int64_t>((1 << 16) / len)), [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o)
      std::memcpy(dst + static_cast<size_t>(o) * dst_stride, src + static_cast<size_t>(o) * src_stride, len);
  });
}

struct Geometry {
  int64_t outer = 1;
  size_t full_row = 0, part_row = 0, offset = 0;
};

Geometry geometry(const Attrs& a, const Shape& full, size_t es) {
  const int64_t nd = static_cast<int64_t>(full.size());
  const int64_t dim = norm_dim(a, nd);
  Geometry g;
  int64_t inner = 1;
  for (int64_t d = 0; d < dim; ++d) g.outer *= full[d];
  for (int64_t d = dim + 1; d < nd; ++d) inner *= full[d];
  g.full_row = static_cast<size_t>(full[dim] * inner) * es;
  g.part_row = static_cast<size_t>(a.get_int("length") * inner) * es;
  g.offset = static_cast<size_t>(a.get_int("start") * inner) * es;
  return g;
}

void narrow_cpu(OpCall& c, const ExecContext& ctx) {
  const Tensor& x = c.inputs[0];
  Geometry g = geometry(c.attrs, x.shape, dtype_size(x.dtype));
  copy_rows(static_cast<uint8_t*>(c.outputs[0].storage->data),
            static_cast<const uint8_t*>(x.storage->data) + g.offset, g.outer, g.part_row, g.full_row, g.part_row, ctx);
}

void narrow_backward_cpu(OpCall& c, const ExecContext& ctx) {
  Tensor& gx = c.outputs[0];
  Geometry g = geometry(c.attrs, gx.shape, dtype_size(gx.dtype));
  auto* out = static_cast<uint8_t*>(gx.storage->data);
  // Zero only what the slice does not cover, row by row, so each byte is written once.
  const size_t tail = g.full_row - g.offset - g.part_row;
  ctx.parallel_for(g.outer, std::max<int64_t>(1, static_cast<int64_t>((1 << 16) / std::max<size_t>(g.full_row, 1))),
                   [&](int64_t b, int64_t e) {
                     for (int64_t o = b; o < e; ++o) {
                       uint8_t* row = out + static_cast<size_t>(o) * g.full_row;
                       if (g.offset) std::memset(row, 0, g.offset);
                       if (g.part_row)
                         std::memcpy(row + g.offset,
                                     static_cast<const uint8_t*>(c.inputs[0].storage->data) +
                                         static_cast<size_t>(o) * g.part_row,
                                     g.part_row);
                       if (tail) std::memset(row + g.offset + g.part_row, 0, tail);
                     }
                   });
}

}  // namespace

TDQ_REGISTER_OP({"narrow", 1, 1, infer_narrow, narrow_cpu, {}});
TDQ_REGISTER_OP({"narrow_backward", 1, 1, infer_narrow_backward, narrow_backward_cpu, {}});

}  // namespace tdq
