// comm.h over MPI (built where CMake finds MPI: TDQ_WITH_MPI), or a stub
// where it does not, whose collectives say how to get MPI.
#include "comm.h"

#include <cstdlib>
#include <mutex>

#include "../core/error.h"

#ifdef TDQ_WITH_MPI
#include <mpi.h>
#endif

namespace tdq::dist {
namespace {
Info g_info;
std::once_flag g_once;
}  // namespace

#ifdef TDQ_WITH_MPI

namespace {
void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  fail(ErrorKind::Runtime, "MPI ", what, " failed: ", std::string(msg, len));
}

void finalize_at_exit() {
  int inited = 0, done = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&done);
  if (inited && !done) MPI_Finalize();
}

void require_init(const char* what) {
  if (!g_info.initialized) fail(ErrorKind::Runtime, "dist: ", what, " before init (call the communicator's init first)");
}
}  // namespace

const Info& init() {
  std::call_once(g_once, [] {
    g_info.built = true;
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
  // MPI counts are int: large buffers go in chunks.
  const size_t chunk = size_t(1) << 30;
  for (size_t off = 0; off < n; off += chunk) {
    const int cnt = static_cast<int>(std::min(chunk, n - off));
    check(MPI_Allreduce(MPI_IN_PLACE, data + off, cnt, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
  }
}

void broadcast(void* data, size_t bytes, int root) {
  require_init("broadcast");
  const size_t chunk = size_t(1) << 30;
  auto* p = static_cast<char*>(data);
  for (size_t off = 0; off < bytes; off += chunk)
    check(MPI_Bcast(p + off, static_cast<int>(std::min(chunk, bytes - off)), MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
}

void allgather(const float* data, size_t n, float* out) {
  require_init("allgather");
  check(MPI_Allgather(data, static_cast<int>(n), MPI_FLOAT, out, static_cast<int>(n), MPI_FLOAT, MPI_COMM_WORLD), "MPI_Allgather");
}

void barrier() {
  require_init("barrier");
  check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
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
void broadcast(void*, size_t, int) { no_mpi("broadcast"); }
void allgather(const float*, size_t, float*) { no_mpi("allgather"); }
void barrier() { no_mpi("barrier"); }

#endif

}  // namespace tdq::dist
