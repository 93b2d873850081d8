// libtdq_qint_emu.so: the integer-path ops of native/cuda/kernels/qint.cu with
// every launch replaced by a host loop over the same per-element code
// (TDQ_QINT_HOST_EMULATION), behind the C interface of tdq_cuda_api.h with
// host memory. tdq_cuda_test loads it like libtdq_cuda.so:
//
//   tdq_cuda_test build/libtdq_qint_emu.so
//
// so that the arithmetic of the GPU's integer path (gathers, the dp4a sums and
// the tensor-core kernel's shifted s8 sums, epilogue roundings, step lookups) is checked bit for bit against the CPU ops
// on a machine without a GPU. The tiling of the kernels is not exercised here;
// tdq_cuda_test on a GPU checks that.
#define TDQ_QINT_HOST_EMULATION 1
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include "../../native/cuda/kernels/qint.cu"

namespace tdqcu {
namespace {
std::map<std::string, OpFn>& ops() {
  static std::map<std::string, OpFn> m;
  return m;
}
// Freed blocks are reused by size, as the device allocator's cache.
std::mutex mu;
std::multimap<size_t, void*> free_blocks;
std::map<void*, size_t> live;
}  // namespace

void register_op(const char* name, OpFn fn) { ops()[name] = fn; }
// Option "int8" (tdq_cuda_set_option below): which GPU kernel's arithmetic to emulate.
Int8Kernel g_int8 = Int8Kernel::wmma;
Int8Kernel int8_kernel() { return g_int8; }
cudaStream_t backend_stream() { return nullptr; }
void* cache_alloc(size_t bytes) {
  std::lock_guard<std::mutex> lk(mu);
  const size_t r = (std::max<size_t>(bytes, 1) + 511) / 512 * 512;
  auto it = free_blocks.lower_bound(r);
  void* p;
  if (it != free_blocks.end() && it->first <= 2 * r) {
    p = it->second;
    live[p] = it->first;
    free_blocks.erase(it);
    return p;
  }
  p = r < (size_t{1} << 40) ? std::malloc(r) : nullptr;
  if (!p) throw CuError("out of memory: could not allocate " + std::to_string(bytes) + " bytes (host emulation)");
  live[p] = r;
  return p;
}
void cache_free(void* p) {
  std::lock_guard<std::mutex> lk(mu);
  auto it = live.find(p);
  if (it == live.end()) return;
  free_blocks.emplace(it->second, p);
  live.erase(it);
}

namespace {
void put(char* dst, size_t n, const std::string& s) {
  if (dst && n) std::snprintf(dst, n, "%s", s.c_str());
}
const char* emu_build_info() { return "host emulation of the integer path (qint.cu), no GPU"; }
int emu_probe(char*, size_t) { return 0; }
int emu_alloc(size_t bytes, void** out, char* err, size_t n) {
  try {
    *out = cache_alloc(bytes);
    return 0;
  } catch (const std::exception& e) {
    put(err, n, e.what());
    return 1;
  }
}
void emu_release(void* p) { cache_free(p); }
void emu_empty_cache() {}
void emu_memory_stats(size_t* a, size_t* c, size_t* f, size_t* t) {
  for (size_t* p : {a, c, f, t})
    if (p) *p = 0;
}
int emu_memcpy(void* dst, const void* src, size_t bytes, int, char*, size_t) {
  std::memcpy(dst, src, bytes);
  return 0;
}
int emu_synchronize(char*, size_t) { return 0; }
const char* emu_op_names() {
  static std::string s = [] {
    std::string r;
    for (auto& kv : ops()) r += (r.empty() ? "" : ",") + kv.first;
    return r;
  }();
  return s.c_str();
}
int emu_launch(const char* name, const tdq_cu_tensor* in, int nin, const tdq_cu_tensor* out, int nout,
               const tdq_cu_attr* attrs, int nattrs, char* err, size_t n) {
  auto it = ops().find(name);
  if (it == ops().end()) {
    put(err, n, std::string("no emulated kernel for op '") + name + "'");
    return 1;
  }
  try {
    it->second(Launch{name, in, nin, out, nout, attrs, nattrs, nullptr});
    return 0;
  } catch (const std::exception& e) {
    put(err, n, e.what());
    return 1;
  }
}
const tdq_cuda_api kEmu = {TDQ_CUDA_ABI_VERSION, emu_build_info,  emu_probe,        emu_alloc,
                           emu_release,          emu_empty_cache, emu_memory_stats, emu_memcpy,
                           emu_synchronize,      emu_op_names,    emu_launch};
}  // namespace
}  // namespace tdqcu

extern "C" __attribute__((visibility("default"))) int tdq_cuda_set_option(const char* key, const char* value,
                                                                          char* err, size_t errlen) {
  const std::string k = key ? key : "", v = value ? value : "";
  if (k == "int8" && (v == "wmma" || v == "dp4a")) {
    tdqcu::g_int8 = v == "dp4a" ? tdqcu::Int8Kernel::dp4a : tdqcu::Int8Kernel::wmma;
    return 0;
  }
  if ((k == "kernels" && (v == "own" || v == "auto")) || (k == "precision" && v == "fp32")) return 0;  // no effect here
  if (err && errlen) std::snprintf(err, errlen, "option %s = %s is not emulated", k.c_str(), v.c_str());
  return 1;
}

extern "C" __attribute__((visibility("default"))) const tdq_cuda_api* tdq_cuda_get_api(int abi_version) {
  return abi_version == TDQ_CUDA_ABI_VERSION ? &tdqcu::kEmu : nullptr;
}
