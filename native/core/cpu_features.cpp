#include "cpu_features.h"
#include "env.h"

#include <cstdlib>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "error.h"

namespace tdq {

CpuLevel CpuFeatures::best() const {
  if (avx512f && avx512bw && avx512vl && fma) return CpuLevel::avx512;
  if (avx2 && fma) return CpuLevel::avx2;
  return CpuLevel::scalar;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = [] {
    CpuFeatures c;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    c.avx2 = __builtin_cpu_supports("avx2");
    c.fma = __builtin_cpu_supports("fma");
    c.avx512f = __builtin_cpu_supports("avx512f");
    c.avx512bw = __builtin_cpu_supports("avx512bw");
    c.avx512vl = __builtin_cpu_supports("avx512vl");
    c.avx512vnni = __builtin_cpu_supports("avx512vnni");
    c.f16c = c.avx2;  // every AVX2 CPU shipped has F16C
    unsigned a = 0, b = 0, cx = 0, d = 0;
    if (__get_cpuid_count(7, 0, &a, &b, &cx, &d)) {
      const bool tile = (d >> 24) & 1, int8 = (d >> 25) & 1;
      // XCR0 bits 17-18: the OS saves tile state (OSXSAVE: CPUID 1 ECX bit 27).
      bool os = false;
      unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
      if (__get_cpuid(1, &a1, &b1, &c1, &d1) && ((c1 >> 27) & 1)) {
        unsigned lo = 0, hi = 0;
        __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        os = ((lo >> 17) & 3) == 3;
      }
      c.amx_tile = tile && os;
      c.amx_int8 = tile && int8 && os;
    }
#endif
    return c;
  }();
  return f;
}

const char* cpu_level_name(CpuLevel l) {
  switch (l) {
    case CpuLevel::scalar: return "scalar";
    case CpuLevel::avx2: return "avx2";
    case CpuLevel::avx512: return "avx512";
  }
  return "?";
}

CpuLevel cpu_level_from_name(const std::string& n) {
  CpuLevel l;
  if (n == "scalar") l = CpuLevel::scalar;
  else if (n == "avx2") l = CpuLevel::avx2;
  else if (n == "avx512") l = CpuLevel::avx512;
  else fail(ErrorKind::Range, "unknown CPU level '", n, "' (expected scalar, avx2 or avx512)");
  TDQ_CHECK_RANGE(static_cast<int>(l) <= static_cast<int>(cpu_features().best()),
                  "CPU level '", n, "' is not supported by this machine (best: ",
                  cpu_level_name(cpu_features().best()), ")");
  return l;
}

CpuLevel default_cpu_level() { return env_cpu_level(); }

}  // namespace tdq
