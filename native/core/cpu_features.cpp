#include "cpu_features.h"
#include "env.h"

#include <cstdlib>

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
