// The engine's environment variables, parsed and validated in one place, as
// strictly as the CLI's flags: a malformed or out-of-range value is a
// RangeError naming the variable and what it allows (raised when the addon
// loads, so `require` fails with it), never a silent default, clamp or wrap.
// An unset or empty variable means the default.
#pragma once
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "cpu_features.h"
#include "error.h"

namespace tdq {

// The integer value of `name`, which must lie in [lo, hi]; `def` when unset.
inline int64_t env_int(const char* name, int64_t lo, int64_t hi, int64_t def) {
  const char* v = std::getenv(name);
  if (!v || !*v) return def;
  const std::string s(v);
  const auto bad = [&]() {
    fail(ErrorKind::Range, name, "='", s, "' is not valid: expected an integer from ", lo, " to ", hi,
         " (unset it for the default, ", def, ")");
  };
  // Digits only (an optional leading '-' is parsed so that the message can say
  // it is out of range rather than malformed); no spaces, signs or suffixes.
  size_t i = s[0] == '-' ? 1 : 0;
  if (i == s.size()) bad();
  for (size_t j = i; j < s.size(); ++j)
    if (s[j] < '0' || s[j] > '9') bad();
  errno = 0;
  char* end = nullptr;
  const long long n = std::strtoll(s.c_str(), &end, 10);
  if (errno == ERANGE || n < lo || n > hi) bad();
  return n;
}

// TDQ_CPU: scalar, avx2 or avx512, at most what this CPU supports.
inline CpuLevel env_cpu_level() {
  const char* v = std::getenv("TDQ_CPU");
  if (!v || !*v) return cpu_features().best();
  const std::string s(v);
  if (s != "scalar" && s != "avx2" && s != "avx512")
    fail(ErrorKind::Range, "TDQ_CPU='", s, "' is not valid: expected scalar, avx2 or avx512 (unset it for the best level, ",
         cpu_level_name(cpu_features().best()), ")");
  CpuLevel l = s == "scalar" ? CpuLevel::scalar : s == "avx2" ? CpuLevel::avx2 : CpuLevel::avx512;
  if (static_cast<int>(l) > static_cast<int>(cpu_features().best()))
    fail(ErrorKind::Range, "TDQ_CPU='", s, "' is not supported by this CPU (it has at most ",
         cpu_level_name(cpu_features().best()), ")");
  return l;
}

// Megabytes as bytes; 2^24 MiB (16 TiB) bounds them so the shift cannot overflow.
constexpr int64_t kMaxEnvMB = int64_t(1) << 24;

struct EnvSettings {
  int threads;              // TDQ_NUM_THREADS: 1..256, default the hardware threads
  CpuLevel cpu_level;       // TDQ_CPU
  size_t host_cache_bytes;  // TDQ_HOST_CACHE_MB: >= 0, default 2048
  size_t max_queued_bytes;  // TDQ_MAX_QUEUED_MB: >= 0, default 0 (no warning); see Stream
};

// Throws tdq::Error (Range) on the first bad variable.
inline EnvSettings read_env_settings(int default_threads) {
  EnvSettings e;
  e.threads = static_cast<int>(env_int("TDQ_NUM_THREADS", 1, 256, default_threads < 1 ? 1 : default_threads > 256 ? 256 : default_threads));
  e.cpu_level = env_cpu_level();
  e.host_cache_bytes = static_cast<size_t>(env_int("TDQ_HOST_CACHE_MB", 0, kMaxEnvMB, 2048)) << 20;
  e.max_queued_bytes = static_cast<size_t>(env_int("TDQ_MAX_QUEUED_MB", 0, kMaxEnvMB, 0)) << 20;
  return e;
}

}  // namespace tdq
