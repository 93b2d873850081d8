#!/usr/bin/env bash
# The one command for the JS side of the CUDA backend on a GPU machine
# without Node.js (issue 15): unpacks the node binary and runtime packages
# that scripts/pack-gpu-carry.sh put in .gpu-carry/, then
#   1. tdq-native info (the in-process view and what --device auto picks),
#   2. the JS CUDA tests (test/cuda/*.test.js, test/dist/nccl, test/models/
#      latent_device) with TDQ_REQUIRE_GPU=1, so that
#      a device that does not work fails instead of skipping,
#   3. bench/cuda_vs_torch.ts: our CUDA backend against PyTorch eager on the
#      same GPU (needs python3 with a CUDA build of torch),
# each under a timeout, everything written under $OUT (summary.txt first).
# Expects built dist/ and build/Release (the addon and libtdq_cuda.so) to have
# travelled with the tree; TDQ_CUDA_LIB may point at another libtdq_cuda.so
# (e.g. the one scripts/gpu-check.sh built there).
#
#   (here)  scripts/pack-gpu-carry.sh && npx tsc -p tsconfig.json
#   (there) OUT=/some/dir scripts/gpu-bench.sh      # carry: .gpu-carry, build/Release, dist
#
# TDQ_BENCH_ARGS overrides the bench's arguments (default: --steps 10 --reps 2
# --rounds 2, sized with the tests for about 8 minutes). Exit status: 0 all
# passed, 1 tests failed, 2 bench failed, 3 setup failed.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu-bench-out}
mkdir -p "$OUT"
: > "$OUT/summary.txt"
log() { echo "$*" | tee -a "$OUT/summary.txt"; }
log "gpu-bench: $(date -u) in $ROOT (commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
(nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
log "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi failed')"

# Node: on the PATH, else unpacked from .gpu-carry (xz, or Python's lzma where xz is missing).
BIN="$ROOT/.gpu-carry/bin"
PY=$(command -v python3 || command -v python || true)
# TDQ_UNPACK_NODE=1: use the packed node even where one is on the PATH (to check the packing).
if [ "${TDQ_UNPACK_NODE:-0}" = 1 ] || ! command -v node >/dev/null; then
  mkdir -p "$BIN"
  if [ ! -x "$BIN/node" ]; then
    [ -f .gpu-carry/node.xz ] || { log "FAIL: no node on the PATH and no .gpu-carry/node.xz (run scripts/pack-gpu-carry.sh and carry .gpu-carry)"; exit 3; }
    if command -v xz >/dev/null; then xz -dc .gpu-carry/node.xz > "$BIN/node"
    else "$PY" -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" .gpu-carry/node.xz "$BIN/node"; fi
    chmod +x "$BIN/node"
  fi
  export PATH="$BIN:$PATH"
fi
node --version > /dev/null 2>&1 || { log "FAIL: node does not run: $(node --version 2>&1 | head -2)"; exit 3; }
log "node: $(command -v node) $(node --version)"
if [ ! -d node_modules/yargs ]; then
  [ -f .gpu-carry/node_modules.tar.xz ] || { log "FAIL: no node_modules and no .gpu-carry/node_modules.tar.xz"; exit 3; }
  "$PY" -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall('.')" .gpu-carry/node_modules.tar.xz || { log "FAIL: could not unpack node_modules"; exit 3; }
fi
[ -f dist/src/index.js ] && [ -f build/Release/tdq_native.node ] || { log "FAIL: dist/ or build/Release/ did not travel (carry them)"; exit 3; }
# The torch side: python3 with torch; cuDNN / cuBLAS of the nvidia-* packages on the library path.
export TDQ_PYTHON=${TDQ_PYTHON:-$PY}
NV_DIRS=$("$PY" "$ROOT/scripts/nvidia_dirs.py" nvidia.cublas nvidia.cudnn nvidia.cuda_runtime nvidia.cu13 2>/dev/null)
for d in $NV_DIRS; do
  [ -d "$d/lib" ] && export LD_LIBRARY_PATH="$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done

timeout 60 node bin/tdq-native.js info > "$OUT/info.txt" 2>&1
log "info: $(grep -E '^(cuda|cuda build|device auto):' "$OUT/info.txt" | tr '\n' ';')"

T0=$(date +%s)
TDQ_REQUIRE_GPU=1 timeout 300 node scripts/run-tests.js test/cuda/ test/dist/nccl test/models/latent_device > "$OUT/tests.txt" 2>&1
TRC=$?
grep -E '^# (tests|pass|fail|skipped)' "$OUT/tests.txt" | tr '\n' ' ' | sed 's/^/tests: /' | tee -a "$OUT/summary.txt"; echo | tee -a "$OUT/summary.txt"
grep -E '^not ok|^\s+not ok' "$OUT/tests.txt" | head -20 | tee -a "$OUT/summary.txt"
log "tests: status $TRC in $(( $(date +%s) - T0 )) s (tests.txt)"

T0=$(date +%s)
# shellcheck disable=SC2086
timeout 420 node dist/bench/cuda_vs_torch.js --device cuda ${TDQ_BENCH_ARGS:---steps 10 --reps 2 --rounds 2} \
  --out "$OUT/cuda-vs-torch.md" --json "$OUT/cuda-vs-torch.json" > "$OUT/bench.txt" 2>&1
BRC=$?
cat "$OUT/cuda-vs-torch.md" >> "$OUT/summary.txt" 2>/dev/null
log "bench: status $BRC in $(( $(date +%s) - T0 )) s (bench.txt, cuda-vs-torch.md)"
[ "$TRC" -ne 0 ] && exit 1
[ "$BRC" -ne 0 ] && exit 2
exit 0
