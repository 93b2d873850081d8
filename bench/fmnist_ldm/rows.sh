#!/usr/bin/env bash
# The results rows of the shipped latent model (bench/results/fmnist-ldm.md):
# PTQ with `tdq-native calibrate` (W8A4 static LSQ, W8A4 TDQ), N samples of
# each model with DDIM (classes 0-9 cycled, so drawn uniformly), FID-FMNIST
# against the 60,000 training images, and the shipped classifier's per-class
# accuracy. Run from the package root after `npx tsc -p .`.
#   N=1000 STEPS=25 OUT=runs/fmnist-ldm-rows bash bench/fmnist_ldm/rows.sh   (calibration: CAL_N=16 trajectories of CAL_STEPS=STEPS steps)
set -euo pipefail
N=${N:-1000}
STEPS=${STEPS:-25}
OUT=${OUT:-runs/fmnist-ldm-rows}
CKPT=${CKPT:-models/fmnist-ldm.safetensors}
BASE=configs/fmnist-ldm.yaml
T="nice -n 5 node bin/tdq-native.js"
mkdir -p "$OUT"
for q in w8a4-lsq w8a4-tdq; do
  [ -f "$OUT/$q.safetensors" ] && continue
  dyn=$([ "$q" = w8a4-tdq ] && echo --use-dynamic || echo --no-use-dynamic)
  /usr/bin/time -f "$q calibrate: %e s" $T calibrate --base $BASE --ckpt "$CKPT" --n-bit-w 8 --n-bit-a 4 $dyn --n-samples "${CAL_N:-16}" --steps "${CAL_STEPS:-$STEPS}" --seed 1000 --out "$OUT/$q.safetensors"
done
for row in fp w8a4-lsq w8a4-tdq; do
  ck=$([ $row = fp ] && echo "$CKPT" || echo "$OUT/$row.safetensors")
  if [ ! -f "$OUT/$row/$(printf '%06d' $((N - 1))).png" ]; then
    /usr/bin/time -f "$row sample: %e s" $T sample --base $BASE --ckpt "$ck" --n-samples "$N" --batch-size 250 --steps "$STEPS" --seed 0 --outdir "$OUT/$row" --no-grid --no-progress
  fi
  $T eval --samples "$OUT/$row" --dataset fashion-mnist --metrics fid --out "$OUT/$row-eval.json" --no-progress | grep -v "^note"
  nice -n 5 node dist/bench/fmnist_ldm/class_accuracy.js "$OUT/$row" --json "$OUT/$row-accuracy.json"
done
