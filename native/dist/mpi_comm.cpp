// comm.h over MPI (built where CMake finds MPI: TDQ_WITH_MPI), or a stub
// where it does not, whose collectives say how to get MPI.
//
// Every MPI call runs on one communication thread, in FIFO order: callers on
// the stream thread queue a job and wait for it (the blocking collectives) or
// later (allreduce_sum_start). Open MPI 4.1 has no asynchronous progress
// ("OMPI progress: no"): an MPI_Iallreduce moves only inside MPI calls, which
// the stream thread would have to make between ops (bench/ddp_progress.cpp
// measures both); a thread blocked in MPI_Allreduce progresses by itself and
// sums in the same order as the blocking call.
#include "comm.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

#include "../core/error.h"

#ifdef TDQ_WITH_MPI
#include <mpi.h>
#endif

namespace tdq::dist {
namespace {
Info g_info;
std::once_flag g_once;
std::atomic<int64_t> g_allreduce_ns{0}, g_allreduce_count{0};
}  // namespace

void take_allreduce_time(int64_t* ns, int64_t* count) {
  *ns = g_allreduce_ns.exchange(0);
  *count = g_allreduce_count.exchange(0);
}

#ifdef TDQ_WITH_MPI

namespace {
void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  fail(ErrorKind::Runtime, "MPI ", what, " failed: ", std::string(msg, len));
}

// One queued collective; done/error are guarded by the queue's mutex.
struct Job {
  std::function<void()> fn;
  bool done = false;
  std::exception_ptr error;
};

class CommThread {
 public:
  CommThread() : thread_([this] { loop(); }) { thread_.detach(); }
  std::shared_ptr<Job> post(std::function<void()> fn) {
    auto job = std::make_shared<Job>();
    job->fn = std::move(fn);
    {
      std::lock_guard<std::mutex> lk(m_);
      q_.push_back(job);
    }
    cv_.notify_all();
    return job;
  }
  // Waits for the job; false when `limit` passed first.
  bool wait(Job& job, std::chrono::milliseconds limit = std::chrono::milliseconds::max()) {
    std::unique_lock<std::mutex> lk(m_);
    if (limit == std::chrono::milliseconds::max()) {
      done_.wait(lk, [&] { return job.done; });
    } else if (!done_.wait_for(lk, limit, [&] { return job.done; })) {
      return false;
    }
    if (job.error) std::rethrow_exception(job.error);
    return true;
  }
  void run(std::function<void()> fn) { wait(*post(std::move(fn))); }

 private:
  void loop() {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return !q_.empty(); });
        job = q_.front();
        q_.pop_front();
      }
      std::exception_ptr err;
      try {
        job->fn();
      } catch (...) {
        err = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lk(m_);
        job->error = err;
        job->done = true;
      }
      done_.notify_all();
    }
  }
  std::mutex m_;
  std::condition_variable cv_, done_;
  std::deque<std::shared_ptr<Job>> q_;
  std::thread thread_;
};

// Never destroyed: the thread may still be blocked in a collective at exit.
CommThread& comm_thread() {
  static CommThread* t = new CommThread();
  return *t;
}

void finalize_at_exit() {
  // On the thread that initialised MPI; skipped when a collective is still
  // blocked (a peer died or an error left it waiting): exit without finalising.
  try {
    comm_thread().wait(*comm_thread().post([] {
      int inited = 0, done = 0;
      MPI_Initialized(&inited);
      MPI_Finalized(&done);
      if (inited && !done) MPI_Finalize();
    }), std::chrono::milliseconds(5000));
  } catch (...) {
  }
}

void require_init(const char* what) {
  if (!g_info.initialized) fail(ErrorKind::Runtime, "dist: ", what, " before init (call the communicator's init first)");
}

// MPI counts are int: large buffers go in chunks.
constexpr size_t kChunk = size_t(1) << 30;

void allreduce_now(float* data, size_t n) {
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t off = 0; off < n; off += kChunk) {
    const int cnt = static_cast<int>(std::min(kChunk, n - off));
    check(MPI_Allreduce(MPI_IN_PLACE, data + off, cnt, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
  }
  g_allreduce_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
  g_allreduce_count += 1;
}

class MpiPending final : public Pending {
 public:
  explicit MpiPending(std::vector<float> data) : data_(std::move(data)) {
    float* p = data_.data();
    const size_t n = data_.size();
    job_ = comm_thread().post([p, n] { allreduce_now(p, n); });
  }
  // A pending allreduce that nobody waited for still writes data_: wait here.
  ~MpiPending() override {
    if (job_) {
      try {
        comm_thread().wait(*job_);
      } catch (...) {
      }
    }
  }
  std::vector<float>& wait() override {
    if (job_) {
      std::shared_ptr<Job> j = std::move(job_);
      comm_thread().wait(*j);
    }
    return data_;
  }

 private:
  std::vector<float> data_;
  std::shared_ptr<Job> job_;
};
}  // namespace

const Info& init() {
  std::call_once(g_once, [] {
    g_info.built = true;
    comm_thread().run([] {
      int provided = 0;
      int inited = 0;
      MPI_Initialized(&inited);
      if (!inited) check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
      // Errors come back as return codes (and then as JS errors), not as an abort.
      MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
      MPI_Comm_rank(MPI_COMM_WORLD, &g_info.rank);
      MPI_Comm_size(MPI_COMM_WORLD, &g_info.size);
      char ver[MPI_MAX_LIBRARY_VERSION_STRING];
      int len = 0;
      MPI_Get_library_version(ver, &len);
      g_info.library = std::string(ver, len);
    });
    const size_t nl = g_info.library.find('\n');
    if (nl != std::string::npos) g_info.library.resize(nl);
    g_info.initialized = true;
    std::atexit(finalize_at_exit);
  });
  return g_info;
}

const Info& info() {
  g_info.built = true;
  return g_info;
}

bool mpi_built() { return true; }

void allreduce_sum(float* data, size_t n) {
  require_init("allreduce");
  comm_thread().run([=] { allreduce_now(data, n); });
}

std::unique_ptr<Pending> allreduce_sum_start(std::vector<float> data) {
  require_init("allreduce");
  return std::make_unique<MpiPending>(std::move(data));
}

void broadcast(void* data, size_t bytes, int root) {
  require_init("broadcast");
  comm_thread().run([=] {
    auto* p = static_cast<char*>(data);
    for (size_t off = 0; off < bytes; off += kChunk)
      check(MPI_Bcast(p + off, static_cast<int>(std::min(kChunk, bytes - off)), MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
  });
}

void allgather(const float* data, size_t n, float* out) {
  require_init("allgather");
  comm_thread().run([=] {
    check(MPI_Allgather(data, static_cast<int>(n), MPI_FLOAT, out, static_cast<int>(n), MPI_FLOAT, MPI_COMM_WORLD), "MPI_Allgather");
  });
}

void barrier() {
  require_init("barrier");
  comm_thread().run([] { check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); });
}

#else  // no MPI

namespace {
[[noreturn]] void no_mpi(const char* what) {
  fail(ErrorKind::Runtime, "dist: ", what, " needs MPI, and this build has none: install it (Debian: apt-get install libopenmpi-dev openmpi-bin) and rebuild (npm run build:native)");
}
}  // namespace

const Info& init() {
  std::call_once(g_once, [] { g_info.initialized = true; });
  return g_info;
}
const Info& info() { return g_info; }
bool mpi_built() { return false; }
void allreduce_sum(float*, size_t) { no_mpi("allreduce"); }
std::unique_ptr<Pending> allreduce_sum_start(std::vector<float>) { no_mpi("allreduce"); }
void broadcast(void*, size_t, int) { no_mpi("broadcast"); }
void allgather(const float*, size_t, float*) { no_mpi("allgather"); }
void barrier() { no_mpi("barrier"); }

#endif

}  // namespace tdq::dist
