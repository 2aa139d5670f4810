"""The viewer's web app: DeepZoom tiles of a store (and of its original), the page, a little JSON.

URLs, as openslide-python's DeepZoom server has them::

    /                                   the page
    /store.dzi, /original.dzi           DeepZoom descriptors
    /store_files/<level>/<col>_<row>.<format>    tiles (and /original_files/...)
    /associated/<name>.png              the store's label, macro, thumbnail
    /api/info, /api/psnr, /api/unreadable

Only these names are looked up (in dictionaries, never on the file system); the page's own
files are served by Starlette's ``StaticFiles`` from the package, which refuses paths outside
its folder. Tile coordinates out of range are 404, malformed ones 400.
"""
from __future__ import annotations

import io
import logging
import math
import os
import re
import threading
from collections import OrderedDict
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from wsicodec.errors import first_line
from wsicodec.store import WsiStore
from wsicodec.view.pyramid import BlockCache, Pyramid
from wsicodec.view.sources import glass_tiles, source_pyramid, store_pyramid

__all__ = ["TILE_FORMATS", "Viewer", "app"]

log = logging.getLogger("wsicodec.view")

#: lossless tile formats (the browser must not add a second loss to the codec's)
TILE_FORMATS = ("png", "webp")
_TILE_PATH = re.compile(r"(\d{1,3})/(\d{1,7})_(\d{1,7})\.([a-z]{3,4})")
_MAX_PSNR_BLOCKS = 16


class _BytesLRU:
    """Encoded tiles, most recent last, bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = int(max_bytes), 0
        self._data: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: tuple, value: bytes) -> None:
        with self._lock:
            if key in self._data:
                return
            self._data[key] = value
            self.bytes += len(value)
            while self.bytes > self.max_bytes and len(self._data) > 1:
                _, old = self._data.popitem(last=False)
                self.bytes -= len(old)


def encode_tile(pixels: np.ndarray, fmt: str) -> bytes:
    """Lossless PNG (fastest zlib level: these are served, not archived) or lossless WebP."""
    from PIL import Image

    buf = io.BytesIO()
    im = Image.fromarray(pixels)
    if fmt == "png":
        im.save(buf, "PNG", compress_level=1)
    else:
        im.save(buf, "WEBP", lossless=True, method=0)
    return buf.getvalue()


class Viewer:
    """A store (and optionally its original) as DeepZoom pyramids sharing one block cache."""

    def __init__(self, store: str | os.PathLike | WsiStore, against: str | os.PathLike | None = None,
                 tile_size: int = 254, overlap: int = 1, fmt: str = "png", cache_mb: int = 512,
                 device: str = "auto"):
        from wsicodec.info import describe
        from wsicodec.slide import open_input
        from wsicodec.store import StoreError

        if fmt not in TILE_FORMATS:
            raise ValueError(f"tile format {fmt!r} is not one of {', '.join(TILE_FORMATS)}")
        self.store = store if isinstance(store, WsiStore) else WsiStore(store, device=device)
        self.store.load_model()  # a missing or different model is an error here, not a marked tile each
        self.fmt = fmt
        self.cache = BlockCache(cache_mb * 2**20 * 3 // 4)
        self.tile_bytes = _BytesLRU(cache_mb * 2**20 // 4)
        self.pyramids: dict[str, Pyramid] = {"store": store_pyramid(self.store, self.cache, tile_size, overlap)}
        self.source = None
        self.info = self._store_info(describe(self.store.path))
        if against is not None:
            self.source = open_input(against)
            if tuple(self.source.dimensions) != tuple(self.store.dimensions):
                dims = self.source.dimensions
                self.source.close()
                raise StoreError(f"{against}: {dims[0]}x{dims[1]} pixels, but the store "
                                 f"{self.store.path} is {self.store.dimensions[0]}x{self.store.dimensions[1]}")
            self.pyramids["original"] = source_pyramid(self.source, self.store.grid.tile, self.cache,
                                                       tile_size, overlap)
            self.info["against"] = {"name": Path(against).name, "bytes": self.source.file_size}

    def _store_info(self, d: dict[str, Any]) -> dict[str, Any]:
        g = self.store.grid
        W, H = d["dimensions"]
        return {
            "name": Path(self.store.path).name, "dimensions": d["dimensions"], "mpp": d["mpp"],
            "model": d["model"], "bytes": d["bytes"], "bits_per_pixel": round(8 * d["bytes"] / (W * H), 4),
            "image_bits_per_pixel": d["image_bits_per_pixel"], "source_file": d["source_file"],
            "source_bytes": d["source_bytes"], "times_smaller": d["times_smaller"], "summary": d["summary"],
            "associated": list(d["associated_images"]), "format": self.fmt,
            "grid": {"tile": g.tile, "tiles_x": g.tiles_x, "tiles_y": g.tiles_y, "glass": glass_tiles(self.store)},
            "against": None,
        }

    def tile(self, name: str, level: int, col: int, row: int) -> bytes | None:
        """A DeepZoom tile's encoded bytes, or None when there is no such tile."""
        pyramid = self.pyramids[name]
        if not pyramid.dz.has_tile(level, col, row):
            return None
        key = (name, level, col, row)
        data = self.tile_bytes.get(key)
        if data is None:
            data = encode_tile(pyramid.tile(level, col, row), self.fmt)
            self.tile_bytes.put(key, data)
        return data

    def psnr(self, level: int, x: int, y: int, w: int, h: int) -> dict[str, Any]:
        """PSNR of the store against the original over the blocks of ``level`` that a box (in that
        level's pixels) touches; at most the 16 nearest its centre."""
        store, original = self.pyramids["store"], self.pyramids["original"]
        scale, b = store.dz.scale(level), store.block
        lw, lh = store.dz.level_dimensions[level]
        x0, y0, x1, y1 = max(0, x), max(0, y), min(lw, x + w), min(lh, y + h)
        if x1 <= x0 or y1 <= y0:
            return {"psnr": None, "identical": False, "blocks": 0, "capped": False, "level": level}
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        blocks = [(bx, by) for by in range(y0 // b, (y1 - 1) // b + 1) for bx in range(x0 // b, (x1 - 1) // b + 1)]
        blocks.sort(key=lambda t: ((t[0] + 0.5) * b - cx) ** 2 + ((t[1] + 0.5) * b - cy) ** 2)
        sse, n = 0.0, 0
        for bx, by in blocks[:_MAX_PSNR_BLOCKS]:
            a = store.block_pixels(scale, bx, by).astype(np.int32)
            o = original.block_pixels(scale, bx, by).astype(np.int32)
            sse += float(((a - o) ** 2).sum())
            n += a.size
        mse = sse / n
        psnr = None if mse == 0 else round(10 * math.log10(255**2 / mse), 2)
        return {"psnr": psnr, "identical": mse == 0, "blocks": min(len(blocks), _MAX_PSNR_BLOCKS),
                "capped": len(blocks) > _MAX_PSNR_BLOCKS, "level": level}

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
        self.store.close()


def _static_dir() -> Path:
    return Path(str(resources.files("wsicodec.view") / "static"))


def app(store: str | os.PathLike | WsiStore, against: str | os.PathLike | None = None, **options: Any):
    """An ASGI app that shows ``store`` (a path or an open :class:`WsiStore`), side by side with
    the slide ``against`` when given. ``options``: ``tile_size`` (254), ``overlap`` (1), ``fmt``
    (``"png"`` or ``"webp"``, both lossless), ``cache_mb`` (512, decoded blocks and encoded
    tiles), ``device`` (``"auto"``). The :class:`Viewer` behind it is ``app.state.viewer``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import (
        FileResponse,
        JSONResponse,
        PlainTextResponse,
        Response,
    )
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    viewer = Viewer(store, against, **options)
    static = _static_dir()
    no_store = {"Cache-Control": "no-store"}

    def pyramid_name(request: Request) -> str:
        name = request.path_params["name"]
        if name not in viewer.pyramids:
            raise HTTPException(404)
        return name

    def page(request: Request):
        return FileResponse(static / "index.html", headers=no_store)

    def dzi(request: Request):
        pyramid = viewer.pyramids[pyramid_name(request)]
        return Response(pyramid.dz.dzi(viewer.fmt), media_type="application/xml", headers=no_store)

    async def tile(request: Request):
        name = pyramid_name(request)
        m = _TILE_PATH.fullmatch(request.path_params["rest"])
        if m is None or m.group(4) not in TILE_FORMATS:
            raise HTTPException(400, "malformed tile address (expected <level>/<col>_<row>.<format>)")
        level, col, row = (int(v) for v in m.group(1, 2, 3))
        if m.group(4) != viewer.fmt:
            raise HTTPException(404)
        # a tile already encoded is answered on the event loop; making one goes to a worker thread
        data = viewer.tile_bytes.get((name, level, col, row))
        if data is None:
            data = await run_in_threadpool(viewer.tile, name, level, col, row)
        if data is None:
            raise HTTPException(404)
        return Response(data, media_type=f"image/{viewer.fmt}", headers=no_store)

    def info(request: Request):
        return JSONResponse(viewer.info, headers=no_store)

    def unreadable(request: Request):
        return JSONResponse({name: sorted(list(t) for t in p.unreadable) for name, p in viewer.pyramids.items()},
                            headers=no_store)

    def psnr(request: Request):
        if "original" not in viewer.pyramids:
            raise HTTPException(404, "no original given")
        try:
            level, x, y, w, h = (int(request.query_params[k]) for k in ("level", "x", "y", "w", "h"))
        except (KeyError, ValueError):
            raise HTTPException(400, "expected integer level, x, y, w, h") from None
        if not 0 <= level < viewer.pyramids["store"].dz.level_count or w <= 0 or h <= 0:
            raise HTTPException(400, "level out of range or empty box")
        return JSONResponse(viewer.psnr(level, x, y, w, h), headers=no_store)

    def associated(request: Request):
        name = request.path_params["name"]
        if name not in viewer.info["associated"]:
            raise HTTPException(404)
        buf = io.BytesIO()
        viewer.store.associated_images[name].save(buf, "PNG")
        return Response(buf.getvalue(), media_type="image/png", headers=no_store)

    async def http_error(request: Request, exc: HTTPException):
        return PlainTextResponse(f"{exc.status_code} {exc.detail}\n", status_code=exc.status_code)

    async def server_error(request: Request, exc: Exception):
        log.error("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, first_line(exc))
        return PlainTextResponse("500 internal error\n", status_code=500)

    routes = [
        Route("/", page),
        Route("/{name}.dzi", dzi),
        Route("/{name}_files/{rest:path}", tile),
        Route("/associated/{name}.png", associated),
        Route("/api/info", info),
        Route("/api/psnr", psnr),
        Route("/api/unreadable", unreadable),
        Mount("/static", StaticFiles(directory=static), name="static"),
    ]
    application = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})
    application.state.viewer = viewer
    return application
