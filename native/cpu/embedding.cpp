// embedding(indices, weight): indices int32 of any shape, weight (V, D) ->
// (..., D), row indices[i] of weight. embedding_backward(gy, indices;
// num_embeddings) -> (V, D): the rows of gy summed per index.
//
// Indices are data, so infer cannot check them. The kernels clamp-and-flag:
// an out-of-range index gives a zero row (nothing is read or written out of
// bounds), and after the loop the kernel throws; the stream records the error
// and the next data()/sync() rejects with it, naming the first bad position.
#include <atomic>
#include <cstring>

#include "../core/registry.h"

namespace tdq {
namespace {

std::vector<TensorMeta> infer_embedding(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "indices", DType::i32);
  check_dtype(a, in[1], "weight", DType::f32);
  TDQ_CHECK_RANGE(in[1].dim() == 2, a.op, ": argument 'weight' must have 2 dimensions (V, D), got shape ",
                  shape_str(in[1].shape));
  Shape out = in[0].shape;
  out.push_back(in[1].shape[1]);
  return {{out, DType::f32}};
}

std::vector<TensorMeta> infer_embedding_backward(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "gy", DType::f32);
  check_dtype(a, in[1], "indices", DType::i32);
  const int64_t v = a.get_int("num_embeddings");
  TDQ_CHECK_RANGE(v >= 1, a.op, ": attribute 'num_embeddings' must be at least 1, got ", v);
  TDQ_CHECK_RANGE(in[0].dim() == in[1].dim() + 1, a.op, ": argument 'gy' must have shape indices.shape + [D], got ",
                  shape_str(in[0].shape), " for indices of shape ", shape_str(in[1].shape));
  Shape want = in[1].shape;
  want.push_back(in[0].shape.back());
  check_shape(a, in[0], "gy", want);
  return {{{v, in[0].shape.back()}, DType::f32}};
}

// Keeps the smallest bad position, so the message does not depend on threads.
struct BadIndex {
  std::atomic<int64_t> pos{INT64_MAX};
  void flag(int64_t p) {
    int64_t cur = pos.load();
    while (p < cur && !pos.compare_exchange_weak(cur, p)) {
    }
  }
  void raise(const int32_t* idx, int64_t vocab) const {
    const int64_t p = pos.load();
    if (p == INT64_MAX) return;
    fail(ErrorKind::Range, "index ", idx[p], " at position ", p, " of 'indices' is out of range for a vocabulary of size ",
         vocab, " (valid: 0 to ", vocab - 1, ")");
  }
};

void embedding_cpu(OpCall& c, const ExecContext& ctx) {
  const int32_t* idx = c.inputs[0].data<int32_t>();
  const Tensor& w = c.inputs[1];
  const int64_t vocab = w.shape[0], d = w.shape[1], n = c.inputs[0].numel();
  const float* pw = w.f32();
  float* out = c.outputs[0].f32();
  BadIndex bad;
  ctx.parallel_for(n, std::max<int64_t>(1, 8192 / std::max<int64_t>(d, 1)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t v = idx[i];
      if (v < 0 || v >= vocab) {
        bad.flag(i);
        std::memset(out + i * d, 0, static_cast<size_t>(d) * sizeof(float));
      } else {
        std::memcpy(out + i * d, pw + v * d, static_cast<size_t>(d) * sizeof(float));
      }
    }
  });
  bad.raise(idx, vocab);
}

// Deterministic without atomics: a counting sort groups the positions by
// index, then each row of the result is owned by one thread and summed in
// position order, so the result is the same for any thread count.
void embedding_backward_cpu(OpCall& c, const ExecContext& ctx) {
  const float* gy = c.inputs[0].f32();
  const int32_t* idx = c.inputs[1].data<int32_t>();
  Tensor& gw = c.outputs[0];
  const int64_t vocab = gw.shape[0], d = gw.shape[1], n = c.inputs[1].numel();
  BadIndex bad;
  std::vector<int64_t> start(static_cast<size_t>(vocab) + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = idx[i];
    if (v < 0 || v >= vocab) bad.flag(i);
    else ++start[v + 1];
  }
  for (int64_t v = 0; v < vocab; ++v) start[v + 1] += start[v];
  std::vector<int64_t> order(static_cast<size_t>(start[vocab]));
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t v = idx[i];
      if (v >= 0 && v < vocab) order[fill[v]++] = i;
    }
  }
  float* out = gw.f32();
  ctx.parallel_for(vocab, std::max<int64_t>(1, 4096 / std::max<int64_t>(d, 1)), [&](int64_t b, int64_t e) {
    for (int64_t v = b; v < e; ++v) {
      float* row = out + v * d;
      std::memset(row, 0, static_cast<size_t>(d) * sizeof(float));
      for (int64_t k = start[v]; k < start[v + 1]; ++k) {
        const float* g = gy + order[k] * d;
        for (int64_t j = 0; j < d; ++j) row[j] += g[j];
      }
    }
  });
  bad.raise(idx, vocab);
}

}  // namespace

TDQ_REGISTER_OP({"embedding", 2, 2, infer_embedding, embedding_cpu, {}});
TDQ_REGISTER_OP({"embedding_backward", 2, 2, infer_embedding_backward, embedding_backward_cpu, {}});

}  // namespace tdq
