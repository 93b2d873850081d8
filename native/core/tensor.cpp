#include "tensor.h"

#include <cstdlib>
#include <new>
#include <sstream>

#include "../cuda/cuda_memory.h"

namespace tdq {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f16: return 2;
    case DType::i8: return 1;
    case DType::u8: return 1;
    case DType::i32: return 4;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f16: return "float16";
    case DType::i8: return "int8";
    case DType::u8: return "uint8";
    case DType::i32: return "int32";
  }
  return "?";
}

DType dtype_from_name(const std::string& n) {
  if (n == "float32") return DType::f32;
  if (n == "float16") return DType::f16;
  if (n == "int8") return DType::i8;
  if (n == "uint8") return DType::u8;
  if (n == "int32") return DType::i32;
  fail(ErrorKind::Type, "unknown dtype '", n, "' (expected float32, float16, int8, uint8 or int32)");
}

const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

Device device_from_name(const std::string& n) {
  if (n == "cpu") return Device::cpu;
  if (n == "cuda") return Device::cuda;
  fail(ErrorKind::Type, "unknown device '", n, "' (expected cpu or cuda)");
}

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

void MemoryCounter::add(int64_t n) {
  int64_t now = live.fetch_add(n) + n;
  int64_t p = peak.load();
  while (now > p && !peak.compare_exchange_weak(p, now)) {
  }
}

Storage::Storage(size_t n, Device dev, std::shared_ptr<MemoryCounter> c)
    : nbytes(n), device(dev), counter(std::move(c)) {
  size_t bytes = n == 0 ? 64 : n;
  if (dev == Device::cpu) {
    // 64-byte alignment so AVX-512 loads never straddle a cache line.
    bytes = (bytes + 63) / 64 * 64;
    data = std::aligned_alloc(64, bytes);
    if (!data) fail(ErrorKind::Range, "out of memory: could not allocate ", n, " bytes on cpu");
  } else {
    data = cuda_malloc(bytes);  // throws when CUDA is absent or out of memory
  }
  if (counter) counter->add(static_cast<int64_t>(nbytes));
}

Storage::~Storage() {
  if (device == Device::cpu) std::free(data);
  else cuda_free(data);
  if (counter) counter->add(-static_cast<int64_t>(nbytes));
}

Tensor alloc_tensor(const Shape& shape, DType dtype, Device device,
                    const std::shared_ptr<MemoryCounter>& counter) {
  for (auto d : shape)
    TDQ_CHECK_RANGE(d >= 0, "negative dimension in shape ", shape_str(shape));
  Tensor t;
  t.shape = shape;
  t.dtype = dtype;
  t.device = device;
  t.storage = std::make_shared<Storage>(t.nbytes(), device, counter);
  return t;
}

}  // namespace tdq
