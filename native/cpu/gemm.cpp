// SGEMM: the reference triple loop and the fast blocked/packed driver.
//
// The fast path follows the usual structure of high-performance GEMMs (Goto /
// BLIS): C is computed in blocks so that each level of the loop nest reuses
// data from one cache level.
//
//   C is cut into tasks (an M block x a range of N), run in parallel; each task:
//     for pc in K step KC
//       for jc in its N range step NC
//         pack B[pc:, jc:] into NR-wide column panels          (L2)
//         for each M block of the task (MC rows):
//           pack alpha*A[ic:, pc:] into MR-tall row panels     (L2)
//           for each NR panel:                                  (the B micro-panel stays in L1)
//             for each MR panel: micro-kernel, an MR x NR tile of C kept in registers
//
// Packing makes the micro-kernel's loads contiguous whatever the transposes
// and leading dimensions are, and pads the M/N edges with zeros so the kernel
// always computes full tiles; partial tiles are computed into a small buffer
// and only their valid part is written to C. A matrix used against many B
// (convolution weights) can be packed once up front (sgemm_pack_a). The
// micro-kernels live in gemm_avx2.cpp / gemm_avx512.cpp, compiled for those
// instruction sets through target attributes; the portable one is below.
//
// Tried and dropped: products of at most 8 rows (a Linear layer at batch 1)
// reading B in place, as dot products, instead of packing it: faster, but
// a row of C then depends on how many rows the product has (another order of
// the sums), and the step table of a TDQ model (its MLP run on all timesteps
// at once) no longer matched the MLP run per batch bit for bit.
// Tried and dropped (AMD Zen 4, measured): reading a row-major B in place
// instead of packing it (slower as soon as ldb is a multiple of 4 KiB: the
// rows of a micro-panel then collide in L1), and a 12 x 32 AVX-512 tile (its
// last panel is two-thirds empty when M = 64).
#include "gemm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include <immintrin.h>  // SSE only (baseline x86-64) outside the kernel files

namespace tdq {

void sgemm_ref(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
               const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
               int64_t ldc) {
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < K; ++k) {
        const float a = transA ? A[k * lda + i] : A[i * lda + k];
        const float b = transB ? B[j * ldb + k] : B[k * ldb + j];
        acc += static_cast<double>(a) * b;
      }
      float& c = C[i * ldc + j];
      // beta == 0 must not read C (BLAS semantics: C may be uninitialised).
      c = static_cast<float>(alpha * acc + (beta == 0.f ? 0.0 : static_cast<double>(beta) * c));
    }
  }
}

namespace gemm_detail {

// The portable kernel (the "scalar" CPU level): plain loops that the compiler
// vectorises for baseline x86-64 (SSE2); 4 x 8 fills 8 of its 16 registers.
namespace {
constexpr int kPortMR = 4, kPortNR = 8;
void ukr_portable(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float beta) {
  float acc[kPortMR][kPortNR] = {};
  for (int64_t k = 0; k < kc; ++k, a += kPortMR, b += kPortNR)
    for (int i = 0; i < kPortMR; ++i)
      for (int j = 0; j < kPortNR; ++j) acc[i][j] += a[i] * b[j];
  for (int i = 0; i < kPortMR; ++i)
    for (int j = 0; j < kPortNR; ++j)
      c[i * ldc + j] = beta == 0.f ? acc[i][j] : beta * c[i * ldc + j] + acc[i][j];
}
}  // namespace

const GemmKernel& kernel_portable() {
  static const GemmKernel k{kPortMR, kPortNR, 128, 256, 512, ukr_portable};
  return k;
}

}  // namespace gemm_detail

namespace {
using gemm_detail::GemmKernel;
using gemm_detail::kMaxTile;

const GemmKernel& kernel_for(CpuLevel level) {
  switch (level) {
    case CpuLevel::avx512: return gemm_detail::kernel_avx512();
    case CpuLevel::avx2: return gemm_detail::kernel_avx2();
    default: return gemm_detail::kernel_portable();
  }
}

// Packing buffers, one pair per thread, grown on demand and kept: a GEMM-heavy
// training step would otherwise allocate them thousands of times.
struct PackBuffer {
  float* p = nullptr;
  size_t cap = 0;
  ~PackBuffer() { std::free(p); }
  float* get(size_t n) {
    if (n > cap) {
      std::free(p);
      size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
      p = static_cast<float*>(std::aligned_alloc(64, bytes));
      cap = p ? n : 0;
      TDQ_CHECK(p, "sgemm: out of memory for a ", bytes, "-byte packing buffer");
    }
    return p;
  }
};
thread_local PackBuffer t_pack_a, t_pack_b;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Packing. A block of op(A) (rows i, depth k) or of op(B) (depth k, columns
// j) is copied into panels W wide: panel p holds, for each k, the W values of
// indices p*W .. p*W+W-1 as consecutive floats, zero past `cnt`. In memory the
// source is either "k-major" (each k is a row of contiguous indices: A^T, B)
// or "index-major" (each index is a row over k: A, B^T); both cases walk the
// source row by row so every cache line read is used whole.
template <int W>
void pack_panels_w(const float* src, int64_t ld, bool k_major, int64_t idx0, int64_t cnt,
                   int64_t k0, int64_t kc, float scale, float* out) {
  const int64_t full = cnt / W * W;
  if (k_major) {
    for (int64_t k = 0; k < kc; ++k) {
      const float* row = src + (k0 + k) * ld + idx0;
      float* d = out + k * W;
      for (int64_t p = 0; p < full; p += W, d += W * kc)
        for (int r = 0; r < W; ++r) d[r] = scale * row[p + r];
      if (full < cnt) {
        for (int64_t r = 0; r < cnt - full; ++r) d[r] = scale * row[full + r];
        for (int64_t r = cnt - full; r < W; ++r) d[r] = 0.f;
      }
    }
  } else {
    // A transpose: rows of the source become columns of the panel. Four rows
    // at a time go through a 4x4 SSE transpose (baseline x86-64), which reads
    // and writes 16-byte vectors instead of single floats.
    const __m128 vs = _mm_set1_ps(scale);
    for (int64_t i0 = 0; i0 < cnt; i0 += W) {
      float* panel = out + i0 * kc;
      const int64_t rows = std::min<int64_t>(W, cnt - i0);
      const float* base = src + (idx0 + i0) * ld + k0;
      int64_t r = 0;
      for (; r + 4 <= rows; r += 4) {
        const float *s0 = base + r * ld, *s1 = s0 + ld, *s2 = s1 + ld, *s3 = s2 + ld;
        int64_t k = 0;
        for (; k + 4 <= kc; k += 4) {
          __m128 a = _mm_loadu_ps(s0 + k), b = _mm_loadu_ps(s1 + k), c = _mm_loadu_ps(s2 + k), d = _mm_loadu_ps(s3 + k);
          _MM_TRANSPOSE4_PS(a, b, c, d);
          float* dst = panel + k * W + r;
          _mm_storeu_ps(dst, _mm_mul_ps(a, vs));
          _mm_storeu_ps(dst + W, _mm_mul_ps(b, vs));
          _mm_storeu_ps(dst + 2 * W, _mm_mul_ps(c, vs));
          _mm_storeu_ps(dst + 3 * W, _mm_mul_ps(d, vs));
        }
        for (; k < kc; ++k) {
          float* dst = panel + k * W + r;
          dst[0] = scale * s0[k], dst[1] = scale * s1[k], dst[2] = scale * s2[k], dst[3] = scale * s3[k];
        }
      }
      for (; r < rows; ++r)
        for (int64_t k = 0; k < kc; ++k) panel[k * W + r] = scale * base[r * ld + k];
      for (; r < W; ++r)
        for (int64_t k = 0; k < kc; ++k) panel[k * W + r] = 0.f;
    }
  }
}

void pack_panels(int w, const float* src, int64_t ld, bool k_major, int64_t idx0, int64_t cnt,
                 int64_t k0, int64_t kc, float scale, float* out) {
  switch (w) {
    case 4: return pack_panels_w<4>(src, ld, k_major, idx0, cnt, k0, kc, scale, out);
    case 6: return pack_panels_w<6>(src, ld, k_major, idx0, cnt, k0, kc, scale, out);
    case 8: return pack_panels_w<8>(src, ld, k_major, idx0, cnt, k0, kc, scale, out);
    case 12: return pack_panels_w<12>(src, ld, k_major, idx0, cnt, k0, kc, scale, out);
    case 16: return pack_panels_w<16>(src, ld, k_major, idx0, cnt, k0, kc, scale, out);
    case 32: return pack_panels_w<32>(src, ld, k_major, idx0, cnt, k0, kc, scale, out);
  }
  TDQ_CHECK(false, "sgemm: no packing routine for panel width ", w);
}

// One MR x NR tile: straight into C when full, else through a buffer so the
// kernel never touches memory outside C.
inline void run_tile(const GemmKernel& ks, int64_t kc, const float* a, const float* b, float* c,
                     int64_t ldc, float beta, int64_t m, int64_t n) {
  if (m == ks.mr && n == ks.nr) {
    ks.ukr(kc, a, b, c, ldc, beta);
    return;
  }
  alignas(64) float tmp[kMaxTile];
  ks.ukr(kc, a, b, tmp, ks.nr, 0.f);
  for (int64_t i = 0; i < m; ++i) {
    float* ci = c + i * ldc;
    const float* ti = tmp + i * ks.nr;
    if (beta == 0.f) for (int64_t j = 0; j < n; ++j) ci[j] = ti[j];
    else for (int64_t j = 0; j < n; ++j) ci[j] = beta * ci[j] + ti[j];
  }
}

void scale_c(const ExecContext& ctx, int64_t M, int64_t N, float beta, float* C, int64_t ldc) {
  ctx.parallel_for(M, std::max<int64_t>(1, 16384 / std::max<int64_t>(N, 1)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      float* c = C + i * ldc;
      if (beta == 0.f) std::fill(c, c + N, 0.f);
      else for (int64_t j = 0; j < N; ++j) c[j] *= beta;
    }
  });
}

// Where the panels of rows [i0, ..) for the K block starting at pc sit in a
// whole packed A: K blocks one after the other, each Mpad x kc.
inline const float* packed_a_block(const float* packed, int64_t Mpad, int64_t pc, int64_t i0, int64_t kc) {
  return packed + pc * Mpad + i0 * kc;
}

// `packed_a`, when given, is alpha*op(A) already packed by sgemm_pack_a (A,
// lda, transA and alpha are then unused).
void sgemm_blocked(const GemmKernel& ks, const ExecContext& ctx, bool transA, bool transB,
                   int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                   const float* packed_a, const float* B, int64_t ldb, float beta, float* C,
                   int64_t ldc, const BPacker* bpacker = nullptr) {
  const int64_t MR = ks.mr, NR = ks.nr;
  // Fewer flops than this are not worth waking the pool for.
  const bool parallel = ctx.pool && ctx.pool->size() > 1 && M * N * K >= (int64_t{1} << 17);
  const int64_t threads = parallel ? ctx.pool->size() : 1;

  // C is split into a grid of tasks, each owning rows [i0, i0+mb) x a range of
  // columns over the whole of K, so one parallel_for covers the GEMM and no
  // two threads ever write the same element. Each task packs its own A block
  // and B blocks: for the shapes of a network (M or N often only 64..256) the
  // repacking is cheap next to the barriers a B packed once and shared by all
  // threads would need after every K block. Run serially, the whole of C is
  // one task.
  const int64_t want = parallel ? 4 * threads : 1;
  // Split N first (keeping A blocks whole), then M when N is too narrow.
  const int64_t npanels = ceil_div(N, NR);
  int64_t mblocks = ceil_div(M, ks.mc);
  const int64_t nsplit = std::min(npanels, ceil_div(want, mblocks));
  if (mblocks * nsplit < want) mblocks = std::min(ceil_div(M, MR), ceil_div(want, nsplit));
  const int64_t mb = ceil_div(ceil_div(M, mblocks), MR) * MR;
  const int64_t ntasks = ceil_div(M, mb) * nsplit;

  // One block of C: rows [m_begin, m_end) x columns [j_begin, j_end), all of K.
  // Each B block is packed once and used by every M block under it; A blocks
  // are packed per B block (re-packing A costs 1/(2*nc) of the arithmetic).
  auto run_block = [&](int64_t m_begin, int64_t m_end, int64_t j_begin, int64_t j_end) {
    float* ap_buf = packed_a ? nullptr : t_pack_a.get(static_cast<size_t>(mb * ks.kc));
    float* bp = t_pack_b.get(static_cast<size_t>(ks.kc * ks.nc));
    const int64_t Mpad = ceil_div(M, MR) * MR;
    for (int64_t pc = 0; pc < K; pc += ks.kc) {
      const int64_t kc = std::min(ks.kc, K - pc);
      const float beta_k = pc == 0 ? beta : 1.f;  // later K blocks add onto the first
      for (int64_t jc = j_begin; jc < j_end; jc += ks.nc) {
        const int64_t nc = std::min(ks.nc, j_end - jc);
        if (bpacker) bpacker->fn(bpacker->self, ks.nr, pc, kc, jc, nc, bp);
        else pack_panels(ks.nr, B, ldb, !transB, jc, nc, pc, kc, 1.f, bp);
        for (int64_t i0 = m_begin; i0 < m_end; i0 += mb) {
          const int64_t mc = std::min(mb, m_end - i0);
          const float* ap = ap_buf;
          if (packed_a) ap = packed_a_block(packed_a, Mpad, pc, i0, kc);
          else pack_panels(ks.mr, A, lda, transA, i0, mc, pc, kc, alpha, ap_buf);
          for (int64_t j = 0; j < nc; j += NR)
            for (int64_t ip = 0; ip < mc; ip += MR)
              run_tile(ks, kc, ap + ip * kc, bp + j * kc, C + (i0 + ip) * ldc + jc + j, ldc,
                       beta_k, std::min(MR, mc - ip), std::min(NR, nc - j));
        }
      }
    }
  };
  if (!parallel) return run_block(0, M, 0, N);
  ctx.parallel_for(ntasks, 1, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      const int64_t i0 = (t / nsplit) * mb, js = t % nsplit;
      run_block(i0, std::min(M, i0 + mb), js * npanels / nsplit * NR,
                std::min(N, (js + 1) * npanels / nsplit * NR));
    }
  });
}

}  // namespace

void sgemm(const ExecContext& ctx, bool transA, bool transB, int64_t M, int64_t N, int64_t K,
           float alpha, const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
           float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.f) {
    // Nothing to multiply: C = beta*C (BLAS convention: beta == 0 clears).
    if (beta != 1.f) scale_c(ctx, M, N, beta, C, ldc);
    return;
  }
  sgemm_blocked(kernel_for(ctx.cpu_level), ctx, transA, transB, M, N, K, alpha, A, lda, nullptr, B,
                ldb, beta, C, ldc);
}

int64_t sgemm_packed_a_size(const ExecContext& ctx, int64_t M, int64_t K) {
  const GemmKernel& ks = kernel_for(ctx.cpu_level);
  return ceil_div(std::max<int64_t>(M, 0), ks.mr) * ks.mr * std::max<int64_t>(K, 0);
}

void sgemm_pack_a(const ExecContext& ctx, bool transA, int64_t M, int64_t K, float alpha,
                  const float* A, int64_t lda, float* packed) {
  const GemmKernel& ks = kernel_for(ctx.cpu_level);
  const int64_t Mpad = ceil_div(M, ks.mr) * ks.mr, kblocks = ceil_div(K, ks.kc);
  // Every (K block, MR panel) is independent: pack them in parallel.
  const int64_t panels = ceil_div(M, ks.mr);
  ctx.parallel_for(kblocks * panels, 16, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t pc = (t / panels) * ks.kc, i0 = (t % panels) * ks.mr;
      const int64_t kc = std::min(ks.kc, K - pc);
      pack_panels(ks.mr, A, lda, transA, i0, std::min<int64_t>(ks.mr, M - i0), pc, kc, alpha,
                  const_cast<float*>(packed_a_block(packed, Mpad, pc, i0, kc)));
    }
  });
}

void sgemm_prepacked(const ExecContext& ctx, int64_t M, int64_t N, int64_t K, const float* packedA,
                     bool transB, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (beta != 1.f) scale_c(ctx, M, N, beta, C, ldc);
    return;
  }
  sgemm_blocked(kernel_for(ctx.cpu_level), ctx, false, transB, M, N, K, 1.f, nullptr, 0, packedA, B,
                ldb, beta, C, ldc);
}

int gemm_nr(const ExecContext& ctx) { return kernel_for(ctx.cpu_level).nr; }
int gemm_mr(const ExecContext& ctx) { return kernel_for(ctx.cpu_level).mr; }
int64_t gemm_kc(const ExecContext& ctx) { return kernel_for(ctx.cpu_level).kc; }

void sgemm_prepacked_implicit_b(const ExecContext& ctx, int64_t M, int64_t N, int64_t K, const float* packedA,
                                const BPacker& b, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (beta != 1.f) scale_c(ctx, M, N, beta, C, ldc);
    return;
  }
  sgemm_blocked(kernel_for(ctx.cpu_level), ctx, false, false, M, N, K, 1.f, nullptr, 0, packedA, nullptr, 0,
                beta, C, ldc, &b);
}

void sgemm_batched_prepacked_panels(const ExecContext& ctx, int64_t batch, int64_t M, int64_t N, int64_t K,
                                    const float* packedA, int64_t strideA, const float* Bp, int64_t strideB,
                                    float* C, int64_t ldc, int64_t strideC) {
  if (batch <= 0 || M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t i = 0; i < batch; ++i) scale_c(ctx, M, N, 0.f, C + i * strideC, ldc);
    return;
  }
  const GemmKernel& ks = kernel_for(ctx.cpu_level);
  const int64_t MR = ks.mr, NR = ks.nr, Mpad = ceil_div(M, MR) * MR, npanels = ceil_div(N, NR);
  // Tasks: (product, M block, N block). An M block (at most mc rows) of A
  // stays in L2 while the task's B panels stream past it; each B panel
  // (kc x nr) stays in L1 across the M block's row panels.
  const int64_t threads = ctx.pool ? ctx.pool->size() : 1;
  const int64_t mblocks = ceil_div(M, ks.mc);
  const int64_t mb = ceil_div(ceil_div(M, mblocks), MR) * MR;
  int64_t nblocks = ceil_div(npanels * NR, ks.nc);
  const int64_t want = threads > 1 ? 4 * threads : 1;
  if (batch * ceil_div(M, mb) * nblocks < want) nblocks = std::min(npanels, ceil_div(want, batch * ceil_div(M, mb)));
  const int64_t mtasks = ceil_div(M, mb), ntasks = batch * mtasks * nblocks;
  const int64_t kspan = std::max(ks.kc, (int64_t{64} << 10) / mb / ks.kc * ks.kc);  // 64 Ki floats of A
  ctx.parallel_for(ntasks, 1, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      const int64_t bi = t / (mtasks * nblocks), r = t % (mtasks * nblocks);
      const int64_t m0 = (r / nblocks) * mb, m1 = std::min(M, m0 + mb), nbk = r % nblocks;
      const int64_t q0 = nbk * npanels / nblocks, q1 = (nbk + 1) * npanels / nblocks;
      const float* A = packedA + bi * strideA;
      const float* B = Bp + bi * strideB;
      float* Cb = C + bi * strideC;
      // K is taken in spans whose A rows (the task's M block) fit in about
      // 256 KiB of L2; within a span, each B panel is read front to back:
      // long sequential runs where B is large and used by few rows (the
      // weights of a small map), which then stream at the memory's speed.
      for (int64_t p0 = 0; p0 < K; p0 += kspan) {
        const int64_t p1 = std::min(K, p0 + kspan);
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t j = q * NR, n = std::min(NR, N - j);
          for (int64_t pc = p0; pc < p1; pc += ks.kc) {
            const int64_t kc = std::min(ks.kc, K - pc);
            const float beta = pc == 0 ? 0.f : 1.f;
            const float* bp = B + (q * K + pc) * NR;
            for (int64_t i = m0; i < m1; i += MR)
              run_tile(ks, kc, packed_a_block(A, Mpad, pc, i, kc), bp, Cb + i * ldc + j, ldc, beta,
                       std::min(MR, m1 - i), n);
          }
        }
      }
    }
  });
}

int64_t sgemm_b_panels_size(const ExecContext& ctx, int64_t K, int64_t N) {
  const GemmKernel& ks = kernel_for(ctx.cpu_level);
  return ceil_div(std::max<int64_t>(N, 0), ks.nr) * ks.nr * std::max<int64_t>(K, 0);
}

void sgemm_pack_b_panels(const ExecContext& ctx, bool transB, int64_t K, int64_t N, const float* B, int64_t ldb,
                         float* out) {
  const GemmKernel& ks = kernel_for(ctx.cpu_level);
  const int64_t NR = ks.nr, panels = ceil_div(N, NR);
  ctx.parallel_for(panels, 1, [&](int64_t b, int64_t e) {
    for (int64_t q = b; q < e; ++q)
      pack_panels(static_cast<int>(NR), B, ldb, !transB, q * NR, std::min(NR, N - q * NR), 0, K, 1.f,
                  out + q * K * NR);
  });
}

ExecContext serial_context(const ExecContext& ctx) {
  static ThreadPool one(1);  // a pool of one thread has no workers: parallel_for runs fn(0, n) inline
  ExecContext c = ctx;
  c.pool = &one;
  return c;
}

void sgemm_batched(const ExecContext& ctx, int64_t batch, bool transA, bool transB, int64_t M,
                   int64_t N, int64_t K, float alpha, const float* A, int64_t lda, int64_t strideA,
                   const float* B, int64_t ldb, int64_t strideB, float beta, float* C, int64_t ldc,
                   int64_t strideC) {
  if (batch <= 0) return;
  const int64_t threads = ctx.pool ? ctx.pool->size() : 1;
  // One GEMM per thread when there are enough of them and each is too small to
  // split well.
  const bool per_thread = batch >= threads && M * N * K <= (int64_t{1} << 24);
  auto one = [&](const ExecContext& c, int64_t i) {
    sgemm(c, transA, transB, M, N, K, alpha, A + i * strideA, lda, B + i * strideB, ldb, beta,
          C + i * strideC, ldc);
  };
  if (per_thread) {
    // Each GEMM runs alone on its thread, as one task (no split for threads
    // it will not get).
    const ExecContext serial = serial_context(ctx);
    ctx.parallel_for(batch, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) one(serial, i);
    });
  } else {
    for (int64_t i = 0; i < batch; ++i) one(ctx, i);
  }
}

}  // namespace tdq
