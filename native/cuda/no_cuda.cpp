// Device-memory entry points of a CPU-only build: each one is a clear error.
#include "cuda_memory.h"

#ifndef TDQ_WITH_CUDA
#include "../core/error.h"

namespace tdq {
static const char* kNoCuda =
    "the CUDA backend is not built into this copy of tdq-native (nvcc, cuBLAS and cuDNN must be "
    "found when it is installed); use device 'cpu'";
void* cuda_malloc(size_t) { fail(ErrorKind::Type, kNoCuda); }
void cuda_memcpy_h2d(void*, const void*, size_t) { fail(ErrorKind::Type, kNoCuda); }
void cuda_memcpy_d2h(void*, const void*, size_t) { fail(ErrorKind::Type, kNoCuda); }
}  // namespace tdq
#endif
