// TDQ_HD marks small inline functions that the CUDA kernels share with the CPU
// ops (Philox, half conversion), so both devices run the same source.
#pragma once
#if defined(__CUDACC__)
#define TDQ_HD __host__ __device__
#else
#define TDQ_HD
#endif
