// Does a nonblocking allreduce progress while a rank computes? Open MPI 4.1
// has no asynchronous progress thread ("OMPI progress: no" in ompi_info), so
// MPI_Iallreduce advances only inside MPI calls. This times, per rank, one
// gradient-sized allreduce against a compute loop made of ~1 ms "ops":
//   serial   compute, then MPI_Allreduce                  (the blocking path)
//   inb      MPI_Iallreduce, compute, MPI_Wait            (no progress calls)
//   test     MPI_Iallreduce, compute with MPI_Test between ops, MPI_Wait
//   thread   a communication thread runs MPI_Allreduce while the rank computes
// Build and run (bench/ddp.ts does this):
//   mpicxx -O2 -std=c++17 -pthread bench/ddp_progress.cpp -o /tmp/ddp_progress
//   mpirun -np 2 /tmp/ddp_progress FLOATS OPS ROUNDS
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {
double now() { return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// One "op": a memory-bound pass over a private 1 MiB array (about a kernel of the backward pass).
float g_sink = 0;
void op(std::vector<float>& w) {
  for (int rep = 0; rep < 4; ++rep)
    for (size_t i = 0; i < w.size(); ++i) w[i] = w[i] * 0.999f + 0.001f;
  g_sink += w[7];
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const size_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1190000;
  const int ops = argc > 2 ? std::atoi(argv[2]) : 100;
  const int rounds = argc > 3 ? std::atoi(argv[3]) : 7;
  std::vector<float> grad(n, 1.0f + rank), work(1 << 18, 0.5f);
  auto compute = [&](bool test, MPI_Request* req) {
    for (int k = 0; k < ops; ++k) {
      op(work);
      if (test) {
        int done = 0;
        MPI_Test(req, &done, MPI_STATUS_IGNORE);
      }
    }
  };
  std::vector<double> t_compute, t_ar, t_serial, t_inb, t_test, t_thread;
  for (int r = 0; r < rounds; ++r) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = now();
    compute(false, nullptr);
    t_compute.push_back(now() - t0);

    MPI_Barrier(MPI_COMM_WORLD);
    t0 = now();
    MPI_Allreduce(MPI_IN_PLACE, grad.data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    t_ar.push_back(now() - t0);

    MPI_Barrier(MPI_COMM_WORLD);
    t0 = now();
    compute(false, nullptr);
    MPI_Allreduce(MPI_IN_PLACE, grad.data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    t_serial.push_back(now() - t0);

    for (int mode = 0; mode < 2; ++mode) {
      MPI_Barrier(MPI_COMM_WORLD);
      t0 = now();
      MPI_Request req;
      MPI_Iallreduce(MPI_IN_PLACE, grad.data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &req);
      compute(mode == 1, &req);
      MPI_Wait(&req, MPI_STATUS_IGNORE);
      (mode ? t_test : t_inb).push_back(now() - t0);
    }

    MPI_Barrier(MPI_COMM_WORLD);
    t0 = now();
    std::thread comm([&] { MPI_Allreduce(MPI_IN_PLACE, grad.data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); });
    compute(false, nullptr);
    comm.join();
    t_thread.push_back(now() - t0);
  }
  if (rank == 0) {
    const double c = median(t_compute), a = median(t_ar), s = median(t_serial);
    auto hidden = [&](double t) { return 100.0 * (s - t) / a; };
    std::printf(
        "{\"ranks\": %d, \"floats\": %zu, \"computeMs\": %.2f, \"allreduceMs\": %.2f, \"serialMs\": %.2f, \"iallreduceMs\": %.2f, "
        "\"iallreduceTestMs\": %.2f, \"threadMs\": %.2f, \"hiddenPct\": {\"iallreduce\": %.0f, \"test\": %.0f, \"thread\": %.0f}}\n",
        size, n, c, a, s, median(t_inb), median(t_test), median(t_thread), hidden(median(t_inb)), hidden(median(t_test)), hidden(median(t_thread)));
  }
  MPI_Finalize();
  return g_sink == 12345.0f ? 1 : 0;
}
