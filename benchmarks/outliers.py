"""Bits per image of shipped models on a folder of images: the mean, and the images that cost far
more than the rest (an entropy model that breaks on some content shows up here, not in a mean
over a validation set that lacks that content).

    python benchmarks/outliers.py FOLDER [FOLDER...] --models hne-hp64-q5-v3,hne-hp64-q5-v4 [--crop 512] [--json OUT]

Each image's centre crop (the largest multiple of 64 px up to ``--crop``) is coded with the model's
own entropy coder (real bits, as the model cards' validation figures); PSNR of the decoded crop.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from wsicodec.models import load_model
from wsicodec.train.loop import _val_images, validate


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", help="image files or folders")
    ap.add_argument("--models", required=True, help="comma-separated model names")
    ap.add_argument("--models-dir", type=Path, default=None)
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write every image's figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    crops = _val_images(args.inputs, args.crop)
    out: dict[str, dict] = {}
    for name in args.models.split(","):
        model, _ = load_model(name, args.models_dir, trainable=True)
        per_image = [validate(model, [x]) for x in crops]
        bpp = [r["bpp"] for r in per_image]
        median = statistics.median(bpp)
        out[name] = {"images": len(bpp), "mean_bpp": statistics.mean(bpp), "median_bpp": median,
                     "max_bpp": max(bpp), "over_2x_median": sum(b > 2 * median for b in bpp),
                     "mean_psnr": statistics.mean(r["psnr"] for r in per_image), "bpp": bpp}
        r = out[name]
        print(f"{name}: {r['images']} images, bpp mean {r['mean_bpp']:.4f} / median {median:.4f} / "
              f"max {r['max_bpp']:.3f}, {r['over_2x_median']} over twice the median; "
              f"PSNR mean {r['mean_psnr']:.2f} dB", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
