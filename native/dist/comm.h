// The communicator behind data-parallel training: the few collectives it
// needs, over MPI here (mpi_comm.cpp), and meant to take NCCL's place for the
// CUDA backend later with the same calls. The ops that call these run on the
// engine's stream thread, in the order JS queued them; the collectives
// themselves run on one communication thread, in the order they were called
// (so every rank issues them in the same order), which lets a gradient
// bucket's allreduce run while the stream goes on with the backward pass.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace tdq::dist {

struct Info {
  bool built = false;        // compiled with MPI
  bool initialized = false;  // init() has run
  int rank = 0, size = 1;
  std::string library;       // the MPI library's version string
};

// Initialises MPI once (MPI_THREAD_SERIALIZED, on the communication thread);
// a no-op afterwards. Without MPI it leaves rank 0 of 1.
const Info& init();
const Info& info();
// Whether this build has MPI (without initialising it).
bool mpi_built();

// In place, over every rank: sum of n floats.
void allreduce_sum(float* data, size_t n);
// In place: root's bytes everywhere.
void broadcast(void* data, size_t bytes, int root);
// out (size * n) = every rank's n floats, in rank order.
void allgather(const float* data, size_t n, float* out);
void barrier();

// A nonblocking allreduce: the sum over ranks of `data`, computed on the
// communication thread (queued after every collective called before it) by the
// same MPI_Allreduce as allreduce_sum, so the result is the same.
class Pending {
 public:
  virtual ~Pending() = default;
  // Blocks until the sum is in data() (throws what the collective threw).
  virtual std::vector<float>& wait() = 0;
};
std::unique_ptr<Pending> allreduce_sum_start(std::vector<float> data);

// Nanoseconds the communication thread has spent in allreduces, and how many
// it ran, since the last call (which resets both).
void take_allreduce_time(int64_t* ns, int64_t* count);

}  // namespace tdq::dist
