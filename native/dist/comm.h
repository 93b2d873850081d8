// The communicator behind data-parallel training: the few collectives it
// needs, over MPI here (mpi_comm.cpp), and meant to take NCCL's place for the
// CUDA backend later with the same calls. Every call runs on the engine's
// stream thread (as ops), so collectives keep the order in which JS queued them.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace tdq::dist {

struct Info {
  bool built = false;        // compiled with MPI
  bool initialized = false;  // init() has run
  int rank = 0, size = 1;
  std::string library;       // the MPI library's version string
};

// Initialises MPI once (MPI_THREAD_SERIALIZED); a no-op afterwards. Without
// MPI it leaves rank 0 of 1.
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

}  // namespace tdq::dist
