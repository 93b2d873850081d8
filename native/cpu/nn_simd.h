// Vector helpers for the nn kernels (attention, activations, softmax),
// written once over a vector width W with GCC vector extensions: W = 1 is
// plain scalar code (the reference path), W = 8 / 16 become AVX2 / AVX-512
// when the helpers are inlined into a function compiled with TDQ_AVX2 /
// TDQ_AVX512. Every helper is always_inline, so no vector ever crosses a call
// boundary between code built for different instruction sets.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

// Passing vectors by value would change the ABI between a default-ISA and an
// AVX build; the helpers are always inlined, so no such call exists.
#pragma GCC diagnostic ignored "-Wpsabi"

#define TDQ_AINLINE inline __attribute__((always_inline))

#if defined(__x86_64__) || defined(__i386__)
#define TDQ_NN_X86 1
#define TDQ_AVX2 __attribute__((target("avx2,fma")))
#define TDQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#else
#define TDQ_NN_X86 0
#endif

namespace tdq {
namespace nnsimd {

template <int W> struct VecT {
  typedef float f __attribute__((vector_size(W * sizeof(float))));
  typedef int32_t i __attribute__((vector_size(W * sizeof(float))));
};
template <> struct VecT<1> {
  typedef float f;
  typedef int32_t i;
};
template <int W> using Vf = typename VecT<W>::f;
template <int W> using Vi = typename VecT<W>::i;

template <int W> TDQ_AINLINE Vf<W> vload(const float* p) {
  Vf<W> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <int W> TDQ_AINLINE void vstore(float* p, const Vf<W>& v) { std::memcpy(p, &v, sizeof v); }
// s in every lane, exactly (-0 and NaN included), as one broadcast. Written
// lane by lane: GCC 12 compiled the earlier s - 0 (a vector) in some kernels
// into one masked broadcast per lane (16 kmovw + vbroadcastss for AVX-512).
template <int W> TDQ_AINLINE Vf<W> vsplat(float s) {
  if constexpr (W == 1) {
    return s;
  } else {
    Vf<W> v;
    for (int i = 0; i < W; ++i) v[i] = s;
    return v;
  }
}
template <int W> TDQ_AINLINE Vf<W> vmax(const Vf<W>& a, const Vf<W>& b) { return a > b ? a : b; }
// sqrt lane by lane: correctly rounded in every width, and one vector sqrt
// instruction where the build has -fno-math-errno (CMakeLists.txt, binding.gyp).
template <int W> TDQ_AINLINE Vf<W> vsqrt(const Vf<W>& v) {
  if constexpr (W == 1) {
    return __builtin_sqrtf(v);
  } else {
    Vf<W> r;
    for (int i = 0; i < W; ++i) r[i] = __builtin_sqrtf(v[i]);
    return r;
  }
}
template <int W> TDQ_AINLINE float hsum(const Vf<W>& v) {
  if constexpr (W == 1) {
    return v;
  } else {
    float s = 0;
    for (int i = 0; i < W; ++i) s += v[i];
    return s;
  }
}
template <int W> TDQ_AINLINE float hmax(const Vf<W>& v) {
  if constexpr (W == 1) {
    return v;
  } else {
    float m = v[0];
    for (int i = 1; i < W; ++i) m = std::max(m, v[i]);
    return m;
  }
}

// exp: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, and a degree-6
// Taylor polynomial for e^r (relative error ~1.2e-7, about one float ulp).
// x is clamped to [-87.3, 88] so that 2^n stays a normal float: below the
// clamp the result is < 1.2e-38 instead of 0 (harmless in a softmax whose
// largest term is about 1, or in x / (1 + e^-x)); above it, 1.65e38 instead
// of overflowing to inf.
template <int W> TDQ_AINLINE Vf<W> vexp(const Vf<W>& x0) {
  if constexpr (W == 1) {
    return std::exp(x0);
  } else {
    Vf<W> x = vmax<W>(x0, vsplat<W>(-87.3f));
    x = x < 88.0f ? x : vsplat<W>(88.0f);
    const Vf<W> t = x * 1.44269504088896341f + 12582912.0f;  // 1.5 * 2^23: rounds to an integer
    const Vf<W> n = t - 12582912.0f;
    Vf<W> r = x - n * 0.693359375f;  // ln2 split so that n * hi is exact
    r = r - n * -2.12194440e-4f;
    Vf<W> p = r * (1.0f / 720) + (1.0f / 120);
    p = p * r + (1.0f / 24);
    p = p * r + (1.0f / 6);
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const Vi<W> e = (__builtin_convertvector(n, Vi<W>) + 127) << 23;  // 2^n, n in [-126, 127]
    return p * (Vf<W>)e;
  }
}

// Doubles, W lanes: accumulators for sums of many floats.
template <int W> struct VecD {
  typedef double d __attribute__((vector_size(W * sizeof(double))));
};
template <> struct VecD<1> {
  typedef double d;
};
template <int W> using Vd = typename VecD<W>::d;
template <int W> TDQ_AINLINE Vd<W> to_double(const Vf<W>& v) {
  if constexpr (W == 1) return v;
  else return __builtin_convertvector(v, Vd<W>);
}
template <int W> TDQ_AINLINE double hsum_d(const Vd<W>& v) {
  if constexpr (W == 1) {
    return v;
  } else {
    double s = 0;
    for (int i = 0; i < W; ++i) s += v[i];
    return s;
  }
}

template <int W> TDQ_AINLINE float row_max(const float* s, int64_t n) {
  int64_t j = 0;
  float m = -std::numeric_limits<float>::infinity();
  if constexpr (W > 1) {
    if (n >= W) {
      Vf<W> vm = vload<W>(s);
      for (j = W; j + W <= n; j += W) vm = vmax<W>(vm, vload<W>(s + j));
      m = hmax<W>(vm);
    }
  }
  for (; j < n; ++j) m = std::max(m, s[j]);
  return m;
}

template <int W> TDQ_AINLINE void scale_row(float* x, int64_t n, float a) {
  int64_t j = 0;
  if constexpr (W > 1) {
    const Vf<W> va = vsplat<W>(a);
    for (; j + W <= n; j += W) vstore<W>(x + j, vload<W>(x + j) * va);
  }
  for (; j < n; ++j) x[j] *= a;
}

}  // namespace nnsimd
}  // namespace tdq
