#!/usr/bin/env bash
# High-rate pilot: the present architecture (mbt2018-mean, N=64 / M=96) at λ 0.08 and 0.2 against
# the variable-rate mbt2018-mean-gain (default widths N=128 / M=320 / N_s1=96 / N_s=48 / H=192,
# the 8-point ladder 0.0008 … 0.5, which holds both λ), at equal training time: each single-rate
# run gets MINUTES, the variable-rate run 2 x MINUTES (it replaces both, and every other rate).
# All runs start from scratch with the same recipe and are validated at the end of their budget
# on the centre crops of VAL with real entropy-coded bits; pilot_table.py writes the table.
#
#   TRAIN=data/train VAL=data/val OUT=runs/pilot_hr MINUTES=2.5 \
#   EXTRA="--device cuda --batch 16 --patch 256" benchmarks/pilot_highrate.sh
#
# MINUTES counts what `wsicodec train --minutes` counts; EXTRA goes to every run (device, batch,
# crop size, precision: whatever the machine takes). Runs already finished in OUT are kept.
set -euo pipefail
: "${TRAIN:?set TRAIN to the training images}" "${VAL:?set VAL to the validation images}"
OUT=${OUT:-runs/pilot_highrate}
MINUTES=${MINUTES:-2.5}
EXTRA=${EXTRA:-}
VBR_PARAMS=${VBR_PARAMS:-}      # e.g. "--param N_s=64" to try another synthesis width
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
double=$(python -c "print(2 * float('$MINUTES'))")

train() {  # train RUN_NAME MINUTES ARGS...
  local run=$OUT/$1 minutes=$2
  shift 2
  if [ -f "$run/val_log.csv" ]; then echo "$run: done before, kept"; return; fi
  # shellcheck disable=SC2086
  wsicodec train run "$TRAIN" --val "$VAL" --out "$run" --minutes "$minutes" --val-every 1000000 \
    --lr 1e-3 --seed 0 "$@" $EXTRA 2>&1 | tail -n 3
}

train hp64_l008 "$MINUTES" --architecture mbt2018-mean -N 64 -M 96 --lambda 0.08
train hp64_l02 "$MINUTES" --architecture mbt2018-mean -N 64 -M 96 --lambda 0.2
# shellcheck disable=SC2086
train gain_vbr "$double" --architecture mbt2018-mean-gain $VBR_PARAMS
python "$HERE/pilot_table.py" "$OUT"/hp64_l008 "$OUT"/hp64_l02 "$OUT"/gain_vbr | tee "$OUT/pilot.md"
