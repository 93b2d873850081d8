#include "thread_pool.h"

#include <algorithm>
#include <cstdlib>

namespace tdq {

namespace {
thread_local bool t_in_parallel = false;
}

ThreadPool::ThreadPool(int threads) { start(threads); }
ThreadPool::~ThreadPool() { stop(); }

int ThreadPool::default_threads() {
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}

void ThreadPool::start(int threads) {
  quit_ = false;
  // Workers start from the generation current now, on this thread: read in the
  // new thread instead, a job posted before it first runs would be skipped
  // (and waited for forever); started from 0, a worker added by resize() would
  // take the last finished job for a new one.
  const uint64_t gen = generation_;
  for (int i = 1; i < std::max(1, threads); ++i) workers_.emplace_back([this, gen] { worker_loop(gen); });
}

void ThreadPool::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    quit_ = true;
  }
  wake_.notify_all();
  for (auto& w : workers_) w.join();
  workers_.clear();
}

void ThreadPool::resize(int threads) {
  if (threads == size()) return;
  stop();
  start(threads);
}

void ThreadPool::run_chunks() {
  for (;;) {
    int64_t c = next_.fetch_add(1);
    if (c >= num_chunks_) break;
    int64_t b = c * chunk_, e = std::min(n_, b + chunk_);
    try {
      (*job_)(b, e);
    } catch (...) {
      // An escaping exception on a worker would terminate the process.
      std::lock_guard<std::mutex> lk(mu_);
      if (!error_) error_ = std::current_exception();
      next_ = num_chunks_;
    }
  }
}

void ThreadPool::worker_loop(uint64_t seen) {
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      wake_.wait(lk, [&] { return quit_ || generation_ != seen; });
      if (quit_) return;
      seen = generation_;
      // Woken late (a busy machine): the caller and the other workers may
      // have taken every chunk already; it does not wait for us then.
      if (!job_ || next_.load() >= num_chunks_) continue;
      ++active_;  // a participant: the caller waits for our chunks
    }
    t_in_parallel = true;
    run_chunks();
    t_in_parallel = false;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (--active_ == 0) done_.notify_one();
    }
  }
}

void ThreadPool::parallel_for(int64_t n, int64_t grain,
                              const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int threads = size();
  if (t_in_parallel || threads == 1 || n <= grain) {
    fn(0, n);
    return;
  }
  // A few chunks per thread balance uneven work without much overhead.
  int64_t chunks = std::min<int64_t>((n + grain - 1) / grain, threads * 4);
  {
    std::lock_guard<std::mutex> lk(mu_);
    job_ = &fn;
    n_ = n;
    chunk_ = (n + chunks - 1) / chunks;
    num_chunks_ = (n + chunk_ - 1) / chunk_;
    next_ = 0;
    // The caller waits for the workers that joined (active_), not for every
    // worker to wake: on a loaded machine a sleeping worker may not run for a
    // while, and the chunks do not need it.
    active_ = 0;
    ++generation_;
  }
  wake_.notify_all();
  t_in_parallel = true;
  run_chunks();
  t_in_parallel = false;
  std::unique_lock<std::mutex> lk(mu_);
  done_.wait(lk, [&] { return active_ == 0; });
  job_ = nullptr;
  if (error_) {
    auto e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
}

}  // namespace tdq
