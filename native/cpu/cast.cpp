// cast: dtype conversion (float32 <-> float16 for checkpoints, float -> int8/
// uint8/int32 saturating and truncating toward zero like a C cast), and copy.
#include <algorithm>
#include <cmath>
#include <limits>

#include "../core/half.h"
#include "../core/saturate.h"
#include "../core/registry.h"

namespace tdq {
namespace {

std::vector<TensorMeta> infer_cast(const std::vector<Tensor>& in, const Attrs& a) {
  check_defined(a, in[0], "x");
  return {{in[0].shape, dtype_from_name(a.get_string("dtype", dtype_name(in[0].dtype)))}};
}

float load(const Tensor& t, int64_t i) {
  switch (t.dtype) {
    case DType::f32: return t.data<float>()[i];
    case DType::f16: return half_to_float(t.data<uint16_t>()[i]);
    case DType::i8: return t.data<int8_t>()[i];
    case DType::u8: return t.data<uint8_t>()[i];
    case DType::i32: return static_cast<float>(t.data<int32_t>()[i]);
  }
  return 0;
}

void cast_cpu(OpCall& c, const ExecContext& ctx) {
  const Tensor& x = c.inputs[0];
  Tensor& y = c.outputs[0];
  if (x.dtype == y.dtype) {
    std::copy_n(x.data<uint8_t>(), x.nbytes(), y.data<uint8_t>());
    return;
  }
  // int32 -> int32 paths are exact above; everything else goes through float.
  ctx.parallel_for(x.numel(), 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      float v = load(x, i);
      switch (y.dtype) {
        case DType::f32: y.data<float>()[i] = v; break;
        case DType::f16: y.data<uint16_t>()[i] = float_to_half(v); break;
        case DType::i8: y.data<int8_t>()[i] = saturate_cast<int8_t>(v); break;
        case DType::u8: y.data<uint8_t>()[i] = saturate_cast<uint8_t>(v); break;
        case DType::i32:
          y.data<int32_t>()[i] = x.dtype == DType::i32 ? x.data<int32_t>()[i] : saturate_cast<int32_t>(v);
          break;
      }
    }
  });
}

}  // namespace

TDQ_REGISTER_OP({"cast", 1, 1, infer_cast, cast_cpu, {}});

}  // namespace tdq
