"""The store: a Zarr v3 group of entropy-coded latents plus everything needed to give the slide
back (see ``docs/format.md``), its writer, and :class:`WsiStore`, an OpenSlide-like reader.

Layout (format 1)::

    <name>.zarr/
      zarr.json            group; attributes["wsicodec"] holds the metadata below
      latents/             int16 (M, rows, cols), one chunk (M, tile/16, tile/16) per tile,
                           codecs: wsicodec.latents (entropy coder + frozen tables), crc32c
      tiles/               uint8 (tiles_y, tiles_x): 0 = not written, 1 = coded, 2 = glass
      associated/<name>/   uint8 (h, w, 3) label / macro / thumbnail, zstd (lossless) + crc32c
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from wsicodec import __version__
from wsicodec.codec import CodecError, EntropyTables, ZarrLatentCodec
from wsicodec.tiling import TileGrid

FORMAT_NAME = "wsicodec"
FORMAT_VERSION = 1
TILE_MISSING, TILE_CODED, TILE_GLASS = 0, 1, 2


class StoreError(Exception):
    """A store that cannot be read or written; the message names the path and the problem."""


def _zarr():
    import zarr

    return zarr


def partial_path(final: Path) -> Path:
    """Where a store is written until it is complete."""
    return final.with_name(f".{final.name}.partial")


def pyramid_downsamples(width: int, height: int, factor: int = 4, smallest: int = 1024) -> list[int]:
    """Downsample factors 1, f, f², … until the longer side is at most ``smallest``."""
    ds = [1]
    while max(width, height) / ds[-1] > smallest:
        ds.append(ds[-1] * factor)
    return ds


class StoreWriter:
    """Writes a store under its partial name; :meth:`finish` moves it into place."""

    def __init__(self, final: Path, meta: dict[str, Any], grid: TileGrid, tables: EntropyTables,
                 overwrite: bool = False):
        zarr = _zarr()
        from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec

        self.final = Path(final)
        self.path = partial_path(self.final)
        if self.final.exists() and not overwrite:
            raise StoreError(f"{self.final}: already exists (use --overwrite to replace it)")
        if self.path.exists():
            shutil.rmtree(self.path)
        self.grid = grid
        rows, cols = grid.latent_shape
        c = grid.chunk
        self.group = zarr.open_group(str(self.path), mode="w", zarr_format=3)
        self.latents = self.group.create_array(
            "latents", shape=(tables.channels, rows, cols), chunks=(tables.channels, c, c), dtype="int16",
            fill_value=0, serializer=ZarrLatentCodec(tables=tables.to_config()),
            compressors=[Crc32cCodec()], dimension_names=["channel", "y", "x"],
            config={"write_empty_chunks": True},  # every coded tile has its chunk, even all-zero
        )
        self.tiles = self.group.create_array(
            "tiles", shape=(grid.tiles_y, grid.tiles_x), chunks=(grid.tiles_y, grid.tiles_x), dtype="uint8",
            fill_value=TILE_MISSING, serializer=BytesCodec(), compressors=[ZstdCodec(level=3), Crc32cCodec()],
            dimension_names=["tile_y", "tile_x"],
        )
        self.state = np.zeros((grid.tiles_y, grid.tiles_x), np.uint8)
        self.meta = dict(meta)
        self.meta["complete"] = False
        self.group.attrs[FORMAT_NAME] = self.meta

    def write_associated(self, images: dict[str, np.ndarray]) -> None:
        from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec

        for name, im in images.items():
            arr = self.group.create_array(
                f"associated/{name}", shape=im.shape, chunks=im.shape, dtype="uint8",
                serializer=BytesCodec(), compressors=[ZstdCodec(level=9), Crc32cCodec()],
                dimension_names=["y", "x", "rgb"],
            )
            arr[...] = im

    def write_tile(self, tx: int, ty: int, latents: np.ndarray | None) -> None:
        """Store a tile's latents, or mark it as glass (``None``: nothing is stored)."""
        if latents is None:
            self.state[ty, tx] = TILE_GLASS
            return
        lx0, ly0, lx1, ly1 = self.grid.tile_latents(tx, ty)
        if np.abs(latents).max(initial=0) > 32767:
            raise StoreError(f"{self.final}: latent values overflow int16 at tile ({tx}, {ty})")
        self.latents[:, ly0:ly1, lx0:lx1] = latents.astype(np.int16)
        self.state[ty, tx] = TILE_CODED

    def finish(self, overwrite: bool = False) -> Path:
        if (self.state == TILE_MISSING).any():
            raise StoreError(f"{self.final}: {(self.state == TILE_MISSING).sum()} tiles were not written")
        self.tiles[...] = self.state
        self.meta["complete"] = True
        self.group.attrs[FORMAT_NAME] = self.meta
        if self.final.exists():
            if not overwrite:
                raise StoreError(f"{self.final}: already exists (use --overwrite to replace it)")
            old = self.final.with_name(f".{self.final.name}.old")
            if old.exists():
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            os.replace(self.final, old)
            os.replace(self.path, self.final)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(self.path, self.final)
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def store_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


class WsiStore:
    """An OpenSlide-like view of a store: ``dimensions``, ``level_count``, ``level_dimensions``,
    ``level_downsamples``, ``properties``, ``associated_images``, ``read_region``,
    ``get_thumbnail``; a context manager. Pixels are decoded on demand, only for the tiles asked
    for."""

    def __init__(self, path: str | os.PathLike, device: str = "auto", batch_size: int = 4,
                 model_dir: Path | None = None):
        zarr = _zarr()
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"{self.path}: no such store")
        try:
            self.group = zarr.open_group(str(self.path), mode="r")
            meta = dict(self.group.attrs[FORMAT_NAME])
        except Exception as e:
            raise StoreError(f"{self.path}: not a wsicodec store ({_first_line(e)})") from None
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreError(f"{self.path}: store format version {version!r} is not supported "
                             f"(this wsicodec reads version {FORMAT_VERSION})")
        if not meta.get("complete"):
            raise StoreError(f"{self.path}: incomplete store (compression did not finish)")
        self.meta = meta
        try:
            self.latents = self.group["latents"]
            self.tile_state = np.asarray(self.group["tiles"][...])
            lv = meta["level0"]
            self.grid = TileGrid(int(lv["width"]), int(lv["height"]), int(meta["tile_size"]), int(meta["stride"]))
        except Exception as e:
            raise StoreError(f"{self.path}: damaged store layout ({_first_line(e)})") from None
        if self.tile_state.shape != (self.grid.tiles_y, self.grid.tiles_x):
            raise StoreError(f"{self.path}: tile map shape does not match the level-0 size")
        self.glass = tuple(int(v) for v in meta["background"]["colour"])
        self.glass_latents = np.asarray(meta["background"]["latents"], np.int32).reshape(-1, 1, 1)
        self._device, self._batch_size, self._model_dir = device, batch_size, model_dir
        self._coder = None
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
        props["wsicodec.format-version"] = str(FORMAT_VERSION)
        return props

    @property
    def associated_images(self) -> dict[str, Any]:
        from PIL import Image

        out = {}
        for name in self.meta.get("associated", []):
            out[name] = Image.fromarray(np.asarray(self.group[f"associated/{name}"][...]))
        return out

    def get_best_level_for_downsample(self, downsample: float) -> int:
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample:
                best = i
        return best

    # -- decoding ---------------------------------------------------------------------------
    @property
    def coder(self):
        if self._coder is None:
            from wsicodec.engine import LatentCoder
            from wsicodec.models import load_model

            m = self.meta["model"]
            model, card = load_model(m["name"], self._model_dir, expect_sha256=m["sha256"])
            self._coder = LatentCoder(model, card, self._device, self._batch_size)
        return self._coder

    def fetch_latents(self, lx0: int, ly0: int, lx1: int, ly1: int) -> np.ndarray:
        """Latents of a box with glass tiles filled in; missing tiles are an error."""
        try:
            q = np.asarray(self.latents[:, ly0:ly1, lx0:lx1]).astype(np.int32)
        except CodecError as e:
            raise StoreError(f"{self.path}: corrupt latent chunk in latents[:, {ly0}:{ly1}, {lx0}:{lx1}] ({e})") from None
        except Exception as e:
            raise StoreError(f"{self.path}: cannot read latents[:, {ly0}:{ly1}, {lx0}:{lx1}] ({_first_line(e)})") from None
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
        """Yield ``(tx, ty, rgb)`` for tiles (row-major order advised), batched, seam-free."""
        grid, coder = self.grid, self.coder
        halo, s = coder.spec.decode_halo, grid.stride
        for start in range(0, len(tiles), group):
            part = tiles[start : start + group]
            boxes = [grid.tile_box(tx, ty) for tx, ty in part]
            x0 = min(b[0] for b in boxes)
            y0 = min(b[1] for b in boxes)
            x1 = max(b[0] + b[2] for b in boxes)
            y1 = max(b[1] + b[3] for b in boxes)
            wx0, wy0, wx1, wy1 = grid.latent_window(x0, y0, x1 - x0, y1 - y0, halo)
            need_net = [t for t in part if self.tile_state[t[1], t[0]] != TILE_GLASS]
            q = self.fetch_latents(wx0, wy0, wx1, wy1) if need_net else None
            windows: dict[tuple, list] = {}
            for (tx, ty), (x, y, w, h) in zip(part, boxes):
                if self.tile_state[ty, tx] == TILE_GLASS:
                    continue
                lx0, ly0, lx1, ly1 = grid.latent_window(x, y, w, h, halo)
                win = q[:, ly0 - wy0 : ly1 - wy0, lx0 - wx0 : lx1 - wx0]
                windows.setdefault(win.shape, []).append((tx, ty, lx0, ly0, win))
            decoded: dict[tuple[int, int], np.ndarray] = {}
            for items in windows.values():
                for b in range(0, len(items), coder.batch_size):
                    batch = items[b : b + coder.batch_size]
                    px = coder.synthesis(np.stack([it[4] for it in batch]))
                    for (tx, ty, lx0, ly0, _), img in zip(batch, px):
                        x, y, w, h = grid.tile_box(tx, ty)
                        ox, oy = x - lx0 * s, y - ly0 * s
                        decoded[(tx, ty)] = img[oy : oy + h, ox : ox + w]
            for (tx, ty), (x, y, w, h) in zip(part, boxes):
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
        outside the slide are transparent."""
        from PIL import Image

        if not 0 <= level < self.level_count:
            raise StoreError(f"{self.path}: no level {level} (level_count {self.level_count})")
        w, h = (int(v) for v in size)
        if w <= 0 or h <= 0:
            raise StoreError(f"{self.path}: region size must be positive, got {size}")
        d = int(self.level_downsamples[level])
        x, y = int(location[0]), int(location[1])
        rgb = self.read_level0(x, y, w * d, h * d)
        if d > 1:
            rgb = rgb.reshape(h, d, w, d, 3).mean(axis=(1, 3)).round().astype(np.uint8)
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
        self._coder = None

    def __enter__(self) -> "WsiStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WsiStore({str(self.path)!r})"


def open_slide(path: str | os.PathLike, **kwargs: Any) -> WsiStore:
    """Open a wsicodec store like ``openslide.OpenSlide``."""
    return WsiStore(path, **kwargs)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
