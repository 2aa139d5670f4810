"""Rate and quality of the analysis's precisions on the same images: does half precision
(fp16 on CUDA, bf16 on a CPU with native bf16) cost bits or decibels against fp32?

    python benchmarks/precision_rd.py IMAGES_OR_FOLDER... [--model NAME] [--device cpu]
        [--precisions fp32/fp32,auto/auto] [--json OUT]

Each image is compressed as ``wsicodec bench`` does (whole image, glass kept, tile 512), once
per setting ``ANALYSIS[/DECODING]`` (compress's and decompress's ``--precision``; decoding
defaults to auto), and decoded on the same device; rate = the store's bytes (as the bench counts
them) over the image's pixels; PSNR and MS-SSIM against the original, means over the images.
Also how many stored latents differ from the first setting's, and how far each setting's decoded
pixels are from the first's (max and mean absolute difference, 8-bit levels)."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", type=Path)
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precisions", default="fp32/fp32,auto/auto",
                    help="comma-separated ANALYSIS[/DECODING] settings; the first is the reference")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from PIL import Image

    from wsicodec.bench.codecs import wsicodec_bytes
    from wsicodec.bench.metrics import ms_ssim, psnr
    from wsicodec.pipeline import compress
    from wsicodec.store import WsiStore

    files = [p for i in args.inputs for p in (sorted(i.iterdir()) if i.is_dir() else [i]) if p.is_file()]
    precisions = args.precisions.split(",")
    per: dict[str, list] = {p: [] for p in precisions}
    differing: dict[str, list[int]] = {}  # stored latents against the first setting's: [differing, total]
    px_diff: dict[str, tuple[int, float]] = {}  # decoded pixels against the first setting's: max, sum
    px_count: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            rgb = np.asarray(Image.open(f).convert("RGB"))
            src = Path(tmp) / "in.png"
            Image.fromarray(rgb).save(src, compress_level=1)
            first, first_px = None, None
            for prec in precisions:
                analysis, _, decoding = prec.partition("/")
                store = Path(tmp) / "s.zarr"
                t0 = time.perf_counter()
                compress(src, store, model=args.model, device=args.device, skip_glass=False, overwrite=True,
                         precision=analysis)
                seconds = time.perf_counter() - t0
                with WsiStore(store, device=args.device, precision=decoding or "auto") as s:
                    out = s.read_level0(0, 0, rgb.shape[1], rgb.shape[0])
                    q = np.asarray(s.latents[...])
                per[prec].append({"image": f.name, "bpp": 8 * wsicodec_bytes(store) / (rgb.shape[0] * rgb.shape[1]),
                                  "psnr": psnr(rgb, out), "ms_ssim": ms_ssim(rgb, out), "compress_s": seconds})
                if first is None:
                    first, first_px = q, out.astype(np.int16)
                else:
                    n = differing.setdefault(prec, [0, 0])
                    n[0] += int((q != first).sum())
                    n[1] += q.size
                    d = np.abs(out.astype(np.int16) - first_px)
                    worst, summed = px_diff.get(prec, (0, 0.0))
                    px_diff[prec] = (max(worst, int(d.max())), summed + float(d.sum()))
                    px_count[prec] = px_count.get(prec, 0) + d.size
    summary = {p: {k: round(float(np.mean([r[k] for r in rows])), 4) for k in ("bpp", "psnr", "ms_ssim", "compress_s")}
               for p, rows in per.items()}
    result = {"images": len(files), "model": args.model, "device": args.device, "mean": summary,
              "latents_differing_from_" + precisions[0]: {p: round(d / max(t, 1), 5)
                                                          for p, (d, t) in differing.items()},
              "pixels_vs_" + precisions[0]: {p: {"max_abs": m, "mean_abs": round(t / px_count[p], 4)}
                                               for p, (m, t) in px_diff.items()},
              "per_image": per}
    print(json.dumps({k: v for k, v in result.items() if k != "per_image"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
