#!/usr/bin/env bash
# The QAT rows of issue 13's table, as cells of the resumable ledger
# (bench/tdq_protocol.ts): TDQ and static LSQ at W8A8, W4A8, W8A4, W4A4 and
# W3A3, PACT at W4A4 and W3A3, each QAT run trained here from the FP
# checkpoint with the authors' recipe (train's QAT defaults: steps from
# activation statistics, TDQ MLPs starting at the static step, weights and
# MLPs at 2e-4, steps at 2e-5), STEPS steps of batch BATCH. DISTILL=1 adds
# the same cells with distillation against the FP model (qat-*-kd).
# CALIB_METHOD (stats: the authors') and TDQ_INIT (constant | bias | fit)
# change the initialisation; a ledger holds one QAT setup, so give another
# LEDGER for another arm.
#
# Rerunnable: finished cells are skipped, an interrupted QAT run (Ctrl-C, a
# kill) resumes from its last checkpoint; the ledger records each cell's
# training, sampling and FID seconds.
#
#   [LEDGER=bench/results/tdq-ledger-qat.json] [CKPT=models/fmnist-small.safetensors] \
#   [STEPS=1000] [BATCH=32] [N=2000] [SEEDS=0,1,2] [EVAL_STEPS=25] [DISTILL=0] \
#   [CALIB_METHOD=stats] [TDQ_INIT=constant] bash bench/tdq_qat.sh
#
# The whole table (PTQ rows, these QAT rows with their distillation variants,
# and the 100- and 10-step rows) is one command instead: see docs/protocol.md
# (`node dist/bench/tdq_table.js --ledger ... --plan issue13`).
set -euo pipefail
cd "$(dirname "$0")/.."
LEDGER=${LEDGER:-bench/results/tdq-ledger-qat.json} CKPT=${CKPT:-models/fmnist-small.safetensors}
STEPS=${STEPS:-1000} BATCH=${BATCH:-32} N=${N:-2000} SEEDS=${SEEDS:-0,1,2} EVAL_STEPS=${EVAL_STEPS:-25} DISTILL=${DISTILL:-0}
CALIB_METHOD=${CALIB_METHOD:-stats} TDQ_INIT=${TDQ_INIT:-constant}
common=(--ledger "$LEDGER" --ckpt "$CKPT" --n "$N" --seeds "$SEEDS" --eval-steps "$EVAL_STEPS" --qat-steps "$STEPS" --qat-batch "$BATCH" --qat-calib-method "$CALIB_METHOD" --qat-tdq-init "$TDQ_INIT" --table "${LEDGER%.json}.md")
kd() { if [ "$DISTILL" = 1 ]; then echo "$1,$(echo "$1" | sed 's/\([a-z-]*\)\(,\|$\)/\1-kd\2/g')"; else echo "$1"; fi; }
nice -n 10 node dist/bench/tdq_table.js "${common[@]}" --methods "fp,$(kd qat-tdq,qat-lsq)" --bits W8A8,W4A8,W8A4,W4A4,W3A3
nice -n 10 node dist/bench/tdq_table.js "${common[@]}" --methods "$(kd qat-pact)" --bits W4A4,W3A3
