"""Where a viewer's pixels come from: the store, decoded tile by tile through :class:`WsiStore`,
and its original, read through the input layer (:func:`wsicodec.slide.open_input`)."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from wsicodec.errors import first_line
from wsicodec.store import TILE_GLASS, StoreError, WsiStore
from wsicodec.view.pyramid import BlockCache, BlockUnreadable, Pyramid

__all__ = ["glass_tiles", "source_pyramid", "store_pyramid"]


def store_pyramid(store: WsiStore, cache: BlockCache, tile_size: int, overlap: int) -> Pyramid:
    """DeepZoom tiles of a store; its level-0 blocks are the store's own tiles, each decoded
    once (one decode at a time: the network already uses every core)."""
    decode_lock = threading.Lock()

    def decode(tx: int, ty: int) -> np.ndarray:
        with decode_lock:
            try:
                (_, _, rgb), = store.decode_tiles([(tx, ty)])
            except StoreError as e:
                raise BlockUnreadable(first_line(e)) from None
        return rgb

    W, H = store.dimensions
    return Pyramid("store", W, H, store.grid.tile, decode, cache, describe=str(store.path),
                   tile_size=tile_size, overlap=overlap)


def source_pyramid(source, block: int, cache: BlockCache, tile_size: int, overlap: int) -> Pyramid:
    """DeepZoom tiles of an opened input (:class:`wsicodec.slide.SlideSource`), in blocks of the
    same size as the store's tiles so that both sides are made the same way."""
    from wsicodec.slide import SlideError

    W, H = source.dimensions

    def read(bx: int, by: int) -> np.ndarray:
        x, y = bx * block, by * block
        try:
            return source.read_rgb(x, y, min(block, W - x), min(block, H - y))
        except SlideError as e:
            raise BlockUnreadable(first_line(e)) from None

    return Pyramid("original", W, H, block, read, cache, describe=str(Path(source.path)),
                   tile_size=tile_size, overlap=overlap)


def glass_tiles(store: WsiStore) -> list[list[int]]:
    """``[tx, ty]`` of every glass (not coded) tile of a store."""
    ys, xs = np.nonzero(store.tile_state == TILE_GLASS)
    return [[int(x), int(y)] for x, y in zip(xs, ys, strict=True)]
