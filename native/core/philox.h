// Philox4x32-10 (Salmon et al., SC'11): a counter-based generator, so element
// i of a random tensor depends only on (seed, offset + i). The same seed gives
// the same noise on every machine and for every thread count.
// The CUDA kernels (native/cuda/kernels/random.cu) call these same functions
// (TDQ_HD), so a seeded tensor has the same bits on both devices.
#pragma once
#include "hd.h"
#include <cmath>
#include <cstdint>

namespace tdq {

struct Philox4 {
  uint32_t v[4];
};

TDQ_HD inline Philox4 philox4x32_10(uint64_t counter, uint64_t seed) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    uint32_t n1 = static_cast<uint32_t>(p1);
    uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    uint32_t n3 = static_cast<uint32_t>(p0);
    c0 = n0, c1 = n1, c2 = n2, c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// Uniform in (0, 1]: never 0, so log() in Box-Muller is finite.
TDQ_HD inline float uint_to_unit(uint32_t x) { return (static_cast<float>(x >> 8) + 1.0f) * (1.0f / 16777216.0f); }

// Element i of a uniform [0, 1) tensor.
TDQ_HD inline float philox_uniform(uint64_t seed, uint64_t index) {
  return static_cast<float>(philox4x32_10(index, seed).v[0] >> 8) * (1.0f / 16777216.0f);
}

// Element i of a standard normal tensor (Box-Muller in double for accuracy).
TDQ_HD inline float philox_normal(uint64_t seed, uint64_t index) {
  Philox4 r = philox4x32_10(index, seed);
  double u1 = uint_to_unit(r.v[0]), u2 = uint_to_unit(r.v[1]);
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

}  // namespace tdq
