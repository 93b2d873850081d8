// Device memory entry points. Without the CUDA backend they throw a clear
// error, so asking for a cuda tensor on a CPU-only build is a JS exception.
#pragma once
#include <cstddef>
#include <string>

namespace tdq {
#ifdef TDQ_WITH_CUDA
void* cuda_malloc(size_t bytes);
void cuda_free(void* p);
void cuda_memcpy_h2d(void* dst, const void* src, size_t bytes);
void cuda_memcpy_d2h(void* dst, const void* src, size_t bytes);
void cuda_synchronize();
// Empty string when a device works; otherwise why not (no driver, no device...).
std::string cuda_probe();
#else
void* cuda_malloc(size_t bytes);
inline void cuda_free(void*) {}
void cuda_memcpy_h2d(void* dst, const void* src, size_t bytes);
void cuda_memcpy_d2h(void* dst, const void* src, size_t bytes);
inline void cuda_synchronize() {}
inline std::string cuda_probe() { return "this build has no CUDA backend (nvcc, cuBLAS or cuDNN were not found at build time)"; }
#endif
}  // namespace tdq
