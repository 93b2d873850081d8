// dropout(x; p, seed, offset): y = x * keep / (1 - p), keep = (u >= p) with u
// the Philox uniform of (seed, offset + i). dropout_backward(gy; p, seed,
// offset) recomputes the same mask from (seed, offset) instead of storing it:
// a second Philox pass is cheaper than keeping a mask alive across the step.
// p = 1 drops everything (y = 0), as PyTorch does.
#include "../core/philox.h"
#include "../core/registry.h"

namespace tdq {
namespace {

struct DropoutAttrs {
  double p;
  uint64_t seed, offset;
};

DropoutAttrs dropout_attrs(const Attrs& a) {
  const double p = a.get_float("p");
  TDQ_CHECK_RANGE(p >= 0.0 && p <= 1.0, a.op, ": attribute 'p' must be in [0, 1], got ", p);
  const double seed = a.get_float("seed"), offset = a.get_float("offset", 0);
  TDQ_CHECK_RANGE(seed >= 0 && seed < 9007199254740992.0 && seed == static_cast<double>(static_cast<int64_t>(seed)),
                  a.op, ": attribute 'seed' must be a non-negative integer below 2^53, got ", seed);
  TDQ_CHECK_RANGE(offset >= 0 && offset < 9007199254740992.0 &&
                      offset == static_cast<double>(static_cast<int64_t>(offset)),
                  a.op, ": attribute 'offset' must be a non-negative integer below 2^53, got ", offset);
  return {p, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset)};
}

std::vector<TensorMeta> infer_dropout(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], a.op == "dropout" ? "x" : "gy", DType::f32);
  dropout_attrs(a);
  return {{in[0].shape, DType::f32}};
}

// Forward and backward are the same map: v * mask * scale.
void dropout_cpu(OpCall& c, const ExecContext& ctx) {
  const DropoutAttrs d = dropout_attrs(c.attrs);
  const float* px = c.inputs[0].f32();
  float* py = c.outputs[0].f32();
  const int64_t n = c.outputs[0].numel();
  if (d.p >= 1.0) {
    ctx.parallel_for(n, 1 << 15, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) py[i] = 0.f;
    });
    return;
  }
  const float p = static_cast<float>(d.p);
  const float scale = static_cast<float>(1.0 / (1.0 - d.p));
  ctx.parallel_for(n, 2048, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const bool keep = philox_uniform(d.seed, d.offset + static_cast<uint64_t>(i)) >= p;
      py[i] = keep ? px[i] * scale : 0.f;
    }
  });
}

}  // namespace

TDQ_REGISTER_OP({"dropout", 1, 1, infer_dropout, dropout_cpu, {}});
TDQ_REGISTER_OP({"dropout_backward", 1, 1, infer_dropout, dropout_cpu, {}});

}  // namespace tdq
