#!/usr/bin/env bash
# Measure everything docs/benchmarks.md reports and write it there, in one line from a clean
# checkout (pip install ".[metrics]" first):
#
#   bash benchmarks/regenerate_docs.sh H&E_VAL_FOLDER
#
# every classical codec's sweep and every model of the current zoo on the folder's images, fp32,
# one thread (docs/bench/val: results.csv, summary.json, report.md, plots, visual comparison), and
# the hyperprior and variable-rate models at encoder effort high (PSNR and MS-SSIM), the
# variable-rate models' trained operating points at encoder effort max, then the generated blocks of docs/benchmarks.md from those results (benchmarks/benchmarks_doc.py).
set -eu
[ $# -eq 1 ] || { echo "usage: $0 H&E_VAL_FOLDER" >&2; exit 2; }
cd "$(dirname "$0")/.."
OMP_NUM_THREADS=1 wsicodec bench "$1" --out docs/bench/val --threads 1 --precision fp32 -q
# the hyperprior and variable-rate models again at encoder effort high (curves named ...-high; every
# operating point of a variable-rate model), added to the same results
HP=$(python -c "from wsicodec.models import list_models as L; from wsicodec.quality import operating_points as P
fac = {c.name for c in L() if c.spec.entropy_model == 'factorized'}
print(','.join(str(p) for p in P() if p.model not in fac))")
OMP_NUM_THREADS=1 wsicodec bench "$1" --out docs/bench/val --threads 1 --precision fp32 -q --codecs wsicodec \
    --effort high --models "$HP" --metrics psnr,ms_ssim --reuse docs/bench/val/results.csv
# the variable-rate models' trained points at encoder effort max (curves named ...-max; about 3x
# effort high's time, so only the points trained as such)
TRAINED=$(python -c "from wsicodec.models import list_models as L
print(','.join(f'{c.name}@{p[\"index\"]}' for c in L() if c.spec.variable_rate for p in c.operating_points if p.get('trained')))")
OMP_NUM_THREADS=1 wsicodec bench "$1" --out docs/bench/val --threads 1 --precision fp32 -q --codecs wsicodec \
    --effort max --models "$TRAINED" --metrics psnr,ms_ssim --reuse docs/bench/val/results.csv
python benchmarks/benchmarks_doc.py docs/bench/val/results.csv docs/benchmarks.md
