"""TIFFs OpenSlide does not read (fully), read with tifffile: OME-TIFF (pyramid in SubIFDs or as
series levels, physical pixel size in the OME-XML), generic tiled or striped TIFF and BigTIFF, in
any compression imagecodecs decodes (JPEG, JPEG 2000, JPEG XL, LZW, deflate, zstd, ...).

Pixels are read lazily through tifffile's zarr interface, one TIFF tile or strip (a zarr chunk)
at a time, never a whole level. Decoded chunks are kept in a small cache bounded in bytes: a
window of level 0 with its halo overlaps its neighbours' tiles, and the chunks of a striped TIFF
span the whole width, so without it the same chunk would be decoded again for every window that
touches it.

Besides the pixels a :class:`TiffSource` tells what each pixel holds (``channels``, ``bits``,
``planes``), so that inputs that are not 8-bit RGB or grey are recognised before anything is
coded (:mod:`wsicodec.content`); reading pixels of such an input raises :class:`SlideError`.
"""
from __future__ import annotations

import functools
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

from wsicodec.errors import first_line as _short
from wsicodec.source import SlideError, SlideSource, flatten_rgba, shrink_in_bands

__all__ = ["TiffParseError", "TiffSource", "is_tiff", "openslide_reads_fully"]

#: Bytes of decoded TIFF chunks (tiles or strips) kept per source. compress reads level 0 in
#: strips 8 tiles wide, row by row (TileGrid.reading_order), and a window's halo reaches one row
#: up and down: about 3 x 10 TIFF tiles of 512 px (0.75 MiB each) or 4 x 20 of 256 px are in use,
#: 16-23 MiB; the rest is room for the reading threads running ahead. Counted in the peak RSS.
CHUNK_CACHE_BYTES = 64 << 20
#: Largest TIFF chunk decoded (a single-strip image is one chunk as large as the image): 384 MiB
#: of RGB, more would not fit beside the rest of compress in its 2 GiB.
MAX_CHUNK_PIXELS = 1 << 27
#: Associated images kept from an OME-TIFF's other series, by lower-case series name (a store keeps
#: no thumbnail: its reader makes one from the store's pyramid).
ASSOCIATED_SERIES = {"label": "label", "macro": "macro", "overview": "macro"}
MAX_ASSOCIATED_PIXELS = 1 << 24

#: OME length units -> micrometres (OME's default unit for PhysicalSize is the micrometre)
_OME_UNITS_UM = {"m": 1e6, "dm": 1e5, "cm": 1e4, "mm": 1e3, "µm": 1.0, "\u03bcm": 1.0, "um": 1.0, "nm": 1e-3,
                 "pm": 1e-6, "Å": 1e-4, "\u212b": 1e-4, "in": 25400.0, "ft": 304800.0}

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class TiffParseError(SlideError):
    """tifffile cannot make sense of the file's structure (another reader may still)."""


def is_tiff(path: Path) -> bool:
    """Whether the file starts like a TIFF or BigTIFF."""
    try:
        with open(path, "rb") as f:
            return f.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def openslide_reads_fully(src: TiffSource) -> bool:
    """Whether OpenSlide's generic-TIFF driver reads everything this TIFF holds: a plain 8-bit RGB
    image with no OME-XML (OpenSlide ignores its physical size and multi-channel layout) and no
    SubIFD pyramid (OpenSlide sees only top-level pages). Such files stay with OpenSlide. Not JPEG
    tiles tagged RGB: writers put YCbCr 4:2:0 JPEG streams under that tag, which libtiff (OpenSlide,
    Pillow) then decodes to wrong colours or not at all, while imagecodecs follows the stream."""
    return (not src.is_ome and not src.has_subifds and src.codable and src.channels == 3
            and src.series_index == 0 and not src.jpeg_tagged_rgb)


class TiffSource(SlideSource):
    """Level 0 (and the pyramid, for thumbnails) of the largest image series of a TIFF."""

    def __init__(self, path: Path):
        import tifffile

        super().__init__(path)
        try:
            self._tif = tifffile.TiffFile(str(path))
        except Exception as e:
            raise TiffParseError(path, f"not a TIFF that can be read ({_short(e)})") from None
        try:
            self._open()
        except SlideError:
            self._tif.close()
            raise
        except Exception as e:
            self._tif.close()
            raise TiffParseError(path, f"TIFF structure cannot be read ({_short(e)})") from None

    # -- layout ----------------------------------------------------------------------------------
    def _open(self) -> None:
        tif = self._tif
        all_series = list(tif.series)
        if not all_series:
            raise SlideError(self.path, "TIFF holds no image")

        def area(s: Any) -> int:
            try:
                return int(s.shape[s.axes.index("Y")]) * int(s.shape[s.axes.index("X")])
            except ValueError:
                return 0

        self.series_index = max(range(len(all_series)), key=lambda i: area(all_series[i]))
        self._series = series = all_series[self.series_index]
        axes, shape = series.axes, tuple(int(v) for v in series.shape)
        if "Y" not in axes or "X" not in axes:
            raise SlideError(self.path, f"TIFF image has axes {axes!r}, no Y and X")
        self.dimensions = (shape[axes.index("X")], shape[axes.index("Y")])
        self._check_dimensions()
        self.is_ome = bool(tif.is_ome)
        page = series.keyframe
        self.has_subifds = bool(getattr(page, "subifds", None))
        self.is_image = not page.is_tiled and len(series.levels) == 1  # a plain striped TIFF
        self._photometric = int(page.photometric)
        self.jpeg_tagged_rgb = self._photometric == 2 and int(page.compression) == 7
        self._colormap = page.colormap if self._photometric == 3 else None
        extras = tuple(int(v) for v in (page.extrasamples or ()))
        self._alpha = bool(extras) and extras[0] in (1, 2)
        self._premultiplied = self._alpha and extras[0] == 1
        sizes = dict(zip(axes, shape, strict=True))
        samples = sizes.get("S", 1)
        colour_samples = samples - len(extras) if extras else samples
        self._samples_used = colour_samples + (1 if self._alpha else 0)  # an unspecified extra sample is padding
        self.channels = colour_samples * sizes.get("C", 1) * sizes.get("Q", 1) * sizes.get("I", 1)
        if self._photometric == 3:  # palette: one index per pixel, an RGB colour each
            self.channels = 3
        self.planes = ", ".join(f"{a}={n}" for a, n in sizes.items() if a not in "YXSCQI" and n > 1)
        dtype = np.dtype(series.dtype)
        self.bits = dtype.itemsize * 8 if dtype != np.bool_ else 1
        self.sample_kind = {"u": "unsigned", "i": "signed", "f": "float", "b": "bit"}.get(dtype.kind, dtype.kind)
        self.unreadable = self._layout_problem(page, sizes)
        self.codable = self.unreadable is None
        fmt = "ome-tiff" if self.is_ome else "bigtiff" if tif.is_bigtiff else "tiff"
        self.vendor = fmt
        self.properties = self._tiff_properties(page, fmt)
        self._mpp, self._objective = self._physical_size(page)
        self._levels = list(series.levels)
        self._level_dims = [(int(lv.shape[lv.axes.index("X")]), int(lv.shape[lv.axes.index("Y")]))
                            for lv in self._levels]
        self._arrays: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._chunk_cache: dict[int, Any] = {}

    def _layout_problem(self, page: Any, sizes: dict[str, int]) -> str | None:
        """Why the pixels cannot be turned into 8-bit RGB without losing data (``None``: they can).
        The content check words the refusal; this only guards reading."""
        if self.bits != 8 or self.sample_kind != "unsigned":
            return f"{self.bits}-bit {self.sample_kind} samples"
        if self.planes:
            return f"more than one image plane ({self.planes})"
        if self.channels not in (1, 3):
            return f"{self.channels} channels"
        if self._photometric not in (0, 1, 2, 3, 6):
            return f"photometric interpretation {page.photometric.name}"
        if self._photometric == 6 and int(page.compression) not in (7, 6, 34892):
            return "YCbCr samples without JPEG compression"
        chunk = page.chunks
        if int(np.prod(chunk[:2])) > MAX_CHUNK_PIXELS:
            return (f"stored in {'tiles' if page.is_tiled else 'strips'} of {chunk[1]}x{chunk[0]} pixels, "
                    f"more than {MAX_CHUNK_PIXELS} decoded at once (re-save it tiled)")
        return None

    def _tiff_properties(self, page: Any, fmt: str) -> dict[str, str]:
        """The TIFF fields a store keeps, named as OpenSlide names them (``tiff.<Tag>``)."""
        props = {"wsicodec.source-format": fmt, "wsicodec.source-series": str(self.series_index)}
        for name in ("ImageDescription", "Software", "DateTime", "Make", "Model", "Artist", "HostComputer",
                     "DocumentName", "Copyright", "XResolution", "YResolution", "ResolutionUnit"):
            tag = page.tags.get(name)
            if tag is None:
                continue
            v = tag.value
            if isinstance(v, tuple) and len(v) == 2 and all(isinstance(p, int) for p in v) and v[1]:
                v = f"{v[0] / v[1]:g}"
            elif hasattr(v, "name"):
                v = v.name.lower()
            elif isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            props[f"tiff.{name}"] = str(v)
        if self.is_ome and self._tif.ome_metadata and "tiff.ImageDescription" not in props:
            props["tiff.ImageDescription"] = self._tif.ome_metadata
        return props

    def _physical_size(self, page: Any) -> tuple[tuple[float | None, float | None], float | None]:
        """(mpp x, mpp y) and objective power: OME-XML ``PhysicalSizeX/Y`` (with their units) and
        ``NominalMagnification``, else ImageJ's unit with the resolution tags, else the TIFF
        resolution tags in inches, centimetres, millimetres or micrometres."""
        if self.is_ome and self._tif.ome_metadata:
            found = _ome_physical_size(self._tif.ome_metadata, self.series_index)
            if found is not None:
                return found
        try:
            res = page.resolution
            unit = int(page.resolutionunit)
        except Exception:
            return (None, None), None
        ij = self._tif.imagej_metadata or {}
        per_um = {2: 1 / 25400, 3: 1e-4, 4: 1e-3, 5: 1.0}.get(unit)
        if unit == 1 and str(ij.get("unit", "")).lower() in ("micron", "um", "µm", "\u03bcm", "\\u00b5m"):
            per_um = 1.0  # ImageJ: resolution in pixels per micron, ResolutionUnit NONE
        if per_um is None:
            return (None, None), None
        mpp = tuple(1 / (r * per_um) if r and r > 0 else None for r in res)
        return (mpp[0], mpp[1]), None

    # -- SlideSource -----------------------------------------------------------------------------
    @property
    def mpp(self) -> tuple[float | None, float | None]:
        return self._mpp

    @property
    def objective_power(self) -> float | None:
        return self._objective

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return list(self._level_dims)

    @property
    def associated_images(self) -> dict[str, np.ndarray]:
        """label and macro images an OME-TIFF holds as further series, by series name."""
        out: dict[str, np.ndarray] = {}
        for i, s in enumerate(self._tif.series):
            name = ASSOCIATED_SERIES.get(str(getattr(s, "name", "") or "").strip().lower())
            if i == self.series_index or name is None or name in out:
                continue
            small = int(np.prod(s.shape[:2])) <= MAX_ASSOCIATED_PIXELS
            if np.dtype(s.dtype) != np.uint8 or s.axes not in ("YXS", "YX") or not small:
                continue
            try:
                out[name] = flatten_rgba(np.asarray(s.asarray()), self.background)
            except Exception as e:
                raise SlideError(self.path, f"cannot read the {name} image ({_short(e)})") from None
        return out

    def read_rgb(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self._read(0, x, y, w, h)

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """Read from the smallest pyramid level at least ``max_size`` on its longer side, in bands of
        at most MAX_THUMBNAIL_READ pixels, each shrunk by area averaging."""
        self._check_codable()
        fits = [i for i, (lw, lh) in enumerate(self._level_dims) if max(lw, lh) >= max_size]
        level = min(fits, key=lambda i: self._level_dims[i][0] * self._level_dims[i][1]) if fits else 0
        lw, lh = self._level_dims[level]
        scale = min(1.0, max_size / max(lw, lh))
        tw, th = max(1, round(lw * scale)), max(1, round(lh * scale))
        return shrink_in_bands((lw, lh), (tw, th), lambda y0, y1: self._read(level, 0, y0, lw, y1 - y0))

    def close(self) -> None:
        self._chunk_cache.clear()
        self._arrays.clear()
        self._tif.close()

    # -- pixels ----------------------------------------------------------------------------------
    def _check_codable(self) -> None:
        if self.unreadable:
            raise SlideError(self.path, f"{self.unreadable}: not readable as 8-bit RGB")

    def _array(self, level: int) -> Any:
        with self._lock:
            arr = self._arrays.get(level)
            if arr is None:
                import zarr

                fill = 255 if self._photometric in (2, 6) else None  # a missing RGB tile is empty glass
                store = self._series.aszarr(level=level, fillvalue=fill)
                arr = self._arrays[level] = zarr.open(store, mode="r")
                chunk_bytes = int(np.prod(arr.chunks)) * arr.dtype.itemsize
                self._chunk_cache[level] = functools.lru_cache(
                    maxsize=max(2, CHUNK_CACHE_BYTES // max(chunk_bytes, 1)))(functools.partial(self._chunk, level))
            return arr

    def _chunk(self, level: int, cy: int, cx: int) -> np.ndarray:
        """One TIFF tile or strip of a level as (h, w, samples) uint8, decoded through zarr."""
        arr = self._arrays[level]
        axes = self._levels[level].axes
        yi, xi = axes.index("Y"), axes.index("X")
        ch, cw = arr.chunks[yi], arr.chunks[xi]
        index: list[Any] = [slice(None)] * arr.ndim
        index[yi], index[xi] = slice(cy * ch, (cy + 1) * ch), slice(cx * cw, (cx + 1) * cw)
        try:
            a = np.asarray(arr[tuple(index)])
        except Exception as e:
            what = "tile" if self._series.keyframe.is_tiled else "strip"
            raise SlideError(self.path, f"cannot decode the TIFF {what} at ({cx * cw}, {cy * ch}) of level {level} "
                                        f"({_short(e)})") from None
        a = np.moveaxis(a, (yi, xi), (0, 1))
        return a.reshape(a.shape[0], a.shape[1], -1)

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB pixels of the box at ``level``; outside the image: the background colour."""
        self._check_codable()
        arr = self._array(level)
        axes = self._levels[level].axes
        ch, cw = arr.chunks[axes.index("Y")], arr.chunks[axes.index("X")]
        W, H = self._level_dims[level]
        samples = np.empty((h, w, self._samples_used), np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        inside = x1 > x0 and y1 > y0
        if inside:
            chunk = self._chunk_cache[level]
            for cy in range(y0 // ch, math.ceil(y1 / ch)):
                for cx in range(x0 // cw, math.ceil(x1 / cw)):
                    c = chunk(cy, cx)
                    bx0, by0 = max(x0, cx * cw), max(y0, cy * ch)
                    bx1, by1 = min(x1, cx * cw + c.shape[1]), min(y1, cy * ch + c.shape[0])
                    samples[by0 - y : by1 - y, bx0 - x : bx1 - x] = \
                        c[by0 - cy * ch : by1 - cy * ch, bx0 - cx * cw : bx1 - cx * cw, : self._samples_used]
        rgb = self._to_rgb(samples)
        if not inside or (x0, y0, x1, y1) != (x, y, x + w, y + h):
            border = np.ones((h, w), bool)
            if inside:
                border[y0 - y : y1 - y, x0 - x : x1 - x] = False
            rgb[border] = self.background
        return rgb

    def _to_rgb(self, samples: np.ndarray) -> np.ndarray:
        if self._photometric == 3:  # palette: 16-bit colour map entries, top byte
            lut = (np.asarray(self._colormap) >> 8).astype(np.uint8).T
            return lut[samples[:, :, 0]]
        if self._photometric == 0:  # min-is-white grey
            samples = samples.copy()
            samples[:, :, 0] = 255 - samples[:, :, 0]
        if self._premultiplied:  # associated alpha: colour already multiplied by alpha
            a = samples[:, :, -1:].astype(np.uint16)
            bg = np.array(self.background, np.uint16)
            col = samples[:, :, :-1].astype(np.uint16)
            if col.shape[2] == 1:
                col = np.repeat(col, 3, axis=2)
            return np.minimum(col + (bg * (255 - a) + 127) // 255, 255).astype(np.uint8)
        return flatten_rgba(samples if samples.shape[2] > 1 else samples[:, :, 0], self.background)


def _ome_physical_size(xml: str, image_index: int) -> tuple[tuple[float | None, float | None], float | None] | None:
    """(mpp x, mpp y), objective power of OME ``Image`` number ``image_index`` (``None``: not given)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None

    def local(tag: str) -> str:
        return tag.rsplit("}", 1)[-1]

    images = [e for e in root if local(e.tag) == "Image"]
    if image_index >= len(images):
        return None
    image = images[image_index]
    pixels = next((e for e in image if local(e.tag) == "Pixels"), None)
    if pixels is None:
        return None

    def size(axis: str) -> float | None:
        try:
            value = float(pixels.attrib[f"PhysicalSize{axis}"])
        except (KeyError, ValueError):
            return None
        factor = _OME_UNITS_UM.get(pixels.attrib.get(f"PhysicalSize{axis}Unit", "µm").strip())
        return value * factor if factor is not None and value > 0 and math.isfinite(value) else None

    objective = None
    settings = next((e for e in image if local(e.tag) == "ObjectiveSettings"), None)
    if settings is not None:
        for e in root.iter():
            if local(e.tag) == "Objective" and e.attrib.get("ID") == settings.attrib.get("ID"):
                try:
                    objective = float(e.attrib["NominalMagnification"])
                except (KeyError, ValueError):
                    pass
    mpp = (size("X"), size("Y"))
    if mpp == (None, None) and objective is None:
        return None
    return mpp, objective

