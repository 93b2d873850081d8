// Device memory and the CUDA backend, as the CPU code sees them. The backend
// is a separate library (libtdq_cuda.so, next to the addon) loaded on first
// use by cuda_loader.cpp: a copy built without nvcc, or a machine without a
// driver or device, gets a clear error naming the reason, never a crash.
#pragma once
#include <cstddef>
#include <string>

namespace tdq {
void* cuda_malloc(size_t bytes);  // RangeError "out of memory: ..." when the device is full
void cuda_free(void* p);          // back to the backend's cache at once
void cuda_memcpy_h2d(void* dst, const void* src, size_t bytes);
void cuda_memcpy_d2h(void* dst, const void* src, size_t bytes);
void cuda_synchronize();
// Empty string when a device works; otherwise why not (no library, no driver,
// no device...). Loads and probes the backend once; later calls are cheap.
std::string cuda_probe();
// Throws TypeError with cuda_probe()'s reason unless a device works.
void cuda_require();
bool cuda_library_found();       // libtdq_cuda.so was found and loaded
std::string cuda_build_info();  // the library's one-line description, or ""
// Bytes held by live tensors and by the allocator's cache, and the device's
// free / total; false (nothing written) unless the backend is loaded and works.
bool cuda_memory_stats(size_t* allocated, size_t* cached, size_t* device_free, size_t* device_total);
}  // namespace tdq
