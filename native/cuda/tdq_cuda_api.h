/* The C interface between the addon (CPU code, always built) and the CUDA
 * backend, a separate shared library (libtdq_cuda.so) that the addon dlopens.
 * Plain C types only: the library is built by nvcc with the static CUDA
 * runtime, so only the driver (libcuda.so.1) is needed at run time, and a
 * machine without one never loads any CUDA code into the addon's process
 * before the loader has checked for the driver.
 *
 * Every call that can fail returns 0 on success, or nonzero with a message
 * (NUL-terminated, truncated to errlen) in err. */
#ifndef TDQ_CUDA_API_H
#define TDQ_CUDA_API_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TDQ_CUDA_ABI_VERSION 1
#define TDQ_CUDA_MAX_DIMS 8

/* dtype codes: as tdq::DType (f32 = 0, f16 = 1, i8 = 2, u8 = 3, i32 = 4) */
typedef struct tdq_cu_tensor {
  void* data; /* device pointer; NULL for an absent optional input */
  int dtype;
  int ndim;
  int64_t shape[TDQ_CUDA_MAX_DIMS];
} tdq_cu_tensor;

enum { TDQ_CU_ATTR_NUM = 0, TDQ_CU_ATTR_BOOL = 1, TDQ_CU_ATTR_STR = 2, TDQ_CU_ATTR_NUMS = 3 };
typedef struct tdq_cu_attr {
  const char* key;
  int kind;
  double num; /* NUM, BOOL (0 / 1) */
  const char* str; /* STR */
  const double* nums; /* NUMS */
  int n_nums;
} tdq_cu_attr;

enum { TDQ_CU_H2D = 1, TDQ_CU_D2H = 2, TDQ_CU_D2D = 3 };

typedef struct tdq_cuda_api {
  int abi_version;
  /* One line: CUDA version, architectures, cuBLAS / cuDNN at build time. */
  const char* (*build_info)(void);
  /* 0 when a device works; else why not (no device, driver too old...). */
  int (*probe)(char* why, size_t whylen);
  /* Caching allocator: freed blocks return to a cache at once and are reused;
   * on out of memory the cache is emptied and the allocation retried once. */
  int (*alloc)(size_t bytes, void** out, char* err, size_t errlen);
  void (*release)(void* p);
  void (*empty_cache)(void);
  void (*memory_stats)(size_t* allocated, size_t* cached, size_t* device_free, size_t* device_total);
  /* Copies are ordered on the backend's stream; D2H waits for completion. */
  int (*memcpy)(void* dst, const void* src, size_t bytes, int kind, char* err, size_t errlen);
  int (*synchronize)(char* err, size_t errlen);
  /* Comma-separated names of the ops this library has kernels for. */
  const char* (*op_names)(void);
  /* Runs op `name` on the backend's stream. Inputs are validated by the
   * caller (the op's infer function); outputs are allocated by the caller. */
  int (*launch)(const char* name, const tdq_cu_tensor* in, int nin, const tdq_cu_tensor* out, int nout,
                const tdq_cu_attr* attrs, int nattrs, char* err, size_t errlen);
} tdq_cuda_api;

/* The library's one exported symbol. NULL when abi_version differs. */
const tdq_cuda_api* tdq_cuda_get_api(int abi_version);
typedef const tdq_cuda_api* (*tdq_cuda_get_api_fn)(int);

/* Run-time options, exported beside tdq_cuda_get_api (look them up with dlsym;
 * a library without them has only the defaults). Global to the process.
 *   "kernels":   "auto" (default: cuBLAS / cuDNN where they load, our own
 *                kernels otherwise) or "own" (always our own kernels; also
 *                env TDQ_CUDA_KERNELS=own)
 *   "precision": "fp32" (default), "fp16" or "bf16": matmuls and convolutions
 *                round their operands to that type and accumulate in fp32
 *                (tensors stay float32; env TDQ_CUDA_PRECISION)
 *   "int8":      "wmma" (default: 8-bit tensor cores) or "dp4a": the integer
 *                GEMM of qlinear / qconv2d (same results; env TDQ_CUDA_INT8)
 * tdq_cuda_set_option returns 0, or nonzero with the reason in err.
 * tdq_cuda_get_option returns the value of "kernels" / "precision" / "int8", or for
 * "libraries" one line saying what of cuBLAS / cuDNN was loaded from where (or
 * why not); NULL for an unknown key. */
int tdq_cuda_set_option(const char* key, const char* value, char* err, size_t errlen);
const char* tdq_cuda_get_option(const char* key);
typedef int (*tdq_cuda_set_option_fn)(const char*, const char*, char*, size_t);
typedef const char* (*tdq_cuda_get_option_fn)(const char*);

/* The data-parallel communicator on the GPU (the device counterpart of
 * native/dist/comm.h's MPI collectives): NCCL, loaded at run time
 * (libnccl.so.2, e.g. from the nvidia-nccl-cu13 Python package), one rank per
 * process and device. Exported beside tdq_cuda_get_api (dlsym).
 *   tdq_cuda_nccl_unique_id: on rank 0, the 128-byte id that every rank then
 *     passes to init (send it with the CPU communicator's broadcast).
 *   tdq_cuda_nccl_init: joins the communicator (blocks until all `size` ranks
 *     have joined); once per process.
 *   tdq_cuda_nccl_allreduce_sum: in place, the sum over ranks of n floats of
 *     device memory, queued on the backend's stream after the kernels already
 *     queued (the gradients), asynchronous like them (synchronize to wait).
 *   tdq_cuda_nccl_broadcast: in place, root's bytes everywhere (same ordering).
 *   tdq_cuda_nccl_info: one line (version, rank / size, or why NCCL is absent).
 *   tdq_cuda_nccl_finalize: leaves the communicator.
 * Each returns 0, or nonzero with the reason in err. */
#define TDQ_CUDA_NCCL_ID_BYTES 128
int tdq_cuda_nccl_unique_id(unsigned char* id, char* err, size_t errlen);
int tdq_cuda_nccl_init(const unsigned char* id, int rank, int size, char* err, size_t errlen);
int tdq_cuda_nccl_allreduce_sum(float* data, size_t n, char* err, size_t errlen);
int tdq_cuda_nccl_broadcast(void* data, size_t bytes, int root, char* err, size_t errlen);
const char* tdq_cuda_nccl_info(void);
int tdq_cuda_nccl_finalize(char* err, size_t errlen);
typedef int (*tdq_cuda_nccl_unique_id_fn)(unsigned char*, char*, size_t);
typedef int (*tdq_cuda_nccl_init_fn)(const unsigned char*, int, int, char*, size_t);
typedef int (*tdq_cuda_nccl_allreduce_sum_fn)(float*, size_t, char*, size_t);
typedef int (*tdq_cuda_nccl_broadcast_fn)(void*, size_t, int, char*, size_t);
typedef const char* (*tdq_cuda_nccl_info_fn)(void);
typedef int (*tdq_cuda_nccl_finalize_fn)(char*, size_t);

#ifdef __cplusplus
}
#endif
#endif
