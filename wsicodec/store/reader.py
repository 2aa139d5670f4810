"""Reading a store: :class:`WsiStore`, an OpenSlide-like view that decodes pixels on demand."""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from wsicodec import remote
from wsicodec.associated import MEDIA_TYPES, decode
from wsicodec.codec import CodecError
from wsicodec.errors import StoreError, first_line
from wsicodec.pyramid import box_reduce, pyramid_downsamples
from wsicodec.store.format import (
    ENCODED_ASSOCIATED,
    FORMAT_NAME,
    MAX_ASSOCIATED_PIXELS,
    TILE_CODED,
    TILE_GLASS,
    check_arrays,
    check_meta,
    entropy_model,
)
from wsicodec.store.paths import is_partial_name, partial_path
from wsicodec.tiling import TileGrid

__all__ = ["WsiStore", "associated_pixels", "open_store"]


def open_store(path: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> tuple[Any, Any, dict]:
    """Open the group of a complete store and check its metadata: ``(path, group, metadata)``,
    ``path`` a ``Path`` or, for an fsspec URL, a :class:`~wsicodec.remote.RemotePath` (read in
    place through zarr's ``FsspecStore``). Raises :class:`StoreError` naming the path and the
    problem: no such store, an unfinished one, not a store, damaged or unsupported metadata."""
    path = remote.as_path(path, storage_options)
    if not path.exists():
        hint = ""
        if partial_path(path).is_dir():
            hint = (f" (an unfinished one is at {partial_path(path)}; "
                    f"`wsicodec compress ... --resume` continues it)")
        raise StoreError(f"{path}: no such store{hint}")
    if is_partial_name(path):
        raise StoreError(f"{path}: incomplete store (an unfinished compression; "
                         f"`wsicodec compress ... --resume` continues it)")
    try:
        group = remote.open_group(path, mode="r")
        meta = group.attrs[FORMAT_NAME]
    except Exception as e:
        raise StoreError(f"{path}: not a wsicodec store ({first_line(e)})") from None
    problem = check_meta(meta)
    if problem:
        raise StoreError(f"{path}: {problem}")
    return path, group, dict(meta)


def associated_pixels(group: Any, meta: dict[str, Any], name: str) -> np.ndarray:
    """The ``(h, w, 3)`` uint8 pixels of associated image ``name`` of an opened store: encoded
    bytes from format version 3 on (:mod:`wsicodec.associated`), raw pixels before. Raises
    ``ValueError`` (or the array's own error) when it is missing, damaged or too large."""
    arr = group[f"associated/{name}"]
    if meta["format_version"] >= ENCODED_ASSOCIATED:
        attrs = dict(arr.attrs)
        w, h = attrs.get("width"), attrs.get("height")
        if len(arr.shape) != 1 or np.dtype(arr.dtype) != np.uint8 or attrs.get("media_type") not in MEDIA_TYPES:
            raise ValueError(f"shape {arr.shape} / dtype {arr.dtype} / media type {attrs.get('media_type')!r}, "
                             f"expected encoded bytes of {', '.join(MEDIA_TYPES)}")
        if not (isinstance(w, int) and isinstance(h, int) and 0 < w * h <= MAX_ASSOCIATED_PIXELS):
            raise ValueError(f"size {w}x{h} is missing or too large")
        pixels = decode(attrs["media_type"], np.asarray(arr[...]).tobytes())
        if pixels.shape[:2] != (h, w):
            raise ValueError(f"decodes to {pixels.shape[1]}x{pixels.shape[0]}, the store says {w}x{h}")
        return pixels
    if len(arr.shape) != 3 or arr.shape[2] != 3 or np.dtype(arr.dtype) != np.uint8:
        raise ValueError(f"shape {arr.shape} / dtype {arr.dtype}, expected (h, w, 3) uint8")
    if arr.shape[0] * arr.shape[1] > MAX_ASSOCIATED_PIXELS:
        raise ValueError(f"size {arr.shape[1]}x{arr.shape[0]} is too large")
    return np.asarray(arr[...])


class WsiStore:
    """An OpenSlide-like view of a store: ``dimensions``, ``level_count``, ``level_dimensions``,
    ``level_downsamples``, ``properties``, ``associated_images``, ``read_region``,
    ``get_thumbnail``; a context manager. Pixels are decoded on demand, only for the tiles asked
    for. ``precision``: ``"auto"`` runs the synthesis in half precision where that is native
    (fp16 on CUDA, bf16 on a CPU with AVX512-BF16 / AMX: faster, pixels within 2 levels of
    fp32's; docs/performance.md); ``"fp32"`` never does."""

    def __init__(self, path: str | os.PathLike, device: str = "auto", batch_size: int = 8,
                 model_dir: Path | None = None, storage_options: dict[str, Any] | None = None,
                 precision: str = "auto"):
        if precision not in ("auto", "fp32"):
            raise StoreError(f"unknown decoding precision {precision!r} (auto or fp32)")
        # auto: half-precision synthesis where it is native (fp16 on CUDA, bf16 on such CPUs)
        self._half_synthesis = None if precision == "auto" else False

        self.path, self.group, meta = open_store(path, storage_options)
        self.meta = meta
        lv = meta["level0"]
        self.grid = TileGrid(int(lv["width"]), int(lv["height"]), int(meta["tile_size"]), int(meta["stride"]))
        try:
            self.latents = self.group["latents"]
            tiles = self.group["tiles"]
        except Exception as e:
            raise StoreError(f"{self.path}: damaged store layout ({first_line(e)})") from None
        problem = check_arrays(self.latents, tiles, self.grid, len(meta["background"]["latents"]),
                               entropy_model(meta), meta["format_version"])
        if problem:
            raise StoreError(f"{self.path}: damaged store layout ({problem})")
        try:
            self.tile_state = np.asarray(tiles[...])
        except Exception as e:
            raise StoreError(f"{self.path}: damaged tile map ({first_line(e)})") from None
        self.glass = tuple(int(v) for v in meta["background"]["colour"])
        self.glass_latents = np.asarray(meta["background"]["latents"], np.int32).reshape(-1, 1, 1)
        self._device, self._batch_size, self._model_dir = device, batch_size, model_dir
        self._transforms = None
        self.level_downsamples = tuple(float(d) for d in pyramid_downsamples(*self.dimensions))

    # -- OpenSlide-like properties -----------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        return (self.grid.width, self.grid.height)

    @property
    def level_count(self) -> int:
        return len(self.level_downsamples)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        w, h = self.dimensions
        return tuple((math.ceil(w / d), math.ceil(h / d)) for d in self.level_downsamples)

    @property
    def properties(self) -> dict[str, str]:
        props = dict(self.meta.get("properties", {}))
        mpp = self.meta.get("mpp") or [None, None]
        if mpp[0]:
            props["openslide.mpp-x"] = str(mpp[0])
        if mpp[1]:
            props["openslide.mpp-y"] = str(mpp[1])
        if self.meta.get("objective_power"):
            props["openslide.objective-power"] = str(self.meta["objective_power"])
        props["wsicodec.model"] = self.meta["model"]["name"]
        props["wsicodec.model-sha256"] = self.meta["model"]["sha256"]
        props["wsicodec.format-version"] = str(self.meta["format_version"])
        if "operating_point" in self.meta:
            point = self.meta["operating_point"]
            props["wsicodec.operating-point"] = f"{point['index'] + point.get('t', 0):g}"
        return props

    @property
    def associated_images(self) -> dict[str, Any]:
        """The label, macro, ... as RGB PIL images (a thumbnail: :meth:`get_thumbnail`)."""
        from PIL import Image

        out = {}
        for name in self.meta.get("associated", []):
            try:
                out[name] = Image.fromarray(associated_pixels(self.group, self.meta, name))
            except Exception as e:
                raise StoreError(f"{self.path}: damaged associated image {name!r} ({first_line(e)})") from None
        return out

    def get_best_level_for_downsample(self, downsample: float) -> int:
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample:
                best = i
        return best

    # -- decoding ---------------------------------------------------------------------------
    def load_model(self) -> None:
        """Load the store's model and check it (name and sha256 as in the store); raises
        :class:`~wsicodec.models.ModelError` when it is missing or differs. Done on first use."""
        _ = self.transforms

    @property
    def transforms(self):
        """The store's model's transforms (:class:`~wsicodec.engine.Transforms`), loaded on first use."""
        if self._transforms is None:
            from wsicodec.engine import Transforms
            from wsicodec.models import load_model

            m = self.meta["model"]
            model, card = load_model(m["name"], self._model_dir, expect_sha256=m["sha256"])
            if card.spec.entropy_model != "factorized":  # the latents' codec needs this (verified) model
                from wsicodec.codec import hyper_entropy_model

                hyper_entropy_model(m, model)
            self._transforms = Transforms(model, card, self._device, self._batch_size,
                                          half_synthesis=self._half_synthesis, rate=self._rate_point(model, card))
        return self._transforms

    def _rate_point(self, model: Any, card: Any) -> Any:
        """A variable-rate model's operating point as the store records it (None for a model of
        one rate); the recorded point must be one this model has."""
        if not card.spec.variable_rate:
            return None
        from wsicodec.models.rates import RateError, point_from_meta

        if "operating_point" not in self.meta:
            raise StoreError(f"{self.path}: model {card.name} has several operating points, but the store "
                             f"(format version {self.meta['format_version']}) records none")
        try:
            return point_from_meta(model, self.meta.get("operating_point"))
        except RateError as e:
            raise StoreError(f"{self.path}: {e}") from None

    def fetch_latents(self, lx0: int, ly0: int, lx1: int, ly1: int) -> np.ndarray:
        """Latents of a box with glass tiles filled in; missing tiles are an error."""
        if self.meta["model"].get("entropy_model", "factorized") != "factorized":
            self.load_model()  # a hyperprior's latents decode with the store's model (loaded and verified here)
        box = f"latents[:, {ly0}:{ly1}, {lx0}:{lx1}]"
        try:
            q = np.asarray(self.latents[:, ly0:ly1, lx0:lx1]).astype(np.int32)
        except CodecError as e:
            raise StoreError(f"{self.path}: corrupt latent chunk in {box} ({e})") from None
        except Exception as e:
            raise StoreError(f"{self.path}: cannot read {box} ({first_line(e)})") from None
        c = self.grid.chunk
        for ty in range(ly0 // c, -(-ly1 // c)):
            for tx in range(lx0 // c, -(-lx1 // c)):
                st = self.tile_state[ty, tx]
                if st == TILE_GLASS:
                    bx0, by0, bx1, by1 = self.grid.tile_latents(tx, ty)
                    bx0, by0, bx1, by1 = max(bx0, lx0), max(by0, ly0), min(bx1, lx1), min(by1, ly1)
                    q[:, by0 - ly0 : by1 - ly0, bx0 - lx0 : bx1 - lx0] = self.glass_latents
                elif st != TILE_CODED:
                    raise StoreError(f"{self.path}: tile ({tx}, {ty}) is missing")
        return q

    def decode_tiles(self, tiles: list[tuple[int, int]], group: int = 16) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(tx, ty, rgb)`` for tiles (row-major order advised), batched, seam-free. The
        latents of the next groups are entropy-decoded on a thread while the network runs."""
        from wsicodec.streaming import prefetch

        grid, transforms = self.grid, self.transforms
        halo, s = transforms.spec.decode_halo, grid.stride

        def fetch(part):
            boxes = [grid.tile_box(tx, ty) for tx, ty in part]
            if all(self.tile_state[ty, tx] == TILE_GLASS for tx, ty in part):
                return boxes, None, None
            x0 = min(b[0] for b in boxes)
            y0 = min(b[1] for b in boxes)
            x1 = max(b[0] + b[2] for b in boxes)
            y1 = max(b[1] + b[3] for b in boxes)
            window = grid.latent_window(x0, y0, x1 - x0, y1 - y0, halo)
            return boxes, window, self.fetch_latents(*window)

        parts = [tiles[i : i + group] for i in range(0, len(tiles), group)]
        for part, (boxes, window, q) in prefetch(parts, fetch, depth=2):
            windows: dict[tuple, list] = {}
            for (tx, ty), (x, y, w, h) in zip(part, boxes, strict=True):
                if self.tile_state[ty, tx] == TILE_GLASS:
                    continue
                lx0, ly0, lx1, ly1 = grid.latent_window(x, y, w, h, halo)
                win = q[:, ly0 - window[1] : ly1 - window[1], lx0 - window[0] : lx1 - window[0]]
                windows.setdefault(win.shape, []).append((tx, ty, lx0, ly0, win))
            decoded: dict[tuple[int, int], np.ndarray] = {}
            for items in windows.values():
                for b in range(0, len(items), transforms.batch_size):
                    batch = items[b : b + transforms.batch_size]
                    px = transforms.synthesis(np.stack([it[4] for it in batch]))
                    for (tx, ty, lx0, ly0, _), img in zip(batch, px, strict=True):
                        x, y, w, h = grid.tile_box(tx, ty)
                        ox, oy = x - lx0 * s, y - ly0 * s
                        decoded[(tx, ty)] = img[oy : oy + h, ox : ox + w]
            for (tx, ty), (_, _, w, h) in zip(part, boxes, strict=True):
                if (tx, ty) in decoded:
                    yield tx, ty, decoded[(tx, ty)]
                else:
                    tile = np.empty((h, w, 3), np.uint8)
                    tile[:] = self.glass
                    yield tx, ty, tile

    def read_level0(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Opaque RGB of a level-0 box (glass colour outside the slide)."""
        out = np.empty((h, w, 3), np.uint8)
        out[:] = self.glass
        tiles = self.grid.tiles_touching(x, y, w, h)
        for tx, ty, px in self.decode_tiles(tiles):
            bx, by, bw, bh = self.grid.tile_box(tx, ty)
            ix0, iy0 = max(bx, x), max(by, y)
            ix1, iy1 = min(bx + bw, x + w), min(by + bh, y + h)
            if ix1 > ix0 and iy1 > iy0:
                out[iy0 - y : iy1 - y, ix0 - x : ix1 - x] = px[iy0 - by : iy1 - by, ix0 - bx : ix1 - bx]
        return out

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]):
        """Like ``OpenSlide.read_region``: RGBA PIL image; ``location`` in level-0 pixels; pixels
        outside the slide are transparent. A level below 0 is level 0 box-averaged (decoded in
        bands, so a whole low level takes the memory of one band of tiles, but the time of
        decoding the slide)."""
        from PIL import Image

        if not 0 <= level < self.level_count:
            raise StoreError(f"{self.path}: no level {level} (level_count {self.level_count})")
        w, h = (int(v) for v in size)
        if w <= 0 or h <= 0:
            raise StoreError(f"{self.path}: region size must be positive, got {size}")
        d = int(self.level_downsamples[level])
        x, y = int(location[0]), int(location[1])
        if d == 1:
            rgb = self.read_level0(x, y, w, h)
        else:  # level 0 in bands of about a tile row, each box-averaged: memory of one band
            rgb = np.empty((h, w, 3), np.uint8)
            rows = max(1, self.grid.tile // d)
            for r in range(0, h, rows):
                n = min(rows, h - r)
                rgb[r : r + n] = box_reduce(self.read_level0(x, y + r * d, w * d, n * d), d)
        alpha = np.zeros((h, w, 1), np.uint8)
        W, H = self.dimensions
        ax0, ay0 = max(0, -(-(0 - x) // d)), max(0, -(-(0 - y) // d))
        ax1, ay1 = min(w, -(-(W - x) // d)), min(h, -(-(H - y) // d))
        if ax1 > ax0 and ay1 > ay0:
            alpha[ay0:ay1, ax0:ax1] = 255
        rgba = np.concatenate([rgb, alpha], axis=2)
        rgba[alpha[:, :, 0] == 0] = 0
        return Image.fromarray(rgba, "RGBA")

    def get_thumbnail(self, size: tuple[int, int]):
        """RGB PIL thumbnail fitting in ``size``, from the smallest pyramid level."""
        from PIL import Image

        level = self.level_count - 1
        lw, lh = self.level_dimensions[level]
        im = self.read_region((0, 0), level, (lw, lh)).convert("RGB")
        im.thumbnail(size, Image.Resampling.LANCZOS)
        return im

    def close(self) -> None:
        self._transforms = None

    def __enter__(self) -> WsiStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WsiStore({str(self.path)!r})"

