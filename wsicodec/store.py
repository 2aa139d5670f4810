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
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from wsicodec.codec import LATENT_DTYPE, CodecError, HyperSymbols
from wsicodec.errors import first_line as _first_line
from wsicodec.tiling import TileGrid

FORMAT_NAME = "wsicodec"
FORMAT_VERSION = 2          #: the newest version this wsicodec reads and writes
#: a store takes the lowest version that describes it: 1 = factorized entropy model only
READ_VERSIONS = (1, 2)


def format_version(entropy_model: str) -> int:
    """The format version of a store of a model with this entropy model kind."""
    return 1 if entropy_model == "factorized" else FORMAT_VERSION


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


def box_reduce(pixels: np.ndarray, f: int) -> np.ndarray:
    """Area-average uint8 RGB by ``f`` (Pillow's box ``reduce``: integer sums, rounded; a partial
    box at the right or bottom edge averages the pixels it has)."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).reduce(f))


def is_partial_name(path: Path) -> bool:
    """Whether ``path`` is named like an unfinished store (``.<name>.partial``)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(".partial") and len(name) > len("..partial")


def chunk_file(root: Path, tx: int, ty: int) -> Path:
    """The file of tile ``(tx, ty)``'s latent chunk (zarr v3 default chunk keys, ``/``)."""
    return Path(root) / "latents" / "c" / "0" / str(ty) / str(tx)


def chunk_crc_ok(data: bytes) -> bool:
    """Whether a stored chunk ends with the CRC-32C of the rest (zarr's ``crc32c`` codec)."""
    import google_crc32c

    return len(data) > 4 and int(google_crc32c.value(data[:-4])).to_bytes(4, "little") == data[-4:]


def read_store_meta(path: Path) -> dict[str, Any] | None:
    """The ``wsicodec`` attributes of the group at ``path``, read straight from ``zarr.json``
    (``None`` if there is no readable group there)."""
    import json

    try:
        doc = json.loads((Path(path) / "zarr.json").read_text())
        meta = doc["attributes"][FORMAT_NAME]
        return meta if isinstance(meta, dict) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


#: zarr's own temporary files (``<key>.<uuid hex>.partial``), left behind when a writer is killed
_ZARR_TMP = re.compile(r"\.[0-9a-f]{32}\.partial$")

#: metadata keys that may differ between an interrupted run and the run that resumes it
_RUN_KEYS = ("created", "complete", "tiles", "associated", "encoder")


def _comparable(meta: dict[str, Any]) -> str:
    import json

    return json.dumps({k: v for k, v in meta.items() if k not in _RUN_KEYS}, sort_keys=True, default=str)


def check_output_path(final: Path, overwrite: bool) -> None:
    """Refuse output paths that would write through a symbolic link, or replace something that is
    not a wsicodec store."""
    final = Path(final)
    for p in (final, partial_path(final)):
        if p.is_symlink():
            raise StoreError(f"{p}: is a symbolic link; refusing to write through it (give the real path)")
    if final.exists():
        if not overwrite:
            raise StoreError(f"{final}: already exists (use --overwrite to replace it)")
        if read_store_meta(final) is None or not final.is_dir():
            raise StoreError(f"{final}: exists and is not a wsicodec store; refusing to replace it")
    part = partial_path(final)
    if part.exists() and (not part.is_dir() or (any(part.iterdir()) and not (part / "zarr.json").exists())):
        raise StoreError(f"{part}: exists and is not an unfinished wsicodec store; refusing to replace it")


class StoreWriter:
    """Writes a store under its partial name; :meth:`finish` moves it into place.

    Progress is kept on disk: every latent chunk is written atomically with its CRC-32C, and the
    tile-state map is rewritten at least every ``checkpoint_seconds`` (it never claims a tile
    whose chunk is not yet written). ``resume=True`` continues an interrupted run from the partial
    store when it was written with the same metadata (same input, model, tile size, ...): tiles
    whose chunk passes its checksum and glass tiles are kept, everything else is coded again;
    :attr:`resumed` counts the tiles kept. The group's ``created`` time is the first run's."""

    def __init__(self, final: Path, meta: dict[str, Any], grid: TileGrid, codec: Any, channels: int,
                 overwrite: bool = False, resume: bool = False, checkpoint_seconds: float = 1.0,
                 processes: int = 0, model_dir: Path | None = None):
        self.final = Path(final)
        self.path = partial_path(self.final)
        check_output_path(self.final, overwrite)
        self.grid = grid
        self.codec = codec          # the latent array's zarr codec (wsicodec.codec.store_codec)
        self.channels = int(channels)
        self.dtype = np.dtype(LATENT_DTYPE[meta["model"]["entropy_model"]])
        self.array_shape = latent_array_shape(grid, self.channels, meta["model"]["entropy_model"])
        # version 2 codes whole chunks: what lies beyond the canvas is background
        self.whole_chunks = meta["model"]["entropy_model"] != "factorized"
        self.fill = np.asarray(meta["background"]["latents"], np.int64).reshape(-1, 1, 1)
        self.meta = dict(meta)
        self.meta["complete"] = False
        self.resumed = 0
        self.checkpoint_seconds = checkpoint_seconds
        self._last_checkpoint = time.monotonic()
        self._dirty = False
        self._lock = threading.Lock()  # write_tile may run on several threads
        self._workers: Any = None  # wsicodec.writers.ChunkWriterProcesses
        if not (resume and self.path.is_dir() and self._reopen()):
            if self.path.exists():
                shutil.rmtree(self.path)
            self._create()
        if processes > 0:  # entropy coding + chunk writes off this process's GIL
            from wsicodec.writers import ChunkWriterProcesses

            self._workers = ChunkWriterProcesses(self.path, processes, model_dir)

    def _create(self) -> None:
        zarr = _zarr()
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
        zarr = _zarr()
        old = read_store_meta(self.path)
        if old is None:
            return False
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
            if f.is_file() and _ZARR_TMP.search(f.name):
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

    def write_associated(self, images: dict[str, np.ndarray]) -> None:
        from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec

        for name, im in images.items():
            arr = self.group.create_array(
                f"associated/{name}", shape=im.shape, chunks=im.shape, dtype="uint8",
                serializer=BytesCodec(), compressors=[ZstdCodec(level=9), Crc32cCodec()],
                dimension_names=["y", "x", "rgb"], overwrite=True,
            )
            arr[...] = im

    def write_tile(self, tx: int, ty: int, latents: np.ndarray | HyperSymbols | None) -> None:
        """Store a tile's latents, or mark it as glass (``None``: nothing is stored)."""
        self.write_tiles([(tx, ty, latents)])

    def write_tiles(self, tiles: list[tuple[int, int, np.ndarray | HyperSymbols | None]]) -> None:
        """Store several tiles' ``(tx, ty, latents)`` (glass: ``latents`` None; a whole chunk's
        :class:`~wsicodec.codec.HyperSymbols` made on a GPU: coded as they are), in one frame per
        kind to one worker process when there are workers. Safe to call from several threads for
        different tiles (each tile is one chunk)."""
        coded = [(tx, ty, lat if isinstance(lat, HyperSymbols) else self._whole_chunk(tx, ty, lat))
                 for tx, ty, lat in tiles if lat is not None]
        if coded and self._workers is not None:
            for kind in (np.ndarray, HyperSymbols):
                part = [(tx, ty, lat) for tx, ty, lat in coded if isinstance(lat, kind)]
                if part:
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

    def _whole_chunk(self, tx: int, ty: int, latents: np.ndarray) -> np.ndarray:
        """A tile's latents as its whole chunk: an edge tile's is filled beyond the canvas with
        the background latents (version 2) or the array's fill value, 0 (version 1)."""
        lx0, ly0, lx1, ly1 = self.grid.tile_latents(tx, ty)
        c = self.grid.chunk
        if latents.shape != (self.channels, ly1 - ly0, lx1 - lx0):
            raise StoreError(f"{self.final}: tile ({tx}, {ty}) has latents of shape {latents.shape}, "
                             f"expected {(self.channels, ly1 - ly0, lx1 - lx0)}")
        if (ly1 - ly0, lx1 - lx0) == (c, c):
            return latents
        full = np.broadcast_to(self.fill if self.whole_chunks else 0, (self.channels, c, c)).astype(latents.dtype)
        full[:, : ly1 - ly0, : lx1 - lx0] = latents
        return full

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


class LatentChunkFiles:
    """Writes whole latent chunks of the (partial) store at ``path`` straight into their files:
    the array's own codec, then the CRC-32C (little-endian), the bytes zarr writes for the same
    chunk (docs/format.md), atomically (a temporary file named like zarr's, then a rename).
    Written by hand because zarr's per-chunk write goes through its async machinery and an event
    loop thread: 1.28 ms a chunk against 0.99 ms here, 0.79 of it coding (a factorized 96x32x32
    chunk, one core; ``benchmarks/host_ceiling.py --parts``)."""

    def __init__(self, path: Path):
        zarr = _zarr()
        from zarr.codecs import Crc32cCodec

        self.root = Path(path)
        try:
            a = zarr.open_array(str(self.root / "latents"), mode="r")
            codecs = a.metadata.codecs
        except Exception as e:
            raise StoreError(f"{self.root}: cannot open the store's latents ({_first_line(e)})") from None
        if len(codecs) != 2 or not isinstance(codecs[1], Crc32cCodec) or not hasattr(codecs[0], "_numcodec"):
            raise StoreError(f"{self.root}: the latent array's codecs are not a wsicodec codec + crc32c")
        self.chunk_shape = tuple(int(c) for c in a.chunks)
        self.dtype = np.dtype(a.dtype)
        self.codec = codecs[0]._numcodec(self.chunk_shape, self.dtype)
        self._dirs: set[Path] = set()

    def encode(self, tx: int, ty: int, values: np.ndarray | HyperSymbols) -> bytes:
        """Tile ``(tx, ty)``'s stored chunk bytes (``values``: any integer dtype, range-checked; or
        a hyperprior chunk's :class:`~wsicodec.codec.HyperSymbols`)."""
        import google_crc32c

        if isinstance(values, HyperSymbols):
            if not hasattr(self.codec, "encode_symbols"):
                raise StoreError(f"{self.root}: hyperprior symbols for a store of another entropy model")
            data = self.codec.encode_symbols(values)
        else:
            values = np.asarray(values)
            if values.shape != self.chunk_shape:
                raise StoreError(f"{self.root}: latent chunk of shape {values.shape}, the array's is {self.chunk_shape}")
            if values.dtype != self.dtype:
                info = np.iinfo(self.dtype)
                if values.size and (values.max() > info.max or values.min() < info.min):
                    raise StoreError(f"{self.root}: latent values overflow {self.dtype} at tile ({tx}, {ty})")
                values = values.astype(self.dtype)
            data = self.codec.encode(np.ascontiguousarray(values))
        return data + int(google_crc32c.value(data)).to_bytes(4, "little")

    def write(self, tx: int, ty: int, values: np.ndarray | HyperSymbols) -> None:
        """Code and write tile ``(tx, ty)``'s chunk; the file appears whole or not at all."""
        data = self.encode(tx, ty, values)
        f = chunk_file(self.root, tx, ty)
        if f.parent not in self._dirs:
            f.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(f.parent)
        tmp = f.with_name(f"{f.name}.{uuid.uuid4().hex}.partial")  # cleared by a resume (_ZARR_TMP)
        try:
            with open(tmp, "wb") as out:
                out.write(data)
            os.replace(tmp, f)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def json_roundtrip(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))


def _sync() -> None:
    """Flush written files to disk before the store is moved into place."""
    if hasattr(os, "sync"):
        os.sync()


def store_size(path: Path) -> int:
    if not isinstance(path, Path):
        from wsicodec import remote

        if remote.is_url(path):
            return remote.store_size(path)
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
#: largest side accepted from store metadata (as for inputs, see wsicodec.slide.MAX_SIDE)
MAX_SIDE = 1 << 20
#: largest associated image (label, macro, thumbnail) a reader decodes
MAX_ASSOCIATED_PIXELS = 1 << 26


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))


def check_meta(meta: Any) -> str | None:
    """What is wrong with a store's ``wsicodec`` metadata object (``None``: nothing). Checks the
    format marker, version and completeness first, then every key a reader relies on."""
    if not isinstance(meta, dict):
        return "not a wsicodec store (metadata is not an object)"
    if meta.get("format") != FORMAT_NAME:
        return "not a wsicodec store (no 'format': 'wsicodec' marker)"
    version = meta.get("format_version")
    if not _is_int(version) or version not in READ_VERSIONS:
        return (f"store format version {version!r} is not supported "
                f"(this wsicodec reads versions {', '.join(map(str, READ_VERSIONS))})")
    if meta.get("complete") is not True:
        return "incomplete store (compression did not finish; `wsicodec compress ... --resume` continues it)"
    bad = []
    m = meta.get("model")
    if not (isinstance(m, dict) and isinstance(m.get("name"), str) and _NAME.match(m["name"])
            and isinstance(m.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", m["sha256"])
            and m.get("entropy_model", "factorized") in LATENT_DTYPE
            and version >= format_version(m.get("entropy_model", "factorized"))):
        bad.append("model")
    lv = meta.get("level0")
    if not (isinstance(lv, dict) and all(_is_int(lv.get(k)) and 0 < lv[k] <= MAX_SIDE for k in ("width", "height"))):
        bad.append("level0")
    st, ts = meta.get("stride"), meta.get("tile_size")
    if not (_is_int(st) and st in (8, 16, 32, 64)):
        bad.append("stride")
    elif not (_is_int(ts) and 0 < ts <= 8192 and ts % st == 0):
        bad.append("tile_size")
    mpp = meta.get("mpp")
    if not (isinstance(mpp, list) and len(mpp) == 2 and all(v is None or _is_num(v) for v in mpp)):
        bad.append("mpp")
    op = meta.get("objective_power")
    if not (op is None or _is_num(op)):
        bad.append("objective_power")
    props = meta.get("properties", {})
    if not (isinstance(props, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in props.items())):
        bad.append("properties")
    bg = meta.get("background")
    if not (isinstance(bg, dict) and isinstance(bg.get("colour"), list) and len(bg["colour"]) == 3
            and all(_is_int(v) and 0 <= v <= 255 for v in bg["colour"]) and isinstance(bg.get("latents"), list)
            and 0 < len(bg["latents"]) <= 4096 and all(_is_int(v) and abs(v) < 2**31 for v in bg["latents"])):
        bad.append("background")
    assoc = meta.get("associated", [])
    if not (isinstance(assoc, list) and all(isinstance(a, str) and _NAME.match(a) for a in assoc)):
        bad.append("associated")
    for key in ("source", "tiles"):
        if key in meta and not isinstance(meta[key], dict):
            bad.append(key)
    if not isinstance(meta.get("deidentified", False), bool):
        bad.append("deidentified")
    if bad:
        return f"damaged store metadata (bad or missing: {', '.join(bad)})"
    return None


def check_arrays(latents: Any, tiles: Any, grid: TileGrid, channels: int,
                 entropy_model: str = "factorized") -> str | None:
    """What is wrong with the shapes / types of the latent and tile arrays (``None``: nothing)."""
    dtype = LATENT_DTYPE[entropy_model]
    try:
        expect = latent_array_shape(grid, channels, entropy_model)
        if tuple(latents.shape) != expect:
            return f"latents shape {tuple(latents.shape)}, expected {expect}"
        if tuple(latents.chunks) != (channels, grid.chunk, grid.chunk):
            return f"latent chunks {tuple(latents.chunks)}, expected {(channels, grid.chunk, grid.chunk)}"
        if np.dtype(latents.dtype) != np.dtype(dtype):
            return f"latents dtype {latents.dtype}, expected {dtype}"
        if tuple(tiles.shape) != (grid.tiles_y, grid.tiles_x):
            return "tile map shape does not match the level-0 size"
        if np.dtype(tiles.dtype) != np.uint8:
            return f"tile map dtype {tiles.dtype}, expected uint8"
    except Exception as e:
        return _first_line(e)
    return None


def latent_array_shape(grid: TileGrid, channels: int, entropy_model: str) -> tuple[int, int, int]:
    """Shape of the ``latents`` array: the latent grid (version 1), or whole chunks (version 2,
    whose chunks are coded whole: positions beyond the canvas hold the background latents)."""
    rows, cols = grid.latent_shape
    if entropy_model != "factorized":
        rows, cols = grid.tiles_y * grid.chunk, grid.tiles_x * grid.chunk
    return channels, rows, cols


def entropy_model(meta: dict[str, Any]) -> str:
    """The entropy model kind of a store's (checked) metadata."""
    return meta["model"].get("entropy_model", "factorized")


class WsiStore:
    """An OpenSlide-like view of a store: ``dimensions``, ``level_count``, ``level_dimensions``,
    ``level_downsamples``, ``properties``, ``associated_images``, ``read_region``,
    ``get_thumbnail``; a context manager. Pixels are decoded on demand, only for the tiles asked
    for. ``precision``: ``"auto"`` runs the synthesis in half precision where that is native
    (fp16 on CUDA, bf16 on a CPU with AVX512-BF16 / AMX: about 3x as fast, pixels within 2
    levels of fp32's); ``"fp32"`` never does."""

    def __init__(self, path: str | os.PathLike, device: str = "auto", batch_size: int = 8,
                 model_dir: Path | None = None, storage_options: dict[str, Any] | None = None,
                 precision: str = "auto"):
        from wsicodec import remote  # ``path`` may be an fsspec URL, read through zarr's FsspecStore

        if precision not in ("auto", "fp32"):
            raise StoreError(f"unknown decoding precision {precision!r} (auto or fp32)")
        # auto: half-precision synthesis where it is native (fp16 on CUDA, bf16 on such CPUs)
        self._half_synthesis = None if precision == "auto" else False

        self.path = remote.as_path(path, storage_options)
        if not self.path.exists():
            hint = ""
            if partial_path(self.path).is_dir():
                hint = (f" (an unfinished one is at {partial_path(self.path)}; "
                        f"`wsicodec compress ... --resume` continues it)")
            raise StoreError(f"{self.path}: no such store{hint}")
        if is_partial_name(self.path):
            raise StoreError(f"{self.path}: incomplete store (an unfinished compression; "
                             f"`wsicodec compress ... --resume` continues it)")
        try:
            self.group = remote.open_group(self.path, mode="r")
            meta = self.group.attrs[FORMAT_NAME]
            if not isinstance(meta, dict):
                raise TypeError("attributes['wsicodec'] is not an object")
            meta = dict(meta)
        except Exception as e:
            raise StoreError(f"{self.path}: not a wsicodec store ({_first_line(e)})") from None
        problem = check_meta(meta)
        if problem:
            raise StoreError(f"{self.path}: {problem}")
        self.meta = meta
        lv = meta["level0"]
        self.grid = TileGrid(int(lv["width"]), int(lv["height"]), int(meta["tile_size"]), int(meta["stride"]))
        try:
            self.latents = self.group["latents"]
            tiles = self.group["tiles"]
        except Exception as e:
            raise StoreError(f"{self.path}: damaged store layout ({_first_line(e)})") from None
        problem = check_arrays(self.latents, tiles, self.grid, len(meta["background"]["latents"]),
                               entropy_model(meta))
        if problem:
            raise StoreError(f"{self.path}: damaged store layout ({problem})")
        try:
            self.tile_state = np.asarray(tiles[...])
        except Exception as e:
            raise StoreError(f"{self.path}: damaged tile map ({_first_line(e)})") from None
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
        props["wsicodec.format-version"] = str(self.meta["format_version"])
        return props

    @property
    def associated_images(self) -> dict[str, Any]:
        from PIL import Image

        out = {}
        for name in self.meta.get("associated", []):
            try:
                arr = self.group[f"associated/{name}"]
                if len(arr.shape) != 3 or arr.shape[2] != 3 or np.dtype(arr.dtype) != np.uint8:
                    raise StoreError(f"shape {arr.shape} / dtype {arr.dtype}, expected (h, w, 3) uint8")
                if arr.shape[0] * arr.shape[1] > MAX_ASSOCIATED_PIXELS:
                    raise StoreError(f"size {arr.shape[1]}x{arr.shape[0]} is too large")
                out[name] = Image.fromarray(np.asarray(arr[...]))
            except Exception as e:
                raise StoreError(f"{self.path}: damaged associated image {name!r} ({_first_line(e)})") from None
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
            if card.spec.entropy_model != "factorized":  # the latents' codec needs this (verified) model
                from wsicodec.codec import hyper_entropy_model

                hyper_entropy_model(m, model)
            self._coder = LatentCoder(model, card, self._device, self._batch_size,
                                      half_synthesis=self._half_synthesis)
        return self._coder

    def fetch_latents(self, lx0: int, ly0: int, lx1: int, ly1: int) -> np.ndarray:
        """Latents of a box with glass tiles filled in; missing tiles are an error."""
        if self.meta["model"].get("entropy_model", "factorized") != "factorized":
            self.coder  # a hyperprior's latents decode with the store's model (loaded and verified here)
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
        """Yield ``(tx, ty, rgb)`` for tiles (row-major order advised), batched, seam-free. The
        latents of the next groups are entropy-decoded on a thread while the network runs."""
        from wsicodec.engine import prefetch

        grid, coder = self.grid, self.coder
        halo, s = coder.spec.decode_halo, grid.stride

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
            for (tx, ty), (x, y, w, h) in zip(part, boxes):
                if self.tile_state[ty, tx] == TILE_GLASS:
                    continue
                lx0, ly0, lx1, ly1 = grid.latent_window(x, y, w, h, halo)
                win = q[:, ly0 - window[1] : ly1 - window[1], lx0 - window[0] : lx1 - window[0]]
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



def now_iso() -> str:
    """The current UTC time, or ``SOURCE_DATE_EPOCH`` when set (reproducible stores, as in
    reproducible builds: the same input and settings then give a byte-identical store)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    when = (_dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc) if epoch.isdigit()
            else _dt.datetime.now(_dt.timezone.utc))
    return when.replace(microsecond=0).isoformat()
