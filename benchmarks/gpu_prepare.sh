#!/usr/bin/env bash
# Prepare, on a machine with a package index, what benchmarks/gpu_train.sh needs on a GPU machine
# that reaches nothing outside:
#
#   bash benchmarks/gpu_prepare.sh TRAIN_DIR... --val VAL_DIR [--max-mib 40] [--python 3.12]
#   bash benchmarks/gpu_prepare.sh --figures [--python 3.12]
#
#   .gpu/pack    the training pack (`wsicodec train pack`; rebuilt only when missing)
#   .gpu/wheels  wheels of the Python modules training needs beyond torch, numpy, Pillow and click
#                (compressai, pytorch-msssim), for the GPU machine's Python (default 3.12, x86-64)
#   .gpu/wheels-figures (--figures) the wheels benchmarks/gpu_figures.sh needs beyond those and
#                tifffile, fsspec, rich and threadpoolctl: zarr, numcodecs, imagecodecs, constriction,
#                OpenSlide, ... (about 42 MiB)
# and prints the size of what travels: the tracked files plus .gpu, which a machine that receives
# a copy of the working tree must accept.
set -eu
TRAIN=(); VAL=(); MIB=40; PYV=3.12; FIGURES=0
while [ $# -gt 0 ]; do
  case "$1" in
    --figures) FIGURES=1; shift ;;
    --val) VAL+=(--val "$2"); shift 2 ;;
    --max-mib) MIB=$2; shift 2 ;;
    --python) PYV=$2; shift 2 ;;
    *) TRAIN+=(--train "$1"); shift ;;
  esac
done
[ ${#TRAIN[@]} -gt 0 ] || [ "$FIGURES" = 1 ] || {
  echo "usage: $0 TRAIN_DIR... --val VAL_DIR [--max-mib N] [--python X.Y] | $0 --figures [--python X.Y]"; exit 2; }
mkdir -p .gpu
grep -qx '/.gpu/' .gitignore 2>/dev/null || echo "note: .gpu/ is not in .gitignore"
wheels() {  # FOLDER SPEC...: binary wheels for the GPU machine's Python, no dependencies
  local dir=$1; shift
  mkdir -p "$dir"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d "$dir" "$@"
  ls -l "$dir"
}
if [ ${#TRAIN[@]} -gt 0 ]; then
  if [ ! -f .gpu/pack/pack.json ]; then
    wsicodec train pack .gpu/pack "${TRAIN[@]}" "${VAL[@]}" --max-mib "$MIB"
  fi
  wheels .gpu/wheels "compressai==1.2.8" "pytorch-msssim==1.0.0"
fi
if [ "$FIGURES" = 1 ]; then
  wheels .gpu/wheels-figures "compressai==1.2.8" "pytorch-msssim==1.0.0" "zarr==3.1.5" "numcodecs==0.16.6" \
    donfig google-crc32c "constriction==0.5.0" imagecodecs openslide-python openslide-bin
fi
bytes() { xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
tracked=$(git ls-files -z | bytes)
slim=$(git ls-files -z -- ':!weights' ':!runs' | bytes)
extra=$(du -sb .gpu | cut -f1)
echo "tracked files: $((tracked / 1048576)) MiB ($((slim / 1048576)) MiB without weights/ and runs/);" \
     ".gpu: $((extra / 1048576)) MiB; together $(((tracked + extra) / 1048576)) MiB"
[ $(((tracked + extra) / 1048576)) -lt 64 ] || echo "note: over 64 MiB; docs/training.md, \"One call per GPU window\", says what to send instead"
