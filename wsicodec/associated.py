"""Associated images (label, macro) as a store keeps them (format version 3): the source's own
compressed bytes where it has them, else coded losslessly, and decoded back to RGB pixels.

* An Aperio SVS holds its label and macro as TIFF pages; a JPEG-compressed page is kept as a
  one-page TIFF holding the very same compressed strips (nothing is coded again; the copy is
  kept only where it decodes to the source page's pixels, bit for bit).
* Any other associated image is coded losslessly as WebP (PNG where an image is too large for
  WebP), the pixels exactly as the slide reader gave them.

The thumbnail is not kept: a reader makes it from the store's own pyramid.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["MEDIA_TYPES", "EncodedImage", "decode", "encode", "original_bytes"]

#: the encodings a store may hold, by media type
MEDIA_TYPES = ("image/tiff", "image/webp", "image/png")

#: largest side lossless WebP codes; larger images are coded as PNG
_WEBP_MAX_SIDE = 16383


@dataclass(frozen=True)
class EncodedImage:
    """An associated image's encoded bytes, their media type and the image's size."""

    media_type: str
    data: bytes
    width: int
    height: int


def original_bytes(path: Path, vendor: str | None, name: str) -> EncodedImage | None:
    """The source's own JPEG-compressed ``name`` image as a one-page TIFF holding the same
    compressed strips, or ``None`` where the source has no such page (only Aperio SVS files are
    looked into: their label and macro pages say their name in the page description)."""
    if (vendor or "").lower() != "aperio":
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                lines = (page.description or "").splitlines()
                if len(lines) < 2 or not lines[1].startswith(f"{name} "):
                    continue
                if page.compression != tifffile.COMPRESSION.JPEG or page.is_tiled or page.planarconfig != 1 \
                        or page.shape[-1:] != (3,) or page.dtype != np.uint8:
                    return None
                strips = []
                for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
                    tif.filehandle.seek(offset)
                    strips.append(tif.filehandle.read(count))
                out = io.BytesIO()
                with tifffile.TiffWriter(out) as w:
                    # the strips as they are; the photometric interpretation as in the source
                    # (Aperio: RGB, with the colour conversion inside the JPEG streams)
                    w.write(iter(strips), shape=page.shape, dtype=page.dtype, compression="jpeg",
                            photometric=page.photometric, rowsperstrip=page.rowsperstrip,
                            jpegtables=page.jpegtables, compressionargs={"outcolorspace": "rgb"},
                            subsampling=getattr(page, "subsampling", None), metadata=None)
                # kept only where the copy decodes to the source page's pixels (the tags written
                # here must tell a reader what the source's tags told it)
                if not np.array_equal(tifffile.imread(io.BytesIO(out.getvalue())), page.asarray()):
                    return None
                h, w_ = page.shape[:2]
                return EncodedImage("image/tiff", out.getvalue(), int(w_), int(h))
    except (OSError, ValueError, KeyError, IndexError, tifffile.TiffFileError):
        return None
    return None


def encode(pixels: np.ndarray) -> EncodedImage:
    """``(h, w, 3)`` uint8 pixels coded losslessly: WebP, or PNG for an image too large for WebP."""
    from PIL import Image

    pixels = np.ascontiguousarray(pixels, np.uint8)
    h, w = pixels.shape[:2]
    out = io.BytesIO()
    if max(h, w) <= _WEBP_MAX_SIDE:
        Image.fromarray(pixels).save(out, "WEBP", lossless=True, quality=100, method=4)
        media = "image/webp"
    else:
        Image.fromarray(pixels).save(out, "PNG")
        media = "image/png"
    return EncodedImage(media, out.getvalue(), int(w), int(h))


def decode(media_type: str, data: bytes) -> np.ndarray:
    """The ``(h, w, 3)`` uint8 pixels of an encoded associated image."""
    if media_type == "image/tiff":
        import tifffile

        pixels = tifffile.imread(io.BytesIO(data))
    elif media_type in ("image/webp", "image/png"):
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            pixels = np.asarray(im.convert("RGB"))
    else:
        raise ValueError(f"unknown media type {media_type!r}")
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"decoded to {pixels.shape} {pixels.dtype}, expected (h, w, 3) uint8")
    return pixels
