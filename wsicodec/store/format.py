"""The store format's constants and checks: format marker and versions, tile states, the
metadata a reader relies on and the shapes of its arrays (``docs/format.md``)."""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from wsicodec.codec import HYPER_BLOCK, LATENT_DTYPE
from wsicodec.errors import first_line
from wsicodec.tiling import TileGrid

__all__ = ["ENCODED_ASSOCIATED", "FORMAT_NAME", "FORMAT_VERSION", "MAX_ASSOCIATED_PIXELS", "MAX_SIDE",
           "READ_VERSIONS", "TILE_CODED", "TILE_GLASS", "TILE_MISSING", "TRIMMED_EDGES", "VARIABLE_RATE",
           "check_arrays", "check_meta", "entropy_model", "format_version", "json_roundtrip", "latent_array_shape",
           "now_iso", "read_store_meta", "stored_chunk_shape"]

FORMAT_NAME = "wsicodec"
FORMAT_VERSION = 5          #: the newest version this wsicodec reads and writes
#: a store takes the lowest version that describes it (docs/format.md, "Versions"): 1 =
#: factorized entropy model, 2 = hyperprior, 3 = associated images kept encoded, 4 = a
#: variable-rate hyperprior (its operating point in the metadata), 5 = edge chunks coded only as
#: far as the image reaches; each version includes the ones before it
READ_VERSIONS = (1, 2, 3, 4, 5)
#: the first version whose associated images are encoded bytes (:mod:`wsicodec.associated`)
#: rather than raw pixels, and which keeps no thumbnail
ENCODED_ASSOCIATED = 3
#: the first version whose stores record a variable-rate model's operating point
VARIABLE_RATE = 4
#: the first version whose edge chunks hold only the array's positions, not the whole chunk
TRIMMED_EDGES = 5


def format_version(entropy_model: str, associated: bool = False, variable_rate: bool = False,
                   grid: TileGrid | None = None) -> int:
    """The format version of a store of a model with this entropy model kind, holding associated
    images (``associated``) or not, of a model with several operating points
    (``variable_rate``) or one, over the tiles of ``grid`` (when its latents end inside a chunk,
    the edge chunks are coded only as far as the image reaches: version 5)."""
    if grid is not None:
        _, rows, cols = latent_array_shape(grid, 1, entropy_model, TRIMMED_EDGES)
        if rows % grid.chunk or cols % grid.chunk:
            return TRIMMED_EDGES
    if variable_rate:
        return VARIABLE_RATE
    if associated:
        return ENCODED_ASSOCIATED
    return 1 if entropy_model == "factorized" else 2


TILE_MISSING, TILE_CODED, TILE_GLASS = 0, 1, 2


def read_store_meta(path: Path) -> dict[str, Any] | None:
    """The ``wsicodec`` attributes of the group at ``path``, read straight from ``zarr.json``
    (``None`` if there is no readable group there)."""
    try:
        doc = json.loads((Path(path) / "zarr.json").read_text())
        meta = doc["attributes"][FORMAT_NAME]
        return meta if isinstance(meta, dict) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def json_roundtrip(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples as lists, other objects as strings)."""
    return json.loads(json.dumps(obj, default=str))


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
    point = meta.get("operating_point")  # whether the model needs one is checked when it is loaded
    if point is not None and not (version >= VARIABLE_RATE and isinstance(point, dict)
                                  and _is_int(point.get("index")) and point["index"] >= 0
                                  and _is_num(point.get("t", 0)) and 0 <= point.get("t", 0) < 1):
        bad.append("operating_point")  # and its vectors against the model's width
    if bad:
        return f"damaged store metadata (bad or missing: {', '.join(bad)})"
    return None


def check_arrays(latents: Any, tiles: Any, grid: TileGrid, channels: int,
                 entropy_model: str = "factorized", version: int = FORMAT_VERSION) -> str | None:
    """What is wrong with the shapes / types of the latent and tile arrays (``None``: nothing)."""
    dtype = LATENT_DTYPE[entropy_model]
    try:
        expect = latent_array_shape(grid, channels, entropy_model, version)
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
        return first_line(e)
    return None


def latent_array_shape(grid: TileGrid, channels: int, entropy_model: str,
                       version: int = FORMAT_VERSION) -> tuple[int, int, int]:
    """Shape of the ``latents`` array: a factorized model's latent grid; a hyperprior's whole
    chunks (versions 2 to 4: positions beyond the canvas hold the background latents), from
    version 5 its latent grid rounded up to whole side-information positions (4 latents)."""
    rows, cols = grid.latent_shape
    if entropy_model != "factorized":
        if version >= TRIMMED_EDGES:
            rows, cols = -(-rows // HYPER_BLOCK) * HYPER_BLOCK, -(-cols // HYPER_BLOCK) * HYPER_BLOCK
        else:
            rows, cols = grid.tiles_y * grid.chunk, grid.tiles_x * grid.chunk
    return channels, rows, cols


def stored_chunk_shape(array_shape: tuple[int, int, int], chunk: int, tx: int, ty: int,
                       version: int = FORMAT_VERSION) -> tuple[int, int, int]:
    """The shape tile ``(tx, ty)``'s chunk is coded at: the whole chunk before version 5, from
    version 5 only its positions inside the array (an edge chunk's stream is smaller)."""
    channels, rows, cols = array_shape
    if version < TRIMMED_EDGES:
        return channels, chunk, chunk
    return channels, min(chunk, rows - ty * chunk), min(chunk, cols - tx * chunk)


def entropy_model(meta: dict[str, Any]) -> str:
    """The entropy model kind of a store's (checked) metadata."""
    return meta["model"].get("entropy_model", "factorized")




def now_iso() -> str:
    """The current UTC time, or ``SOURCE_DATE_EPOCH`` when set (reproducible stores, as in
    reproducible builds: the same input and settings then give a byte-identical store)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    when = (_dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc) if epoch.isdigit()
            else _dt.datetime.now(_dt.timezone.utc))
    return when.replace(microsecond=0).isoformat()
