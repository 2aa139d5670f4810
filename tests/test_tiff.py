"""The pyramidal TIFF writer: every level is the area average of level 0, written band by band
from files on disk (memory does not grow with the slide)."""
from __future__ import annotations

import numpy as np
import tifffile

from wsicodec.store import box_reduce
from wsicodec.tiff import write_pyramid
from wsicodec.tiling import TileGrid


class _FakeStore:
    """Just what write_pyramid reads from a WsiStore: a synthetic level 0."""

    def __init__(self, w: int, h: int):
        yy, xx = np.mgrid[0:h, 0:w]
        self.image = np.stack([(xx * 7 + yy) % 251, (yy * 3) % 256, (xx ^ yy) % 256], axis=-1).astype(np.uint8)
        self.grid = TileGrid(w, h, 512, 16)
        self.meta = {"mpp": [0.25, 0.25], "wsicodec_version": "test"}
        self.path = "fake.zarr"

    def read_level0(self, x, y, w, h):
        return self.image[y : y + h, x : x + w]


def test_every_level_is_the_area_average_of_level_0(tmp_path):
    store = _FakeStore(4700, 4133)  # 3 levels (4700, 1175, 294 px wide), ragged edges
    out = tmp_path / "p.tif"
    write_pyramid(store, out, (0, 0, 4700, 4133), tile=256, compression="none")
    with tifffile.TiffFile(out) as tif:
        pages = [p.asarray() for p in tif.pages]
    assert [p.shape[:2] for p in pages] == [(4133, 4700), (1034, 1175), (259, 294)]
    assert np.array_equal(pages[0], store.image)
    level1 = box_reduce(store.image, 4)
    assert np.array_equal(pages[1], level1)
    assert np.array_equal(pages[2], box_reduce(level1, 4))
    assert [p.name for p in tmp_path.iterdir()] == ["p.tif"]  # no temporary level files left


def test_downsample_is_the_rounded_box_mean_with_partial_edge_boxes():
    rng = np.random.default_rng(0)
    band = rng.integers(0, 256, (10, 23, 3), dtype=np.uint8)  # 10 x 23: partial boxes at both edges
    got = box_reduce(band, 4)
    assert got.shape == (3, 6, 3) and got.dtype == np.uint8
    ref = np.empty(got.shape, np.int64)
    for i in range(3):
        for j in range(6):
            box = band[4 * i : 4 * i + 4, 4 * j : 4 * j + 4].astype(np.int64)
            n = box.shape[0] * box.shape[1]
            ref[i, j] = (box.sum(axis=(0, 1)) * 2 + n) // (2 * n)  # mean, halves rounded up
    assert np.abs(got.astype(np.int64) - ref).max() <= 1
    assert np.array_equal(got[:2, :5], ref[:2, :5])  # full boxes: exact
