// concat(x0..xk; dim): joins 1 to 16 tensors of one dtype along `dim` (other
// dims equal). Its gradient is one narrow per input (see narrow.cpp), so there
// is no concat_backward. Works on raw bytes: any dtype.
#include <cstring>

#include "../core/registry.h"

namespace tdq {
namespace {

std::vector<TensorMeta> infer_concat(const std::vector<Tensor>& in, const Attrs& a) {
  check_defined(a, in[0], "xs[0]");
  const Tensor& x0 = in[0];
  TDQ_CHECK_RANGE(x0.dim() >= 1, a.op, ": argument 'xs[0]' must have at least 1 dimension, got shape ",
                  shape_str(x0.shape));
  const int64_t nd = x0.dim();
  const int64_t dim0 = a.get_int("dim");
  TDQ_CHECK_RANGE(dim0 >= -nd && dim0 < nd, a.op, ": attribute 'dim' = ", dim0, " is out of range for ", nd,
                  "-dimensional inputs (expected ", -nd, " to ", nd - 1, ")");
  const int64_t dim = dim0 < 0 ? dim0 + nd : dim0;
  Shape out = x0.shape;
  out[dim] = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    const std::string arg = "xs[" + std::to_string(i) + "]";
    check_defined(a, in[i], arg.c_str());
    TDQ_CHECK_TYPE(in[i].dtype == x0.dtype, a.op, ": argument '", arg, "' is ", dtype_name(in[i].dtype),
                   " but 'xs[0]' is ", dtype_name(x0.dtype));
    TDQ_CHECK_RANGE(in[i].dim() == nd, a.op, ": argument '", arg, "' has shape ", shape_str(in[i].shape),
                    " but 'xs[0]' has shape ", shape_str(x0.shape), " (ranks differ)");
    for (int64_t d = 0; d < nd; ++d)
      TDQ_CHECK_RANGE(d == dim || in[i].shape[d] == x0.shape[d], a.op, ": argument '", arg, "' has shape ",
                      shape_str(in[i].shape), " but 'xs[0]' has shape ", shape_str(x0.shape),
                      "; they may differ only in dimension ", dim);
    out[dim] += in[i].shape[dim];
  }
  return {{out, x0.dtype}};
}

void concat_cpu(OpCall& c, const ExecContext& ctx) {
  Tensor& y = c.outputs[0];
  const int64_t nd = y.dim();
  int64_t dim = c.attrs.get_int("dim");
  if (dim < 0) dim += nd;
  const size_t es = dtype_size(y.dtype);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= y.shape[d];
  for (int64_t d = dim + 1; d < nd; ++d) inner *= y.shape[d];
  const int64_t k = static_cast<int64_t>(c.inputs.size());
  // Byte size of each input's slab per outer index, and where it lands in the output row.
  std::vector<size_t> bytes(k), at(k);
  size_t row = 0;
  for (int64_t i = 0; i < k; ++i) {
    bytes[i] = static_cast<size_t>(c.inputs[i].shape[dim] * inner) * es;
    at[i] = row;
    row += bytes[i];
  }
  auto* out = static_cast<uint8_t*>(y.storage->data);
  const int64_t avg = static_cast<int64_t>(row / static_cast<size_t>(k)) + 1;
  ctx.parallel_for(outer * k, std::max<int64_t>(1, (1 << 16) / avg), [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) {
      const int64_t o = u / k, i = u % k;
      if (!bytes[i]) continue;
      const auto* src = static_cast<const uint8_t*>(c.inputs[i].storage->data) + static_cast<size_t>(o) * bytes[i];
      std::memcpy(out + static_cast<size_t>(o) * row + at[i], src, bytes[i]);
    }
  });
}

}  // namespace

TDQ_REGISTER_OP({"concat", 1, 16, infer_concat, concat_cpu, {}});

}  // namespace tdq
