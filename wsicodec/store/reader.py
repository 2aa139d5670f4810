"""Reading a store: :class:`WsiStore`, an OpenSlide-like view that decodes pixels on demand."""
from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
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
    fp32's; docs/performance.md); ``"fp32"`` never does. ``decode_processes``: worker processes
    that range-decode a hyperprior store's chunks where its side information is decoded on the
    GPU (None: half the host's cores on CUDA; :mod:`wsicodec.decoders`)."""

    #: decoded latent chunks kept for neighbouring reads, at most this many bytes (least recently
    #: used first out): three rows of chunks of a 100,000-px-wide slide of the default model
    chunk_cache_bytes = 256 << 20

    def __init__(self, path: str | os.PathLike, device: str = "auto", batch_size: int = 8,
                 model_dir: Path | None = None, storage_options: dict[str, Any] | None = None,
                 precision: str = "auto", decode_processes: int | None = None):
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
        self._decode_processes = decode_processes
        self._decoders = None
        self._chunks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._chunk_bytes = 0
        self._chunk_lock = threading.Lock()
        self.chunks_decoded = 0  # latent chunks entropy-decoded so far (kept ones are not decoded again)
        self._start_lock = threading.Lock()
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
        """Latents of a box with glass tiles filled in; missing tiles are an error. Chunks are
        decoded whole and kept (:meth:`_coded_chunks`): neighbouring boxes share their halo's."""
        if entropy_model(self.meta) != "factorized":
            self.load_model()  # a hyperprior's latents decode with the store's model (loaded and verified here)
        c = self.grid.chunk
        keys = [(tx, ty) for ty in range(ly0 // c, -(-ly1 // c)) for tx in range(lx0 // c, -(-lx1 // c))]
        for tx, ty in keys:
            if self.tile_state[ty, tx] not in (TILE_GLASS, TILE_CODED):
                raise StoreError(f"{self.path}: tile ({tx}, {ty}) is missing")
        chunks = self._coded_chunks([(tx, ty) for tx, ty in keys if self.tile_state[ty, tx] == TILE_CODED])
        q = np.empty((int(self.latents.shape[0]), ly1 - ly0, lx1 - lx0), np.int32)
        for tx, ty in keys:
            bx0, by0 = max(tx * c, lx0), max(ty * c, ly0)
            bx1, by1 = min((tx + 1) * c, lx1), min((ty + 1) * c, ly1)
            box = q[:, by0 - ly0 : by1 - ly0, bx0 - lx0 : bx1 - lx0]
            if (tx, ty) in chunks:
                box[...] = chunks[(tx, ty)][:, by0 - ty * c : by1 - ty * c, bx0 - tx * c : bx1 - tx * c]
            else:
                box[...] = self.glass_latents
        return q

    def _coded_chunks(self, keys: list[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
        """The latent chunks of coded tiles ``(tx, ty)`` (each the part inside the array), decoded
        once and kept while :attr:`chunk_cache_bytes` allows: a box's halo reaches into its
        neighbours' chunks, so reading a slide band by band (decompress) or tile by tile (the
        viewer) would otherwise decode each chunk up to nine times."""
        found: dict[tuple[int, int], np.ndarray] = {}
        with self._chunk_lock:
            for key in keys:
                hit = self._chunks.get(key)
                if hit is not None:
                    self._chunks.move_to_end(key)
                    found[key] = hit
        todo = [key for key in keys if key not in found]
        if not todo:
            return found
        hyper = self._device_hyper()
        decoded = self._decode_on_device(todo, hyper) if hyper is not None else {k: self._read_chunk(*k) for k in todo}
        found.update(decoded)
        with self._chunk_lock:
            self.chunks_decoded += len(decoded)
            for key, arr in decoded.items():
                old = self._chunks.pop(key, None)
                self._chunk_bytes += arr.nbytes - (old.nbytes if old is not None else 0)
                self._chunks[key] = arr
            while len(self._chunks) > 1 and self._chunk_bytes > self.chunk_cache_bytes:
                _, old = self._chunks.popitem(last=False)
                self._chunk_bytes -= old.nbytes
        return found

    def _read_chunk(self, tx: int, ty: int) -> np.ndarray:
        """One chunk through zarr and the store's codec (the side information, if any, on the CPU)."""
        c = self.grid.chunk
        box = f"latents[:, {ty * c}:{(ty + 1) * c}, {tx * c}:{(tx + 1) * c}]"
        try:
            return np.asarray(self.latents[:, ty * c : (ty + 1) * c, tx * c : (tx + 1) * c])
        except CodecError as e:
            raise StoreError(f"{self.path}: corrupt latent chunk in {box} ({e})") from None
        except Exception as e:
            raise StoreError(f"{self.path}: cannot read {box} ({first_line(e)})") from None

    def _device_hyper(self) -> Any:
        """The model's side-information decoder on the synthesis's device
        (:class:`~wsicodec.engine.DeviceHyperSymbols`, checked exact there: on CUDA), for a local
        hyperprior store; else None (each chunk then decodes through zarr on the CPU)."""
        if entropy_model(self.meta) == "factorized" or not isinstance(self.path, Path):
            return None
        return self.transforms.hyper

    def _decoder_processes(self) -> Any:
        """The worker processes that range-decode this store's chunks (started on first use),
        or None where there are none (``decode_processes``; default: half the cores on CUDA)."""
        from wsicodec.decoders import ChunkDecoderProcesses, default_decoder_processes

        with self._start_lock:  # reading threads (the viewer's) may ask at once: one set of workers
            if self._decode_processes is None:
                self._decode_processes = default_decoder_processes(self.transforms.cuda)
            if self._decoders is None and self._decode_processes > 0:
                try:
                    self._decoders = ChunkDecoderProcesses(self.meta["model"], self._decode_processes,
                                                           self._model_dir)
                except CodecError as e:
                    raise StoreError(f"{self.path}: {e}") from None
            return self._decoders

    def _decode_on_device(self, keys: list[tuple[int, int]], hyper: Any) -> dict[tuple[int, int], np.ndarray]:
        """Hyperprior chunks read straight from their files (CRC-32C checked, as zarr does): the
        side information decoded here, the integer hyper-decoder run for all of them in one batch
        per chunk shape on the device, then each chunk's latents range-decoded with the tables and
        means it gave. The same latents as :meth:`_read_chunk`: the hyper-decoder is exact."""
        import torch

        from wsicodec.codec import decode_hyper_latents, hyper_entropy_model, read_hyper_chunk
        from wsicodec.store.chunks import array_chunk_file, chunk_crc_ok

        hm = hyper_entropy_model(self.meta["model"])
        C, rows, cols = (int(n) for n in self.latents.shape)
        c = self.grid.chunk
        read: dict[tuple[int, int], Any] = {}
        for tx, ty in keys:
            what = f"{self.path}: latent chunk of tile {(tx, ty)}"
            try:
                data = array_chunk_file(self.path, self.latents, tx, ty).read_bytes()
            except OSError as e:
                raise StoreError(f"{what}: cannot read it ({first_line(e)})") from None
            if not chunk_crc_ok(data):
                raise StoreError(f"{what}: corrupt (its CRC-32C does not match)")
            try:
                read[(tx, ty)] = read_hyper_chunk(memoryview(data)[:-4], hm, (C, c, c), within=True)
            except CodecError as e:
                raise StoreError(f"{what}: corrupt ({e})") from None
        by_shape: dict[tuple, list] = {}
        for key, chunk in read.items():
            by_shape.setdefault(chunk.shape, []).append(key)
        out: dict[tuple[int, int], np.ndarray] = {}
        for group in by_shape.values():
            index, mean = hyper.parameters(torch.from_numpy(np.stack([read[k].z for k in group])))
            index, mean = index.to(torch.uint8).cpu().numpy(), mean.to(torch.int32).cpu().numpy()
            workers = self._decoder_processes() if len(group) > 1 else None
            lats: list[np.ndarray] = []
            try:
                if workers is not None:
                    lats = workers.decode([read[k] for k in group], index, mean)
                else:
                    for i, key in enumerate(group):
                        lats.append(decode_hyper_latents(read[key], index[i], mean[i], hm))
            except CodecError as e:
                at = getattr(e, "chunk", None) if workers is not None else len(lats)
                which = f"tile {group[at]}" if at is not None else f"one of tiles {group[0]} to {group[-1]}"
                raise StoreError(f"{self.path}: latent chunk of {which}: corrupt ({e})") from None
            for (tx, ty), lat in zip(group, lats, strict=True):
                part = np.zeros((C, min(c, rows - ty * c), min(c, cols - tx * c)), np.int32)
                h, w = min(part.shape[1], lat.shape[1]), min(part.shape[2], lat.shape[2])
                part[:, :h, :w] = lat[:, :h, :w]  # a smaller stream: the array's fill value, as zarr reads it
                out[(tx, ty)] = part
        return out

    def decode_tiles(self, tiles: list[tuple[int, int]], group: int | None = None
                     ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(tx, ty, rgb)`` for tiles (row-major order advised), batched, seam-free. The
        latents of the next groups of ``group`` tiles are entropy-decoded on a thread while the
        network runs (default 16; 64 where worker processes range-decode, so that each group
        gives every worker chunks to decode)."""
        from wsicodec.streaming import prefetch

        grid, transforms = self.grid, self.transforms
        if group is None:
            group = 64 if self._device_hyper() is not None and self._decoder_processes() is not None else 16
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
        if self._decoders is not None:
            self._decoders.close()
            self._decoders = None
        with self._chunk_lock:
            self._chunks.clear()
            self._chunk_bytes = 0

    def __enter__(self) -> WsiStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WsiStore({str(self.path)!r})"

