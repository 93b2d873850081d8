// The collectives as ops, so they run on the stream thread in the order JS
// queued them, between the ops that make and use their tensors.
//   dist_init()                     -> int32 (3): built-with-MPI, rank, size
//   dist_allreduce_(t0, t1, ...)    in place: the sum (mean: 1 -> the mean) over ranks,
//                                   all tensors packed into one message (one bucket)
//   dist_allreduce_start_(t0, ...)  starts that allreduce of the tensors' values now
//                                   (bucket: an id) and returns: the stream goes on
//   dist_allreduce_wait_(t0, ...)   waits for bucket `bucket` and writes its sum (mean)
//                                   into the same tensors: equal to dist_allreduce_
//   dist_broadcast_(t0, t1, ...)    in place: rank `root`'s values everywhere
//   dist_stats()                    -> f32 (3): since the last call, ms the communication
//                                   thread spent in allreduces, ms the stream waited for
//                                   allreduces (dist_allreduce_ and _wait_), their count
//   dist_allgather(x (n))           -> (size, n): every rank's x in rank order
//   dist_barrier()                  -> int32 (1): 0 once every rank has reached it
//   dist_nccl_init()                -> int32 (1): 1 once this rank has joined the NCCL
//                                   communicator (after dist_init: rank 0 makes the id,
//                                   MPI broadcasts it, every rank joins on its device);
//                                   the first collective of device tensors does it too
// On tensors of device 'cuda', dist_allreduce_ / _start_ / _wait_ and dist_broadcast_
// run over NCCL on the device buffers (queued on the backend's stream, in order with
// the kernels that made the gradients); MPI only carried NCCL's id.
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "../core/registry.h"
#include "../cuda/cuda_memory.h"
#include "../cuda/tdq_cuda_api.h"
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

std::vector<float> pack(const std::vector<Tensor>& in) {
  size_t total = 0;
  for (const Tensor& t : in) total += static_cast<size_t>(t.numel());
  std::vector<float> buf(total);
  size_t off = 0;
  for (const Tensor& t : in) {
    std::memcpy(buf.data() + off, t.f32(), static_cast<size_t>(t.numel()) * sizeof(float));
    off += static_cast<size_t>(t.numel());
  }
  return buf;
}

void unpack(std::vector<float>& buf, std::vector<Tensor>& out, bool mean) {
  if (mean) {
    const float inv = 1.0f / static_cast<float>(dist::info().size);
    for (float& v : buf) v *= inv;
  }
  size_t off = 0;
  for (Tensor& t : out) {
    std::memcpy(t.f32(), buf.data() + off, static_cast<size_t>(t.numel()) * sizeof(float));
    off += static_cast<size_t>(t.numel());
  }
}

// Nanoseconds the stream has waited for allreduces, since the last dist_stats.
std::atomic<int64_t> g_wait_ns{0};

struct WaitTimer {
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  ~WaitTimer() { g_wait_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count(); }
};

void allreduce_cpu(OpCall& c, const ExecContext&) {
  std::vector<float> buf = pack(c.inputs);
  {
    WaitTimer w;
    dist::allreduce_sum(buf.data(), buf.size());
  }
  unpack(buf, c.inputs, c.attrs.get_int("mean", 0) != 0);
}

// The buckets started and not yet waited for, by id.
std::mutex g_pending_mutex;
std::map<int64_t, std::unique_ptr<dist::Pending>> g_pending;

std::vector<TensorMeta> infer_start(const std::vector<Tensor>& in, const Attrs& a) {
  for (size_t k = 0; k < in.size(); ++k) check_dtype(a, in[k], "tensors", DType::f32);
  const int64_t bucket = a.get_int("bucket", -1);
  TDQ_CHECK_RANGE(bucket >= 0, a.op, ": attribute 'bucket' must be an id >= 0, got ", bucket);
  return {};
}

void start_cpu(OpCall& c, const ExecContext&) {
  const int64_t bucket = c.attrs.get_int("bucket", -1);
  {
    std::lock_guard<std::mutex> lk(g_pending_mutex);
    if (g_pending.count(bucket)) fail(ErrorKind::Runtime, "dist_allreduce_start_: bucket ", bucket, " was started and not waited for (dist_allreduce_wait_)");
  }
  std::unique_ptr<dist::Pending> p = dist::allreduce_sum_start(pack(c.inputs));
  std::lock_guard<std::mutex> lk(g_pending_mutex);
  g_pending[bucket] = std::move(p);
}

std::vector<TensorMeta> infer_wait(const std::vector<Tensor>& in, const Attrs& a) {
  infer_start(in, a);
  return infer_allreduce(in, a);
}

void wait_cpu(OpCall& c, const ExecContext&) {
  const int64_t bucket = c.attrs.get_int("bucket", -1);
  std::unique_ptr<dist::Pending> p;
  {
    std::lock_guard<std::mutex> lk(g_pending_mutex);
    auto it = g_pending.find(bucket);
    if (it == g_pending.end()) fail(ErrorKind::Runtime, "dist_allreduce_wait_: bucket ", bucket, " was not started (dist_allreduce_start_)");
    p = std::move(it->second);
    g_pending.erase(it);
  }
  std::vector<float>* got;
  {
    WaitTimer w;
    got = &p->wait();
  }
  std::vector<float>& buf = *got;
  size_t total = 0;
  for (const Tensor& t : c.inputs) total += static_cast<size_t>(t.numel());
  if (total != buf.size()) fail(ErrorKind::Range, "dist_allreduce_wait_: bucket ", bucket, " started with ", buf.size(), " floats, waited for with ", total);
  unpack(buf, c.inputs, c.attrs.get_int("mean", 0) != 0);
}

std::vector<TensorMeta> infer_stats(const std::vector<Tensor>&, const Attrs&) { return {{{3}, DType::f32}}; }

void stats_cpu(OpCall& c, const ExecContext&) {
  int64_t ns = 0, count = 0;
  dist::take_allreduce_time(&ns, &count);
  float* o = c.outputs[0].f32();
  o[0] = static_cast<float>(static_cast<double>(ns) / 1e6);
  o[1] = static_cast<float>(static_cast<double>(g_wait_ns.exchange(0)) / 1e6);
  o[2] = static_cast<float>(count);
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

// --- NCCL, on device tensors -------------------------------------------------


std::atomic<bool> g_nccl{false};

std::vector<TensorMeta> infer_nccl_init(const std::vector<Tensor>&, const Attrs&) { return {{{1}, DType::i32}}; }

// Joins NCCL once: rank 0 makes the id, MPI broadcasts it, every rank joins
// on its device (the backend's first visible one). Every rank must get here
// at the same collective.
void join_nccl() {
  if (!g_nccl) {
    const dist::Info& i = dist::info();
    if (!i.initialized) fail(ErrorKind::Runtime, "dist_nccl_init: the communicator is not initialised (dist_init first)");
    unsigned char id[TDQ_CUDA_NCCL_ID_BYTES] = {0};
    if (i.rank == 0) cuda_nccl_unique_id(id);
    if (i.size > 1) dist::broadcast(id, sizeof id, 0);
    cuda_nccl_init(id, i.rank, i.size);
    g_nccl = true;
  }
}

void nccl_init_cpu(OpCall& c, const ExecContext&) {
  join_nccl();
  c.outputs[0].data<int32_t>()[0] = 1;
}

// The collectives of device tensors join NCCL on first use (the same collective on every rank).
void require_nccl(const Attrs&) { join_nccl(); }

// All tensors in one device buffer (one NCCL call per bucket). (total)
Tensor pack_cuda(const std::vector<Tensor>& in, const ExecContext& ctx) {
  int64_t total = 0;
  for (const Tensor& t : in) total += t.numel();
  Tensor buf = alloc_tensor({total}, DType::f32, Device::cuda, ctx.counter);
  int64_t off = 0;
  for (const Tensor& t : in) {
    cuda_memcpy_d2d(buf.f32() + off, t.f32(), t.nbytes());
    off += t.numel();
  }
  return buf;
}

// buf (times 1/size for the mean, by the backend's mul kernel) back into the tensors.
void unpack_cuda(Tensor& buf, std::vector<Tensor>& out, bool mean, const ExecContext& ctx) {
  if (mean) {
    Tensor scale = alloc_tensor({1}, DType::f32, Device::cuda, ctx.counter);
    const float inv = 1.0f / static_cast<float>(dist::info().size);
    cuda_memcpy_h2d(scale.f32(), &inv, sizeof inv);
    const OpDef& mul = find_op("mul");
    if (!mul.cuda) fail(ErrorKind::Runtime, "dist: the CUDA backend has no 'mul' kernel for the mean of an allreduce");
    OpCall call;
    call.inputs = {buf, scale};
    call.attrs.op = "mul";
    call.outputs = {buf};
    mul.cuda(call, ctx);
  }
  int64_t off = 0;
  for (Tensor& t : out) {
    cuda_memcpy_d2d(t.f32(), buf.f32() + off, t.nbytes());
    off += t.numel();
  }
}

void allreduce_cuda(OpCall& c, const ExecContext& ctx) {
  require_nccl(c.attrs);
  Tensor buf = pack_cuda(c.inputs, ctx);
  cuda_nccl_allreduce_sum(buf.f32(), static_cast<size_t>(buf.numel()));
  unpack_cuda(buf, c.inputs, c.attrs.get_int("mean", 0) != 0, ctx);
}

// Started buckets on the device: their packed buffers, summed in stream order.
std::map<int64_t, Tensor> g_pending_cuda;

void start_cuda(OpCall& c, const ExecContext& ctx) {
  require_nccl(c.attrs);
  const int64_t bucket = c.attrs.get_int("bucket", -1);
  std::lock_guard<std::mutex> lk(g_pending_mutex);
  if (g_pending_cuda.count(bucket)) fail(ErrorKind::Runtime, "dist_allreduce_start_: bucket ", bucket, " was started and not waited for (dist_allreduce_wait_)");
  Tensor buf = pack_cuda(c.inputs, ctx);
  cuda_nccl_allreduce_sum(buf.f32(), static_cast<size_t>(buf.numel()));
  g_pending_cuda[bucket] = buf;
}

void wait_cuda(OpCall& c, const ExecContext& ctx) {
  const int64_t bucket = c.attrs.get_int("bucket", -1);
  Tensor buf;
  {
    std::lock_guard<std::mutex> lk(g_pending_mutex);
    auto it = g_pending_cuda.find(bucket);
    if (it == g_pending_cuda.end()) fail(ErrorKind::Runtime, "dist_allreduce_wait_: bucket ", bucket, " was not started (dist_allreduce_start_)");
    buf = it->second;
    g_pending_cuda.erase(it);
  }
  int64_t total = 0;
  for (const Tensor& t : c.inputs) total += t.numel();
  if (total != buf.numel()) fail(ErrorKind::Range, "dist_allreduce_wait_: bucket ", bucket, " started with ", buf.numel(), " floats, waited for with ", total);
  unpack_cuda(buf, c.inputs, c.attrs.get_int("mean", 0) != 0, ctx);
}

void broadcast_cuda(OpCall& c, const ExecContext&) {
  require_nccl(c.attrs);
  const int root = static_cast<int>(c.attrs.get_int("root", 0));
  if (root >= dist::info().size) fail(ErrorKind::Range, "dist_broadcast_: root ", root, " is not a rank of ", dist::info().size);
  for (Tensor& t : c.inputs) cuda_nccl_broadcast(t.storage->data, t.nbytes(), root);
}

}  // namespace

TDQ_REGISTER_OP({"dist_init", 0, 0, infer_init, init_cpu, {}});
TDQ_REGISTER_OP({"dist_allreduce_", 1, 1 << 20, infer_allreduce, allreduce_cpu, allreduce_cuda});
TDQ_REGISTER_OP({"dist_allreduce_start_", 1, 1 << 20, infer_start, start_cpu, start_cuda});
TDQ_REGISTER_OP({"dist_allreduce_wait_", 1, 1 << 20, infer_wait, wait_cpu, wait_cuda});
TDQ_REGISTER_OP({"dist_stats", 0, 0, infer_stats, stats_cpu, {}});
TDQ_REGISTER_OP({"dist_broadcast_", 1, 1 << 20, infer_broadcast, broadcast_cpu, broadcast_cuda});
TDQ_REGISTER_OP({"dist_nccl_init", 0, 0, infer_nccl_init, nccl_init_cpu, {}});
TDQ_REGISTER_OP({"dist_allgather", 1, 1, infer_allgather, allgather_cpu, {}});
TDQ_REGISTER_OP({"dist_barrier", 0, 0, infer_barrier, barrier_cpu, {}});

}  // namespace tdq
