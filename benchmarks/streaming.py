"""Peak memory and time of compress / decompress as a slide grows.

    python benchmarks/streaming.py SLIDE [SLIDE...] [--model NAME] [--device cpu] [--json OUT]

Each job runs as its own process (`wsicodec compress` / `decompress`); peak RSS is that process's
ru_maxrss (the high-water mark of resident memory, model and libraries included). Seconds are
wall-clock of the whole command (start-up and model load included); "s per tissue Mpx" divides
them by the tissue area (tiles not skipped as glass), so that a constant column means time
proportional to tissue. Make large slides with benchmarks/make_synthetic_slide.py (``--ome`` for a
JPEG-tiled OME-TIFF with a SubIFD pyramid)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_parts(pid: int) -> dict[str, int]:
    """Resident memory of a running process by kind, in KiB (Linux): anonymous (heap, pinned
    buffers) and file-backed (mapped libraries: the CUDA build of torch maps ~1 GiB of them)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def run(cmd: list[str]) -> dict:
    """Run ``cmd``; its wall seconds, peak RSS (``ru_maxrss``) and, sampled every 0.1 s, the peak
    of its anonymous and of its file-backed resident memory."""
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks: dict[str, int] = {}
    while True:
        pid, _, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        for k, v in _rss_parts(p.pid).items():
            peaks[k] = max(peaks.get(k, 0), v)
        time.sleep(0.1)
    err = p.stderr.read().decode() if p.stderr else ""
    return {"seconds": round(time.time() - t0, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "sampled_peak_anon_mib": round(peaks.get("RssAnon", 0) / 1024, 1),
            "sampled_peak_file_mib": round(peaks.get("RssFile", 0) / 1024, 1), "error": err[-300:]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("slides", nargs="+", type=Path)
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--precision", default=None, help="compress --precision (CUDA)")
    ap.add_argument("--compress-only", action="store_true", help="skip the decompression runs")
    args = ap.parse_args()
    exe = [sys.executable, "-m", "wsicodec.cli"]
    rows = []
    with tempfile.TemporaryDirectory(dir=".") as d:
        for slide in args.slides:
            from wsicodec.slide import open_input  # any input compress reads (OME-TIFF included)

            with open_input(slide) as src:
                W, H = src.dimensions
            store, tif = Path(d) / "s.zarr", Path(d) / "s.tif"
            model = ["--model", args.model] if args.model else []
            model += ["--precision", args.precision] if args.precision else []
            c = run(exe + ["compress", str(slide), str(store), "-q", "--device", args.device] + model)
            info = json.loads(subprocess.run(exe + ["info", str(store), "--json"], capture_output=True,
                                             text=True).stdout or "{}")
            dcmp = ({"seconds": None, "peak_rss_mib": None, "error": ""} if args.compress_only else
                    run(exe + ["decompress", str(store), str(tif), "-q", "--device", args.device]))
            tiles = info.get("tiles") or {}
            tissue = W * H * (1 - tiles.get("glass", 0) / max(tiles.get("total", 1), 1))
            if c["error"] or dcmp["error"]:
                print(c["error"], dcmp["error"], file=sys.stderr)
            rows.append({"slide": slide.name, "size": [W, H], "mpx": round(W * H / 1e6, 1),
                         "tissue_mpx": round(tissue / 1e6, 1), "compress": c, "decompress": dcmp,
                         "compress_s_per_tissue_mpx": round(c["seconds"] / max(tissue / 1e6, 1e-9), 4),
                         "decompress_s_per_mpx": dcmp["seconds"] and round(dcmp["seconds"] / (W * H / 1e6), 4),
                         "store_bytes": info.get("bytes"),
                         "bpp": round(8 * info["bytes"] / (info["dimensions"][0] * info["dimensions"][1]), 4),
                         "latent_bpp": info.get("image_bits_per_pixel")})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            shutil.rmtree(store, ignore_errors=True)
            tif.unlink(missing_ok=True)
    print(json.dumps(rows, indent=2))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
