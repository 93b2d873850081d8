// Float -> integer conversion of the cast op, shared by the CPU and CUDA
// kernels: NaN -> 0, saturating at the integer type's range, truncating toward
// zero in between. (For int32 the float nearest INT32_MAX is 2^31, outside the
// range: a plain C cast there is undefined behaviour, so the bounds are tested
// before converting.)
#ifndef TDQ_CORE_SATURATE_H
#define TDQ_CORE_SATURATE_H
#include <limits>

#include "hd.h"

namespace tdq {

template <typename I> TDQ_HD inline I saturate_cast(float v) {
  if (v != v) return 0;
  constexpr I lo = std::numeric_limits<I>::min(), hi = std::numeric_limits<I>::max();
  if (v >= static_cast<float>(hi)) return hi;
  if (v <= static_cast<float>(lo)) return lo;
  return static_cast<I>(v);
}

}  // namespace tdq
#endif
