#include "stream.h"
#include "../cuda/cuda_memory.h"

#include <cstdlib>
#include <new>

namespace tdq {

Stream::Stream(int threads, CpuLevel level, std::shared_ptr<MemoryCounter> counter)
    : counter_(std::move(counter)), pool_(threads) {
  ctx_.pool = &pool_;
  ctx_.cpu_level = level;
  ctx_.counter = counter_;
  const char* s = std::getenv("TDQ_SYNC");
  synchronous_ = s && *s && *s != '0';
  thread_ = std::thread([this] { loop(); });
}

Stream::~Stream() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    quit_ = true;
  }
  has_work_.notify_all();
  thread_.join();
}

std::vector<Tensor> Stream::dispatch(const std::string& name, std::vector<Tensor> inputs, Attrs attrs) {
  const OpDef& def = find_op(name);
  attrs.op = name;
  const int n = static_cast<int>(inputs.size());
  TDQ_CHECK_TYPE(n >= def.min_inputs && n <= def.max_inputs, name, ": expected ",
                 def.min_inputs == def.max_inputs ? std::to_string(def.min_inputs)
                                                  : std::to_string(def.min_inputs) + " to " +
                                                        std::to_string(def.max_inputs),
                 " inputs, got ", n);
  // The device comes from the inputs, or from the 'device' attribute for ops
  // that create tensors from nothing.
  Device device = device_from_name(attrs.get_string("device", "cpu"));
  bool seen = false;
  for (int i = 0; i < n; ++i) {
    if (!inputs[i].defined()) continue;
    if (!seen) device = inputs[i].device, seen = true;
    TDQ_CHECK_TYPE(inputs[i].device == device, name, ": input ", i, " is on ",
                   device_name(inputs[i].device), " but input 0 is on ", device_name(device));
  }
  if (device == Device::cuda) cuda_require();  // loads the CUDA backend; the reason when it is unavailable
  const KernelFn& kernel = device == Device::cpu ? def.cpu : def.cuda;
  TDQ_CHECK_TYPE(static_cast<bool>(kernel), name, ": no kernel for device ", device_name(device));

  std::vector<TensorMeta> metas = def.infer(inputs, attrs);
  Task task{&def, OpCall{std::move(inputs), std::move(attrs), {}}, device};
  for (auto& m : metas) task.call.outputs.push_back(alloc_tensor(m.shape, m.dtype, device, counter_, /*lazy=*/true));
  std::vector<Tensor> outs = task.call.outputs;

  if (synchronous_) {
    wait();
    execute(task);
    std::lock_guard<std::mutex> lk(mu_);
    ++submitted_;
    ++completed_;
  } else {
    {
      std::lock_guard<std::mutex> lk(mu_);
      queue_.push_back(std::move(task));
      ++submitted_;
    }
    has_work_.notify_one();
  }
  return outs;
}

namespace {
// Whether an op without outputs writes its input i in place (the others it
// only reads, and a failure must not poison them: they may be shared with
// healthy work). Ops not listed may have half-written any of their inputs.
bool writes_input(const std::string& op, size_t i) {
  if (op == "copy_") return i == 0;          // (dst, src)
  if (op == "adam_step") return i != 1;      // (param, grad, exp_avg, exp_avg_sq)
  if (op == "clip_scale_") return i != 0;    // (norm, g0, g1, ...)
  return true;
}

std::shared_ptr<const TensorError> op_error(const std::string& op, ErrorKind kind, const std::string& what) {
  return std::make_shared<const TensorError>(TensorError{kind, op + ": " + what});
}
}  // namespace

void Stream::execute(Task& t) {
  std::shared_ptr<const TensorError> poison;
  for (const auto& in : t.call.inputs)
    if (in.defined() && in.storage->error) {
      poison = in.storage->error;  // the original error, naming the op that failed
      break;
    }
  if (!poison) {
    try {
      for (auto& o : t.call.outputs) o.storage->allocate();
      const KernelFn& kernel = t.device == Device::cpu ? t.def->cpu : t.def->cuda;
      if (profiling_) {
        auto t0 = std::chrono::steady_clock::now();
        kernel(t.call, ctx_);
        double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::lock_guard<std::mutex> lk(mu_);
        auto& e = profile_[t.def->name];
        ++e.calls;
        e.seconds += dt;
      } else {
        kernel(t.call, ctx_);
      }
    } catch (const Error& e) {
      poison = op_error(t.def->name, e.kind, e.what());
    } catch (const std::bad_alloc&) {
      poison = op_error(t.def->name, ErrorKind::Range, "out of memory (a scratch allocation failed)");
    } catch (const std::exception& e) {
      poison = op_error(t.def->name, ErrorKind::Runtime, e.what());
    } catch (...) {
      poison = op_error(t.def->name, ErrorKind::Runtime, "unknown native error");
    }
    // An op without outputs works on its inputs in place: what was derived
    // from their contents before (conv2d's packed weights) is stale now.
    if (t.call.outputs.empty())
      for (size_t i = 0; i < t.call.inputs.size(); ++i)
        if (t.call.inputs[i].defined() && writes_input(t.def->name, i)) t.call.inputs[i].storage->version.fetch_add(1);
  }
  if (!poison) return;
  for (auto& o : t.call.outputs) o.storage->error = poison;
  // An op without outputs updates inputs in place: those are now garbage.
  if (t.call.outputs.empty())
    for (size_t i = 0; i < t.call.inputs.size(); ++i)
      if (t.call.inputs[i].defined() && writes_input(t.def->name, i)) t.call.inputs[i].storage->error = poison;
}

void Stream::loop() {
  for (;;) {
    Task task;
    {
      std::unique_lock<std::mutex> lk(mu_);
      has_work_.wait(lk, [&] { return quit_ || !queue_.empty(); });
      if (queue_.empty()) return;  // quit with nothing left
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    execute(task);
    task = Task{};  // release the inputs' storage before signalling
    {
      std::lock_guard<std::mutex> lk(mu_);
      ++completed_;
      drained_.notify_all();
    }
  }
}

uint64_t Stream::submitted() {
  std::lock_guard<std::mutex> lk(mu_);
  return submitted_;
}

void Stream::wait_until(uint64_t seq) {
  std::unique_lock<std::mutex> lk(mu_);
  drained_.wait(lk, [&] { return completed_ >= seq; });
}

void Stream::set_synchronous(bool on) {
  wait();
  synchronous_ = on;
}

void Stream::set_max_queued_bytes(size_t n) {
  std::lock_guard<std::mutex> lk(mu_);
  max_queued_bytes_ = n;
}

void Stream::set_profiling(bool on) {
  wait();
  std::lock_guard<std::mutex> lk(mu_);
  profiling_ = on;
  profile_.clear();
}

std::map<std::string, Stream::OpTime> Stream::profile() {
  wait();
  std::lock_guard<std::mutex> lk(mu_);
  return profile_;
}

void Stream::set_threads(int n) {
  wait();
  pool_.resize(n);
}

void Stream::set_cpu_level(CpuLevel l) {
  wait();
  ctx_.cpu_level = l;
}

}  // namespace tdq
