// The op registry: every op is a name, a shape/dtype inference function that
// validates its arguments, and one kernel per device. The N-API layer and the
// stream only ever talk to ops through this table (see dispatch in stream.cpp).
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "attrs.h"
#include "cpu_features.h"
#include "tensor.h"
#include "thread_pool.h"

namespace tdq {

struct TensorMeta {
  Shape shape;
  DType dtype = DType::f32;
};

// What a kernel gets to run with: the pool and CPU level of its environment.
struct ExecContext {
  ThreadPool* pool = nullptr;
  CpuLevel cpu_level = CpuLevel::scalar;
  std::shared_ptr<MemoryCounter> counter;  // for scratch tensors

  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) const {
    pool->parallel_for(n, grain, fn);
  }
  Tensor scratch(const Shape& shape, DType dtype = DType::f32) const {
    return alloc_tensor(shape, dtype, Device::cpu, counter);
  }
};

struct OpCall {
  std::vector<Tensor> inputs;  // an undefined Tensor stands for an absent optional input
  Attrs attrs;
  std::vector<Tensor> outputs;  // allocated by the caller from infer()
};

// Validates inputs and attributes (throwing TypeError/RangeError that name the
// argument and the expected value) and returns the outputs' shapes and dtypes.
// Ops that update their inputs in place (optimizer steps) return no outputs.
using InferFn = std::function<std::vector<TensorMeta>(const std::vector<Tensor>&, const Attrs&)>;
using KernelFn = std::function<void(OpCall&, const ExecContext&)>;

struct OpDef {
  std::string name;
  int min_inputs = 0, max_inputs = 0;
  InferFn infer;
  KernelFn cpu;
  KernelFn cuda;  // empty where the CUDA backend has no kernel (or is not built)
};

std::map<std::string, OpDef>& op_registry();
const OpDef& find_op(const std::string& name);  // throws TypeError on an unknown op

struct OpRegistrar {
  explicit OpRegistrar(OpDef def);
};

// Adds a CUDA kernel to an op registered by the CPU backend.
struct CudaKernelRegistrar {
  CudaKernelRegistrar(const std::string& name, KernelFn fn);
};

#define TDQ_CONCAT_(a, b) a##b
#define TDQ_CONCAT(a, b) TDQ_CONCAT_(a, b)
#define TDQ_REGISTER_OP(...) \
  static ::tdq::OpRegistrar TDQ_CONCAT(tdq_op_registrar_, __LINE__)(::tdq::OpDef __VA_ARGS__)

// Argument checks shared by every op's infer function.
void check_defined(const Attrs& a, const Tensor& t, const char* arg);
void check_dtype(const Attrs& a, const Tensor& t, const char* arg, DType want);
void check_rank(const Attrs& a, const Tensor& t, const char* arg, int64_t rank);
void check_shape(const Attrs& a, const Tensor& t, const char* arg, const Shape& want);

}  // namespace tdq
