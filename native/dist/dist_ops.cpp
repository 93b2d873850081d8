// The collectives as ops, so they run on the stream thread in the order JS
// queued them, between the ops that make and use their tensors.
//   dist_init()                     -> int32 (3): built-with-MPI, rank, size
//   dist_allreduce_(t0, t1, ...)    in place: the sum (mean: 1 -> the mean) over ranks,
//                                   all tensors packed into one message (one bucket)
//   dist_broadcast_(t0, t1, ...)    in place: rank `root`'s values everywhere
//   dist_allgather(x (n))           -> (size, n): every rank's x in rank order
//   dist_barrier()                  -> int32 (1): 0 once every rank has reached it
#include <cstring>
#include <vector>

#include "../core/registry.h"
#include "comm.h"

namespace tdq {
namespace {

std::vector<TensorMeta> infer_init(const std::vector<Tensor>&, const Attrs&) { return {{{3}, DType::i32}}; }

void init_cpu(OpCall& c, const ExecContext&) {
  const dist::Info& i = dist::init();
  int32_t* o = c.outputs[0].data<int32_t>();
  o[0] = i.built ? 1 : 0;
  o[1] = i.rank;
  o[2] = i.size;
}

std::vector<TensorMeta> infer_allreduce(const std::vector<Tensor>& in, const Attrs& a) {
  for (size_t k = 0; k < in.size(); ++k) check_dtype(a, in[k], "tensors", DType::f32);
  const int64_t mean = a.get_int("mean", 0);
  TDQ_CHECK_RANGE(mean == 0 || mean == 1, a.op, ": attribute 'mean' must be 0 or 1, got ", mean);
  return {};
}

void allreduce_cpu(OpCall& c, const ExecContext&) {
  size_t total = 0;
  for (const Tensor& t : c.inputs) total += static_cast<size_t>(t.numel());
  std::vector<float> buf(total);
  size_t off = 0;
  for (const Tensor& t : c.inputs) {
    std::memcpy(buf.data() + off, t.f32(), static_cast<size_t>(t.numel()) * sizeof(float));
    off += static_cast<size_t>(t.numel());
  }
  dist::allreduce_sum(buf.data(), total);
  if (c.attrs.get_int("mean", 0)) {
    const float inv = 1.0f / static_cast<float>(dist::info().size);
    for (float& v : buf) v *= inv;
  }
  off = 0;
  for (Tensor& t : c.inputs) {
    std::memcpy(t.f32(), buf.data() + off, static_cast<size_t>(t.numel()) * sizeof(float));
    off += static_cast<size_t>(t.numel());
  }
}

std::vector<TensorMeta> infer_broadcast(const std::vector<Tensor>& in, const Attrs& a) {
  for (const Tensor& t : in) check_defined(a, t, "tensors");
  const int64_t root = a.get_int("root", 0);
  TDQ_CHECK_RANGE(root >= 0, a.op, ": attribute 'root' must be a rank (>= 0), got ", root);
  return {};
}

void broadcast_cpu(OpCall& c, const ExecContext&) {
  const int root = static_cast<int>(c.attrs.get_int("root", 0));
  if (root >= dist::info().size) fail(ErrorKind::Range, "dist_broadcast_: root ", root, " is not a rank of ", dist::info().size);
  for (Tensor& t : c.inputs) dist::broadcast(t.data<uint8_t>(), t.nbytes(), root);
}

std::vector<TensorMeta> infer_allgather(const std::vector<Tensor>& in, const Attrs& a) {
  check_dtype(a, in[0], "x", DType::f32);
  check_rank(a, in[0], "x", 1);
  const dist::Info& i = dist::info();
  TDQ_CHECK_RANGE(i.initialized, a.op, ": the communicator is not initialised (dist_init first)");
  return {{{i.size, in[0].shape[0]}, DType::f32}};
}

void allgather_cpu(OpCall& c, const ExecContext&) {
  dist::allgather(c.inputs[0].f32(), static_cast<size_t>(c.inputs[0].numel()), c.outputs[0].f32());
}

std::vector<TensorMeta> infer_barrier(const std::vector<Tensor>&, const Attrs&) { return {{{1}, DType::i32}}; }

void barrier_cpu(OpCall& c, const ExecContext&) {
  dist::barrier();
  c.outputs[0].data<int32_t>()[0] = 0;
}

}  // namespace

TDQ_REGISTER_OP({"dist_init", 0, 0, infer_init, init_cpu, {}});
TDQ_REGISTER_OP({"dist_allreduce_", 1, 1 << 20, infer_allreduce, allreduce_cpu, {}});
TDQ_REGISTER_OP({"dist_broadcast_", 1, 1 << 20, infer_broadcast, broadcast_cpu, {}});
TDQ_REGISTER_OP({"dist_allgather", 1, 1, infer_allgather, allgather_cpu, {}});
TDQ_REGISTER_OP({"dist_barrier", 0, 0, infer_barrier, barrier_cpu, {}});

}  // namespace tdq
