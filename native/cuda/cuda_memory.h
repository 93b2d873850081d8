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
void cuda_memcpy_d2d(void* dst, const void* src, size_t bytes);  // ordered on the backend's stream
void cuda_synchronize();
// The library's run-time options (tdq_cuda_set_option / _get_option in
// tdq_cuda_api.h: kernels, precision, int8; get also "libraries"). Need a
// working device; RangeError naming key, value and the library's reason.
void cuda_set_option(const std::string& key, const std::string& value);
std::string cuda_get_option(const std::string& key);
// NCCL through the library (tdq_cuda_nccl_* in tdq_cuda_api.h): RangeError
// with the library's reason when NCCL is absent or a call fails.
void cuda_nccl_unique_id(unsigned char* id);  // TDQ_CUDA_NCCL_ID_BYTES bytes
void cuda_nccl_init(const unsigned char* id, int rank, int size);
void cuda_nccl_allreduce_sum(float* data, size_t n);  // in place, device memory, on the stream
void cuda_nccl_broadcast(void* data, size_t bytes, int root);
std::string cuda_nccl_info();
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
