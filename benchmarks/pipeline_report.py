"""The pipeline's figures: quality, rate and throughput of compress/decompress on the example slide, the
seam check on real H&E, and the cost of glass (a ~70%-background slide vs the same tissue alone).

    python benchmarks/pipeline_report.py [--model NAME] [--out report.json]

Prints JSON; docs/performance.md quotes it with the machine it ran on."""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wsicodec.checks import seam_check
from wsicodec.pipeline import compress, decompress
from wsicodec.slide import open_input
from wsicodec.store import WsiStore

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def quality(a: np.ndarray, b: np.ndarray) -> dict:
    from pytorch_msssim import ms_ssim

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    ta = torch.from_numpy(a).permute(2, 0, 1)[None].float()
    tb = torch.from_numpy(b).permute(2, 0, 1)[None].float()
    return {"psnr_db": round(10 * np.log10(255**2 / mse), 3),
            "ms_ssim": round(float(ms_ssim(ta, tb, data_range=255)), 5)}


def example_slide(model: str | None, tmp: Path) -> dict:
    from importlib import resources

    from wsicodec.cli import main  # noqa: F401  (same code path as the CLI)

    src_path = Path(str(resources.files("wsicodec.examples") / "CMU-1-Small-Region.svs"))
    t0 = time.time()
    r = compress(src_path, tmp / "ex.zarr", model=model, device="cpu")
    t_c = time.time() - t0
    t0 = time.time()
    decompress(r.output, tmp / "ex.tif", compression="deflate", device="cpu")
    t_d = time.time() - t0
    with open_input(src_path) as src, WsiStore(r.output, device="cpu") as s:
        W, H = src.dimensions
        a = src.read_rgb(0, 0, W, H)
        b = s.read_level0(0, 0, W, H)
    tissue_mpx = W * H * (1 - r.glass_tiles / r.tiles) / 1e6
    return {"slide": src_path.name, "size": [W, H], "bytes": r.bytes, "bpp": round(r.bpp, 4),
            "latent_bytes": r.latent_bytes, "latent_bpp": round(r.latent_bpp, 4),
            "source_bytes": src_path.stat().st_size, **quality(a, b), "tiles": r.tiles, "glass_tiles": r.glass_tiles,
            "compress_s": round(t_c, 2), "decompress_s": round(t_d, 2),
            "compress_mpx_tissue_per_s": round(tissue_mpx / t_c, 3),
            "decompress_mpx_tissue_per_s": round(tissue_mpx / t_d, 3)}


def glass_cost(model: str | None, tmp: Path) -> dict:
    """Same tissue, with and without ~70% glass around it."""
    val = SHARED / "data" / "histology" / "val"
    tiles = [np.asarray(Image.open(p).convert("RGB"))[:512, :512] for p in sorted(val.glob("monuseg-*"))[:6]]
    tissue = np.concatenate([np.concatenate(tiles[:3], 1), np.concatenate(tiles[3:6], 1)], 0)  # 1024 x 1536
    Image.fromarray(tissue).save(tmp / "tissue.png")
    canvas = np.full((2048, 2560, 3), 236, np.uint8)  # 5.24 Mpx, tissue 1.57 Mpx = 30%
    canvas[512:1536, 512:2048] = tissue
    Image.fromarray(canvas).save(tmp / "with_glass.png")
    out = {}
    for name in ("tissue", "with_glass"):
        t0 = time.time()
        r = compress(tmp / f"{name}.png", tmp / f"{name}.zarr", model=model, device="cpu")
        out[name] = {"pixels": r.pixels, "bytes": r.bytes, "latent_bytes": r.latent_bytes, "tiles": r.tiles,
                     "glass_tiles": r.glass_tiles,
                     "seconds": round(time.time() - t0, 2)}
    out["glass_share"] = round(1 - tissue.shape[0] * tissue.shape[1] / (2048 * 2560), 3)
    out["time_ratio"] = round(out["with_glass"]["seconds"] / out["tissue"]["seconds"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        report = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                       f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu",
            "example": example_slide(args.model, tmp),
            "seams": [seam_check(p, model=args.model, tile=512) for p in
                      sorted((SHARED / "data" / "histology" / "val").glob("monuseg-*"))[:2]],
            "glass": glass_cost(args.model, tmp),
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
