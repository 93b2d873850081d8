// step_table_lookup(table, t): the TDQ step sizes of a batch, looked up on the
// engine so the timesteps never travel back to JavaScript.
//   table (T, Q) float32: row k holds every TDQ quantizer's step at timestep k
//   t     (B) float32 model timesteps
//   ->    (B, Q) float32
// Rule (as src/quant/table.ts StepTable.at, the reference): an integer t = k
// returns row k exactly; a fractional t interpolates linearly between rows
// floor(t) and ceil(t) in double, then rounds once to float. A t outside
// [0, T-1] (beyond 1e-6 of round-off) is an error naming it and its position.
#include <atomic>
#include <cmath>
#include <cstring>

#include "../core/registry.h"

namespace tdq {
namespace {

std::vector<TensorMeta> infer_step_table_lookup(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "table", DType::f32);
  check_dtype(a, in[1], "t", DType::f32);
  TDQ_CHECK_RANGE(in[0].dim() == 2 && in[0].shape[0] >= 1 && in[0].shape[1] >= 1, a.op,
                  ": argument 'table' must have shape (T, Q) with T, Q >= 1, got ", shape_str(in[0].shape));
  TDQ_CHECK_RANGE(in[1].dim() == 1, a.op, ": argument 't' must have shape (B), got ", shape_str(in[1].shape));
  return {{{in[1].shape[0], in[0].shape[1]}, DType::f32}};
}

void step_table_lookup_cpu(OpCall& c, const ExecContext&) {
  const float* table = c.inputs[0].f32();
  const float* t = c.inputs[1].f32();
  const int64_t T = c.inputs[0].shape[0], Q = c.inputs[0].shape[1], B = c.inputs[1].shape[0];
  float* out = c.outputs[0].f32();
  for (int64_t b = 0; b < B; ++b) {
    const double tb = t[b];
    if (!std::isfinite(tb) || tb < -1e-6 || tb > static_cast<double>(T - 1) + 1e-6)
      fail(ErrorKind::Range, "timestep ", t[b], " at position ", b, " of 't' is outside [0, ", T - 1,
           "] (the step table has ", T, " rows)");
    const double cl = std::min(std::max(tb, 0.0), static_cast<double>(T - 1));
    const int64_t k = static_cast<int64_t>(std::floor(cl));
    const double frac = cl - static_cast<double>(k);
    float* row = out + b * Q;
    const float* lo = table + k * Q;
    if (frac == 0.0) {
      std::memcpy(row, lo, static_cast<size_t>(Q) * sizeof(float));
      continue;
    }
    const float* hi = lo + Q;  // k < T - 1 here, as frac > 0
    for (int64_t q = 0; q < Q; ++q) {
      const double a = lo[q], d = hi[q];
      row[q] = static_cast<float>(a + (d - a) * frac);
    }
  }
}

}  // namespace

TDQ_REGISTER_OP({"step_table_lookup", 2, 2, infer_step_table_lookup, step_table_lookup_cpu, {}});

}  // namespace tdq
