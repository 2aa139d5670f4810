"""The tile grid over level 0, the halo windows that make tiling seam-free, and background
(glass) detection."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

#: the tile side for slides and images larger than one tile
TILE = 512
#: every registered model's tile sides are multiples of this (stride 16; a hyperprior's chunks:
#: multiples of 4 latents)
TILE_MULTIPLE = 64


def default_tile(width: int, height: int) -> int:
    """:data:`TILE`, or for an image that fits in one, its longer side rounded up to a multiple of
    :data:`TILE_MULTIPLE`: a 224-px patch coded in a 512-px tile pays for 5x its area in
    background latents around it, in a 256-px tile for 1.3x."""
    side = max(width, height)
    return TILE if side >= TILE else max(TILE_MULTIPLE, -(-side // TILE_MULTIPLE) * TILE_MULTIPLE)


@dataclass(frozen=True)
class TileGrid:
    """Level 0 cut into ``tile``-pixel tiles; the coded canvas is level 0 padded on the right and
    bottom to a multiple of the latent stride with the background colour."""

    width: int
    height: int
    tile: int = TILE
    stride: int = 16

    def __post_init__(self) -> None:
        if self.tile % self.stride or self.tile <= 0:
            raise ValueError(f"tile size {self.tile} must be a positive multiple of {self.stride}")

    @property
    def tiles_x(self) -> int:
        return math.ceil(self.width / self.tile)

    @property
    def tiles_y(self) -> int:
        return math.ceil(self.height / self.tile)

    @property
    def canvas(self) -> tuple[int, int]:
        s = self.stride
        return (math.ceil(self.width / s) * s, math.ceil(self.height / s) * s)

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(rows, columns) of the latent grid."""
        cw, ch = self.canvas
        return (ch // self.stride, cw // self.stride)

    @property
    def chunk(self) -> int:
        """Latents per tile side."""
        return self.tile // self.stride

    def __iter__(self):
        for ty in range(self.tiles_y):
            for tx in range(self.tiles_x):
                yield tx, ty

    def __len__(self) -> int:
        return self.tiles_x * self.tiles_y

    def reading_order(self, strip: int = 8) -> list[tuple[int, int]]:
        """Every tile, in vertical strips ``strip`` tiles wide, row by row within a strip: the
        order compress reads a slide in. A window's halo reaches into the slide's own tiles above
        and below; in row-major order across a wide slide those have left OpenSlide's tile cache
        before the next row needs them and are decoded again, within a strip they are still
        cached (``benchmarks/host_ceiling.py`` measures both orders)."""
        return sorted(self, key=lambda t: (t[0] // strip, t[1], t[0]))

    def tile_box(self, tx: int, ty: int) -> tuple[int, int, int, int]:
        """(x, y, w, h) of a tile on level 0, clipped to the image."""
        x, y = tx * self.tile, ty * self.tile
        return x, y, min(self.tile, self.width - x), min(self.tile, self.height - y)

    def encode_window(self, tx: int, ty: int, halo: int) -> tuple[int, int, int, int]:
        """Pixel window (x0, y0, x1, y1) to encode a tile with ``halo`` pixels of context, clipped
        to the canvas, so that convolution padding falls where it falls for the whole canvas."""
        cw, ch = self.canvas
        x, y = tx * self.tile, ty * self.tile
        return (max(x - halo, 0), max(y - halo, 0), min(x + self.tile + halo, cw), min(y + self.tile + halo, ch))

    def tile_latents(self, tx: int, ty: int) -> tuple[int, int, int, int]:
        """Latent box (lx0, ly0, lx1, ly1) of a tile."""
        rows, cols = self.latent_shape
        c = self.chunk
        return (tx * c, ty * c, min((tx + 1) * c, cols), min((ty + 1) * c, rows))

    def latent_window(self, x: int, y: int, w: int, h: int, halo: int) -> tuple[int, int, int, int]:
        """Latent box needed to decode the pixel box (x, y, w, h) with ``halo`` latents of context."""
        rows, cols = self.latent_shape
        s = self.stride
        return (max(x // s - halo, 0), max(y // s - halo, 0),
                min(-(-(x + w) // s) + halo, cols), min(-(-(y + h) // s) + halo, rows))

    def tiles_touching(self, x: int, y: int, w: int, h: int) -> list[tuple[int, int]]:
        t = self.tile
        tx0, ty0 = max(x // t, 0), max(y // t, 0)
        tx1, ty1 = min(-(-(x + w) // t), self.tiles_x), min(-(-(y + h) // t), self.tiles_y)
        return [(tx, ty) for ty in range(ty0, ty1) for tx in range(tx0, tx1)]


def measure_glass(thumbnail: np.ndarray, dark: bool = False) -> tuple[int, int, int]:
    """The colour of empty glass: median of the bright, grey pixels of a thumbnail (white if the
    slide has too few of them). ``dark`` (a fluorescence or dark-field image, whose empty areas
    are black): median of the near-black grey pixels (black if too few)."""
    px = thumbnail.reshape(-1, 3).astype(np.int16)
    grey = px.max(axis=1) - px.min(axis=1) < 18
    grey &= (px.max(axis=1) < 40) if dark else (px.min(axis=1) > 190)
    if grey.sum() < max(16, 0.01 * len(px)):
        return (0, 0, 0) if dark else (255, 255, 255)
    return tuple(int(v) for v in np.median(px[grey], axis=0))  # type: ignore[return-value]


def is_background(pixels: np.ndarray, glass: tuple[int, int, int], tolerance: int = 20,
                  max_fraction: float = 0.001) -> bool:
    """True when a tile is empty glass: at most ``max_fraction`` of its pixels differ from the
    glass colour by more than ``tolerance`` grey levels in any channel.

    Done by Pillow without holding the GIL, several times faster than in numpy (every tile of a
    slide is checked, on the reading threads; ``benchmarks/host_ceiling.py``): a per-channel
    table marks each value 0 (near the glass colour) or 255, and the grey conversion of the
    result is 0 exactly where all three channels are 0."""
    from PIL import Image

    rgb = np.ascontiguousarray(pixels, np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"is_background needs (h, w, 3) pixels, got {rgb.shape}")
    n = rgb.shape[0] * rgb.shape[1]
    if n == 0:
        return True
    marked = Image.fromarray(rgb).point(_far_from(tuple(int(g) for g in glass), int(tolerance)))
    differing = n - marked.convert("L").histogram()[0]
    return bool(differing / n <= max_fraction)


@functools.lru_cache(maxsize=64)
def _far_from(glass: tuple[int, ...], tolerance: int) -> list[int]:
    """Pillow ``point`` table (R, G, B): 255 where a value is more than ``tolerance`` from the glass."""
    return [255 if abs(v - g) > tolerance else 0 for g in glass for v in range(256)]


def tissue_mask(src, grid: TileGrid, thumb_size: int = 1024) -> np.ndarray:
    """Approximate per-tile tissue flags from a thumbnail, for sampling (training, benchmarks)."""
    thumb = src.thumbnail(thumb_size)
    glass = measure_glass(thumb)
    th, tw = thumb.shape[:2]
    mask = np.zeros((grid.tiles_y, grid.tiles_x), bool)
    for tx, ty in grid:
        x, y, w, h = grid.tile_box(tx, ty)
        sx, sy = tw / grid.width, th / grid.height
        x0, y0 = int(x * sx), int(y * sy)
        x1, y1 = max(int((x + w) * sx), x0 + 1), max(int((y + h) * sy), y0 + 1)
        mask[ty, tx] = not is_background(thumb[y0:y1, x0:x1], glass, max_fraction=0.05)
    return mask
