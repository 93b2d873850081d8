// dropout(x; p, seed, offset): y = x * keep / (1 - p), keep = (u >= p) with u
// the Philox uniform of (seed, offset + i). dropout_backward(gy; p, seed,
// offset) recomputes the same mask from (seed, offset) instead of storing it:
// a second Philox pass is cheaper than keeping a mask alive across the step.
// p = 1 drops everything (y = 0), as PyTorch does.
#include <cstring>

#include <immintrin.h>  // AVX-512 only inside functions with a target attribute

#include "../core/philox.h"
#include "../core/registry.h"
#include "nn_simd.h"

namespace tdq {
namespace {

struct DropoutAttrs {
  double p;
  uint64_t seed, offset;
};

DropoutAttrs dropout_attrs(const Attrs& a) {
  const double p = a.get_float("p");
  TDQ_CHECK_RANGE(p >= 0.0 && p <= 1.0, a.op, ": attribute 'p' must be in [0, 1], got ", p);
  const double seed = a.get_float("seed"), offset = a.get_float("offset", 0);
  TDQ_CHECK_RANGE(seed >= 0 && seed < 9007199254740992.0 && seed == static_cast<double>(static_cast<int64_t>(seed)),
                  a.op, ": attribute 'seed' must be a non-negative integer below 2^53, got ", seed);
  TDQ_CHECK_RANGE(offset >= 0 && offset < 9007199254740992.0 &&
                      offset == static_cast<double>(static_cast<int64_t>(offset)),
                  a.op, ": attribute 'offset' must be a non-negative integer below 2^53, got ", offset);
  return {p, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset)};
}

std::vector<TensorMeta> infer_dropout(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], a.op == "dropout" ? "x" : "gy", DType::f32);
  dropout_attrs(a);
  return {{in[0].shape, DType::f32}};
}

// The plain reference: one Philox call per element (v[0] of counter
// offset + i), keep = uniform >= p.
void dropout_ref(const DropoutAttrs& d, float p, float scale, const float* x, float* y, int64_t b, int64_t e) {
  for (int64_t i = b; i < e; ++i) {
    const bool keep = philox_uniform(d.seed, d.offset + static_cast<uint64_t>(i)) >= p;
    y[i] = keep ? x[i] * scale : 0.f;
  }
}

#if TDQ_NN_X86
// GCC 12's AVX-512 intrinsics start from undefined vectors, which
// -W(maybe-)uninitialized reports wherever they are inlined.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// Philox4x32-10 on 16 counters at once (AVX-512), the same bits as
// philox4x32_10: lanes hold counters base + 0..15, which must not carry out
// of the low 32 bits within the block (the caller checks; such a block runs
// the reference). Only word 0 of the result is used, as philox_uniform does;
// words 2 and 3 of the counter start at 0.
TDQ_AVX512 inline __m512i mulhi_epu32_512(__m512i a, __m512i m) {
  const __m512i even = _mm512_srli_epi64(_mm512_mul_epu32(a, m), 32);        // hi of lanes 0, 2, ... in the low halves
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);          // lanes 1, 3, ...: hi in the high halves
  return _mm512_mask_blend_epi32(static_cast<__mmask16>(0xAAAA), even, odd);
}

TDQ_AVX512 void dropout_avx512(const DropoutAttrs& d, float p, float scale, const float* x, float* y, int64_t b,
                               int64_t e) {
  const __m512i M0 = _mm512_set1_epi32(static_cast<int>(0xD2511F53u)), M1 = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 pv = _mm512_set1_ps(p), sv = _mm512_set1_ps(scale), unit = _mm512_set1_ps(1.0f / 16777216.0f);
  const uint32_t k0s = static_cast<uint32_t>(d.seed), k1s = static_cast<uint32_t>(d.seed >> 32);
  int64_t i = b;
  for (; i + 16 <= e; i += 16) {
    const uint64_t base = d.offset + static_cast<uint64_t>(i);
    const uint32_t lo = static_cast<uint32_t>(base);
    if (lo > 0xFFFFFFFFu - 15u) {  // the low word wraps inside the block
      dropout_ref(d, p, scale, x, y, i, i + 16);
      continue;
    }
    __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(lo)), lane);
    __m512i c1 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(base >> 32)));
    __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
    uint32_t k0 = k0s, k1 = k1s;
    for (int r = 0; r < 10; ++r) {
      const __m512i n0 = _mm512_xor_si512(_mm512_xor_si512(mulhi_epu32_512(c2, M1), c1), _mm512_set1_epi32(static_cast<int>(k0)));
      const __m512i n1 = _mm512_mullo_epi32(c2, M1);
      const __m512i n2 = _mm512_xor_si512(_mm512_xor_si512(mulhi_epu32_512(c0, M0), c3), _mm512_set1_epi32(static_cast<int>(k1)));
      const __m512i n3 = _mm512_mullo_epi32(c0, M0);
      c0 = n0, c1 = n1, c2 = n2, c3 = n3;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    // (v >> 8) has 24 bits: its conversion and the scaling by 2^-24 are exact, as in philox_uniform.
    const __m512 u = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(c0, 8)), unit);
    const __mmask16 keep = _mm512_cmp_ps_mask(u, pv, _CMP_GE_OQ);
    _mm512_storeu_ps(y + i, _mm512_maskz_mul_ps(keep, _mm512_loadu_ps(x + i), sv));
  }
  dropout_ref(d, p, scale, x, y, i, e);
}
#pragma GCC diagnostic pop
#else
constexpr auto dropout_avx512 = dropout_ref;
#endif

// Forward and backward are the same map: v * mask * scale.
void dropout_cpu(OpCall& c, const ExecContext& ctx) {
  const DropoutAttrs d = dropout_attrs(c.attrs);
  const float* px = c.inputs[0].f32();
  float* py = c.outputs[0].f32();
  const int64_t n = c.outputs[0].numel();
  if (d.p >= 1.0) {
    ctx.parallel_for(n, 1 << 15, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) py[i] = 0.f;
    });
    return;
  }
  const float p = static_cast<float>(d.p);
  const float scale = static_cast<float>(1.0 / (1.0 - d.p));
  auto kernel = ctx.cpu_level == CpuLevel::avx512 ? dropout_avx512 : dropout_ref;
  ctx.parallel_for(n, 4096, [&](int64_t b, int64_t e) { kernel(d, p, scale, px, py, b, e); });
}

}  // namespace

TDQ_REGISTER_OP({"dropout", 1, 1, infer_dropout, dropout_cpu, {}});
TDQ_REGISTER_OP({"dropout_backward", 1, 1, infer_dropout, dropout_cpu, {}});

}  // namespace tdq
