"""Pyramidal tiled TIFF output that OpenSlide (generic-tiff), QuPath and tifffile read: level 0
first, then each level 4x smaller down to <= 1024 px, as consecutive tiled pages, with the
resolution tags in pixels per centimetre so ``openslide.mpp-x/y`` come out right."""
from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from wsicodec.errors import StoreError
from wsicodec.pyramid import box_reduce, pyramid_downsamples

COMPRESSIONS = {"jpeg": "jpeg", "deflate": "zlib", "zstd": "zstd", "none": None}


def _tiles_of(image_rows: Iterator[np.ndarray], width: int, tile: int) -> Iterator[np.ndarray]:
    """Cut row bands (each ``tile`` rows high, the last maybe fewer) into tiles for tifffile."""
    for band in image_rows:
        h = band.shape[0]
        for x in range(0, width, tile):
            t = np.zeros((tile, tile, 3), np.uint8)
            part = band[:, x : x + tile]
            t[:h, : part.shape[1]] = part
            yield t


class _RowFile:
    """An image level kept on disk as raw RGB rows, appended band by band and read back in bands:
    plain file I/O (no memory map), so the rows live in the page cache and never count against
    the process's memory, whatever the slide's size."""

    def __init__(self, path: Path, width: int):
        self._f = open(path, "w+b")
        self.width, self.rows = width, 0

    def append(self, rows: np.ndarray) -> None:
        self._f.seek(0, os.SEEK_END)
        self._f.write(np.ascontiguousarray(rows, dtype=np.uint8).tobytes())
        self.rows += rows.shape[0]

    def bands(self, height: int) -> Iterator[np.ndarray]:
        row_bytes = self.width * 3
        for r0 in range(0, self.rows, height):
            n = min(height, self.rows - r0)
            self._f.seek(r0 * row_bytes)
            yield np.frombuffer(self._f.read(n * row_bytes), np.uint8).reshape(n, self.width, 3)

    def close(self) -> None:
        self._f.close()


def write_pyramid(store, output: Path, region: tuple[int, int, int, int], tile: int = 256,
                  compression: str = "jpeg", quality: int = 90,
                  advance: Callable[[int], None] = lambda n=1: None) -> None:
    import tifffile

    if compression not in COMPRESSIONS:
        raise StoreError(f"unknown TIFF compression {compression!r} (jpeg, deflate, zstd or none)")
    if tile % 16 or tile < 16:
        raise StoreError(f"TIFF tile size {tile} must be a multiple of 16")
    if not 1 <= quality <= 100:
        raise StoreError(f"--quality {quality} must be within 1..100")
    x, y, w, h = region
    downs = pyramid_downsamples(w, h)
    f = 4
    mpp = store.meta.get("mpp") or [None, None]
    comp = COMPRESSIONS[compression]
    cargs = {"compression": comp}
    if comp == "jpeg":
        cargs["compressionargs"] = {"level": quality}
    elif comp in ("zlib", "zstd"):
        cargs["compressionargs"] = {"level": 6 if comp == "zlib" else 9}
    res = {}
    if mpp[0] and mpp[1]:
        res = {"resolution": (1e4 / float(mpp[0]), 1e4 / float(mpp[1])), "resolutionunit": "CENTIMETER"}
    band_h = max(tile, store.grid.tile) // tile * tile
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)  # like compress, which creates the store's folders
    tmpdir = tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent)
    tmp_tif = Path(tmpdir) / output.name
    files: list[_RowFile] = []
    try:
        def next_level(width: int) -> _RowFile:
            files.append(_RowFile(Path(tmpdir) / f"level{len(files) + 1}.raw", math.ceil(width / f)))
            return files[-1]

        touched: set = set()
        below = next_level(w) if len(downs) > 1 else None

        def level0_rows() -> Iterator[np.ndarray]:
            for by in range(0, h, band_h):
                bh = min(band_h, h - by)
                tiles = store.grid.tiles_touching(x, y + by, w, bh)
                band = store.read_level0(x, y + by, w, bh)
                new = [t for t in tiles if t not in touched]
                touched.update(new)
                advance(len(new))
                if below is not None:
                    below.append(box_reduce(band, f))
                for r in range(0, bh, tile):
                    yield band[r : r + tile]

        def level_rows(level: _RowFile, below: _RowFile | None) -> Iterator[np.ndarray]:
            for band in level.bands(tile):  # tile is a multiple of 16, so of f: bands downsample alone
                if below is not None:
                    below.append(box_reduce(band, f))
                yield band

        desc = f"wsicodec {store.meta.get('wsicodec_version', '')} from {Path(store.path).name}"
        with tifffile.TiffWriter(tmp_tif, bigtiff=w * h * 3 > 2**31) as tif:
            tif.write(_tiles_of(level0_rows(), w, tile), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile),
                      photometric="rgb", description=desc, metadata=None, **cargs, **res)
            for i, d in enumerate(downs[1:], start=1):
                level = files[i - 1]
                below = next_level(level.width) if i + 1 < len(downs) else None
                lres = {}
                if res:
                    lres = {"resolution": (res["resolution"][0] / d, res["resolution"][1] / d),
                            "resolutionunit": "CENTIMETER"}
                tif.write(_tiles_of(level_rows(level, below), level.width, tile), shape=(level.rows, level.width, 3),
                          dtype=np.uint8, tile=(tile, tile), photometric="rgb", subfiletype=1, metadata=None,
                          **cargs, **lres)
        os.replace(tmp_tif, output)
    finally:
        for rf in files:
            rf.close()
        for p in Path(tmpdir).glob("*"):
            p.unlink()
        os.rmdir(tmpdir)
