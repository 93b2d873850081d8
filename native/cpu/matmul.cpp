// matmul (2-D and batched, with transposes), linear (x W^T + b) and gemm (the
// full BLAS interface with alpha/beta, and the reference kernel on request,
// so tests can reach every path of sgemm).
#include <algorithm>

#include "../core/registry.h"
#include "gemm.h"

namespace tdq {
namespace {

// ---- matmul(a, b; transA, transB) ----------------------------------------------
// a (M, K) | (B, M, K), b (K, N) | (B, K, N) -> (M, N) | (B, M, N); with transA
// a is stored (.., K, M), with transB b is stored (.., N, K). A 2-D operand is
// shared by every batch element.
struct MatmulDims {
  int64_t batch = 0;  // 0: no batch dimension
  int64_t M = 0, N = 0, K = 0;
};

MatmulDims matmul_dims(const std::vector<Tensor>& in, const Attrs& at) {
  const Tensor &a = in[0], &b = in[1];
  check_dtype(at, a, "a", DType::f32);
  check_dtype(at, b, "b", DType::f32);
  TDQ_CHECK_RANGE(a.dim() == 2 || a.dim() == 3, at.op, ": argument 'a' must have 2 or 3 dimensions, got shape ",
                  shape_str(a.shape));
  TDQ_CHECK_RANGE(b.dim() == 2 || b.dim() == 3, at.op, ": argument 'b' must have 2 or 3 dimensions, got shape ",
                  shape_str(b.shape));
  const bool tA = at.get_bool("transA", false), tB = at.get_bool("transB", false);
  MatmulDims d;
  if (a.dim() == 3 && b.dim() == 3)
    TDQ_CHECK_RANGE(a.shape[0] == b.shape[0], at.op, ": batch sizes differ: argument 'a' has shape ",
                    shape_str(a.shape), ", argument 'b' has shape ", shape_str(b.shape));
  d.batch = a.dim() == 3 ? a.shape[0] : b.dim() == 3 ? b.shape[0] : 0;
  d.M = a.size(tA ? -1 : -2);
  const int64_t Ka = a.size(tA ? -2 : -1), Kb = b.size(tB ? -1 : -2);
  d.N = b.size(tB ? -2 : -1);
  TDQ_CHECK_RANGE(Ka == Kb, at.op, ": inner dimensions differ: argument 'a' ", shape_str(a.shape),
                  tA ? " (transposed)" : "", " gives K=", Ka, ", argument 'b' ", shape_str(b.shape),
                  tB ? " (transposed)" : "", " gives K=", Kb);
  d.K = Ka;
  return d;
}

std::vector<TensorMeta> infer_matmul(const std::vector<Tensor>& in, const Attrs& at) {
  MatmulDims d = matmul_dims(in, at);
  Shape out = in[0].dim() == 3 || in[1].dim() == 3 ? Shape{d.batch, d.M, d.N} : Shape{d.M, d.N};
  return {{out, DType::f32}};
}

void matmul_forward(OpCall& c, const ExecContext& ctx) {
  const Tensor &a = c.inputs[0], &b = c.inputs[1];
  const bool tA = c.attrs.get_bool("transA", false), tB = c.attrs.get_bool("transB", false);
  MatmulDims d = matmul_dims(c.inputs, c.attrs);
  const int64_t lda = a.size(-1), ldb = b.size(-1), ldc = d.N;
  float* out = c.outputs[0].f32();
  if (a.dim() == 2 && b.dim() == 2) {
    sgemm(ctx, tA, tB, d.M, d.N, d.K, 1.f, a.f32(), lda, b.f32(), ldb, 0.f, out, ldc);
  } else if (a.dim() == 3 && b.dim() == 2 && !tA) {
    // The batch of a stacks into one tall matrix: one big GEMM instead of B small ones.
    sgemm(ctx, false, tB, d.batch * d.M, d.N, d.K, 1.f, a.f32(), lda, b.f32(), ldb, 0.f, out, ldc);
  } else {
    const int64_t sa = a.dim() == 3 ? d.M * d.K : 0, sb = b.dim() == 3 ? d.K * d.N : 0;
    sgemm_batched(ctx, d.batch, tA, tB, d.M, d.N, d.K, 1.f, a.f32(), lda, sa, b.f32(), ldb, sb, 0.f, out, ldc,
                  d.M * d.N);
  }
}

// ---- linear(x, weight, bias?) = x W^T + b ---------------------------------------
// x (..., in), weight (out, in), bias (out) -> (..., out)
std::vector<TensorMeta> infer_linear(const std::vector<Tensor>& in, const Attrs& at) {
  const Tensor &x = in[0], &w = in[1];
  check_dtype(at, x, "x", DType::f32);
  check_dtype(at, w, "weight", DType::f32);
  TDQ_CHECK_RANGE(x.dim() >= 1, at.op, ": argument 'x' must have at least 1 dimension, got a scalar");
  check_rank(at, w, "weight", 2);
  TDQ_CHECK_RANGE(w.shape[1] == x.size(-1), at.op, ": argument 'weight' ", shape_str(w.shape), " expects ",
                  w.shape[1], " input features but argument 'x' ", shape_str(x.shape), " has ", x.size(-1));
  if (in.size() > 2 && in[2].defined()) {
    check_dtype(at, in[2], "bias", DType::f32);
    check_shape(at, in[2], "bias", {w.shape[0]});
  }
  Shape out = x.shape;
  out.back() = w.shape[0];
  return {{out, DType::f32}};
}

void linear_forward(OpCall& c, const ExecContext& ctx) {
  const Tensor &x = c.inputs[0], &w = c.inputs[1];
  const bool has_bias = c.inputs.size() > 2 && c.inputs[2].defined();
  const int64_t in_f = w.shape[1], out_f = w.shape[0];
  const int64_t rows = in_f ? x.numel() / in_f : c.outputs[0].numel() / std::max<int64_t>(out_f, 1);
  float* y = c.outputs[0].f32();
  if (has_bias) {
    // Start from the bias and let the GEMM add onto it (beta = 1).
    const float* b = c.inputs[2].f32();
    ctx.parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(out_f, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) std::copy(b, b + out_f, y + r * out_f);
    });
  }
  sgemm(ctx, false, true, rows, out_f, in_f, 1.f, x.f32(), in_f, w.f32(), in_f, has_bias ? 1.f : 0.f, y, out_f);
}

// ---- gemm(a, b, c?; transA, transB, alpha, beta, reference) ----------------------
// alpha * op(a) op(b) + beta * c, all 2-D; `reference` runs sgemm_ref.
std::vector<TensorMeta> infer_gemm(const std::vector<Tensor>& in, const Attrs& at) {
  check_rank(at, in[0], "a", 2);
  check_rank(at, in[1], "b", 2);
  MatmulDims d = matmul_dims(in, at);
  if (in.size() > 2 && in[2].defined()) {
    check_dtype(at, in[2], "c", DType::f32);
    check_shape(at, in[2], "c", {d.M, d.N});
  }
  at.get_float("alpha", 1);
  at.get_float("beta", 0);
  return {{{d.M, d.N}, DType::f32}};
}

void gemm_forward(OpCall& c, const ExecContext& ctx) {
  const Tensor &a = c.inputs[0], &b = c.inputs[1];
  const bool tA = c.attrs.get_bool("transA", false), tB = c.attrs.get_bool("transB", false);
  const float alpha = static_cast<float>(c.attrs.get_float("alpha", 1));
  float beta = static_cast<float>(c.attrs.get_float("beta", 0));
  MatmulDims d = matmul_dims(c.inputs, c.attrs);
  float* out = c.outputs[0].f32();
  if (c.inputs.size() > 2 && c.inputs[2].defined()) std::copy(c.inputs[2].f32(), c.inputs[2].f32() + d.M * d.N, out);
  else beta = 0.f;  // no c: the output starts uninitialised, which beta == 0 never reads
  if (c.attrs.get_bool("reference", false))
    sgemm_ref(tA, tB, d.M, d.N, d.K, alpha, a.f32(), a.size(-1), b.f32(), b.size(-1), beta, out, d.N);
  else
    sgemm(ctx, tA, tB, d.M, d.N, d.K, alpha, a.f32(), a.size(-1), b.f32(), b.size(-1), beta, out, d.N);
}

}  // namespace

TDQ_REGISTER_OP({"matmul", 2, 2, infer_matmul, matmul_forward, {}});
TDQ_REGISTER_OP({"linear", 2, 3, infer_linear, linear_forward, {}});
TDQ_REGISTER_OP({"gemm", 2, 3, infer_gemm, gemm_forward, {}});

}  // namespace tdq
