// Creation ops: full, rand, randn. Random values come from Philox, indexed by
// (seed, offset + element), so results do not depend on the thread count.
#include "../core/half.h"
#include "../core/philox.h"
#include "../core/registry.h"

namespace tdq {
namespace {

std::vector<TensorMeta> infer_creation(const std::vector<Tensor>&, const Attrs& a) {
  Shape shape = a.get_ints("shape");
  for (auto d : shape) TDQ_CHECK_RANGE(d >= 0, a.op, ": shape ", shape_str(shape), " has a negative dimension");
  return {{shape, dtype_from_name(a.get_string("dtype", "float32"))}};
}

std::vector<TensorMeta> infer_random(const std::vector<Tensor>& in, const Attrs& a) {
  auto m = infer_creation(in, a);
  TDQ_CHECK_TYPE(m[0].dtype == DType::f32, a.op, ": dtype must be float32");
  double seed = a.get_float("seed"), offset = a.get_float("offset", 0);
  TDQ_CHECK_RANGE(seed >= 0 && seed < 9007199254740992.0 && seed == static_cast<double>(static_cast<int64_t>(seed)),
                  a.op, ": seed must be a non-negative integer below 2^53, got ", seed);
  TDQ_CHECK_RANGE(offset >= 0 && offset == static_cast<double>(static_cast<int64_t>(offset)), a.op,
                  ": offset must be a non-negative integer, got ", offset);
  return m;
}

void full_cpu(OpCall& c, const ExecContext& ctx) {
  Tensor& y = c.outputs[0];
  double v = c.attrs.get_float("value", 0);
  const int64_t n = y.numel();
  ctx.parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) {
    switch (y.dtype) {
      case DType::f32: for (int64_t i = b; i < e; ++i) y.data<float>()[i] = static_cast<float>(v); break;
      case DType::i32: for (int64_t i = b; i < e; ++i) y.data<int32_t>()[i] = static_cast<int32_t>(v); break;
      case DType::i8: for (int64_t i = b; i < e; ++i) y.data<int8_t>()[i] = static_cast<int8_t>(v); break;
      case DType::u8: for (int64_t i = b; i < e; ++i) y.data<uint8_t>()[i] = static_cast<uint8_t>(v); break;
      case DType::f16:
        for (int64_t i = b; i < e; ++i) y.data<uint16_t>()[i] = float_to_half(static_cast<float>(v));
        break;
    }
  });
}

template <bool Normal>
void random_cpu(OpCall& c, const ExecContext& ctx) {
  Tensor& y = c.outputs[0];
  const uint64_t seed = static_cast<uint64_t>(c.attrs.get_float("seed"));
  const uint64_t offset = static_cast<uint64_t>(c.attrs.get_float("offset", 0));
  const float scale = static_cast<float>(c.attrs.get_float(Normal ? "std" : "high", 1.0));
  const float shift = static_cast<float>(c.attrs.get_float(Normal ? "mean" : "low", 0.0));
  float* out = y.f32();
  const float width = Normal ? scale : scale - shift;
  ctx.parallel_for(y.numel(), 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      float r = Normal ? philox_normal(seed, offset + i) : philox_uniform(seed, offset + i);
      out[i] = shift + width * r;
    }
  });
}

}  // namespace

TDQ_REGISTER_OP({"full", 0, 0, infer_creation, full_cpu, {}});
TDQ_REGISTER_OP({"randn", 0, 0, infer_random, random_cpu<true>, {}});
TDQ_REGISTER_OP({"rand", 0, 0, infer_random, random_cpu<false>, {}});

}  // namespace tdq
