"""Small slide files written in the test: the formats and the kinds of damage the pipeline must
handle, built with tifffile so that no test needs a slide collection.

- :func:`write_generic_tiff`: a tiled pyramidal TIFF (OpenSlide's ``generic-tiff``).
- :func:`write_aperio_svs`: an Aperio SVS (tiled JPEG level 0, a thumbnail, MPP and AppMag).
- :func:`write_garbage`: bytes that no reader recognises.
- :func:`write_unknown_compression_tiff`: a TIFF whose compression scheme no reader knows.
- :func:`write_corrupt_svs`: an SVS that opens but whose pixels cannot be decoded.
"""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import tifffile

__all__ = ["write_generic_tiff", "write_aperio_svs", "write_garbage", "write_unknown_compression_tiff",
           "write_corrupt_svs"]

#: A compression code that no TIFF reader implements.
UNKNOWN_COMPRESSION = 52479


def write_generic_tiff(path: Path, rgb: np.ndarray, levels: int = 3, tile: int = 64) -> Path:
    """Level 0 and ``levels - 1`` halvings, deflate-compressed tiles of ``tile`` pixels."""
    with tifffile.TiffWriter(path) as tif:
        for level in range(levels):
            step = 2**level
            tif.write(np.ascontiguousarray(rgb[::step, ::step]), tile=(tile, tile), photometric="rgb",
                      compression="zlib", subfiletype=1 if level else 0, metadata=None)
    return Path(path)


def write_aperio_svs(path: Path, rgb: np.ndarray, mpp: float = 0.499, tile: int = 64) -> Path:
    """OpenSlide recognises Aperio by the ImageDescription of the first page ("Aperio ..."), reads
    MPP and AppMag from it, and takes the first stripped page after the levels as the thumbnail."""
    h, w = rgb.shape[:2]
    description = (f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=90"
                   f"|AppMag = 20|MPP = {mpp}")
    thumb = np.ascontiguousarray(rgb[::4, ::4])
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.ascontiguousarray(rgb), tile=(tile, tile), photometric="rgb", compression="jpeg",
                  description=description, metadata=None)
        tif.write(thumb, photometric="rgb", compression="jpeg", metadata=None,
                  description=f"Aperio Image Library v12.0.15 \n{w}x{h} -> {thumb.shape[1]}x{thumb.shape[0]} - ")
    return Path(path)


def write_garbage(path: Path, size: int = 1000, seed: int = 0) -> Path:
    Path(path).write_bytes(np.random.default_rng(seed).bytes(size))
    return Path(path)


def write_unknown_compression_tiff(path: Path) -> Path:
    """A valid tiled TIFF whose Compression tag is then rewritten in place to an unknown code."""
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), tile=(16, 16), photometric="rgb", metadata=None)
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags["Compression"]
        offset, byteorder = tag.valueoffset, tif.byteorder
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(f"{byteorder}H", UNKNOWN_COMPRESSION))
    return Path(path)


def write_corrupt_svs(path: Path, svs: Path) -> Path:
    """A copy of ``svs`` whose first tile's JPEG start-of-scan marker (FF DA) is turned into a
    quantisation-table marker (FF DB): the file opens, decoding its pixels fails."""
    shutil.copyfile(svs, path)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    with open(path, "r+b") as f:
        f.seek(offset)
        sos = f.read(count).find(b"\xff\xda")
        if sos < 0:
            raise ValueError(f"{svs}: no JPEG start of scan in the first tile")
        f.seek(offset + sos + 1)
        f.write(b"\xdb")
    return Path(path)
