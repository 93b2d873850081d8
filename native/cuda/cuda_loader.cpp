// Loads the CUDA backend (libtdq_cuda.so, see tdq_cuda_api.h) on first use and
// adds its kernels to the op registry. Nothing here needs CUDA to compile.
// Order of checks, each a reason for `tdq-native info` rather than a crash:
// the library file (absent when nvcc was not found at build time), the driver
// (libcuda.so.1, loaded by the static CUDA runtime only when asked), the ABI
// version, then the library's own probe (device count, compute capability and
// one test kernel). TDQ_CUDA_LIB overrides the library path; TDQ_CUDA_DISABLE=1
// disables the backend.
#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <sstream>

#include "../core/error.h"
#include "../core/registry.h"
#include "cuda_memory.h"
#include "tdq_cuda_api.h"

namespace tdq {
namespace {

struct Backend {
  const tdq_cuda_api* api = nullptr;  // set only when a device works
  void* handle = nullptr;             // libtdq_cuda.so, for the symbols beside tdq_cuda_get_api
  bool found = false;
  std::string reason, info;
};

std::string self_dir() {
  Dl_info di{};
  if (dladdr(reinterpret_cast<void*>(&cuda_probe), &di) && di.dli_fname) {
    std::string p = di.dli_fname;
    const size_t s = p.rfind('/');
    if (s != std::string::npos) return p.substr(0, s);
  }
  return ".";
}

tdq_cu_tensor to_cu(const Tensor& t) {
  tdq_cu_tensor c{};
  if (!t.defined()) return c;
  c.data = t.storage->data;
  c.dtype = static_cast<int>(t.dtype);
  c.ndim = static_cast<int>(t.shape.size());
  if (c.ndim > TDQ_CUDA_MAX_DIMS) fail(ErrorKind::Range, "cuda: tensors of more than ", TDQ_CUDA_MAX_DIMS, " dimensions are not supported, got ", shape_str(t.shape));
  for (int i = 0; i < c.ndim; ++i) c.shape[i] = t.shape[i];
  return c;
}

void launch(const tdq_cuda_api* api, const std::string& name, OpCall& call) {
  std::vector<tdq_cu_tensor> in, out;
  for (const auto& t : call.inputs) in.push_back(to_cu(t));
  for (const auto& t : call.outputs) out.push_back(to_cu(t));
  std::vector<tdq_cu_attr> attrs;
  for (const auto& kv : call.attrs.values) {
    tdq_cu_attr a{};
    a.key = kv.first.c_str();
    if (auto d = std::get_if<double>(&kv.second)) a.kind = TDQ_CU_ATTR_NUM, a.num = *d;
    else if (auto b = std::get_if<bool>(&kv.second)) a.kind = TDQ_CU_ATTR_BOOL, a.num = *b ? 1 : 0;
    else if (auto s = std::get_if<std::string>(&kv.second)) a.kind = TDQ_CU_ATTR_STR, a.str = s->c_str();
    else if (auto v = std::get_if<std::vector<double>>(&kv.second))
      a.kind = TDQ_CU_ATTR_NUMS, a.nums = v->data(), a.n_nums = static_cast<int>(v->size());
    attrs.push_back(a);
  }
  char err[1024] = {0};
  if (api->launch(name.c_str(), in.data(), static_cast<int>(in.size()), out.data(), static_cast<int>(out.size()),
                  attrs.data(), static_cast<int>(attrs.size()), err, sizeof err))
    fail(ErrorKind::Range, err);
}

// Each op the library has a kernel for gets a cuda KernelFn in the registry.
void register_kernels(const tdq_cuda_api* api) {
  std::stringstream names(api->op_names());
  std::string name;
  auto& reg = op_registry();
  while (std::getline(names, name, ',')) {
    auto it = reg.find(name);
    if (it == reg.end() || it->second.cuda) continue;
    it->second.cuda = [api, name](OpCall& call, const ExecContext&) { launch(api, name, call); };
  }
}

Backend load() {
  Backend b;
  const char* off = std::getenv("TDQ_CUDA_DISABLE");
  if (off && *off && std::string(off) != "0") {
    b.reason = std::string("disabled by TDQ_CUDA_DISABLE=") + off;
    return b;
  }
  const char* env_path = std::getenv("TDQ_CUDA_LIB");
  const std::string path = env_path && *env_path ? env_path : self_dir() + "/libtdq_cuda.so";
  // The driver first: without it the library would load but every call fail.
  void* drv = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char* e = dlerror();
    b.reason = "this build has no CUDA backend (" + path + " could not be loaded: " + (e ? e : "?") +
               "; the CMake build makes it where nvcc is found)";
    if (drv) dlclose(drv);
    return b;
  }
  b.found = true;
  b.handle = h;
  auto get = reinterpret_cast<tdq_cuda_get_api_fn>(dlsym(h, "tdq_cuda_get_api"));
  const tdq_cuda_api* api = get ? get(TDQ_CUDA_ABI_VERSION) : nullptr;
  if (!api) {
    b.reason = path + " does not match this addon (ABI version " + std::to_string(TDQ_CUDA_ABI_VERSION) + "); rebuild tdq-native";
    return b;
  }
  b.info = api->build_info();
  if (!drv) {
    b.reason = "no NVIDIA driver (libcuda.so.1 could not be loaded)";
    return b;
  }
  char why[512] = {0};
  if (api->probe(why, sizeof why)) {
    b.reason = why;
    return b;
  }
  b.api = api;
  register_kernels(api);
  return b;  // both libraries stay loaded for the life of the process
}

Backend& backend() {
  static Backend b = load();
  return b;
}

const tdq_cuda_api* api_or_fail() {
  Backend& b = backend();
  if (!b.api) fail(ErrorKind::Type, "device 'cuda' is not available: ", b.reason, "; use device 'cpu'");
  return b.api;
}

// A symbol exported beside tdq_cuda_get_api (options, NCCL), or a TypeError
// naming it when the library (an older build) lacks it. Needs a working device.
template <typename Fn>
Fn optional_symbol(const char* name) {
  api_or_fail();
  auto f = reinterpret_cast<Fn>(dlsym(backend().handle, name));
  if (!f) fail(ErrorKind::Type, "cuda: ", name, " is missing from libtdq_cuda.so (an older build?); rebuild tdq-native");
  return f;
}

void check_call(int rc, const char* what, const char* err) {
  if (rc) fail(ErrorKind::Range, "cuda ", what, ": ", err);
}

}  // namespace

void cuda_set_option(const std::string& key, const std::string& value) {
  char err[1024] = {0};
  const int rc = optional_symbol<tdq_cuda_set_option_fn>("tdq_cuda_set_option")(key.c_str(), value.c_str(), err, sizeof err);
  if (rc) fail(ErrorKind::Range, "cuda option '", key, "' = '", value, "': ", err);
}

std::string cuda_get_option(const std::string& key) {
  const char* v = optional_symbol<tdq_cuda_get_option_fn>("tdq_cuda_get_option")(key.c_str());
  if (!v) fail(ErrorKind::Range, "cuda option '", key, "': unknown key (expected kernels, precision, int8 or libraries)");
  return v;
}

void cuda_nccl_unique_id(unsigned char* id) {
  char err[1024] = {0};
  check_call(optional_symbol<tdq_cuda_nccl_unique_id_fn>("tdq_cuda_nccl_unique_id")(id, err, sizeof err), "nccl unique id", err);
}

void cuda_nccl_init(const unsigned char* id, int rank, int size) {
  char err[1024] = {0};
  check_call(optional_symbol<tdq_cuda_nccl_init_fn>("tdq_cuda_nccl_init")(id, rank, size, err, sizeof err), "nccl init", err);
}

void cuda_nccl_allreduce_sum(float* data, size_t n) {
  char err[1024] = {0};
  check_call(optional_symbol<tdq_cuda_nccl_allreduce_sum_fn>("tdq_cuda_nccl_allreduce_sum")(data, n, err, sizeof err), "nccl allreduce", err);
}

void cuda_nccl_broadcast(void* data, size_t bytes, int root) {
  char err[1024] = {0};
  check_call(optional_symbol<tdq_cuda_nccl_broadcast_fn>("tdq_cuda_nccl_broadcast")(data, bytes, root, err, sizeof err), "nccl broadcast", err);
}

std::string cuda_nccl_info() {
  const char* v = optional_symbol<tdq_cuda_nccl_info_fn>("tdq_cuda_nccl_info")();
  return v ? v : "";
}

std::string cuda_probe() { return backend().reason; }
void cuda_require() { api_or_fail(); }
bool cuda_library_found() { return backend().found; }
std::string cuda_build_info() { return backend().info; }

void* cuda_malloc(size_t bytes) {
  const tdq_cuda_api* api = api_or_fail();
  void* p = nullptr;
  char err[1024] = {0};
  if (api->alloc(bytes, &p, err, sizeof err)) fail(ErrorKind::Range, err);
  return p;
}

void cuda_free(void* p) {
  if (p && backend().api) backend().api->release(p);
}

static void copy(void* dst, const void* src, size_t bytes, int kind) {
  const tdq_cuda_api* api = api_or_fail();
  char err[1024] = {0};
  if (api->memcpy(dst, src, bytes, kind, err, sizeof err)) fail(ErrorKind::Range, "cuda copy: ", err);
}
void cuda_memcpy_h2d(void* dst, const void* src, size_t bytes) { copy(dst, src, bytes, TDQ_CU_H2D); }
void cuda_memcpy_d2h(void* dst, const void* src, size_t bytes) { copy(dst, src, bytes, TDQ_CU_D2H); }
void cuda_memcpy_d2d(void* dst, const void* src, size_t bytes) { copy(dst, src, bytes, TDQ_CU_D2D); }

bool cuda_memory_stats(size_t* allocated, size_t* cached, size_t* device_free, size_t* device_total) {
  const tdq_cuda_api* api = backend().api;
  if (!api) return false;
  api->memory_stats(allocated, cached, device_free, device_total);
  return true;
}

void cuda_synchronize() {
  if (!backend().api) return;
  char err[1024] = {0};
  if (backend().api->synchronize(err, sizeof err)) fail(ErrorKind::Range, err);
}

}  // namespace tdq
