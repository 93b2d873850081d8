// Helpers of the CUDA-vs-CPU tests (tdq_cuda_test): random CPU tensors, the
// CPU reference run of an op (scalar level), the same op run on the device
// through libtdq_cuda.so's C interface, and the comparison of the two. Kept
// in one header so that each test source runs its cases the same way.
#pragma once
#include <dlfcn.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/registry.h"
#include "cuda/tdq_cuda_api.h"

namespace cudatest {
using namespace tdq;

inline const tdq_cuda_api*& api() {
  static const tdq_cuda_api* a = nullptr;
  return a;
}
inline const std::shared_ptr<MemoryCounter>& counter() {
  static auto c = std::make_shared<MemoryCounter>();
  return c;
}

// Loads libtdq_cuda.so (argv[1], $TDQ_CUDA_LIB, or next to this program) and
// probes the device. 0 when usable; else 2, with a SKIP line printed.
inline int load_api(int argc, char** argv, bool verbose, void** handle = nullptr) {
  std::string lib;
  if (argc > 1) lib = argv[1];
  else if (const char* e = std::getenv("TDQ_CUDA_LIB")) lib = e;
  else {
    char exe[4096] = {0};
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    std::string p = n > 0 ? std::string(exe, static_cast<size_t>(n)) : std::string("./x");
    lib = p.substr(0, p.rfind('/')) + "/libtdq_cuda.so";
  }
  void* h = dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    std::printf("SKIP: cannot load %s: %s\n", lib.c_str(), dlerror());
    return 2;
  }
  auto get = reinterpret_cast<tdq_cuda_get_api_fn>(dlsym(h, "tdq_cuda_get_api"));
  api() = get ? get(TDQ_CUDA_ABI_VERSION) : nullptr;
  if (!api()) {
    std::printf("SKIP: %s has no matching tdq_cuda_get_api\n", lib.c_str());
    return 2;
  }
  if (handle) *handle = h;
  if (verbose) std::printf("library: %s\nbuild: %s\nops: %s\n", lib.c_str(), api()->build_info(), api()->op_names());
  char why[512] = {0};
  if (api()->probe(why, sizeof why)) {
    std::printf("SKIP: no usable device: %s\n", why);
    return 2;
  }
  return 0;
}

struct Rng {
  std::mt19937 gen{1234};
  Tensor normal(const Shape& s, float sd = 1.f, float mean = 0.f) {
    Tensor t = alloc_tensor(s, DType::f32, Device::cpu, counter());
    std::normal_distribution<float> d(mean, sd);
    for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = d(gen);
    return t;
  }
  Tensor uniform(const Shape& s, float lo, float hi) {
    Tensor t = alloc_tensor(s, DType::f32, Device::cpu, counter());
    std::uniform_real_distribution<float> d(lo, hi);
    for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = d(gen);
    return t;
  }
};

using AttrList = std::vector<std::pair<std::string, AttrValue>>;

inline Attrs make_attrs(const std::string& op, const AttrList& l) {
  Attrs a;
  a.op = op;
  for (auto& kv : l) a.values[kv.first] = kv.second;
  return a;
}

// The CPU op at the scalar (reference) level; in-place ops update `in`.
inline std::vector<Tensor> run_cpu(const std::string& op, const std::vector<Tensor>& in, const Attrs& a, ThreadPool& pool) {
  const OpDef& def = find_op(op);
  std::vector<TensorMeta> metas = def.infer(in, a);
  OpCall call{in, a, {}};
  for (auto& m : metas) call.outputs.push_back(alloc_tensor(m.shape, m.dtype, Device::cpu, counter()));
  ExecContext ctx;
  ctx.pool = &pool;
  ctx.cpu_level = CpuLevel::scalar;
  ctx.counter = counter();
  def.cpu(call, ctx);
  return call.outputs;
}

inline Tensor clone(const Tensor& t) {
  Tensor c = alloc_tensor(t.shape, t.dtype, Device::cpu, counter());
  if (t.nbytes()) std::memcpy(c.storage->data, t.storage->data, t.nbytes());
  return c;
}

inline void check(int rc, const char* what, const char* err) {
  if (rc) throw std::runtime_error(std::string(what) + ": " + err);
}

struct DevBuf {
  void* p = nullptr;
  explicit DevBuf(size_t bytes) {
    char err[1024] = {0};
    check(api()->alloc(bytes, &p, err, sizeof err), "alloc", err);
  }
  ~DevBuf() { api()->release(p); }
};

inline tdq_cu_tensor desc(const Tensor& t, void* data) {
  tdq_cu_tensor d{};
  d.data = data;
  d.dtype = static_cast<int>(t.dtype);
  d.ndim = static_cast<int>(t.shape.size());
  for (int i = 0; i < d.ndim; ++i) d.shape[i] = t.shape[i];
  return d;
}

// Runs op on the device with copies of `in`; returns the outputs (shaped like
// `like`) followed by the inputs as the op left them, all as CPU tensors.
inline std::vector<Tensor> run_cuda(const std::string& op, const std::vector<Tensor>& in, const Attrs& a,
                                    const std::vector<Tensor>& like) {
  char err[1024] = {0};
  std::vector<std::unique_ptr<DevBuf>> bufs;
  std::vector<tdq_cu_tensor> din, dout;
  for (const auto& t : in) {
    if (!t.defined()) {
      din.push_back(tdq_cu_tensor{});
      continue;
    }
    bufs.emplace_back(new DevBuf(std::max<size_t>(t.nbytes(), 4)));
    check(api()->memcpy(bufs.back()->p, t.storage->data, t.nbytes(), TDQ_CU_H2D, err, sizeof err), "h2d", err);
    din.push_back(desc(t, bufs.back()->p));
  }
  for (const auto& t : like) {
    bufs.emplace_back(new DevBuf(std::max<size_t>(t.nbytes(), 4)));
    dout.push_back(desc(t, bufs.back()->p));
  }
  std::vector<tdq_cu_attr> attrs;
  for (const auto& kv : a.values) {
    tdq_cu_attr c{};
    c.key = kv.first.c_str();
    if (auto d = std::get_if<double>(&kv.second)) c.kind = TDQ_CU_ATTR_NUM, c.num = *d;
    else if (auto b = std::get_if<bool>(&kv.second)) c.kind = TDQ_CU_ATTR_BOOL, c.num = *b;
    else if (auto s = std::get_if<std::string>(&kv.second)) c.kind = TDQ_CU_ATTR_STR, c.str = s->c_str();
    else if (auto v = std::get_if<std::vector<double>>(&kv.second))
      c.kind = TDQ_CU_ATTR_NUMS, c.nums = v->data(), c.n_nums = static_cast<int>(v->size());
    attrs.push_back(c);
  }
  check(api()->launch(op.c_str(), din.data(), static_cast<int>(din.size()), dout.data(), static_cast<int>(dout.size()),
                      attrs.data(), static_cast<int>(attrs.size()), err, sizeof err),
        "launch", err);
  check(api()->synchronize(err, sizeof err), "synchronize", err);
  std::vector<Tensor> outs;
  auto back = [&](const Tensor& like_t, void* data) {
    Tensor t = alloc_tensor(like_t.shape, like_t.dtype, Device::cpu, counter());
    check(api()->memcpy(t.storage->data, data, t.nbytes(), TDQ_CU_D2H, err, sizeof err), "d2h", err);
    outs.push_back(t);
  };
  for (size_t k = 0; k < like.size(); ++k) back(like[k], dout[k].data);
  for (size_t k = 0; k < in.size(); ++k) {
    if (in[k].defined()) back(in[k], din[k].data);
    else outs.push_back(Tensor{});
  }
  return outs;
}

inline std::string shapes_of(const std::vector<Tensor>& in) {
  std::string s;
  for (const auto& t : in) s += (s.empty() ? "" : " ") + (t.defined() ? shape_str(t.shape) : std::string("-"));
  return s;
}

// One case: atol = rtol = 0 asks for the CPU's bytes exactly (any dtype);
// otherwise float32 within atol + rtol * |cpu|. `inplace` lists the inputs the
// op updates, compared after the outputs.
struct Case {
  std::string name, op;
  std::function<std::vector<Tensor>(Rng&)> inputs;
  AttrList attrs;
  double atol, rtol;
  std::vector<int> inplace = {};
};

// Runs one case on both devices and prints its line; true when it passed.
inline bool run_case(const Case& c, Rng& rng, ThreadPool& pool) {
  try {
    std::vector<Tensor> in = c.inputs(rng), cpu_in;
    for (const auto& t : in) cpu_in.push_back(t.defined() ? clone(t) : t);
    const Attrs a = make_attrs(c.op, c.attrs);
    std::vector<Tensor> ref = run_cpu(c.op, cpu_in, a, pool);
    std::vector<Tensor> got = run_cuda(c.op, in, a, ref);
    std::vector<std::pair<Tensor, Tensor>> pairs;
    for (size_t k = 0; k < ref.size(); ++k) pairs.push_back({ref[k], got[k]});
    for (int i : c.inplace) pairs.push_back({cpu_in[i], got[ref.size() + i]});
    const bool exact = c.atol == 0 && c.rtol == 0;
    double worst = 0, max_abs = 0;
    int64_t diff_bytes = 0;
    for (auto& [e_t, g_t] : pairs) {
      if (exact) {
        const auto *e = static_cast<const uint8_t*>(e_t.storage->data), *g = static_cast<const uint8_t*>(g_t.storage->data);
        for (size_t i = 0; i < e_t.nbytes(); ++i) diff_bytes += e[i] != g[i];
        continue;
      }
      for (int64_t i = 0; i < e_t.numel(); ++i) {
        const double e = e_t.f32()[i], g = g_t.f32()[i];
        if (std::isnan(e) != std::isnan(g)) worst = INFINITY;
        if (std::isnan(e)) continue;
        const double d = std::fabs(g - e);
        max_abs = std::max(max_abs, d);
        worst = std::max(worst, d / (c.atol + c.rtol * std::fabs(e)));
      }
    }
    const bool ok = exact ? diff_bytes == 0 : worst <= 1.0;
    const char* dt = ref.empty() ? "in-place" : dtype_name(ref[0].dtype);
    if (exact)
      std::printf("%s %-20s %-28s %s exact: %lld bytes differ  [%s]\n", ok ? "ok  " : "FAIL", c.op.c_str(),
                  c.name.c_str(), dt, static_cast<long long>(diff_bytes), shapes_of(in).c_str());
    else
      std::printf("%s %-20s %-28s %s max_abs=%.3g worst/tol=%.3g  [%s]\n", ok ? "ok  " : "FAIL", c.op.c_str(),
                  c.name.c_str(), dt, max_abs, worst, shapes_of(in).c_str());
    return ok;
  } catch (const std::exception& e) {
    std::printf("FAIL %-20s %-28s error: %s\n", c.op.c_str(), c.name.c_str(), e.what());
    return false;
  }
}

}  // namespace cudatest
