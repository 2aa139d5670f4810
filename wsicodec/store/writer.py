"""Writing a store: under its partial name, chunk by chunk with checkpoints of the tile map, and
resuming an interrupted run; moved into place when complete."""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from wsicodec.associated import EncodedImage
from wsicodec.codec import LATENT_DTYPE, HyperSymbols
from wsicodec.errors import StoreError
from wsicodec.store.chunks import LatentChunkFiles, chunk_crc_ok, chunk_file
from wsicodec.store.format import (
    FORMAT_NAME,
    TILE_CODED,
    TILE_GLASS,
    TILE_MISSING,
    json_roundtrip,
    latent_array_shape,
    read_store_meta,
    stored_chunk_shape,
)
from wsicodec.store.paths import ZARR_TMP, check_output_path, partial_path
from wsicodec.tiling import TileGrid

__all__ = ["ChunkWriters", "StoreWriter"]


class ChunkWriters(Protocol):
    """Codes and writes latent chunks into a store's files (see :class:`StoreWriter`)."""

    def write(self, tiles: Sequence[tuple[int, int]], chunks: Any) -> None: ...

    def close(self) -> None: ...


#: metadata keys that may differ between an interrupted run and the run that resumes it
_RUN_KEYS = ("created", "complete", "tiles", "associated", "encoder")


def _comparable(meta: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in meta.items() if k not in _RUN_KEYS}, sort_keys=True, default=str)


class StoreWriter:
    """Writes a store under its partial name; :meth:`finish` moves it into place.

    Progress is kept on disk: every latent chunk is written atomically with its CRC-32C, and the
    tile-state map is rewritten at least every ``checkpoint_seconds`` (it never claims a tile
    whose chunk is not yet written). ``resume=True`` continues an interrupted run from the partial
    store when it was written with the same metadata (same input, model, tile size, ...): tiles
    whose chunk passes its checksum and glass tiles are kept, everything else is coded again;
    :attr:`resumed` counts the tiles kept. The group's ``created`` time is the first run's.

    ``chunk_writers``: where the chunks are coded and written, made once the partial store
    exists: ``chunk_writers(path)`` returns an object with ``write(tiles, chunks)`` and ``close()``
    (e.g. :class:`wsicodec.writers.ChunkWriterProcesses`, to take the entropy coding off this
    process's GIL); ``None`` codes and writes them here (:class:`LatentChunkFiles`)."""

    #: seconds between checkpoints of the tile map, unless given
    CHECKPOINT_SECONDS = 1.0

    def __init__(self, final: Path, meta: dict[str, Any], grid: TileGrid, codec: Any, channels: int,
                 overwrite: bool = False, resume: bool = False, checkpoint_seconds: float | None = None,
                 chunk_writers: Callable[[Path], ChunkWriters] | None = None):
        self.final = Path(final)
        self.path = partial_path(self.final)
        check_output_path(self.final, overwrite)
        self.grid = grid
        self.codec = codec          # the latent array's zarr codec (wsicodec.codec.store_codec)
        self.channels = int(channels)
        self.dtype = np.dtype(LATENT_DTYPE[meta["model"]["entropy_model"]])
        self.version = int(meta["format_version"])
        self.array_shape = latent_array_shape(grid, self.channels, meta["model"]["entropy_model"], self.version)
        # a hyperprior codes every position of the chunk it is given: what lies beyond the canvas
        # is background (the array's fill value, 0, for a factorized model)
        hyper = meta["model"]["entropy_model"] != "factorized"
        self.fill = np.asarray(meta["background"]["latents"] if hyper else [0], np.int64).reshape(-1, 1, 1)
        self.meta = dict(meta)
        self.meta["complete"] = False
        self.resumed = 0
        self.checkpoint_seconds = self.CHECKPOINT_SECONDS if checkpoint_seconds is None else checkpoint_seconds
        self._last_checkpoint = time.monotonic()
        self._dirty = False
        self._lock = threading.Lock()  # write_tile may run on several threads
        self._workers: ChunkWriters | None = None
        if not (resume and self.path.is_dir() and self._reopen()):
            if self.path.exists():
                shutil.rmtree(self.path)
            self._create()
        if chunk_writers is not None:
            self._workers = chunk_writers(self.path)

    def _create(self) -> None:
        import zarr
        from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec

        grid, C = self.grid, self.channels
        c = grid.chunk
        self.group = zarr.open_group(str(self.path), mode="w", zarr_format=3)
        self.group.create_array(
            "latents", shape=self.array_shape, chunks=(C, c, c), dtype=self.dtype,
            fill_value=0, serializer=self.codec,
            compressors=[Crc32cCodec()], dimension_names=["channel", "y", "x"],
        )
        self.chunks = LatentChunkFiles(self.path)  # every coded tile has its chunk, even all-zero
        self.tiles = self.group.create_array(
            "tiles", shape=(grid.tiles_y, grid.tiles_x), chunks=(grid.tiles_y, grid.tiles_x), dtype="uint8",
            fill_value=TILE_MISSING, serializer=BytesCodec(), compressors=[ZstdCodec(level=3), Crc32cCodec()],
            dimension_names=["tile_y", "tile_x"],
        )
        self.state = np.zeros((grid.tiles_y, grid.tiles_x), np.uint8)
        self.group.attrs[FORMAT_NAME] = self.meta

    def _reopen(self) -> bool:
        """Take up an interrupted run; False when the partial store is unusable (start over).
        Raises :class:`StoreError` when it was written for another input or with other settings."""
        import zarr

        old = read_store_meta(self.path)
        if old is None:
            return False
        if old.get("format_version") != self.meta["format_version"]:
            raise StoreError(f"{self.path}: the unfinished store is of store format version "
                             f"{old.get('format_version')}, this wsicodec writes version "
                             f"{self.meta['format_version']} here; run without --resume to start over")
        if _comparable(old) != _comparable(json_roundtrip(self.meta)):
            raise StoreError(f"{self.path}: the unfinished store was written from another input or with other "
                             f"settings; run without --resume to start over")
        grid = self.grid
        try:
            self.group = zarr.open_group(str(self.path), mode="r+")
            lat = self.group["latents"]
            if (tuple(lat.shape) != self.array_shape or tuple(lat.chunks) != (self.channels, grid.chunk, grid.chunk)
                    or np.dtype(lat.dtype) != self.dtype
                    or lat.metadata.to_dict()["codecs"][0] != json_roundtrip(self.codec.to_dict())):
                return False
            self.chunks = LatentChunkFiles(self.path)
            self.tiles = self.group["tiles"]
            if tuple(self.tiles.shape) != (grid.tiles_y, grid.tiles_x):
                return False
        except Exception:
            return False
        try:
            state = np.asarray(self.tiles[...], np.uint8)
        except Exception:  # a damaged map: every tile with a good chunk is still kept below
            state = np.zeros((grid.tiles_y, grid.tiles_x), np.uint8)
        for f in self.path.rglob("*"):
            if f.is_file() and ZARR_TMP.search(f.name):
                f.unlink()
        self.state = np.zeros_like(state)
        for tx, ty in grid:
            f = chunk_file(self.path, tx, ty)
            if state[ty, tx] == TILE_GLASS:
                self.state[ty, tx] = TILE_GLASS
                if f.exists():
                    f.unlink()
            elif f.is_file() and chunk_crc_ok(f.read_bytes()):
                self.state[ty, tx] = TILE_CODED  # written after the last checkpoint counts too
            elif f.exists():
                f.unlink()
        self.resumed = int((self.state != TILE_MISSING).sum())
        self.meta["created"] = old.get("created", self.meta.get("created"))
        self.group.attrs[FORMAT_NAME] = self.meta
        self.checkpoint()
        return True

    def write_associated(self, images: dict[str, EncodedImage]) -> None:
        """Store each associated image's encoded bytes (format version 3): a one-chunk uint8
        array with its CRC-32C, the media type and size in the array's attributes."""
        from zarr.codecs import BytesCodec, Crc32cCodec

        for name, im in images.items():
            data = np.frombuffer(im.data, np.uint8)
            arr = self.group.create_array(
                f"associated/{name}", shape=data.shape, chunks=data.shape, dtype="uint8",
                serializer=BytesCodec(), compressors=[Crc32cCodec()], dimension_names=["byte"],
                attributes={"media_type": im.media_type, "width": im.width, "height": im.height},
                overwrite=True,
            )
            arr[...] = data

    def write_tile(self, tx: int, ty: int, latents: np.ndarray | HyperSymbols | None) -> None:
        """Store a tile's latents, or mark it as glass (``None``: nothing is stored)."""
        self.write_tiles([(tx, ty, latents)])

    def write_tiles(self, tiles: list[tuple[int, int, np.ndarray | HyperSymbols | None]]) -> None:
        """Store several tiles' ``(tx, ty, latents)`` (glass: ``latents`` None; a whole chunk's
        :class:`~wsicodec.codec.HyperSymbols` made on a GPU: coded as they are), in one frame per
        kind to one worker process when there are workers. Safe to call from several threads for
        different tiles (each tile is one chunk)."""
        coded = [(tx, ty, lat if isinstance(lat, HyperSymbols) else self._stored_chunk(tx, ty, lat))
                 for tx, ty, lat in tiles if lat is not None]
        if coded and self._workers is not None:
            # one frame per kind and chunk shape (edge chunks are smaller from version 5 on)
            frames: dict[tuple, list] = {}
            for tx, ty, lat in coded:
                kind = (HyperSymbols, lat.y.shape) if isinstance(lat, HyperSymbols) else (np.ndarray, lat.shape)
                frames.setdefault(kind, []).append((tx, ty, lat))
            for (kind, _), part in frames.items():
                lats = [lat for _, _, lat in part]
                self._workers.write([(tx, ty) for tx, ty, _ in part], np.stack(lats) if kind is np.ndarray else lats)
        else:
            for tx, ty, lat in coded:
                self.chunks.write(tx, ty, lat)
        with self._lock:
            for tx, ty, lat in tiles:
                self.state[ty, tx] = TILE_GLASS if lat is None else TILE_CODED
            self._dirty = True
            if time.monotonic() - self._last_checkpoint >= self.checkpoint_seconds:
                self._checkpoint()

    def _stored_chunk(self, tx: int, ty: int, latents: np.ndarray) -> np.ndarray:
        """A tile's latents as the chunk that is coded (:func:`stored_chunk_shape`): an edge
        tile's is filled beyond the canvas with the background latents (hyperprior) or the
        array's fill value, 0 (factorized), up to the whole chunk before version 5, from version
        5 up to the array's edge (a hyperprior's: the next multiple of 4 latents)."""
        lx0, ly0, lx1, ly1 = self.grid.tile_latents(tx, ty)
        if latents.shape != (self.channels, ly1 - ly0, lx1 - lx0):
            raise StoreError(f"{self.final}: tile ({tx}, {ty}) has latents of shape {latents.shape}, "
                             f"expected {(self.channels, ly1 - ly0, lx1 - lx0)}")
        shape = stored_chunk_shape(self.array_shape, self.grid.chunk, tx, ty, self.version)
        if latents.shape == shape:
            return latents
        out = np.broadcast_to(self.fill, shape).astype(latents.dtype)
        out[:, : ly1 - ly0, : lx1 - lx0] = latents
        return out

    def checkpoint(self) -> None:
        """Persist the tile-state map (only ever after the chunks it marks as coded)."""
        with self._lock:
            self._checkpoint()

    def _checkpoint(self) -> None:
        self.tiles[...] = self.state
        self._dirty = False
        self._last_checkpoint = time.monotonic()

    def close_workers(self) -> None:
        if self._workers is not None:
            self._workers.close()
            self._workers = None

    def finish(self, overwrite: bool = False) -> Path:
        self.close_workers()
        if (self.state == TILE_MISSING).any():
            raise StoreError(f"{self.final}: {(self.state == TILE_MISSING).sum()} tiles were not written")
        self.checkpoint()
        check_output_path(self.final, overwrite)
        self.meta["complete"] = True
        self.group.attrs[FORMAT_NAME] = self.meta
        _sync()
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old")
            if old.is_symlink() or old.is_file():
                old.unlink()
            elif old.exists():
                shutil.rmtree(old)
            os.replace(self.final, old)
            os.replace(self.path, self.final)
            shutil.rmtree(old)
        else:
            os.replace(self.path, self.final)
        return self.final

    def abort(self) -> None:
        self.close_workers()
        shutil.rmtree(self.path, ignore_errors=True)


def _sync() -> None:
    """Flush written files to disk before the store is moved into place."""
    if hasattr(os, "sync"):
        os.sync()

