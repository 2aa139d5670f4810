"""What every input reader gives: :class:`SlideSource` (level 0 of one input with the metadata a
store keeps and what each pixel holds), :class:`SlideError`, and the limits checked before any
pixel is allocated. The readers are :mod:`wsicodec.slide` (OpenSlide, Pillow; ``open_input``
picks one) and :mod:`wsicodec.slide_tiff` (tifffile).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wsicodec.errors import WsicodecError

__all__ = ["MAX_SIDE", "MAX_THUMBNAIL_READ", "SlideError", "SlideSource", "flatten_rgba", "shrink_in_bands"]

#: Largest accepted level-0 side, checked before any pixel is allocated.
MAX_SIDE = 1 << 20
#: Most pixels of a slide level read at once to make a thumbnail.
MAX_THUMBNAIL_READ = 1 << 22


class SlideError(WsicodecError):
    """An input that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def flatten_rgba(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """Composite straight-alpha RGBA (or pass through RGB / grey) onto the background colour."""
    if rgba.ndim == 2:
        rgba = np.repeat(rgba[:, :, None], 3, axis=2)
    if rgba.shape[2] == 2:  # grey + alpha
        rgba = np.concatenate([np.repeat(rgba[:, :, :1], 3, axis=2), rgba[:, :, 1:]], axis=2)
    if rgba.shape[2] == 3:
        return np.ascontiguousarray(rgba, dtype=np.uint8)
    alpha = rgba[:, :, 3:4].astype(np.uint16)
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[:, :, :3])
    bg = np.array(background, dtype=np.uint16)
    out = (rgba[:, :, :3].astype(np.uint16) * alpha + bg * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


class SlideSource:
    """Level 0 of one input, with the metadata a store keeps.

    ``channels`` (colour channels, alpha not counted), ``bits`` (per sample), ``sample_kind``
    (``unsigned``, ``signed``, ``float``) and ``planes`` (further image planes, e.g. ``"Z=3"``)
    describe the stored pixels before they are turned into 8-bit RGB; where that would lose data,
    ``unreadable`` says why and ``read_rgb`` raises :class:`SlideError`."""

    is_image = False
    channels = 3
    bits = 8
    sample_kind = "unsigned"
    planes = ""
    unreadable: str | None = None

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file_size = self.path.stat().st_size
        self.dimensions: tuple[int, int] = (0, 0)
        self.vendor: str = ""
        self.properties: dict[str, str] = {}
        self.background: tuple[int, int, int] = (255, 255, 255)

    @property
    def mpp(self) -> tuple[float | None, float | None]:
        return (
            _float_or_none(self.properties.get("openslide.mpp-x")),
            _float_or_none(self.properties.get("openslide.mpp-y")),
        )

    @property
    def objective_power(self) -> float | None:
        return _float_or_none(self.properties.get("openslide.objective-power"))

    @property
    def associated_images(self) -> dict[str, np.ndarray]:
        return {}

    def _check_dimensions(self) -> None:
        w, h = self.dimensions
        if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
            raise SlideError(self.path, f"level-0 size {w}x{h} is outside 1..{MAX_SIDE} pixels per side")

    def read_rgb(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """A small RGB overview whose longer side is at most ``max_size``."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> SlideSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shrink_in_bands(level_size: tuple[int, int], size: tuple[int, int],
                    read_rows: Callable[[int, int], np.ndarray], max_read: int = MAX_THUMBNAIL_READ) -> np.ndarray:
    """A level of ``level_size`` (w, h) shrunk to ``size`` (w, h) by area averaging, read in bands
    of whole rows of at most ``max_read`` pixels (``read_rows(y0, y1)`` gives rows ``y0:y1`` of
    the level as RGB), so that a thumbnail never holds a whole large level."""
    from PIL import Image

    (lw, lh), (tw, th) = level_size, size
    out = np.empty((th, tw, 3), np.uint8)
    rows_per_band = max(1, int(max_read / lw * th / lh))
    for r0 in range(0, th, rows_per_band):
        r1 = min(th, r0 + rows_per_band)
        y0, y1 = r0 * lh // th, max(r0 * lh // th + 1, r1 * lh // th)
        band = Image.fromarray(read_rows(y0, y1))
        out[r0:r1] = np.asarray(band.resize((tw, r1 - r0), Image.Resampling.BOX))
    return out
