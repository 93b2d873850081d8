// The stream: ops are validated and their outputs allocated on the caller's
// (JS) thread, then executed in order on one background thread, so JS never
// waits for arithmetic. Reading a tensor waits for the stream (see binding).
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

  // Validates, allocates outputs and queues the op; returns its outputs at once.
  std::vector<Tensor> dispatch(const std::string& op, std::vector<Tensor> inputs, Attrs attrs);

  // Number of ops dispatched so far; wait_until(submitted()) waits for all of them.
  uint64_t submitted();
  // Blocks until the first `seq` ops have run. Returns the first error of a
  // failed op since the last wait (and clears it), or an empty string.
  std::string wait_until(uint64_t seq);
  std::string wait() { return wait_until(submitted()); }

  // Run ops on the caller's thread instead of the background thread (debugging).
  void set_synchronous(bool on);
  void set_threads(int n);  // waits for the queue first
  void set_cpu_level(CpuLevel l);
  // Bytes of outputs that queued ops may hold before they run (0: no limit).
  // Outputs are allocated when an op is queued, and JS can queue a whole
  // backward pass at once; past this, dispatch waits for the stream.
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
    size_t out_bytes = 0;  // outputs allocated for this task before it ran
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
  size_t queued_bytes_ = 0, max_queued_bytes_ = 0;
  bool quit_ = false;
  bool synchronous_ = false;
  std::string error_;
  bool profiling_ = false;
  std::map<std::string, OpTime> profile_;
  std::thread thread_;
};

}  // namespace tdq
