// The stream: ops are validated on the caller's (JS) thread and queued, then
// executed in order on one background thread, so JS never waits for
// arithmetic or memory: queuing is O(1) in the tensors' sizes, and outputs are
// allocated on the stream thread just before their op runs.
//
// Errors belong to tensors, not to the stream. An op whose kernel (or output
// allocation) fails poisons its outputs with the error, naming the op; an op
// with a poisoned input does not run and passes the poison on to its outputs
// (ops with no outputs, which update inputs in place, poison the inputs they
// write, not those they only read). Reading a poisoned tensor rejects with the original error; every
// other tensor, and waiting for the stream, is unaffected. Reading a tensor
// waits for the stream (see binding).
#pragma once
#include <condition_variable>
#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "registry.h"

namespace tdq {

class Stream {
 public:
  Stream(int threads, CpuLevel level, std::shared_ptr<MemoryCounter> counter);
  ~Stream();

  // Validates and queues the op; returns its (not yet allocated) outputs at once.
  std::vector<Tensor> dispatch(const std::string& op, std::vector<Tensor> inputs, Attrs attrs);

  // Number of ops dispatched so far; wait_until(submitted()) waits for all of them.
  uint64_t submitted();
  // Blocks until the first `seq` ops have run (failed ops included: their
  // errors are in their outputs' storage).
  void wait_until(uint64_t seq);
  void wait() { wait_until(submitted()); }

  // Run ops on the caller's thread instead of the background thread (debugging).
  void set_synchronous(bool on);
  void set_threads(int n);  // waits for the queue first
  void set_cpu_level(CpuLevel l);
  // Obsolete (TDQ_MAX_QUEUED_MB): outputs used to be allocated when an op was
  // queued, and dispatch waited for the stream past this many bytes. Outputs
  // are now allocated when the op runs, so queued ops hold no output memory
  // and dispatch never waits; the value is validated and kept, not used.
  void set_max_queued_bytes(size_t n);
  size_t max_queued_bytes() const { return max_queued_bytes_; }
  int threads() const { return pool_.size(); }

  // Per-op wall time on the stream thread, for finding hot spots.
  struct OpTime {
    uint64_t calls = 0;
    double seconds = 0;
  };
  void set_profiling(bool on);
  std::map<std::string, OpTime> profile();  // waits for the queue
  CpuLevel cpu_level() const { return ctx_.cpu_level; }
  const std::shared_ptr<MemoryCounter>& counter() const { return counter_; }

 private:
  struct Task {
    const OpDef* def;
    OpCall call;
    Device device;
  };
  void loop();
  void execute(Task& t);

  std::shared_ptr<MemoryCounter> counter_;
  ThreadPool pool_;
  ExecContext ctx_;
  std::mutex mu_;
  std::condition_variable has_work_, drained_;
  std::deque<Task> queue_;
  uint64_t submitted_ = 0, completed_ = 0;
  size_t max_queued_bytes_ = 0;
  bool quit_ = false;
  bool synchronous_ = false;
  bool profiling_ = false;
  std::map<std::string, OpTime> profile_;
  std::thread thread_;
};

}  // namespace tdq
