#!/usr/bin/env bash
# The full-precision model's FID curve (issue 13): FID-FMNIST of every
# checkpoint of a training run, by the table's protocol (bench/tdq_table.js
# --ledger, method fp: DDIM 25 steps, eta 0, N samples of seed 0 against the
# Fashion-MNIST training split). One ledger per checkpoint under $OUT, so a
# rerun measures only the new checkpoints; then prints the curve as markdown
# rows (step, FID, N, seed, seconds). Run it niced: it samples N images per
# checkpoint.
#
#   RUN=/work/runs/fmnist-fp-cont [OFFSET=2421] [N=1000] [STRIDE=2000] [OUT=$RUN/fid] bash bench/fmnist_fp_curve.sh
#
# STRIDE: measure only checkpoints whose step is a multiple of it (default: every one).
# OFFSET: steps the run's starting weights already had (a run started with
# --ckpt counts from 0).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:?set RUN to a training run folder} N=${N:-1000} OFFSET=${OFFSET:-0} OUT=${OUT:-$RUN/fid} SEED=${SEED:-0} STRIDE=${STRIDE:-1}
mkdir -p "$OUT"
for ck in "$RUN"/checkpoints/step-*.safetensors; do
  [ -e "$ck" ] || continue
  step=$(basename "$ck" .safetensors); step=${step#step-}; step=$((10#$step))
  [ $((step % STRIDE)) -eq 0 ] || continue
  node dist/bench/tdq_table.js --ledger "$OUT/step-$step.json" --ckpt "$ck" --methods fp --n "$N" --seeds "$SEED" --eval-steps 25 >> "$OUT/log.txt" 2>&1
done
echo "| step (total) | FID-FMNIST | samples | seed | seconds | finished |"
echo "|---|---|---|---|---|---|"
for l in "$OUT"/step-*.json; do
  [ -e "$l" ] || continue
  step=$(basename "$l" .json); step=${step#step-}
  node -e '
    const l = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    for (const c of Object.values(l.cells)) console.log(`| ${Number(process.argv[2]) + Number(process.argv[3])} | ${c.fid.toFixed(2)} | ${c.n} | ${c.seed} | ${c.seconds.toFixed(0)} | ${c.finished} |`);
  ' "$l" "$step" "$OFFSET"
done | sort -t'|' -k2 -n
