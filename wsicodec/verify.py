"""``wsicodec verify``: check that a store is whole and readable, and (``against``) how close its
pixels are to the source slide.

Checks, in order: the group metadata (format marker, version, completeness, every key a reader
relies on), the latent / tile-map array metadata, the model (named weights present, sha256 as in
the store, entropy tables in the store equal to the model's), the tile map (every tile coded or
glass, counts as in the metadata), every latent chunk (present exactly for coded tiles, passes its
CRC-32C and decodes; entropy decoding only, chunk by chunk), no stray files, and every associated
image. A problem in a chunk is named by its tile position ``(tx, ty)``.

With ``against``, every tile is also decoded to pixels and compared with the source, tile by tile
(memory stays bounded): PSNR over the whole slide and the worst tile, and MS-SSIM (pixel-weighted
mean over tiles; pytorch-msssim, 5 scales, window shrunk for tiles under 161 px, tiles under 33 px
left out).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsicodec.codec import chunk_stream_shape
from wsicodec.errors import first_line
from wsicodec.store import (
    ENCODED_ASSOCIATED,
    TILE_CODED,
    TILE_GLASS,
    WsiStore,
    array_chunk_file,
    associated_pixels,
    check_arrays,
    chunk_crc_ok,
    entropy_model,
    json_roundtrip,
    open_store,
    stored_chunk_shape,
)
from wsicodec.tiling import TileGrid


@dataclass
class Problem:
    what: str                      # "metadata", "model", "tiles", "chunk", "file", "associated", "pixels"
    message: str
    tile: tuple[int, int] | None = None

    def __str__(self) -> str:
        where = f"tile ({self.tile[0]}, {self.tile[1]}): " if self.tile else ""
        return f"{self.what}: {where}{self.message}"


@dataclass
class VerifyReport:
    path: str
    ok: bool = True
    problems: list[Problem] = field(default_factory=list)
    tiles: int = 0
    coded: int = 0
    glass: int = 0
    chunks_decoded: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    associated: list[str] = field(default_factory=list)
    quality: dict[str, Any] | None = None

    def add(self, what: str, message: str, tile: tuple[int, int] | None = None) -> None:
        self.problems.append(Problem(what, message, tile))
        self.ok = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["problems"] = [dict(asdict(p), text=str(p)) for p in self.problems]
        return d


def verify_store(path: str | os.PathLike, against: str | os.PathLike | None = None,
                 model_dir: Path | None = None, device: str = "auto", batch_size: int = 8,
                 check_model: bool = True) -> VerifyReport:
    """Check a store (see the module docstring). Raises :class:`StoreError` only when ``path`` is
    not a readable, complete wsicodec store at all; everything else is listed in the report."""
    path = Path(path)
    rep = VerifyReport(str(path))
    path, group, meta = open_store(path)  # raises StoreError: not a complete, readable store
    lv = meta["level0"]
    grid = TileGrid(lv["width"], lv["height"], meta["tile_size"], meta["stride"])
    rep.tiles = len(grid)
    channels = len(meta["background"]["latents"])

    # -- arrays --------------------------------------------------------------------------------
    try:
        latents, tiles = group["latents"], group["tiles"]
    except Exception as e:
        rep.add("metadata", f"cannot open the latent / tile arrays ({first_line(e)})")
        return rep
    problem = check_arrays(latents, tiles, grid, channels, entropy_model(meta), meta["format_version"])
    if problem:
        rep.add("metadata", problem)
        return rep
    enc = latents.metadata.chunk_key_encoding.to_dict()
    if enc.get("name") != "default" or enc.get("configuration", {}).get("separator", "/") != "/":
        rep.add("metadata", f"latent chunk key encoding {enc}, expected default with '/'")
        return rep

    # -- model ---------------------------------------------------------------------------------
    m = meta["model"]
    rep.model = {"name": m["name"], "sha256": m["sha256"], "checked": False}
    if check_model:
        _check_model(rep, latents, m, model_dir, meta.get("operating_point"))

    # -- tile map ------------------------------------------------------------------------------
    try:
        state = np.asarray(tiles[...])
    except Exception as e:
        rep.add("tiles", f"tile map cannot be read ({first_line(e)})")
        state = None
    if state is not None:
        rep.coded = int((state == TILE_CODED).sum())
        rep.glass = int((state == TILE_GLASS).sum())
        for ty, tx in zip(*np.nonzero((state != TILE_CODED) & (state != TILE_GLASS)), strict=True):
            rep.add("tiles", f"state {int(state[ty, tx])} (not written)" if state[ty, tx] == 0
                    else f"invalid state {int(state[ty, tx])}", (int(tx), int(ty)))
        counts = meta.get("tiles")
        if isinstance(counts, dict) and (counts.get("total") != len(grid) or counts.get("glass") != rep.glass):
            rep.add("tiles", f"metadata says {counts.get('total')} tiles / {counts.get('glass')} glass, "
                             f"the tile map {len(grid)} / {rep.glass}")

    # -- chunks --------------------------------------------------------------------------------
    for tx, ty in grid:
        f = array_chunk_file(path, latents, tx, ty)
        st = None if state is None else int(state[ty, tx])
        if not f.is_file():
            if st == TILE_CODED or st is None:
                rep.add("chunk", f"{f.relative_to(path)} is missing", (tx, ty))
            continue
        if st == TILE_GLASS:
            rep.add("chunk", f"glass tile has a chunk file {f.relative_to(path)}", (tx, ty))
            continue
        try:
            data = f.read_bytes()
        except OSError as e:
            rep.add("chunk", f"{f.relative_to(path)} cannot be read ({e.strerror or e})", (tx, ty))
            continue
        if not chunk_crc_ok(data):
            rep.add("chunk", f"{f.relative_to(path)} is corrupt (CRC-32C mismatch)", (tx, ty))
            continue
        lx0, ly0, lx1, ly1 = grid.tile_latents(tx, ty)
        try:
            shape = chunk_stream_shape(data)
            need = stored_chunk_shape(tuple(latents.shape), grid.chunk, tx, ty, meta["format_version"])
            # a whole chunk is valid in every version (it is what zarr itself writes)
            if shape != need and shape != (need[0], grid.chunk, grid.chunk):
                rep.add("chunk", f"{f.relative_to(path)} holds {shape[1]} x {shape[2]} latents, the layout "
                                 f"{need[1]} x {need[2]}", (tx, ty))
                continue
            np.asarray(latents[:, ly0:ly1, lx0:lx1])
            rep.chunks_decoded += 1
        except Exception as e:
            rep.add("chunk", f"{f.relative_to(path)} does not decode ({first_line(e)})", (tx, ty))

    # -- stray files -----------------------------------------------------------------------------
    _check_files(rep, path, grid, meta)

    # -- associated images -----------------------------------------------------------------------
    for name in meta.get("associated", []):
        try:
            associated_pixels(group, meta, name)
            rep.associated.append(name)
        except Exception as e:
            rep.add("associated", f"{name!r} cannot be read ({first_line(e)})")

    if against is not None:
        if not rep.ok:
            rep.add("pixels", "not compared with the source: the store has problems")
        else:
            _compare(rep, path, Path(against), model_dir, device, batch_size)
    return rep


def _check_model(rep: VerifyReport, latents: Any, m: dict[str, Any], model_dir: Path | None,
                 point: Any = None) -> None:
    from wsicodec.codec import store_codec
    from wsicodec.models import ModelError, load_model

    try:
        net, card = load_model(m["name"], model_dir, expect_sha256=m["sha256"])
    except ModelError as e:
        rep.add("model", str(e))
        return
    rep.model.update(checked=True, architecture=card.architecture)
    if card.spec.entropy_model != m.get("entropy_model", "factorized"):
        rep.add("model", f"the store says entropy model {m.get('entropy_model')!r}, model {m['name']!r} has "
                         f"{card.spec.entropy_model!r}")
        return
    try:
        stored = latents.metadata.to_dict()["codecs"][0]
    except Exception as e:
        rep.add("model", f"the store's latent codec cannot be read ({first_line(e)})")
        return
    if stored != json_roundtrip(store_codec(net, card).to_dict()):
        rep.add("model", f"the store's entropy model differs from model {m['name']!r}'s")
    if card.spec.variable_rate:
        from wsicodec.models.rates import RateError, point_from_meta

        try:
            point_from_meta(net, point)
        except RateError as e:
            rep.add("operating_point", str(e))


def _check_files(rep: VerifyReport, path: Path, grid: TileGrid, meta: dict[str, Any]) -> None:
    """Files that have no place in the layout (``docs/format.md``), e.g. chunks outside the grid."""
    names = set(meta.get("associated", []))
    # one chunk per associated image: encoded bytes (1-D) from version 3 on, (h, w, 3) pixels before
    associated_chunk = ("c", "0") if meta["format_version"] >= ENCODED_ASSOCIATED else ("c", "0", "0", "0")

    def index(v: str, n: int) -> bool:
        return v.isdigit() and str(int(v)) == v and int(v) < n

    for f in sorted(path.rglob("*")):
        if f.is_dir():
            continue
        rel = f.relative_to(path).parts
        ok = (rel in {("zarr.json",), ("latents", "zarr.json"), ("tiles", "zarr.json"), ("tiles", "c", "0", "0"),
                      ("associated", "zarr.json")}
              or (len(rel) == 5 and rel[:3] == ("latents", "c", "0") and index(rel[3], grid.tiles_y)
                  and index(rel[4], grid.tiles_x))
              or (len(rel) >= 3 and rel[0] == "associated" and rel[1] in names
                  and rel[2:] in {("zarr.json",), associated_chunk}))
        if not ok:
            rep.add("file", f"unexpected file {'/'.join(rel)}")


def _tile_ms_ssim(a: np.ndarray, b: np.ndarray) -> float | None:
    side = min(a.shape[:2])
    win = 11
    while win >= 3 and not side > (win - 1) * 16:
        win -= 2
    if win < 3:
        return None
    if np.array_equal(a, b):
        return 1.0
    import torch
    from pytorch_msssim import ms_ssim

    def t(x: np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None].float()

    with torch.no_grad():
        return float(ms_ssim(t(a), t(b), data_range=255, win_size=win))


def _compare(rep: VerifyReport, path: Path, against: Path, model_dir: Path | None, device: str,
             batch_size: int) -> None:
    from wsicodec.slide import open_input

    with WsiStore(path, device=device, batch_size=batch_size, model_dir=model_dir) as store, \
            open_input(against) as src:
        if src.unreadable:
            rep.add("pixels", f"{against}: {src.unreadable}, not comparable with the store's 8-bit RGB")
            return
        if tuple(src.dimensions) != tuple(store.dimensions):
            rep.add("pixels", f"{against} is {src.dimensions[0]}x{src.dimensions[1]}, "
                              f"the store {store.dimensions[0]}x{store.dimensions[1]}")
            return
        sq_err, n_px = 0.0, 0
        worst: tuple[float, tuple[int, int]] | None = None
        ssim_sum, ssim_px = 0.0, 0
        coded = [0.0, 0, 0.0, 0]  # the coded (tissue) tiles alone: squared error, values, MS-SSIM sum, pixels
        tiles = list(store.grid)
        try:
            for tx, ty, px in store.decode_tiles(tiles):
                x, y, w, h = store.grid.tile_box(tx, ty)
                ref = src.read_rgb(x, y, w, h)
                d = ref.astype(np.float64) - px.astype(np.float64)
                se = float((d * d).sum())
                sq_err += se
                n_px += d.size
                p = _psnr(se / d.size)
                if worst is None or p < worst[0]:
                    worst = (p, (tx, ty))
                s = _tile_ms_ssim(ref, px)
                if s is not None and math.isfinite(s):
                    ssim_sum += s * w * h
                    ssim_px += w * h
                if store.tile_state[ty, tx] == TILE_CODED:
                    coded[0] += se
                    coded[1] += d.size
                    if s is not None and math.isfinite(s):
                        coded[2] += s * w * h
                        coded[3] += w * h
        except Exception as e:
            rep.add("pixels", f"decoding failed ({first_line(e)})")
            return
        rep.quality = {
            "against": str(against),
            "psnr": round(_psnr(sq_err / max(n_px, 1)), 3),
            "worst_tile_psnr": round(worst[0], 3) if worst else None,
            "worst_tile": list(worst[1]) if worst else None,
            "ms_ssim": round(ssim_sum / ssim_px, 5) if ssim_px else None,
        }
        _check_target(rep, store.meta.get("quality"), coded)


def _check_target(rep: VerifyReport, record: Any, coded: list) -> None:
    """A store compressed for a target (``compress --target``): the target's figure over every
    coded tile (the tissue the target was sampled from), and a problem when it falls short."""
    from wsicodec.quality import METRICS, reaches

    if not (isinstance(record, dict) and record.get("chosen_by") == "target"
            and isinstance(record.get("target"), dict)):
        return
    metric, value = record["target"].get("metric"), record["target"].get("value")
    if metric not in METRICS or not isinstance(value, (int, float)):
        rep.add("metadata", f"unreadable target {record['target']!r}")
        return
    se, n, ssim_sum, ssim_px = coded
    figures = {"psnr": round(_psnr(se / n), 3) if n else None,
               "ms_ssim": round(ssim_sum / ssim_px, 5) if ssim_px else None}
    got = figures[metric]
    met = got is not None and reaches(got, value, metric)
    rep.quality["target"] = {"metric": metric, "value": value, "coded_tiles": figures, "measured": got,
                             "sample_measured": (record.get("measured") or {}).get(metric), "met": met}
    if not met:
        rep.add("pixels", f"target {metric}={value:g} not met: {got} over the coded tiles "
                          f"(the sample at compression measured {(record.get('measured') or {}).get(metric)})")


def _psnr(mse: float, cap: float = 100.0) -> float:
    return cap if mse <= 0 else min(cap, 10 * math.log10(255.0 ** 2 / mse))
