// Argument and runtime errors. Every check in the engine throws tdq::Error; the
// N-API layer turns it into a JS TypeError / RangeError / Error. Nothing here
// aborts or exits: a failed check inside an addon must never kill the process.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace tdq {

enum class ErrorKind { Type, Range, Runtime };

struct Error : std::runtime_error {
  ErrorKind kind;
  Error(ErrorKind k, const std::string& msg) : std::runtime_error(msg), kind(k) {}
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, const T& v, const Rest&... rest) {
  os << v;
  append(os, rest...);
}
}  // namespace detail

template <typename... Args>
[[noreturn]] void fail(ErrorKind kind, const Args&... args) {
  std::ostringstream os;
  detail::append(os, args...);
  throw Error(kind, os.str());
}

}  // namespace tdq

// TDQ_CHECK_TYPE(cond, "conv2d: x must be float32, got ", name) -> TypeError
#define TDQ_CHECK_TYPE(cond, ...) \
  do { if (!(cond)) ::tdq::fail(::tdq::ErrorKind::Type, __VA_ARGS__); } while (0)
#define TDQ_CHECK_RANGE(cond, ...) \
  do { if (!(cond)) ::tdq::fail(::tdq::ErrorKind::Range, __VA_ARGS__); } while (0)
#define TDQ_CHECK(cond, ...) \
  do { if (!(cond)) ::tdq::fail(::tdq::ErrorKind::Runtime, __VA_ARGS__); } while (0)
