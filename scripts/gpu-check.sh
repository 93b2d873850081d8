#!/usr/bin/env bash
# The one command to verify the CUDA backend on a machine with an NVIDIA GPU
# (no Node.js needed): builds libtdq_cuda.so and tdq_cuda_test (CMake with
# TDQ_ADDON=OFF, or nvcc + g++ directly where cmake is missing), then runs
# the test: every CUDA kernel against the CPU op of the same name on random
# inputs (the integer path bit for bit), again through cuBLAS / cuDNN and in
# fp16 / bf16 where those load, the NCCL communicator (one rank), and the
# allocator. Sized for about 10 minutes on a 16-core machine
# (the build is most of it; only sm_90 is compiled here unless
# TDQ_CUDA_ARCHS is set).
#
#   OUT=/some/dir scripts/gpu-check.sh      # results: $OUT/summary.txt, test.txt, build.log, ...
#
# nvcc, cuBLAS, cuDNN and NCCL are looked for on the PATH, in CUDA_PATH /
# /usr/local/cuda, and in the nvidia-* Python packages (nvidia-cuda-nvcc,
# nvidia-cublas, nvidia-cudnn-cu13, nvidia-nccl-cu13) of python3; the
# library folders found go on LD_LIBRARY_PATH (the backend dlopens them). Exit status: the test's
# (0 passed, 1 a kernel disagrees, 2 no usable device), 3 build failed.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/gpu-check-out}
mkdir -p "$OUT"
BUILD=${TDQ_GPU_BUILD:-$ROOT/build-gpu}
ARCHS=${TDQ_CUDA_ARCHS:-90}
JOBS=$(nproc 2>/dev/null || echo 4)
: > "$OUT/summary.txt"
log() { echo "$*" | tee -a "$OUT/summary.txt"; }
log "gpu-check: $(date -u) in $ROOT (commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"

PY=$(command -v python3 || command -v python || true)
# Directories of the nvidia-* Python packages (namespace package 'nvidia'),
# and the lib/ folders in them that hold cuBLAS, cuDNN and NCCL.
NV_DIRS=""
NV_LIBDIRS=""
if [ -n "$PY" ]; then
  NV_DIRS=$("$PY" "$ROOT/scripts/nvidia_dirs.py" nvidia.cuda_nvcc nvidia.cu13 nvidia.cublas nvidia.cudnn nvidia.nccl nvidia.cuda_runtime 2>/dev/null)
  NV_LIBDIRS=$("$PY" - <<'PYEOF' 2>/dev/null
import os, re
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
want = re.compile(r"^lib(cublas|cublasLt|cudnn|nccl)\.so(\.\d+)*$")
seen = []
for r in roots:
    for d, dirs, files in os.walk(r):
        if d[len(r):].count(os.sep) > 4:
            dirs[:] = []
            continue
        if any(want.match(f) for f in files) and d not in seen:
            seen.append(d)
print(" ".join(seen))
PYEOF
)
fi
log "nvidia python package dirs: $(echo $NV_DIRS)"
log "cuBLAS / cuDNN / NCCL library dirs: ${NV_LIBDIRS:-none}"
for d in $NV_LIBDIRS; do export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; done
# The test fails (instead of skipping) the vendor paths when the packages are here.
has_lib() { for d in $NV_LIBDIRS; do ls "$d"/$1 >/dev/null 2>&1 && return 0; done; return 1; }
if has_lib 'libcublas.so*' && has_lib 'libcudnn.so*'; then export TDQ_EXPECT_VENDOR=1; fi
if has_lib 'libnccl.so*'; then export TDQ_EXPECT_NCCL=1; fi
log "expect cuBLAS + cuDNN: ${TDQ_EXPECT_VENDOR:-no}; expect NCCL: ${TDQ_EXPECT_NCCL:-no}"

NVCC=$(command -v nvcc || true)
for d in ${CUDA_PATH:-} ${CUDA_HOME:-} /usr/local/cuda $NV_DIRS; do
  [ -z "$NVCC" ] && [ -x "$d/bin/nvcc" ] && NVCC="$d/bin/nvcc"
done
if [ -z "$NVCC" ]; then log "FAIL: nvcc not found"; exit 3; fi
NVCC=$(readlink -f "$NVCC")
log "nvcc: $NVCC ($("$NVCC" --version | tail -1))"
# A cache made with another nvcc would be dropped by CMake together with the
# options below: start it afresh instead.
if [ -f "$BUILD/CMakeCache.txt" ] && ! grep -q "^CMAKE_CUDA_COMPILER:[A-Z]*=$NVCC\$" "$BUILD/CMakeCache.txt"; then
  log "removing $BUILD/CMakeCache.txt (made with another CUDA compiler)"
  rm -f "$BUILD/CMakeCache.txt"
fi
export CUDACXX="$NVCC"  # read by CMake on the first configure of $BUILD
for d in $NV_DIRS; do
  case "$d" in
    *cudnn*) export CUDNN_ROOT="$d" ;;
    *cublas*) export CUBLAS_ROOT="$d" ;;
  esac
  [ -d "$d/lib" ] && export LD_LIBRARY_PATH="$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
log "CUDNN_ROOT=${CUDNN_ROOT:-} CUBLAS_ROOT=${CUBLAS_ROOT:-}"
(nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
log "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi failed')"

T0=$(date +%s)
if command -v cmake >/dev/null; then
  GEN=""
  command -v ninja >/dev/null && GEN="-G Ninja"
  cmake -S "$ROOT" -B "$BUILD" $GEN -DCMAKE_BUILD_TYPE=Release -DTDQ_ADDON=OFF -DTDQ_CUDA=ON -DTDQ_CUDA_TESTS=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" > "$OUT/configure.log" 2>&1 &&
    timeout 480 cmake --build "$BUILD" -j "$JOBS" --target tdq_cuda tdq_cuda_test > "$OUT/build.log" 2>&1
  BRC=$?
  TEST="$BUILD/tdq_cuda_test"
else
  # No cmake: the same two targets by hand from native/sources.json.
  rm -rf "$BUILD/obj" && mkdir -p "$BUILD/obj"
  SRC=$("$PY" -c "import json,sys; s=json.load(open('$ROOT/native/sources.json')); print(' '.join(s['core']+s['cpu']))" | tr ' ' '\n' | grep -v native/napi/)
  CU=$("$PY" -c "import json; print(' '.join(json.load(open('$ROOT/native/sources.json'))['cuda']))")
  (
    set -e
    GENCODE=""
    for a in $(echo "$ARCHS" | tr ';,' '  '); do a=${a%-real}; GENCODE="$GENCODE -gencode arch=compute_$a,code=[sm_$a,compute_$a]"; done
    cd "$ROOT"
    "$NVCC" -std=c++17 -O3 --expt-relaxed-constexpr -Xcompiler -fPIC,-fvisibility=hidden $GENCODE \
      -cudart static -shared -DTDQ_CUDA_ARCHS="\"$ARCHS\"" -o "$BUILD/libtdq_cuda.so" $CU -ldl
    for f in $SRC; do
      echo "c++ $f"
      c++ -std=c++17 -O2 -fno-math-errno -Inative -c "$f" -o "$BUILD/obj/$(echo "$f" | tr / _).o" &
      while [ "$(jobs -r | wc -l)" -ge "$JOBS" ]; do sleep 0.2; done
    done
    wait
    for f in $SRC; do [ -f "$BUILD/obj/$(echo "$f" | tr / _).o" ] || { echo "failed: $f"; exit 1; }; done
    c++ -std=c++17 -O2 -Inative test/cuda/cuda_vs_cpu.cpp "$BUILD"/obj/*.o -o "$BUILD/tdq_cuda_test" -ldl -lpthread
  ) > "$OUT/build.log" 2>&1
  BRC=$?
  TEST="$BUILD/tdq_cuda_test"
fi
log "build: status $BRC in $(( $(date +%s) - T0 )) s (architectures $ARCHS; log build.log)"
if [ "$BRC" -ne 0 ] || [ ! -x "$TEST" ]; then
  tail -40 "$OUT/build.log" | tee -a "$OUT/summary.txt"
  log "FAIL: build failed"
  exit 3
fi
cp "$BUILD/libtdq_cuda.so" "$OUT/" 2>/dev/null || true

T1=$(date +%s)
timeout 240 "$TEST" "$BUILD/libtdq_cuda.so" > "$OUT/test.txt" 2>&1
TRC=$?
cat "$OUT/test.txt"
grep -E "^(FAIL|SKIP)" "$OUT/test.txt" >> "$OUT/summary.txt"
grep -E "^[0-9]+ passed, [0-9]+ failed" "$OUT/test.txt" >> "$OUT/summary.txt"
log "test: status $TRC in $(( $(date +%s) - T1 )) s (0 passed, 1 a kernel disagrees, 2 no usable device, 124 timed out)"
# A second run under compute-sanitizer (memcheck), where it exists and time allows.
CS=$(command -v compute-sanitizer || ls "$(dirname "$NVCC")"/compute-sanitizer 2>/dev/null || true)
if [ -n "$CS" ] && [ "${TDQ_GPU_SANITIZE:-1}" = 1 ]; then
  # Our own kernels only (cuBLAS / cuDNN / NCCL are not ours to check, and slow under memcheck).
  env -u TDQ_EXPECT_VENDOR -u TDQ_EXPECT_NCCL TDQ_CUDA_TEST_OWN_ONLY=1 TDQ_CUDA_KERNELS=own \
    timeout 180 "$CS" --tool memcheck --error-exitcode 9 "$TEST" "$BUILD/libtdq_cuda.so" > "$OUT/memcheck.txt" 2>&1
  log "memcheck: status $? (0 clean, 9 memory errors, 124 timed out; memcheck.txt)"
fi
exit $TRC
