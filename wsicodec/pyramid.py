"""Pyramid levels and box reduction, shared by the store reader and the TIFF writer."""
from __future__ import annotations

import numpy as np

__all__ = ["box_reduce", "pyramid_downsamples"]


def pyramid_downsamples(width: int, height: int, factor: int = 4, smallest: int = 1024) -> list[int]:
    """Downsample factors 1, f, f², … until the longer side is at most ``smallest``."""
    ds = [1]
    while max(width, height) / ds[-1] > smallest:
        ds.append(ds[-1] * factor)
    return ds


def box_reduce(pixels: np.ndarray, f: int) -> np.ndarray:
    """Area-average uint8 RGB by ``f`` (Pillow's box ``reduce``: integer sums, rounded; a partial
    box at the right or bottom edge averages the pixels it has)."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).reduce(f))

