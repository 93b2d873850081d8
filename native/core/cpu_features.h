// Run-time CPU dispatch: one binary for any x86-64; kernels pick the widest
// instruction set the machine has (or the level a user forces, for testing).
#pragma once
#include <string>

namespace tdq {

enum class CpuLevel : int { scalar = 0, avx2 = 1, avx512 = 2 };

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false, avx512f = false, avx512bw = false,
       avx512vl = false, avx512vnni = false;
  // AMX (tiles, int8 tile products): reported by CPUID leaf 7 and enabled by the
  // OS (XCR0 tile state). Detected for `info`; no kernel uses AMX yet.
  bool amx_tile = false, amx_int8 = false;
  CpuLevel best() const;
};

const CpuFeatures& cpu_features();
const char* cpu_level_name(CpuLevel l);
// "scalar" | "avx2" | "avx512"; throws RangeError on an unknown name or a
// level this machine cannot run.
CpuLevel cpu_level_from_name(const std::string& name);
// TDQ_CPU environment variable (validated by env.h: throws RangeError), else best().
CpuLevel default_cpu_level();

}  // namespace tdq
