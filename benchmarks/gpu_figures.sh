#!/bin/sh
# The GPU figures of docs/performance.md, in one run on a CUDA machine with wsicodec installed:
#   sh benchmarks/gpu_figures.sh OUT_DIR [H&E_FOLDER]
# 1. benchmarks/throughput.py per model and precision: the network alone in batches, the entropy
#    coder alone, and the whole compress loop on an in-memory 24576 x 24576 canvas (with and
#    without the writer); 2. `compress` of a synthetic 16384 x 16384 JPEG-tiled slide, timed in
#    the process (model load excluded) for two splits of the host's cores between reading
#    threads and writer processes, and the host's own ceiling on it (benchmarks/host_ceiling.py:
#    the network's answer made instant); the loop with 2 and 8 writer processes; 3. the CUDA
#    tests; 4. peak memory of compress / decompress
#    (benchmarks/streaming.py); 5. how fast 1-16 readers decode the slide (benchmarks/read_scaling.py).
#    6. the default model's compress at encoder efforts standard, high and max (effort.json).
#    Each step has its own time limit. Pack OUT_DIR into one archive to bring it back.
#    The throughput runs with --pipeline also read their store back (`decode` in their JSON: what
#    decompress and the viewer do, the TIFF writing left out).
#    DEFAULT_ONLY=1: only the default model's throughput runs (fp32, fp16; each within LIMIT_S), or
#    MODEL's (a models folder without the whole zoo: WSICODEC_MODELS=FOLDER MODEL=NAME);
#    DEVICE, TILES, CANVAS and LIMIT_S change its device, tiles, canvas side and time limit (a dry
#    run on a CPU: DEVICE=cpu TILES=4 CANVAS=2 LIMIT_S=600).
#    Python modules missing on the machine are installed from WHEELS (default .gpu/wheels-figures,
#    `benchmarks/gpu_prepare.sh --figures`) into a temporary folder.
OUT=${1:?OUT_DIR}
DATA=${2:-../shared/data/histology/val}
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.gpu/wheels-figures}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ! $PY -c "import zarr, numcodecs, imagecodecs, constriction, openslide, compressai, pytorch_msssim" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/wsicodec-site "$WHEELS"/*.whl \
    || { echo "Python modules missing and not installable from $WHEELS (benchmarks/gpu_prepare.sh --figures)"; exit 3; }
  export PYTHONPATH="/tmp/wsicodec-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
summary() {  # one line per throughput run
  $PY -c "import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({k: r.get(k) for k in
  ('model','device','precision','precision_agreement','coder','mpx_per_s','pipeline','hyper_symbols_same_bytes')}))" "$1"
}
throughput() {  # MODEL PRECISION CANVAS_TILES
  timeout "${LIMIT_S:-100}" $PY benchmarks/throughput.py --device "${DEVICE:-cuda}" --model "$1" --precision "$2" \
    --batch-size 32 --tiles "${TILES:-64}" --repeats 3 --skip-jxl --data "$DATA" --pipeline "${CANVAS:-$3}" --out-dir /tmp \
    --json "$OUT/throughput-$1-$2.json" >/dev/null 2>"$OUT/throughput-$1-$2.err"
  summary "$OUT/throughput-$1-$2.json" || tail -5 "$OUT/throughput-$1-$2.err"
}
effort() {  # the default model at each encoder effort on a synthetic slide (EFFORT_SIDE, 4096 px)
  side=${EFFORT_SIDE:-4096}
  timeout 60 $PY benchmarks/make_synthetic_slide.py /tmp/synthetic-effort.tiff --size "$side" "$side" --glass 0.3 \
    --source "$DATA" >/dev/null 2>&1
  timeout "${LIMIT_S:-100}" $PY - "${DEVICE:-cuda}" <<'PYEOF' | tee "$OUT/effort.json"
import json, sys
from wsicodec.pipeline import compress
out = {"device": sys.argv[1]}
for effort in ("standard", "high", "max"):
    r = compress("/tmp/synthetic-effort.tiff", f"/tmp/effort-{effort}.zarr", device=sys.argv[1], overwrite=True,
                 effort=effort)
    tissue = r.pixels / 1e6 * (1 - r.glass_tiles / r.tiles)
    out[effort] = {"slide_s": round(r.seconds, 2), "latent_bytes": r.latent_bytes, "tiles": r.tiles,
                   "glass_tiles": r.glass_tiles, "tissue_mpx_per_s": round(tissue / r.seconds, 2)}
print(json.dumps(out))
PYEOF
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
echo "cores: $(nproc); $(grep -m1 'model name' /proc/cpuinfo)" | tee -a "$OUT/gpu.txt"
$PY -c "import numpy, torch; b = numpy.show_config(mode='dicts')['Build Dependencies']['blas']
print('numpy', numpy.__version__, 'BLAS', b.get('name'), b.get('version'), '| torch', torch.__version__,
      'threads', torch.get_num_threads())" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"
if [ "${DEFAULT_ONLY:-0}" = 1 ]; then
  DEFAULT=${MODEL:-$($PY -c "from wsicodec.quality import default_point; print(default_point().model)")}
  throughput "$DEFAULT" fp32 32
  throughput "$DEFAULT" fp16 32
  effort
  exit 0
fi
throughput hne-f64-q4-v1 fp32 48
throughput hne-f64-q4-v1 fp16 48
for procs in 2 8; do  # around the default (a quarter of the cores; 4 on 16)
  timeout 60 $PY benchmarks/throughput.py --device cuda --model hne-f64-q4-v1 --batch-size 32 \
    --tiles 32 --repeats 1 --skip-jxl --data "$DATA" --pipeline 48 --writer-processes $procs --out-dir /tmp \
    2>&1 | grep "^pipeline:" | sed "s|^|$procs coder processes: |"
done
timeout 60 $PY benchmarks/make_synthetic_slide.py /tmp/synthetic16k.tiff --size 16384 16384 --glass 0.3 \
  --source "$DATA" 2>&1 | tail -1
# what the host alone can feed the GPU on this slide (the network's answer made instant)
timeout 60 $PY benchmarks/host_ceiling.py /tmp/synthetic16k.tiff --out-dir /tmp --json "$OUT/host-ceiling.json" 2>&1 | tail -1
timeout 30 $PY benchmarks/host_ceiling.py /tmp/synthetic16k.tiff --parts 200 2>&1 | tail -1
for split in "4 12" "8 8"; do
  set -- $split
  timeout 60 $PY - "$1" "$2" <<'PYEOF'
import json, sys, time
t0 = time.time()
from wsicodec.pipeline import compress
P, R = int(sys.argv[1]), int(sys.argv[2])
t1 = time.time()
r = compress("/tmp/synthetic16k.tiff", "/tmp/s16k.zarr", device="cuda", overwrite=True, writer_processes=P, read_threads=R)
t2 = time.time()
print(json.dumps({"writer_processes": P, "read_threads": R, "import_s": round(t1 - t0, 2),
                  "compress_call_s": round(t2 - t1, 2), "slide_s": round(r.seconds, 2), "tiles": r.tiles,
                  "glass_tiles": r.glass_tiles, "mpx": round(r.pixels / 1e6, 1),
                  "slide_mpx_per_s": round(r.pixels / 1e6 / r.seconds, 1),
                  "tissue_mpx_per_s": round(r.pixels / 1e6 * (1 - r.glass_tiles / r.tiles) / r.seconds, 1),
                  "latent_bpp": round(r.latent_bpp, 4)}))
PYEOF
done
# a 1-Gpx slide: the fixed costs of a slide (first-batch CUDA kernel loading, worker start,
# thumbnail, the final sync) weigh less than on the 268-Mpx one
timeout 90 $PY benchmarks/make_synthetic_slide.py /tmp/synthetic32k.tiff --size 32768 32768 --glass 0.3 \
  --source "$DATA" --seed 1 2>&1 | tail -1
timeout 90 $PY -c "
import json, time
from wsicodec.pipeline import compress
t = time.time(); r = compress('/tmp/synthetic32k.tiff', '/tmp/s32k.zarr', device='cuda', overwrite=True)
print(json.dumps({'slide': '32768^2', 'call_s': round(time.time() - t, 2), 'slide_s': round(r.seconds, 2),
                  'slide_mpx_per_s': round(r.pixels / 1e6 / r.seconds, 1), 'glass_tiles': r.glass_tiles}))"
timeout 120 $PY -m pytest -q -rs tests/test_cuda.py tests/test_engine.py -k cuda 2>&1 | tail -4
# the default, a hyperprior: its side information made on the GPU (DeviceHyperSymbols), the writers
# range-code
throughput hne-hp64-q6-v3 fp32 32
throughput hne-hp64-q6-v3 fp16 32
timeout 100 $PY benchmarks/streaming.py /tmp/synthetic16k.tiff --device cuda --json "$OUT/streaming-cuda.json" 2>&1 | tail -2
timeout 90 $PY benchmarks/read_scaling.py /tmp/synthetic16k.tiff --windows 1024 --readers 1 4 8 12 16 \
  --json "$OUT/read_scaling.json" 2>&1 | tail -13
effort
