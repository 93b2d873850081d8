#include "registry.h"

namespace tdq {

std::map<std::string, OpDef>& op_registry() {
  static std::map<std::string, OpDef> ops;  // function-local: no init-order hazard
  return ops;
}

const OpDef& find_op(const std::string& name) {
  auto& ops = op_registry();
  auto it = ops.find(name);
  TDQ_CHECK_TYPE(it != ops.end(), "unknown op '", name, "'");
  return it->second;
}

OpRegistrar::OpRegistrar(OpDef def) {
  auto& ops = op_registry();
  auto it = ops.find(def.name);
  if (it != ops.end() && !def.cuda && it->second.cuda) def.cuda = it->second.cuda;
  std::string name = def.name;
  ops[name] = std::move(def);
}

CudaKernelRegistrar::CudaKernelRegistrar(const std::string& name, KernelFn fn) {
  op_registry()[name].cuda = std::move(fn);  // the CPU registrar keeps this if it runs later
}

void check_defined(const Attrs& a, const Tensor& t, const char* arg) {
  TDQ_CHECK_TYPE(t.defined(), a.op, ": argument '", arg, "' is required");
}

void check_dtype(const Attrs& a, const Tensor& t, const char* arg, DType want) {
  check_defined(a, t, arg);
  TDQ_CHECK_TYPE(t.dtype == want, a.op, ": argument '", arg, "' must be ", dtype_name(want),
                 ", got ", dtype_name(t.dtype));
}

void check_rank(const Attrs& a, const Tensor& t, const char* arg, int64_t rank) {
  check_defined(a, t, arg);
  TDQ_CHECK_RANGE(t.dim() == rank, a.op, ": argument '", arg, "' must have ", rank,
                  " dimensions, got shape ", shape_str(t.shape));
}

void check_shape(const Attrs& a, const Tensor& t, const char* arg, const Shape& want) {
  check_defined(a, t, arg);
  TDQ_CHECK_RANGE(t.shape == want, a.op, ": argument '", arg, "' must have shape ",
                  shape_str(want), ", got ", shape_str(t.shape));
}

}  // namespace tdq
