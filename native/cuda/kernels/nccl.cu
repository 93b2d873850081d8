// The GPU data-parallel communicator (tdq_cuda_api.h, tdq_cuda_nccl_*): NCCL
// through dlopen, with our own declarations of the few functions used,
// written from NCCL's public API documentation (ncclResult_t and the enums are
// ints, ncclComm_t an opaque pointer, ncclUniqueId 128 bytes passed by value).
// Collectives run on the backend's stream, so they follow the kernels that
// made their inputs without a host synchronisation.
#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <mutex>

#include "common.cuh"

namespace tdqcu {
namespace {

struct UniqueId {
  unsigned char internal[TDQ_CUDA_NCCL_ID_BYTES];
};
using ncclComm = void*;
constexpr int kNcclFloat32 = 7, kNcclUint8 = 1;  // ncclDataType_t
constexpr int kNcclSum = 0;                      // ncclRedOp_t

struct Nccl {
  void* lib = nullptr;
  std::string where, why;
  int version = 0;
  int (*get_version)(int*) = nullptr;
  int (*get_unique_id)(UniqueId*) = nullptr;
  int (*comm_init_rank)(ncclComm*, int, UniqueId, int) = nullptr;
  int (*comm_destroy)(ncclComm) = nullptr;
  int (*all_reduce)(const void*, void*, size_t, int, int, ncclComm, cudaStream_t) = nullptr;
  int (*broadcast)(const void*, void*, size_t, int, int, ncclComm, cudaStream_t) = nullptr;
  const char* (*error_string)(int) = nullptr;
  ncclComm comm = nullptr;
  int rank = 0, size = 1;
};

std::mutex mu;

template <typename F> bool sym(void* lib, const char* name, F& f) {
  f = reinterpret_cast<F>(dlsym(lib, name));
  return f != nullptr;
}

Nccl& nccl() {
  static Nccl* n = [] {
    auto* c = new Nccl;
    for (const char* name : {"libnccl.so.2", "libnccl.so"}) {
      if ((c->lib = dlopen(name, RTLD_NOW | RTLD_LOCAL))) {
        c->where = name;
        break;
      }
      const char* e = dlerror();
      c->why = e ? e : name;
    }
    if (!c->lib) return c;
    if (!sym(c->lib, "ncclGetVersion", c->get_version) || !sym(c->lib, "ncclGetUniqueId", c->get_unique_id) ||
        !sym(c->lib, "ncclCommInitRank", c->comm_init_rank) || !sym(c->lib, "ncclCommDestroy", c->comm_destroy) ||
        !sym(c->lib, "ncclAllReduce", c->all_reduce) || !sym(c->lib, "ncclBroadcast", c->broadcast) ||
        !sym(c->lib, "ncclGetErrorString", c->error_string)) {
      c->why = c->where + " lacks an NCCL function this backend uses";
      c->lib = nullptr;
      return c;
    }
    c->get_version(&c->version);
    return c;
  }();
  return *n;
}

void put(char* err, size_t n, const std::string& s) {
  if (err && n) std::snprintf(err, n, "%s", s.c_str());
}

// Runs f (which returns an ncclResult_t); 0, or 1 with the message in err.
template <typename F> int guarded(const char* what, bool need_comm, char* err, size_t n, F f) {
  std::lock_guard<std::mutex> lk(mu);
  Nccl& c = nccl();
  if (!c.lib) {
    put(err, n, std::string("NCCL is not available: ") + c.why + " (install nvidia-nccl-cu13 and put its lib/ on LD_LIBRARY_PATH)");
    return 1;
  }
  if (need_comm && !c.comm) {
    put(err, n, std::string(what) + ": the NCCL communicator is not initialised (tdq_cuda_nccl_init first)");
    return 1;
  }
  try {
    const int st = f(c);
    if (st == 0) return 0;
    put(err, n, std::string(what) + " failed: " + c.error_string(st));
  } catch (const std::exception& e) {
    put(err, n, std::string(what) + ": " + e.what());
  }
  return 1;
}

}  // namespace
}  // namespace tdqcu

using tdqcu::Nccl;

extern "C" __attribute__((visibility("default"))) int tdq_cuda_nccl_unique_id(unsigned char* id, char* err,
                                                                              size_t errlen) {
  return tdqcu::guarded("ncclGetUniqueId", false, err, errlen, [&](Nccl& c) {
    tdqcu::UniqueId u{};
    const int st = c.get_unique_id(&u);
    if (st == 0) std::memcpy(id, u.internal, sizeof u.internal);
    return st;
  });
}

extern "C" __attribute__((visibility("default"))) int tdq_cuda_nccl_init(const unsigned char* id, int rank, int size,
                                                                         char* err, size_t errlen) {
  if (size < 1 || rank < 0 || rank >= size) {
    tdqcu::put(err, errlen, "tdq_cuda_nccl_init: rank " + std::to_string(rank) + " is outside 0.." + std::to_string(size - 1));
    return 1;
  }
  return tdqcu::guarded("ncclCommInitRank", false, err, errlen, [&](Nccl& c) {
    if (c.comm) throw tdqcu::CuError("the NCCL communicator is already initialised (rank " + std::to_string(c.rank) +
                                     " of " + std::to_string(c.size) + ")");
    tdqcu::UniqueId u{};
    std::memcpy(u.internal, id, sizeof u.internal);
    tdqcu::backend_stream();  // the runtime's context first
    const int st = c.comm_init_rank(&c.comm, size, u, rank);
    if (st == 0) c.rank = rank, c.size = size;
    else c.comm = nullptr;
    return st;
  });
}

extern "C" __attribute__((visibility("default"))) int tdq_cuda_nccl_allreduce_sum(float* data, size_t n, char* err,
                                                                                  size_t errlen) {
  return tdqcu::guarded("ncclAllReduce", true, err, errlen, [&](Nccl& c) {
    return n ? c.all_reduce(data, data, n, tdqcu::kNcclFloat32, tdqcu::kNcclSum, c.comm, tdqcu::backend_stream()) : 0;
  });
}

extern "C" __attribute__((visibility("default"))) int tdq_cuda_nccl_broadcast(void* data, size_t bytes, int root,
                                                                              char* err, size_t errlen) {
  return tdqcu::guarded("ncclBroadcast", true, err, errlen, [&](Nccl& c) {
    if (root < 0 || root >= c.size) throw tdqcu::CuError("root " + std::to_string(root) + " is not a rank");
    return bytes ? c.broadcast(data, data, bytes, tdqcu::kNcclUint8, root, c.comm, tdqcu::backend_stream()) : 0;
  });
}

extern "C" __attribute__((visibility("default"))) const char* tdq_cuda_nccl_info(void) {
  static std::string s;
  std::lock_guard<std::mutex> lk(tdqcu::mu);
  Nccl& c = tdqcu::nccl();
  if (!c.lib) s = "NCCL absent (" + c.why + ")";
  else
    s = "NCCL " + std::to_string(c.version / 10000) + "." + std::to_string(c.version / 100 % 100) + "." +
        std::to_string(c.version % 100) + " (" + c.where + ")" +
        (c.comm ? ", rank " + std::to_string(c.rank) + " of " + std::to_string(c.size) : std::string(", not initialised"));
  return s.c_str();
}

extern "C" __attribute__((visibility("default"))) int tdq_cuda_nccl_finalize(char* err, size_t errlen) {
  return tdqcu::guarded("ncclCommDestroy", false, err, errlen, [&](Nccl& c) {
    if (!c.comm) return 0;
    cudaStreamSynchronize(tdqcu::backend_stream());
    const int st = c.comm_destroy(c.comm);
    c.comm = nullptr, c.rank = 0, c.size = 1;
    return st;
  });
}
