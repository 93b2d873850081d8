#include "tensor.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>
#include <new>
#include <sstream>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#define TDQ_HAVE_MMAP 1
#endif

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

namespace {
// Op outputs are allocated on the stream thread and freed on either thread.
// glibc's malloc keeps such large freed blocks in per-thread arenas (and its
// adaptive mmap threshold stops returning them), so resident memory grew to
// many times what the engine holds. Large buffers therefore go straight to
// the kernel, through a small cache of freed mappings: a training or sampling
// loop allocates the same sizes every step, and a fresh mapping costs a page
// fault and a page of zeroing per 4 KiB on first touch (a third of the time
// of a QAT step went there; on this project's 2-core VM a batch-64 training
// step took 4.4 s without the cache and 0.68 s with it, bench/results/
// memory-cpu.md). The cache is capped (TDQ_HOST_CACHE_MB, default 2048: a
// training step's working set must fit, or most of it faults again), so
// resident memory stays within live bytes plus the cap, and
// host_cache_release() empties it. The threshold is 128 KiB: the outputs of
// a small model's forward (128 KiB..1 MiB at batch 8) faulted in on every
// call through glibc's heap (about 750 page faults per forward of the shipped
// model), as many as two granules cost at most twice their size here.
constexpr size_t kMmapThreshold = size_t(128) << 10;
constexpr size_t kMmapGranule = size_t(1) << 16;  // sizes rounded up, so near sizes share blocks

constexpr size_t kDefaultCacheBytes = size_t(2048) << 20;

size_t mmap_bytes(size_t bytes) { return (bytes + kMmapGranule - 1) / kMmapGranule * kMmapGranule; }

struct HostCache {
  std::mutex mu;
  std::multimap<size_t, void*> blocks;  // size -> mapping
  size_t cached = 0;
  size_t cap = kDefaultCacheBytes;  // TDQ_HOST_CACHE_MB is applied when the addon loads (env.h)
};

// Process-wide on purpose, like malloc's heap: a mapping freed by one
// environment's stream can serve another's allocation. Guarded by its mutex.
HostCache& host_cache() {
  static HostCache* c = new HostCache();  // never destroyed: frees may run during exit
  return *c;
}

void* host_alloc(size_t bytes) {
#ifdef TDQ_HAVE_MMAP
  if (bytes >= kMmapThreshold) {
    const size_t len = mmap_bytes(bytes);
    HostCache& c = host_cache();
    {
      std::lock_guard<std::mutex> lock(c.mu);
      auto it = c.blocks.find(len);
      if (it != c.blocks.end()) {
        void* p = it->second;
        c.blocks.erase(it);
        c.cached -= len;
        return p;
      }
    }
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
  }
#endif
  return std::aligned_alloc(64, (bytes + 63) / 64 * 64);  // 64: AVX-512 loads never straddle a line
}

void host_free(void* p, size_t bytes) {
#ifdef TDQ_HAVE_MMAP
  if (bytes >= kMmapThreshold) {
    const size_t len = mmap_bytes(bytes);
    HostCache& c = host_cache();
    std::vector<std::pair<void*, size_t>> drop;
    {
      std::lock_guard<std::mutex> lock(c.mu);
      if (len <= c.cap) {
        // Make room by unmapping the largest cached blocks first.
        while (c.cached + len > c.cap && !c.blocks.empty()) {
          auto last = std::prev(c.blocks.end());
          drop.emplace_back(last->second, last->first);
          c.cached -= last->first;
          c.blocks.erase(last);
        }
        c.blocks.emplace(len, p);
        c.cached += len;
      } else {
        drop.emplace_back(p, len);
      }
    }
    for (auto& [q, n] : drop) munmap(q, n);
    return;
  }
#endif
  std::free(p);
}

size_t alloc_bytes(size_t n) { return n == 0 ? 64 : n; }
}  // namespace

size_t host_cache_bytes() {
#ifdef TDQ_HAVE_MMAP
  HostCache& c = host_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.cached;
#else
  return 0;
#endif
}

size_t host_cache_release() {
#ifdef TDQ_HAVE_MMAP
  HostCache& c = host_cache();
  std::multimap<size_t, void*> blocks;
  size_t n = 0;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    blocks.swap(c.blocks);
    n = c.cached;
    c.cached = 0;
  }
  for (auto& [len, p] : blocks) munmap(p, len);
  return n;
#else
  return 0;
#endif
}

void host_cache_set_cap(size_t bytes) {
#ifdef TDQ_HAVE_MMAP
  HostCache& c = host_cache();
  std::vector<std::pair<void*, size_t>> drop;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    c.cap = bytes;
    while (c.cached > c.cap && !c.blocks.empty()) {
      auto last = std::prev(c.blocks.end());
      drop.emplace_back(last->second, last->first);
      c.cached -= last->first;
      c.blocks.erase(last);
    }
  }
  for (auto& [q, n] : drop) munmap(q, n);
#else
  (void)bytes;
#endif
}

namespace {
std::atomic<uint64_t> g_next_storage_id{1};
}

Storage::Storage(size_t n, Device dev, std::shared_ptr<MemoryCounter> c, bool lazy)
    : nbytes(n), device(dev), counter(std::move(c)), id(g_next_storage_id.fetch_add(1)) {
  if (!lazy) allocate();
}

void Storage::allocate() {
  if (data) return;
  const size_t bytes = alloc_bytes(nbytes);
  if (device == Device::cpu) {
#ifdef TDQ_HAVE_MMAP
    // Past physical memory the allocation would either fail or, with
    // overcommit, succeed and get the process killed when the op writes it.
    static const size_t phys = [] {
      long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
      return pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : size_t(0);
    }();
    if (phys && nbytes > phys)
      fail(ErrorKind::Range, "out of memory: could not allocate ", nbytes, " bytes on cpu (the machine has ", phys,
           " bytes of memory)");
#endif
    data = host_alloc(bytes);
    if (!data) fail(ErrorKind::Range, "out of memory: could not allocate ", nbytes, " bytes on cpu");
  } else {
    data = cuda_malloc(bytes);  // throws when CUDA is absent or out of memory
  }
  if (counter) counter->add(static_cast<int64_t>(nbytes));
}

Storage::~Storage() {
  if (!data) return;
  if (device == Device::cpu) host_free(data, alloc_bytes(nbytes));
  else cuda_free(data);
  if (counter) counter->add(-static_cast<int64_t>(nbytes));
}

size_t checked_nbytes(const Shape& shape, DType dtype) {
  uint64_t n = dtype_size(dtype);
  for (auto d : shape) {
    TDQ_CHECK_RANGE(d >= 0, "negative dimension in shape ", shape_str(shape));
    if (d == 0) return 0;
  }
  for (auto d : shape)
    TDQ_CHECK_RANGE(!__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n),
                    "out of memory: shape ", shape_str(shape), " of ", dtype_name(dtype), " needs more than 2^64 bytes");
  TDQ_CHECK_RANGE(n <= (uint64_t(1) << 62), "out of memory: shape ", shape_str(shape), " of ", dtype_name(dtype),
                  " needs ", n, " bytes");
  return static_cast<size_t>(n);
}

Tensor alloc_tensor(const Shape& shape, DType dtype, Device device,
                    const std::shared_ptr<MemoryCounter>& counter, bool lazy) {
  checked_nbytes(shape, dtype);
  Tensor t;
  t.shape = shape;
  t.dtype = dtype;
  t.device = device;
  t.storage = std::make_shared<Storage>(t.nbytes(), device, counter, lazy);
  return t;
}

}  // namespace tdq
