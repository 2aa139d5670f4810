"""DeepZoom tiles of one image, made on demand from level-0 blocks.

The geometry is openslide-python's ``DeepZoomGenerator`` with ``limit_bounds=False``: level
``dz_levels - 1`` is level 0, each lower level halves the one above (rounding up) down to 1x1,
tiles are ``tile_size`` pixels plus ``overlap`` on every side that has a neighbour.

Pixels come from *blocks*: level 0 is cut into ``block``-pixel squares (for a store, its own
tiles, so one DeepZoom tile never decodes a store tile twice), and a block of a lower level is
the 2x box average of the four blocks below it. A low level is therefore made from decoded tiles
once, never by decoding the slide again per tile, and the store and its original are resampled
the same way, so that side by side they differ only by the codec.
"""
from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np

__all__ = ["BlockCache", "BlockUnreadable", "DeepZoom", "Pyramid", "dzi_xml"]

log = logging.getLogger("wsicodec.view")


class BlockUnreadable(Exception):
    """A level-0 block whose pixels cannot be had (a damaged chunk); shown as a marked tile."""


def dzi_xml(width: int, height: int, tile_size: int, overlap: int, fmt: str) -> str:
    """The ``.dzi`` descriptor, as ``DeepZoomGenerator.get_dzi`` writes it."""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="{fmt}" '
            f'Overlap="{overlap}" TileSize="{tile_size}"><Size Height="{height}" Width="{width}"/></Image>')


class DeepZoom:
    """DeepZoom levels and tile boxes of a ``width`` x ``height`` image."""

    def __init__(self, width: int, height: int, tile_size: int = 254, overlap: int = 1):
        if tile_size < 1 or overlap < 0:
            raise ValueError(f"tile size {tile_size} / overlap {overlap}")
        self.width, self.height, self.tile_size, self.overlap = width, height, tile_size, overlap
        size = (width, height)
        dims = [size]
        while size[0] > 1 or size[1] > 1:
            size = (max(1, math.ceil(size[0] / 2)), max(1, math.ceil(size[1] / 2)))
            dims.append(size)
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(reversed(dims))
        self.level_tiles: tuple[tuple[int, int], ...] = tuple(
            (math.ceil(w / tile_size), math.ceil(h / tile_size)) for w, h in self.level_dimensions)

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def scale(self, level: int) -> int:
        """How many times level 0 is halved to give ``level`` (0 for the full-resolution level)."""
        return self.level_count - 1 - level

    def has_tile(self, level: int, col: int, row: int) -> bool:
        if not 0 <= level < self.level_count:
            return False
        cols, rows = self.level_tiles[level]
        return 0 <= col < cols and 0 <= row < rows

    def tile_box(self, level: int, col: int, row: int) -> tuple[int, int, int, int]:
        """``(x, y, w, h)`` of a tile in its level's pixels, overlap included."""
        w_lim, h_lim = self.level_dimensions[level]
        cols, rows = self.level_tiles[level]
        t, o = self.tile_size, self.overlap
        left, top = o * (col != 0), o * (row != 0)
        right, bottom = o * (col != cols - 1), o * (row != rows - 1)
        x, y = col * t, row * t
        return (x - left, y - top, min(t, w_lim - x) + left + right, min(t, h_lim - y) + top + bottom)

    def dzi(self, fmt: str) -> str:
        return dzi_xml(self.width, self.height, self.tile_size, self.overlap, fmt)


class BlockCache:
    """A thread-safe LRU of pixel arrays bounded in bytes; each key is computed once even when
    several requests ask for it at the same time (the others wait for the first)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._data: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._making: dict[Hashable, threading.Lock] = {}

    def _lookup(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def get(self, key: Hashable, make: Callable[[], np.ndarray]) -> np.ndarray:
        value = self._lookup(key)
        if value is not None:
            return value
        with self._lock:
            key_lock = self._making.setdefault(key, threading.Lock())
        with key_lock:
            value = self._lookup(key)
            if value is not None:
                return value
            value = make()
            with self._lock:
                self._data[key] = value
                self.bytes += value.nbytes
                while self.bytes > self.max_bytes and len(self._data) > 1:
                    _, old = self._data.popitem(last=False)
                    self.bytes -= old.nbytes
                self._making.pop(key, None)
        return value

    def __len__(self) -> int:
        return len(self._data)


def marked_block(w: int, h: int) -> np.ndarray:
    """What an unreadable block looks like: red and white diagonal stripes."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((h, w, 3), np.uint8)
    out[:] = (255, 255, 255)
    out[((xx + yy) // 12) % 2 == 0] = (220, 30, 30)
    return out


def reduce2(pixels: np.ndarray) -> np.ndarray:
    """2x box average (a partial box at the right or bottom edge averages the pixels it has)."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).reduce(2))


class Pyramid:
    """DeepZoom tiles of an image whose level-0 blocks come from ``read_block(bx, by)`` (RGB
    uint8 of the box ``(bx*block, by*block)`` clipped to the image). ``name`` keys its blocks in
    the shared ``cache``."""

    def __init__(self, name: str, width: int, height: int, block: int,
                 read_block: Callable[[int, int], np.ndarray], cache: BlockCache, describe: str,
                 tile_size: int = 254, overlap: int = 1):
        self.name, self.block, self.cache, self.describe = name, block, cache, describe
        self.dz = DeepZoom(width, height, tile_size, overlap)
        self._read_block = read_block
        self.reads = 0  #: level-0 blocks read (decoded, for a store) so far
        self.unreadable: set[tuple[int, int]] = set()
        self._count_lock = threading.Lock()

    def _level0(self, bx: int, by: int) -> np.ndarray:
        x, y = bx * self.block, by * self.block
        w, h = min(self.block, self.dz.width - x), min(self.block, self.dz.height - y)
        with self._count_lock:
            self.reads += 1
        try:
            px = self._read_block(bx, by)
        except BlockUnreadable as e:
            with self._count_lock:
                self.unreadable.add((bx, by))
            log.error("%s: block (%d, %d) shown marked: %s", self.describe, bx, by, e)
            return marked_block(w, h)
        if px.shape != (h, w, 3):
            raise RuntimeError(f"block ({bx}, {by}) has shape {px.shape}, expected {(h, w, 3)}")
        return px

    def block_pixels(self, scale: int, bx: int, by: int) -> np.ndarray:
        """Block ``(bx, by)`` of the level halved ``scale`` times from level 0."""
        if scale == 0:
            return self.cache.get((self.name, 0, bx, by), lambda: self._level0(bx, by))
        return self.cache.get((self.name, scale, bx, by), lambda: self._reduced(scale, bx, by))

    def _blocks_across(self, scale: int) -> tuple[int, int]:
        w, h = self.dz.level_dimensions[self.dz.level_count - 1 - scale]
        return math.ceil(w / self.block), math.ceil(h / self.block)

    def _reduced(self, scale: int, bx: int, by: int) -> np.ndarray:
        nx, ny = self._blocks_across(scale - 1)
        cols = [c for c in (2 * bx, 2 * bx + 1) if c < nx]
        rows = [r for r in (2 * by, 2 * by + 1) if r < ny]
        above = np.concatenate([np.concatenate([self.block_pixels(scale - 1, c, r) for c in cols], axis=1)
                                for r in rows], axis=0)
        return reduce2(above)

    def region(self, scale: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB pixels of a box inside the level halved ``scale`` times."""
        b = self.block
        out = np.empty((h, w, 3), np.uint8)
        for by in range(y // b, (y + h - 1) // b + 1):
            for bx in range(x // b, (x + w - 1) // b + 1):
                px = self.block_pixels(scale, bx, by)
                x0, y0 = max(x, bx * b), max(y, by * b)
                x1, y1 = min(x + w, bx * b + px.shape[1]), min(y + h, by * b + px.shape[0])
                out[y0 - y : y1 - y, x0 - x : x1 - x] = px[y0 - by * b : y1 - by * b, x0 - bx * b : x1 - bx * b]
        return out

    def tile(self, level: int, col: int, row: int) -> np.ndarray:
        """RGB pixels of one DeepZoom tile (the caller checks ``dz.has_tile`` first)."""
        x, y, w, h = self.dz.tile_box(level, col, row)
        return self.region(self.dz.scale(level), x, y, w, h)
