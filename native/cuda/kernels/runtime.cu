// The CUDA backend's runtime: the C interface (tdq_cuda_api.h), one stream
// for all work, a caching device allocator, and the op table.
#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>

#include "common.cuh"

#ifndef TDQ_CUDA_ARCHS
#define TDQ_CUDA_ARCHS "?"
#endif
#ifndef TDQ_CUDA_BUILD_LIBS
#define TDQ_CUDA_BUILD_LIBS "cuBLAS: not found at build time; cuDNN: not found at build time"
#endif

namespace tdqcu {
namespace {

void put(char* dst, size_t n, const std::string& s) {
  if (!dst || !n) return;
  std::snprintf(dst, n, "%s", s.c_str());
}

std::map<std::string, OpFn>& ops() {
  static std::map<std::string, OpFn> m;
  return m;
}

std::once_flag stream_once;
cudaStream_t g_stream = nullptr;
cudaStream_t stream() {
  std::call_once(stream_once, [] { TDQ_CU_CHECK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking)); });
  return g_stream;
}

// ---- caching allocator --------------------------------------------------------
// Sizes are rounded (512 B below 1 MiB, 2 MiB above) and freed blocks kept by
// size; a request takes the smallest cached block that fits and is at most
// twice as large. All work runs on one stream, so a block freed while a kernel
// still reads it is only reused by work queued after that kernel.
struct Cache {
  std::mutex mu;
  std::multimap<size_t, void*> free_blocks;
  std::unordered_map<void*, size_t> live;
  size_t allocated = 0, cached = 0;

  static size_t round(size_t b) {
    if (b == 0) b = 1;
    const size_t q = b < (size_t{1} << 20) ? 512 : (size_t{2} << 20);
    return (b + q - 1) / q * q;
  }
  void empty_locked() {
    for (auto& kv : free_blocks) cudaFree(kv.second);
    free_blocks.clear();
    cached = 0;
  }
  // nullptr and the CUDA error on failure (after emptying the cache and retrying once).
  void* alloc(size_t bytes, cudaError_t* err) {
    const size_t r = round(bytes);
    std::lock_guard<std::mutex> lk(mu);
    auto it = free_blocks.lower_bound(r);
    if (it != free_blocks.end() && it->first <= 2 * r) {
      void* p = it->second;
      const size_t sz = it->first;
      free_blocks.erase(it);
      cached -= sz;
      live[p] = sz;
      allocated += sz;
      return p;
    }
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, r);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear the sticky-free error state
      cudaStreamSynchronize(stream());
      empty_locked();
      e = cudaMalloc(&p, r);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      *err = e;
      return nullptr;
    }
    live[p] = r;
    allocated += r;
    return p;
  }
  void release(void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lk(mu);
    auto it = live.find(p);
    if (it == live.end()) return;
    free_blocks.emplace(it->second, p);
    cached += it->second;
    allocated -= it->second;
    live.erase(it);
  }
};
Cache& cache() {
  static Cache* c = new Cache;  // never destroyed: the driver may be gone at exit
  return *c;
}

std::string oom_message(size_t bytes, cudaError_t e) {
  size_t fr = 0, tot = 0;
  cudaMemGetInfo(&fr, &tot);
  cudaGetLastError();
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "out of memory: could not allocate %zu bytes on cuda (%s; the device has %.1f MiB free of %.1f MiB; "
                "tdq-native holds %.1f MiB in tensors and %.1f MiB cached)",
                bytes, cudaGetErrorString(e), fr / 1048576.0, tot / 1048576.0, cache().allocated / 1048576.0,
                cache().cached / 1048576.0);
  return buf;
}

__global__ void probe_kernel(int* p) { *p = 42; }

bool runtime_has(const char* a, const char* b) {
  for (const char* n : {a, b}) {
    if (!n) continue;
    void* h = dlopen(n, RTLD_LAZY | RTLD_LOCAL);
    if (h) {
      dlclose(h);
      return true;
    }
  }
  return false;
}

// ---- the C interface ------------------------------------------------------------
const char* api_build_info() {
  static std::string s = [] {
    std::string r = "CUDA " + std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10) +
                    " (static runtime), architectures " TDQ_CUDA_ARCHS "; " TDQ_CUDA_BUILD_LIBS;
    r += std::string("; at run time cuBLAS ") + (runtime_has("libcublas.so.13", "libcublas.so.12") ? "loadable" : "absent") +
         ", cuDNN " + (runtime_has("libcudnn.so.9", "libcudnn.so") ? "loadable" : "absent") +
         " (used for matmuls and convolutions where loadable, unless option kernels = own; qlinear / qconv2d, "
         "attention, norms and the rest always run on tdq-native's own kernels)";
    return r;
  }();
  return s.c_str();
}

int api_probe(char* why, size_t n) {
  // The static runtime loads the driver itself; without one it would only say
  // "driver version is insufficient".
  if (void* drv = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL)) {
    dlclose(drv);
  } else {
    put(why, n, "no NVIDIA driver (libcuda.so.1 could not be loaded)");
    return 1;
  }
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    put(why, n, std::string("no usable CUDA device: ") + cudaGetErrorString(e));
    return 1;
  }
  if (count == 0) {
    put(why, n, "no CUDA device found");
    return 1;
  }
  cudaDeviceProp prop;
  if ((e = cudaGetDeviceProperties(&prop, 0)) != cudaSuccess) {
    put(why, n, std::string("cudaGetDeviceProperties: ") + cudaGetErrorString(e));
    return 1;
  }
  if (prop.major < 8) {
    put(why, n, std::string("device 0 (") + prop.name + ") has compute capability " + std::to_string(prop.major) + "." +
                    std::to_string(prop.minor) + "; this build has kernels for sm_80 and later");
    return 1;
  }
  // One tiny kernel, so that a missing kernel image or a broken driver shows now.
  try {
    Scratch s(sizeof(int));
    probe_kernel<<<1, 1, 0, stream()>>>(s.as<int>());
    check_launch("probe");
    int v = 0;
    TDQ_CU_CHECK(cudaMemcpyAsync(&v, s.p, sizeof v, cudaMemcpyDeviceToHost, stream()));
    TDQ_CU_CHECK(cudaStreamSynchronize(stream()));
    if (v != 42) throw CuError("probe kernel wrote a wrong value");
  } catch (const std::exception& ex) {
    put(why, n, std::string("device 0 (") + prop.name + ") failed a test kernel: " + ex.what());
    return 1;
  }
  return 0;
}

int api_alloc(size_t bytes, void** out, char* err, size_t n) {
  cudaError_t e = cudaSuccess;
  *out = cache().alloc(bytes, &e);
  if (*out) return 0;
  put(err, n, oom_message(bytes, e));
  return 1;
}

void api_release(void* p) { cache().release(p); }

void api_empty_cache() {
  cudaStreamSynchronize(stream());
  std::lock_guard<std::mutex> lk(cache().mu);
  cache().empty_locked();
}

void api_memory_stats(size_t* allocated, size_t* cached, size_t* dfree, size_t* dtotal) {
  {
    std::lock_guard<std::mutex> lk(cache().mu);
    if (allocated) *allocated = cache().allocated;
    if (cached) *cached = cache().cached;
  }
  size_t f = 0, t = 0;
  if (cudaMemGetInfo(&f, &t) != cudaSuccess) cudaGetLastError();
  if (dfree) *dfree = f;
  if (dtotal) *dtotal = t;
}

int api_memcpy(void* dst, const void* src, size_t bytes, int kind, char* err, size_t n) {
  try {
    const cudaMemcpyKind k = kind == TDQ_CU_H2D ? cudaMemcpyHostToDevice
                             : kind == TDQ_CU_D2H ? cudaMemcpyDeviceToHost
                                                  : cudaMemcpyDeviceToDevice;
    TDQ_CU_CHECK(cudaMemcpyAsync(dst, src, bytes, k, stream()));
    // The host buffer may be freed as soon as we return: wait for both directions.
    if (kind != TDQ_CU_D2D) TDQ_CU_CHECK(cudaStreamSynchronize(stream()));
    return 0;
  } catch (const std::exception& ex) {
    put(err, n, ex.what());
    return 1;
  }
}

int api_synchronize(char* err, size_t n) {
  cudaError_t e = cudaStreamSynchronize(stream());
  if (e == cudaSuccess) return 0;
  put(err, n, std::string("CUDA error: ") + cudaGetErrorString(e));
  return 1;
}

const char* api_op_names() {
  static std::string s = [] {
    std::string r;
    for (auto& kv : ops()) r += (r.empty() ? "" : ",") + kv.first;
    return r;
  }();
  return s.c_str();
}

int api_launch(const char* name, const tdq_cu_tensor* in, int nin, const tdq_cu_tensor* out, int nout,
               const tdq_cu_attr* attrs, int nattrs, char* err, size_t n) {
  auto it = ops().find(name);
  if (it == ops().end()) {
    put(err, n, std::string("no CUDA kernel for op '") + name + "'");
    return 1;
  }
  try {
    Launch l{name, in, nin, out, nout, attrs, nattrs, stream()};
    it->second(l);
    return 0;
  } catch (const std::exception& ex) {
    put(err, n, ex.what());
    return 1;
  }
}

const tdq_cuda_api kApi = {TDQ_CUDA_ABI_VERSION, api_build_info,  api_probe,    api_alloc,
                           api_release,          api_empty_cache, api_memory_stats, api_memcpy,
                           api_synchronize,      api_op_names,    api_launch};

}  // namespace

void register_op(const char* name, OpFn fn) { ops()[name] = fn; }
cudaStream_t backend_stream() { return stream(); }

void* cache_alloc(size_t bytes) {
  cudaError_t e = cudaSuccess;
  void* p = cache().alloc(bytes, &e);
  if (!p) throw CuError(oom_message(bytes, e));
  return p;
}
void cache_free(void* p) { cache().release(p); }

}  // namespace tdqcu

extern "C" __attribute__((visibility("default"))) const tdq_cuda_api* tdq_cuda_get_api(int abi_version) {
  return abi_version == TDQ_CUDA_ABI_VERSION ? &tdqcu::kApi : nullptr;
}
