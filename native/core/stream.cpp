#include "stream.h"

#include <cstdlib>

namespace tdq {

Stream::Stream(int threads, CpuLevel level, std::shared_ptr<MemoryCounter> counter)
    : counter_(std::move(counter)), pool_(threads) {
  ctx_.pool = &pool_;
  ctx_.cpu_level = level;
  ctx_.counter = counter_;
  const char* s = std::getenv("TDQ_SYNC");
  synchronous_ = s && *s && *s != '0';
  const char* q = std::getenv("TDQ_MAX_QUEUED_MB");
  max_queued_bytes_ = (q && *q ? std::strtoull(q, nullptr, 10) : 256) << 20;
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
  const KernelFn& kernel = device == Device::cpu ? def.cpu : def.cuda;
  TDQ_CHECK_TYPE(static_cast<bool>(kernel), name, ": no kernel for device ", device_name(device));

  std::vector<TensorMeta> metas = def.infer(inputs, attrs);
  size_t out_bytes = 0;
  for (auto& m : metas) out_bytes += static_cast<size_t>(shape_numel(m.shape)) * dtype_size(m.dtype);
  if (!synchronous_ && max_queued_bytes_ > 0) {
    // Backpressure: let the stream catch up before allocating more.
    std::unique_lock<std::mutex> lk(mu_);
    drained_.wait(lk, [&] { return queued_bytes_ == 0 || queued_bytes_ + out_bytes <= max_queued_bytes_; });
  }
  Task task{&def, OpCall{std::move(inputs), std::move(attrs), {}}, device, out_bytes};
  for (auto& m : metas) task.call.outputs.push_back(alloc_tensor(m.shape, m.dtype, device, counter_));
  std::vector<Tensor> outs = task.call.outputs;

  if (synchronous_) {
    std::string err = wait();
    execute(task);
    std::lock_guard<std::mutex> lk(mu_);
    if (error_.empty() && !err.empty()) error_ = err;
    ++submitted_;
    ++completed_;
  } else {
    {
      std::lock_guard<std::mutex> lk(mu_);
      queued_bytes_ += task.out_bytes;
      queue_.push_back(std::move(task));
      ++submitted_;
    }
    has_work_.notify_one();
  }
  return outs;
}

void Stream::execute(Task& t) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!error_.empty()) return;  // after a failure, later ops would read garbage
  }
  try {
    if (profiling_) {
      auto t0 = std::chrono::steady_clock::now();
      (t.device == Device::cpu ? t.def->cpu : t.def->cuda)(t.call, ctx_);
      double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::lock_guard<std::mutex> lk(mu_);
      auto& e = profile_[t.def->name];
      ++e.calls;
      e.seconds += dt;
    } else {
      (t.device == Device::cpu ? t.def->cpu : t.def->cuda)(t.call, ctx_);
    }
    // An op without outputs works on its inputs in place: what was derived
    // from their contents before is stale now.
    if (t.call.outputs.empty())
      for (auto& in : t.call.inputs)
        if (in.defined()) in.storage->version.fetch_add(1);
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lk(mu_);
    error_ = t.def->name + ": " + e.what();
  } catch (...) {
    std::lock_guard<std::mutex> lk(mu_);
    error_ = t.def->name + ": unknown native error";
  }
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
    const size_t done_bytes = task.out_bytes;
    task = Task{};  // release the inputs' storage before signalling
    {
      std::lock_guard<std::mutex> lk(mu_);
      queued_bytes_ -= done_bytes;
      ++completed_;
      drained_.notify_all();
    }
  }
}

uint64_t Stream::submitted() {
  std::lock_guard<std::mutex> lk(mu_);
  return submitted_;
}

std::string Stream::wait_until(uint64_t seq) {
  std::unique_lock<std::mutex> lk(mu_);
  drained_.wait(lk, [&] { return completed_ >= seq; });
  std::string e;
  e.swap(error_);
  return e;
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
  std::string e = wait();
  std::lock_guard<std::mutex> lk(mu_);
  profiling_ = on;
  profile_.clear();
  if (!e.empty()) error_ = e;
}

std::map<std::string, Stream::OpTime> Stream::profile() {
  std::string e = wait();
  std::lock_guard<std::mutex> lk(mu_);
  if (!e.empty()) error_ = e;
  return profile_;
}

void Stream::set_threads(int n) {
  std::string e = wait();
  pool_.resize(n);
  if (!e.empty()) {
    std::lock_guard<std::mutex> lk(mu_);
    error_ = e;
  }
}

void Stream::set_cpu_level(CpuLevel l) {
  std::string e = wait();
  ctx_.cpu_level = l;
  if (!e.empty()) {
    std::lock_guard<std::mutex> lk(mu_);
    error_ = e;
  }
}

}  // namespace tdq
