"""Peak memory and time of compress / decompress as a slide grows (issue 5).

    python benchmarks/streaming.py SLIDE [SLIDE...] [--model NAME] [--device cpu]

Each job runs as its own process (`wsicodec compress` / `decompress`); peak RSS is that process's
ru_maxrss. Make large slides with benchmarks/make_synthetic_slide.py."""
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


def run(cmd: list[str]) -> dict:
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, _, usage = os.wait4(p.pid, 0)
    err = p.stderr.read().decode() if p.stderr else ""
    if usage is None:
        raise SystemExit(f"{cmd}: no usage")
    return {"seconds": round(time.time() - t0, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "error": err[-300:]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("slides", nargs="+", type=Path)
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    exe = [sys.executable, "-m", "wsicodec.cli"]
    rows = []
    with tempfile.TemporaryDirectory(dir=".") as d:
        for slide in args.slides:
            import openslide

            W, H = openslide.OpenSlide(str(slide)).dimensions
            store, tif = Path(d) / "s.zarr", Path(d) / "s.tif"
            model = ["--model", args.model] if args.model else []
            c = run(exe + ["compress", str(slide), str(store), "-q", "--device", args.device] + model)
            info = json.loads(subprocess.run(exe + ["info", str(store), "--json"], capture_output=True,
                                             text=True).stdout or "{}")
            dcmp = run(exe + ["decompress", str(store), str(tif), "-q", "--device", args.device])
            tiles = info.get("tiles") or {}
            tissue = W * H * (1 - tiles.get("glass", 0) / max(tiles.get("total", 1), 1))
            rows.append({"slide": slide.name, "size": [W, H], "mpx": round(W * H / 1e6, 1),
                         "tissue_mpx": round(tissue / 1e6, 1), "compress": c, "decompress": dcmp,
                         "bpp": info.get("bits_per_pixel")})
            shutil.rmtree(store, ignore_errors=True)
            tif.unlink(missing_ok=True)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
