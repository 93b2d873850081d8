#!/usr/bin/env bash
# The results rows of the shipped latent model (bench/results/fmnist-ldm.md):
# PTQ with `tdq-native calibrate` (W8A4 static LSQ, W8A4 TDQ), N samples of
# each model with DDIM (classes 0-9 cycled, so drawn uniformly), FID-FMNIST
# against the 60,000 training images, and the shipped classifier's per-class
# accuracy. Run from the package root after `npx tsc -p .`.
#   N=1000 STEPS=25 OUT=runs/fmnist-ldm-rows bash bench/fmnist_ldm/rows.sh   (calibration: CAL_N=16 trajectories of CAL_STEPS=STEPS steps)
# ROWS names the rows (default: fp w8a4-lsq w8a4-tdq): wXaY-lsq / wXaY-tdq are PTQ
# (calibrate), wXaY-lsq-qat / wXaY-tdq-qat are QAT from the FP model for QAT_STEPS
# (default 200) steps of `tdq-native train` (the config's training section).
set -euo pipefail
N=${N:-1000}
STEPS=${STEPS:-25}
OUT=${OUT:-runs/fmnist-ldm-rows}
CKPT=${CKPT:-models/fmnist-ldm.safetensors}
BASE=configs/fmnist-ldm.yaml
T="nice -n 5 node bin/tdq-native.js"
mkdir -p "$OUT"
ROWS=${ROWS:-fp w8a4-lsq w8a4-tdq}
for q in $ROWS; do
  [ "$q" = fp ] && continue
  [ -f "$OUT/$q.safetensors" ] && continue
  [[ "$q" =~ ^w([0-9])a([0-9])-(lsq|tdq)(-qat)?$ ]] || { echo "unknown row $q" >&2; exit 2; }
  bw=${BASH_REMATCH[1]} ba=${BASH_REMATCH[2]}
  dyn=$([ "${BASH_REMATCH[3]}" = tdq ] && echo --use-dynamic || echo --no-use-dynamic)
  if [ -n "${BASH_REMATCH[4]}" ]; then
    rm -rf "$OUT/train-$q"
    /usr/bin/time -f "$q QAT: %e s" $T train --base $BASE --ckpt "$CKPT" --n-bit-w "$bw" --n-bit-a "$ba" $dyn --max-steps "${QAT_STEPS:-200}" --logdir "$OUT" --name "train-$q" 2>&1 | grep -v "^step" || true
    cp "$OUT/train-$q/model.safetensors" "$OUT/$q.safetensors"
  else
    /usr/bin/time -f "$q calibrate: %e s" $T calibrate --base $BASE --ckpt "$CKPT" --n-bit-w "$bw" --n-bit-a "$ba" $dyn --n-samples "${CAL_N:-16}" --steps "${CAL_STEPS:-$STEPS}" --seed 1000 --out "$OUT/$q.safetensors"
  fi
done
for row in $ROWS; do
  ck=$([ $row = fp ] && echo "$CKPT" || echo "$OUT/$row.safetensors")
  if [ ! -f "$OUT/$row/$(printf '%06d' $((N - 1))).png" ]; then
    /usr/bin/time -f "$row sample: %e s" $T sample --base $BASE --ckpt "$ck" --n-samples "$N" --batch-size 250 --steps "$STEPS" --seed 0 --outdir "$OUT/$row" --no-grid --no-progress
  fi
  $T eval --samples "$OUT/$row" --dataset fashion-mnist --metrics fid --out "$OUT/$row-eval.json" --no-progress | grep -v "^note"
  nice -n 5 node dist/bench/fmnist_ldm/class_accuracy.js "$OUT/$row" --json "$OUT/$row-accuracy.json"
done
