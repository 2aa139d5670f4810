"""Make a large synthetic pyramidal slide by mosaicking real H&E images (a benchmark helper for
streaming and memory measurements, not a test).

    python benchmarks/make_synthetic_slide.py OUT.tiff --size 40000 40000 [--glass 0.3] [--seed 0] [--ome]

The level-0 image is a grid of 512-px tiles, each a random crop of a random image from the given
folders (default: the developer data's ``histology/train``, see the README), with a ``--glass``
share of the tiles left as empty glass (a smooth off-white with slight noise). Written tile by
tile with tifffile (JPEG tiles, YCbCr 4:2:0, pyramid 4x apart, MPP 0.25), so memory stays small
whatever the size. ``--ome``: an OME-TIFF instead, its pyramid in SubIFDs and the pixel size as
OME-XML ``PhysicalSizeX/Y`` (the layout OpenSlide does not read fully and wsicodec reads with
tifffile)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def load_sources(folders: list[Path], min_side: int = 512) -> list[np.ndarray]:
    ims = []
    for folder in folders:
        for p in sorted(folder.iterdir()):
            im = np.asarray(Image.open(p).convert("RGB"))
            if min(im.shape[:2]) >= min_side:
                ims.append(im)
    if not ims:
        raise SystemExit(f"no image of at least {min_side} px in {folders}")
    return ims


def tile_source(width: int, height: int, tile: int, sources: list[np.ndarray], glass: float, seed: int):
    rng = np.random.default_rng(seed)
    glass_px = np.array([238, 236, 240], np.int16)
    for _ in range(0, height, tile):
        for _ in range(0, width, tile):
            if rng.random() < glass:
                t = np.clip(glass_px + rng.integers(-3, 4, (tile, tile, 3)), 0, 255).astype(np.uint8)
            else:
                im = sources[rng.integers(len(sources))]
                oy = rng.integers(0, im.shape[0] - tile + 1)
                ox = rng.integers(0, im.shape[1] - tile + 1)
                t = np.rot90(im[oy : oy + tile, ox : ox + tile], rng.integers(4)).copy()
            yield t


def downsampled_tiles(width: int, height: int, tile: int, factor: int, sources, glass, seed):
    """Tiles of a level ``factor`` times smaller (``factor`` divides ``tile``), built from the same
    level-0 tile stream: each level-0 tile is area-averaged on its own into a band one output tile
    high, so memory stays at one band whatever the slide size."""
    stream = tile_source(width, height, tile, sources, glass, seed)
    cols, rows = -(-width // tile), -(-height // tile)
    small = tile // factor
    W = -(-width // factor)
    for band_start in range(0, rows, factor):
        band = np.zeros((tile, cols * small, 3), np.uint8)
        for r in range(min(factor, rows - band_start)):
            for c in range(cols):
                t = next(stream).reshape(small, factor, small, factor, 3).mean(axis=(1, 3), dtype=np.float32)
                band[r * small : (r + 1) * small, c * small : (c + 1) * small] = np.round(t).astype(np.uint8)
        for x in range(0, W, tile):
            t = np.zeros((tile, tile, 3), np.uint8)
            part = band[:, x : x + tile]
            t[: part.shape[0], : part.shape[1]] = part
            yield t


def main() -> None:
    import tifffile

    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", type=int, nargs=2, default=[40000, 40000], metavar=("W", "H"))
    ap.add_argument("--glass", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source", type=Path, action="append",
                    default=None, help="image folder (repeatable)")
    ap.add_argument("--ome", action="store_true", help="OME-TIFF, pyramid in SubIFDs")
    args = ap.parse_args()
    W, H = args.size
    tile = 512
    W, H = -(-W // tile) * tile, -(-H // tile) * tile
    sources = load_sources(args.source or [REPO.parent / "shared" / "data" / "histology" / "train"])
    opts = dict(tile=(tile, tile), photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                dtype=np.uint8, metadata=None)
    res = 1e4 / 0.25
    factors = []
    f = 4
    while max(W, H) // f > 1024 and f <= tile // 8:
        factors.append(f)
        f *= 4
    with tifffile.TiffWriter(args.out, bigtiff=True, ome=args.ome) as tif:
        if args.ome:
            opts["metadata"] = {"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeXUnit": "µm",
                                "PhysicalSizeY": 0.25, "PhysicalSizeYUnit": "µm"}
        tif.write(tile_source(W, H, tile, sources, args.glass, args.seed), shape=(H, W, 3),
                  resolution=(res, res), resolutionunit="CENTIMETER",
                  **(dict(subifds=len(factors)) if args.ome else {}), **opts)
        opts["metadata"] = None
        for f in factors:
            tif.write(downsampled_tiles(W, H, tile, f, sources, args.glass, args.seed),
                      shape=(-(-H // f), -(-W // f), 3), subfiletype=1,
                      resolution=(res / f, res / f), resolutionunit="CENTIMETER", **opts)
    print(f"{args.out}: {W}x{H}")


if __name__ == "__main__":
    main()
