// Single-precision GEMM for the CPU backend, callable from any op (matmul,
// linear, conv2d, attention):
//
//   C = alpha * op(A) * op(B) + beta * C      op(X) = X or X^T
//
// All matrices are row-major; op(A) is (M, K), op(B) is (K, N), C is (M, N),
// and lda / ldb / ldc are the row strides of A, B, C as stored (so A is
// (M, lda) or, with transA, (K, lda)). As in BLAS, beta == 0 means C is
// written without being read (it may hold garbage or NaN).
#pragma once
#include <cstdint>

#include "../core/registry.h"

namespace tdq {

// The fast path: cache-blocked and packed, with a register-blocked FMA
// micro-kernel chosen by ctx.cpu_level (AVX-512, AVX2, or portable C++ for
// "scalar"). Parallel over blocks of C through ctx.parallel_for; when called
// from inside a parallel_for worker it runs on that thread alone.
void sgemm(const ExecContext& ctx, bool transA, bool transB, int64_t M, int64_t N, int64_t K,
           float alpha, const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
           float* C, int64_t ldc);

// `batch` independent GEMMs; matrix i starts at A + i*strideA (same for B, C).
// A stride of 0 reuses one matrix for every batch element (broadcasting).
// Small matrices are spread over threads one GEMM each; large ones are run in
// turn, each parallel inside.
void sgemm_batched(const ExecContext& ctx, int64_t batch, bool transA, bool transB, int64_t M,
                   int64_t N, int64_t K, float alpha, const float* A, int64_t lda, int64_t strideA,
                   const float* B, int64_t ldb, int64_t strideB, float beta, float* C, int64_t ldc,
                   int64_t strideC);

// A product with a fixed A and many B (a convolution's weights against each
// chunk of a batch): pack alpha*op(A) once with sgemm_pack_a into a buffer of
// sgemm_packed_a_size floats, then run sgemm_prepacked for each B. The packed
// layout belongs to the micro-kernel of ctx.cpu_level: pack and multiply
// under the same ctx.
int64_t sgemm_packed_a_size(const ExecContext& ctx, int64_t M, int64_t K);
void sgemm_pack_a(const ExecContext& ctx, bool transA, int64_t M, int64_t K, float alpha,
                  const float* A, int64_t lda, float* packed);
void sgemm_prepacked(const ExecContext& ctx, int64_t M, int64_t N, int64_t K, const float* packedA,
                     bool transB, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// A B that is never stored whole (implicit GEMM: a convolution's im2col
// matrix): fn writes the packed panels of rows [k0, k0+kc) and columns
// [j0, j0+nc) of B, exactly as packing a stored B would: panel q (columns
// j0+q*nr ..) at out + q*nr*kc, each k's nr values consecutive, zero past nc.
// nr is the micro-kernel's (gemm_nr). Called from several threads at once.
struct BPacker {
  void (*fn)(const void* self, int nr, int64_t k0, int64_t kc, int64_t j0, int64_t nc, float* out);
  const void* self;
};
int gemm_nr(const ExecContext& ctx);
// The rest of the micro-kernel's blocking, for code that writes sgemm_pack_a's
// layout itself: K blocks of gemm_kc rows one after the other, each
// ceil(M/mr)*mr x kc; in a block of kc rows starting at pc, row i, depth k sits
// at pc*Mpad + (i/mr)*mr*kc + (k-pc)*mr + i%mr.
int gemm_mr(const ExecContext& ctx);
int64_t gemm_kc(const ExecContext& ctx);
// sgemm_prepacked with B given by a packer.
void sgemm_prepacked_implicit_b(const ExecContext& ctx, int64_t M, int64_t N, int64_t K, const float* packedA,
                                const BPacker& b, float beta, float* C, int64_t ldc);

// `batch` products C_i (M, N) = A_i . B_i with both operands already packed,
// so nothing is packed per call: A_i by sgemm_pack_a (same ctx) at
// packedA + i*strideA, and B_i as its nr-wide column panels each whole over
// K, (ceil(N/nr), K, nr) floats at Bp + i*strideB, 64-byte aligned, zero past
// N: panel q, row k at Bp + i*strideB + (q*K + k)*nr. C_i (row stride ldc) at
// C + i*strideC is overwritten (beta = 0). Parallel over the batch and blocks
// of C (the Winograd convolution's 16 products).
void sgemm_batched_prepacked_panels(const ExecContext& ctx, int64_t batch, int64_t M, int64_t N, int64_t K,
                                    const float* packedA, int64_t strideA, const float* Bp, int64_t strideB,
                                    float* C, int64_t ldc, int64_t strideC);

// op(B) (K, N) packed into the B layout of sgemm_batched_prepacked_panels:
// (ceil(N/nr), K, nr) floats, zero past N (B is (K, ldb), or (N, ldb) with
// transB). For a matrix used as B against many A (a convolution's weights,
// transposed, against small feature maps).
int64_t sgemm_b_panels_size(const ExecContext& ctx, int64_t K, int64_t N);
void sgemm_pack_b_panels(const ExecContext& ctx, bool transB, int64_t K, int64_t N, const float* B, int64_t ldb,
                         float* out);

// A copy of ctx whose parallel_for runs inline on the calling thread: for work
// that already has a thread to itself (one sample of a batch, one GEMM of a
// batch), so that sgemm runs it as a single task instead of cutting it up for
// threads it will not get.
ExecContext serial_context(const ExecContext& ctx);

// The reference: a plain triple loop accumulating in double, single-threaded.
// Slow; for tests and as the definition the fast path must agree with.
void sgemm_ref(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
               const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
               int64_t ldc);

// ---- internals shared by gemm.cpp and the per-ISA kernel files -------------
namespace gemm_detail {

// A micro-kernel computes one MR x NR tile of C from packed panels:
//   C[i][j] = beta*C[i][j] + sum_k a[k*MR + i] * b[k*NR + j]   (i < MR, j < NR)
// with C's rows ldc apart (beta == 0: C is not read). `b` is 64-byte aligned.
using MicroKernel = void (*)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                             float beta);

struct GemmKernel {
  int mr, nr;          // register tile
  int64_t mc, kc, nc;  // cache blocks: A block mc x kc and B block kc x nc, packed per task (L2)
  MicroKernel ukr;
};

constexpr int kMaxTile = 16 * 32;  // the largest mr * nr of any kernel

const GemmKernel& kernel_portable();
const GemmKernel& kernel_avx2();    // defined in gemm_avx2.cpp
const GemmKernel& kernel_avx512();  // defined in gemm_avx512.cpp

}  // namespace gemm_detail
}  // namespace tdq
