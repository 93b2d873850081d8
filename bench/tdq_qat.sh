#!/usr/bin/env bash
# The QAT rows of the TDQ results table: static LSQ and TDQ at W8A8, W4A8,
# W8A4 and W4A4, each fine-tuned from the shipped full-precision model with
# the train command's QAT defaults (weights 2e-5, quantizers 2e-4, no warm-up).
# The two runs of a setting go in parallel, one thread each. Then it prints
# the bench/tdq_table.js command that evaluates them beside the PTQ rows.
#
# CALIB_METHOD picks how calibration initialises the steps (train --calib-method).
#
#   [LOGDIR=runs] [STEPS=200] [BATCH=32] [CALIB_METHOD=auto] bash bench/tdq_qat.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LOGDIR=${LOGDIR:-runs} STEPS=${STEPS:-200} BATCH=${BATCH:-32} CALIB_METHOD=${CALIB_METHOD:-auto}
FP=models/fmnist-small.safetensors
qat_args=()
run() { # W A lsq|tdq
  local dyn=() name="qat-w$1a$2-$3"
  [ "$3" = tdq ] && dyn=(--use-dynamic)
  # Rerunnable (train refuses a fresh run in a folder that holds one): a
  # finished run is kept, one with a checkpoint continues, one that died
  # before its first checkpoint starts again.
  if [ -f "$LOGDIR/$name/model.safetensors" ]; then return 0; fi
  if ls "$LOGDIR/$name"/checkpoints/*.safetensors >/dev/null 2>&1; then
    TDQ_NUM_THREADS=1 node bin/tdq-native.js train --base configs/fmnist-small.yaml --resume "$LOGDIR/$name" \
      --max-steps "$STEPS" --batch-size "$BATCH" >> "$LOGDIR/$name.log" 2>&1
    return
  fi
  rm -rf "${LOGDIR:?}/$name"
  TDQ_NUM_THREADS=1 node bin/tdq-native.js train --base configs/fmnist-small.yaml --ckpt "$FP" \
    --n-bit-w "$1" --n-bit-a "$2" "${dyn[@]}" --max-steps "$STEPS" --batch-size "$BATCH" \
    --calib-samples 16 --calib-method "$CALIB_METHOD" --logdir "$LOGDIR" --name "$name" > "$LOGDIR/$name.log" 2>&1
}
mkdir -p "$LOGDIR"
for s in "8 4" "4 4" "8 8" "4 8"; do
  set -- $s
  run "$1" "$2" lsq & a=$!
  run "$1" "$2" tdq & b=$!
  wait $a; wait $b # set -e: a failed run stops here; its log says why
  echo "W$1A$2 done: $LOGDIR/qat-w$1a$2-{lsq,tdq}"
  for m in lsq tdq; do qat_args+=(--qat "w$1a$2-$m=$LOGDIR/qat-w$1a$2-$m/model.safetensors"); done
done
# The table's own setup (bench/results/tdq-table.md); --reuse keeps the PTQ
# rows of a run made while these trained.
echo "node dist/bench/tdq_table.js --ckpt $FP --n-samples 64 --steps 25 --seeds 0,1 --eps-samples 8 --calib-samples 16 --reuse bench/results/tdq-table.json ${qat_args[*]} --out bench/results/tdq-table.json"
