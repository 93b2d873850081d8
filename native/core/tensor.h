// Tensors: contiguous row-major storage with a shape and a dtype, on a device.
// Storage is reference counted so that an op queued on the stream keeps its
// inputs alive after JS has disposed them.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "error.h"

namespace tdq {

enum class DType : int { f32 = 0, f16 = 1, i8 = 2, u8 = 3, i32 = 4 };
enum class Device : int { cpu = 0, cuda = 1 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
DType dtype_from_name(const std::string& name);  // throws TypeError
const char* device_name(Device d);
Device device_from_name(const std::string& name);  // throws TypeError

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

// Bytes held by one JS environment; the binding reports the drift to V8.
struct MemoryCounter {
  std::atomic<int64_t> live{0};
  std::atomic<int64_t> peak{0};
  void add(int64_t n);
};

// Why a tensor has no valid values: the op that should have written it failed
// (or could not run because one of its inputs had failed). `message` names
// that op; reading the tensor rejects with it, as a JS error of `kind`.
struct TensorError {
  ErrorKind kind;
  std::string message;
};

// Storage of op outputs is allocated lazily, by the stream thread just before
// the op runs (allocate()), so queuing an op never allocates or waits. `data`
// and `error` are written only by the thread that runs ops; others read them
// after waiting for the stream (whose mutex orders the accesses).
struct Storage {
  void* data = nullptr;
  size_t nbytes = 0;
  Device device = Device::cpu;
  std::shared_ptr<MemoryCounter> counter;
  std::shared_ptr<const TensorError> error;  // set: the values are poisoned
  // A process-wide unique id (never reused, unlike the address) and a count of
  // in-place writes: caches derived from the contents (conv2d's packed
  // weights) key on (id, version). Ops that update inputs in place (those with
  // no outputs: optimizer steps) have their inputs' versions bumped by the
  // stream after they run.
  const uint64_t id;
  std::atomic<uint64_t> version{0};
  Storage(size_t nbytes, Device dev, std::shared_ptr<MemoryCounter> counter, bool lazy = false);
  void allocate();  // no-op when allocated; throws RangeError "out of memory: ... N bytes"
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

struct Tensor {
  std::shared_ptr<Storage> storage;  // null: an absent optional input
  Shape shape;
  DType dtype = DType::f32;
  Device device = Device::cpu;

  bool defined() const { return storage != nullptr; }
  int64_t numel() const { return shape_numel(shape); }
  int64_t dim() const { return static_cast<int64_t>(shape.size()); }
  int64_t size(int64_t d) const { return shape.at(d < 0 ? d + dim() : d); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  template <typename T> T* data() const { return static_cast<T*>(storage->data); }
  float* f32() const { return data<float>(); }
};

// Freed large host buffers are kept for reuse, up to a cap (TDQ_HOST_CACHE_MB,
// default 256 MiB). These report, empty and resize that cache.
size_t host_cache_bytes();
size_t host_cache_release();  // returns the bytes given back to the system
void host_cache_set_cap(size_t bytes);

// Bytes of a tensor of this shape, checked: RangeError on a negative
// dimension or a size that overflows.
size_t checked_nbytes(const Shape& shape, DType dtype);

// lazy: no memory until storage->allocate() (op outputs; see Stream).
Tensor alloc_tensor(const Shape& shape, DType dtype, Device device,
                    const std::shared_ptr<MemoryCounter>& counter, bool lazy = false);

}  // namespace tdq
