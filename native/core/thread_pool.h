// A fixed pool of worker threads for data-parallel loops inside one kernel.
// One pool per JS environment (worker_threads get their own).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace tdq {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }
  void resize(int threads);

  // Calls fn(begin, end) on disjoint chunks covering [0, n). Chunks hold at
  // least `grain` items. Nested calls run serially on the calling thread.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

  // The number of hardware threads (TDQ_NUM_THREADS is read by env.h).
  static int default_threads();

 private:
  void start(int threads);
  void stop();
  void worker_loop(uint64_t seen);
  void run_chunks();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_, done_;
  uint64_t generation_ = 0;
  bool quit_ = false;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t n_ = 0, chunk_ = 0, num_chunks_ = 0;
  std::atomic<int64_t> next_{0};
  int active_ = 0;
  std::exception_ptr error_;  // first exception thrown by a chunk
};

}  // namespace tdq
