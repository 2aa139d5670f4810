#!/usr/bin/env bash
# Turn a fixed window on a bare GPU machine into training, in one call:
#
#   bash benchmarks/gpu_train.sh OUT_DIR RUN_DIR SECONDS [PACK] [-- OPTIONS OF A NEW RUN]
#
# run from the repository root of a copy of the working tree that holds the training pack
# (`wsicodec train pack`, default .gpu/pack) and, where the machine lacks them, the wheels of
# benchmarks/gpu_prepare.sh (.gpu/wheels). It
#   1. reports the machine and checks the Python modules training needs; a missing one is installed
#      from .gpu/wheels (no network needed) or named, and the script stops;
#   2. continues RUN_DIR from its checkpoint.pt (exactly) or weights.pt (fresh optimiser state), the
#      OPTIONS after `--` replacing the run's (`wsicodec train continue`: --batch, --val-every, ...),
#      or, when RUN_DIR holds neither, starts `wsicodec train run` with those OPTIONS;
#      on CUDA, with bf16 autocast, batches made in worker processes and (unless NO_COMPILE=1)
#      torch.compile; validation on PACK/val;
#   3. stops itself in time: the trainer gets SECONDS minus what has been used, two interpreter starts
#      (timed on the module check) and what the hand-back needs (RESERVE_S, default 15 s), and keeps
#      enough of it to validate and save at the end;
#   4. hands the run back in OUT_DIR as at most 8 files, 64 MiB together: bundle.json + parts of <= 16 MiB
#      (`wsicodec train bundle`: the logs, this script's window.log among them, the checkpoint if it
#      fits, else the last and best weights); OUT_DIR/window.log alone if the hand-back fails.
#      BUNDLE_FILES, BUNDLE_PART_MIB and BUNDLE_TOTAL_MIB (default 8, 16 and 64 MiB together) bound it.
# At home: `wsicodec train merge OUT_DIR RUN_DIR --val VAL` checks the sha256 sums, reassembles the
# parts into RUN_DIR and validates the weights on the CPU.
set -u
T0=$(date +%s)
OUT=${1:?OUT_DIR}; RUN=${2:?RUN_DIR}; BUDGET=${3:?SECONDS}; shift 3
PACK=.gpu/pack
if [ $# -gt 0 ] && [ "$1" != "--" ]; then PACK=$1; shift; fi
[ "${1:-}" = "--" ] && shift
PY=${PYTHON:-python3}
RESERVE=${RESERVE_S:-15}
WHEELS=${WHEELS:-.gpu/wheels}
mkdir -p "$OUT"
LOG=$(mktemp /tmp/wsicodec-window.XXXXXX)  # travels inside the bundle: OUT_DIR keeps to 8 files
exec > >(tee -a "$LOG") 2>&1
fail() { echo "error: $*"; cp "$LOG" "$OUT/window.log"; exit 3; }
export PYTHONUNBUFFERED=1
elapsed() { echo $(( $(date +%s) - T0 )); }

echo "== machine ($(date -u +%FT%TZ))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
echo "cores: $(nproc --all); python: $($PY -c 'import sys; print(sys.version.split()[0])' 2>&1)"

echo "== modules"
missing() {  # prints the modules that do not import; the versions of torch and Pillow to stderr
  $PY - "$@" <<'EOF'
import importlib, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception:
        print(name)
try:
    import torch, PIL, PIL.features
    print("torch", torch.__version__, "| cuda", torch.cuda.is_available(), "| bf16",
          torch.cuda.is_available() and torch.cuda.is_bf16_supported(), "| Pillow", PIL.__version__,
          "| webp", PIL.features.check("webp"), file=sys.stderr)
except Exception:
    pass
EOF
}
NEED="torch numpy PIL click compressai pytorch_msssim"
S0=$(date +%s)
MISSING=$(missing $NEED)
STARTUP=$(( $(date +%s) - S0 ))  # an interpreter's start with torch: the trainer and the hand-back pay it again
if [ -n "$MISSING" ]; then
  echo "missing: $MISSING"
  SITE=/tmp/wsicodec-site
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then  # all of them: a module may be missing for want of another
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl \
      || fail "the wheels in $WHEELS do not install on this Python"
    echo "installed from $WHEELS: $(cd "$WHEELS" && ls *.whl | tr '\n' ' ')"
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  MISSING=$(missing $NEED)
  if [ -n "$MISSING" ]; then
    fail "Python modules missing and not in $WHEELS: $MISSING (benchmarks/gpu_prepare.sh fetches the wheels)"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -f "$PACK/pack.json" ] || fail "no training pack at $PACK (wsicodec train pack)"

LEFT=$(( BUDGET - $(elapsed) - RESERVE - 2 * STARTUP ))
[ "$LEFT" -ge 30 ] || fail "$BUDGET s leave no time to train (interpreter start ${STARTUP} s)"
WALL=$($PY -c "print(round($LEFT / 60, 3))")
COMPILE=--compile; [ "${NO_COMPILE:-0}" = 1 ] && COMPILE=--no-compile
echo "== training: $LEFT s of wall time for the trainer ($WALL min; interpreter start ${STARTUP} s), then the hand-back"
if [ -f "$RUN/checkpoint.pt" ] || [ -f "$RUN/weights.pt" ]; then
  timeout -s TERM -k 20 $(( LEFT + 60 )) $PY -m wsicodec train continue "$RUN" "$PACK" --val "$PACK/val" \
    --device "${DEVICE:-cuda}" --precision auto --wall-minutes "$WALL" $COMPILE "$@"
else
  [ $# -gt 0 ] || fail "$RUN holds no checkpoint.pt or weights.pt and no options of a new run follow --"
  timeout -s TERM -k 20 $(( LEFT + 60 )) $PY -m wsicodec train run "$PACK" --val "$PACK/val" --out "$RUN" \
    --device "${DEVICE:-cuda}" --precision auto --wall-minutes "$WALL" $COMPILE "$@"
fi
echo "trainer exit status $? after $(elapsed) s"

echo "== hand-back after $(elapsed) s"
[ -d "$RUN" ] || fail "the trainer left no run folder $RUN"
cp "$LOG" "$RUN/window.log"
$PY -m wsicodec train bundle "$RUN" "$OUT" --max-files "${BUNDLE_FILES:-8}" --max-part-mib "${BUNDLE_PART_MIB:-16}" \
  --max-total-mib "${BUNDLE_TOTAL_MIB:-64}" || fail "the hand-back failed"
echo "done after $(elapsed) s of $BUDGET"
