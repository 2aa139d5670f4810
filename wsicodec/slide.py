"""Open any input: a whole-slide image OpenSlide reads, a TIFF read with tifffile
(:mod:`wsicodec.slide_tiff`), or a plain image file Pillow reads.

``open_input(path)`` gives a :class:`SlideSource` with the level-0 geometry, the metadata a store
keeps, what each pixel holds (``channels``, ``bits``, ``planes``) and ``read_rgb`` returning
opaque uint8 RGB (transparent pixels become the slide's background colour).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from wsicodec.errors import first_line as _short
from wsicodec.source import MAX_SIDE, MAX_THUMBNAIL_READ, SlideError, SlideSource, flatten_rgba, shrink_in_bands

__all__ = ["MAX_IMAGE_PIXELS", "MAX_SIDE", "MAX_THUMBNAIL_READ", "ImageSource", "OpenSlideSource", "SlideError",
           "SlideSource", "flatten_rgba", "image_rgb", "open_input"]

#: Largest plain image (not a tiled slide) decoded into memory at once.
MAX_IMAGE_PIXELS = 1 << 30


def _parse_colour(hex_colour: str | None) -> tuple[int, int, int]:
    try:
        v = int(str(hex_colour), 16)
        return ((v >> 16) & 255, (v >> 8) & 255, v & 255)
    except (TypeError, ValueError):
        return (255, 255, 255)


def image_rgb(im: Any, background: tuple[int, int, int]) -> np.ndarray:
    """A PIL image as RGB pixels (see :func:`flatten_rgba`). An opaque RGBA region (a slide's
    usual case) is converted by Pillow without holding the GIL, about twice as fast as numpy
    (``benchmarks/host_ceiling.py``); every window of a slide goes through here."""
    if im.mode == "RGBA" and im.getchannel("A").histogram()[255] == im.width * im.height:
        return np.array(im.convert("RGB"))  # writable, like every other read
    return flatten_rgba(np.asarray(im), background)


class OpenSlideSource(SlideSource):
    def __init__(self, path: Path):
        import openslide

        super().__init__(path)
        try:
            self._slide = openslide.OpenSlide(str(path))
        except Exception as e:  # OpenSlideError, OpenSlideUnsupportedFormatError, OSError
            raise SlideError(path, f"OpenSlide cannot open it ({_short(e)})") from None
        self.dimensions = tuple(int(v) for v in self._slide.dimensions)
        self._check_dimensions()
        self.properties = {str(k): str(v) for k, v in self._slide.properties.items()}
        self.vendor = self.properties.get("openslide.vendor", "")
        self.background = _parse_colour(self.properties.get("openslide.background-color"))

    @property
    def associated_images(self) -> dict[str, np.ndarray]:
        out = {}
        for name, im in self._slide.associated_images.items():
            out[name] = image_rgb(im, self.background)
        return out

    def read_rgb(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        try:
            region = self._slide.read_region((int(x), int(y)), 0, (int(w), int(h)))
        except Exception as e:
            raise SlideError(self.path, f"cannot read pixels at ({x}, {y}) ({_short(e)})") from None
        return image_rgb(region, self.background)

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        W, H = self.dimensions
        try:
            level = self._slide.get_best_level_for_downsample(max(W, H) / max_size)
            lw, lh = self._slide.level_dimensions[level]
            if lw * lh <= MAX_THUMBNAIL_READ:
                im = self._slide.get_thumbnail((max_size, max_size))
                return image_rgb(im, self.background)
            return self._strip_thumbnail(level, max_size)
        except SlideError:
            raise
        except Exception as e:
            raise SlideError(self.path, f"cannot read a thumbnail ({_short(e)})") from None

    def _strip_thumbnail(self, level: int, max_size: int) -> np.ndarray:
        """A thumbnail of a slide without a small enough pyramid level (OpenSlide's own would read the
        whole level at once): read the level in strips of at most MAX_THUMBNAIL_READ pixels."""
        lw, lh = self._slide.level_dimensions[level]
        ds = self._slide.level_downsamples[level]
        scale = max_size / max(lw, lh)
        tw, th = max(1, round(lw * scale)), max(1, round(lh * scale))

        def read_rows(y0: int, y1: int) -> np.ndarray:
            return image_rgb(self._slide.read_region((0, int(y0 * ds)), level, (lw, y1 - y0)), self.background)

        return shrink_in_bands((lw, lh), (tw, th), read_rows, MAX_THUMBNAIL_READ)

    def close(self) -> None:
        self._slide.close()


#: Pillow modes that are not 8-bit colour: (colour channels, bits per sample, sample kind)
_PIL_MODES = {"1": (1, 1, "bit"), "L": (1, 8, "unsigned"), "LA": (1, 8, "unsigned"), "La": (1, 8, "unsigned"),
              "I;16": (1, 16, "unsigned"), "I;16B": (1, 16, "unsigned"), "I;16L": (1, 16, "unsigned"),
              "I;16N": (1, 16, "unsigned"), "I": (1, 32, "signed"), "F": (1, 32, "float")}


class ImageSource(SlideSource):
    """A plain PNG / JPEG / TIFF / WebP / BMP image, decoded once into memory."""

    is_image = True

    def __init__(self, path: Path):
        from PIL import Image

        super().__init__(path)
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
        try:
            with Image.open(path) as im:
                self.dimensions = (int(im.width), int(im.height))
                self._check_dimensions()
                if im.width * im.height > MAX_IMAGE_PIXELS:  # PIL only warns between 1x and 2x its limit
                    raise SlideError(path, f"image of {im.width}x{im.height} pixels is larger than "
                                           f"{MAX_IMAGE_PIXELS} pixels (not decoded)")
                self.vendor = f"image/{(im.format or 'unknown').lower()}"
                self.channels, self.bits, self.sample_kind = _PIL_MODES.get(im.mode, (3, 8, "unsigned"))
                self.properties = {"wsicodec.source-format": self.vendor}
                if self.bits > 8:  # Pillow would clip them to 8 bits
                    self.unreadable = f"{self.bits}-bit {self.sample_kind} samples"
                    self._pixels = None
                    return  # not decoded: converting would lose data (the content check says so)
                mode = "RGBA" if ("A" in im.mode or "transparency" in im.info) else "RGB"
                pixels = np.asarray(im.convert(mode))
        except SlideError:
            raise
        except Image.DecompressionBombError:
            raise SlideError(path, f"image larger than {MAX_IMAGE_PIXELS} pixels") from None
        except Exception as e:
            raise SlideError(path, f"not a slide or image that can be read ({_short(e)})") from None
        self._pixels = flatten_rgba(pixels, self.background)

    def _check_readable(self) -> None:
        if self._pixels is None:
            raise SlideError(self.path, f"{self.unreadable}: not readable as 8-bit RGB")

    def read_rgb(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        self._check_readable()
        W, H = self.dimensions
        out = np.empty((h, w, 3), np.uint8)
        out[:] = self.background
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._pixels[y0:y1, x0:x1]
        return out

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        from PIL import Image

        self._check_readable()
        im = Image.fromarray(self._pixels)
        im.thumbnail((max_size, max_size), Image.Resampling.BOX)
        return np.asarray(im)



def open_input(path: str | os.PathLike) -> SlideSource:
    """Open a slide or image; raises :class:`SlideError`. Tried in order: OpenSlide (the vendor
    formats it knows, and generic TIFFs it reads fully), tifffile (every other TIFF: OME-TIFF,
    SubIFD pyramids, striped, BigTIFF, non-RGB samples), Pillow (PNG, JPEG, WebP, BMP, and TIFFs
    tifffile cannot parse)."""
    path = Path(path)
    if not path.exists():
        raise SlideError(path, "no such file")
    if path.is_dir():
        raise SlideError(path, "is a folder, not a slide or image")
    if path.stat().st_size == 0:
        raise SlideError(path, "empty file")
    import openslide

    try:
        fmt = openslide.OpenSlide.detect_format(str(path))
    except Exception:
        fmt = None
    if fmt is not None and fmt != "generic-tiff":
        return OpenSlideSource(path)
    from wsicodec.slide_tiff import TiffParseError, TiffSource, is_tiff, openslide_reads_fully

    if not is_tiff(path):
        return OpenSlideSource(path) if fmt is not None else ImageSource(path)
    try:
        src = TiffSource(path)
    except TiffParseError as e:
        if fmt is not None:
            return OpenSlideSource(path)
        try:  # a TIFF tifffile cannot parse (e.g. old-style JPEG) that Pillow may still decode
            return ImageSource(path)
        except SlideError:
            raise e from None
    if fmt is not None and openslide_reads_fully(src):
        src.close()
        return OpenSlideSource(path)
    return src
