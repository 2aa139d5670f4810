"""``compress --target ms_ssim=0.99``: the cheapest operating point that reaches a quality on the
slide itself, measured on a sample of its tissue tiles.

The sample: ``tiles`` tissue tiles of the store's tile size, drawn with a fixed ``seed`` among the
tiles a thumbnail shows tissue on (whole tiles first), each checked against the writer's own
glass rule. Each tile is coded as ``compress`` codes it (its window with the analysis halo, the
store's chunk codec: the bytes and the latents a reader gets back) and decoded as a reader
decodes it (with 4 latents of context around it; the context's latents are the analysis's,
rounded, since the neighbouring chunks are not coded). PSNR is pooled over the sample's pixels
and MS-SSIM is the pixel-weighted mean over its tiles, as ``verify --against`` measures a store.

The candidates are the operating points on the rate–quality frontier of the calibration set for
the target's metric (cheapest first, each better than every cheaper one), one frontier per
family of models trained for the same distortion (MSE, MS-SSIM): a family keeps its order on
a slide, two families need not. Each family's top point is measured first; then a bisection
finds the family's cheapest point that reaches the target, and the search takes, of all the
points it measured to reach the target, the one of fewest bits on the sample (a target no top
point reaches is refused, naming the best figure reached). A search codes the sample at most
``1 + ceil(log2(candidates))`` times per family.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsicodec.quality import DECIMALS, METRICS, Choice, Figures, OperatingPoint, QualityError, load_calibration, reaches
from wsicodec.store.format import latent_array_shape, stored_chunk_shape

__all__ = ["Target", "TileCoder", "choose_target", "frontier", "frontiers", "parse_target", "sample_tiles"]

#: sampled tiles per target search, unless asked otherwise
SAMPLE_TILES = 8
SAMPLE_SEED = 0
_LIMITS = {"psnr": (0.0, 100.0), "ms_ssim": (0.0, 1.0)}
_NAMES = {"psnr": "PSNR", "ms_ssim": "MS-SSIM"}


@dataclass(frozen=True)
class Target:
    metric: str     # "psnr" (dB) or "ms_ssim"
    value: float

    def __str__(self) -> str:
        return f"{self.metric}={self.value:g}"

    def shown(self, value: float) -> str:
        return f"{value:.{DECIMALS[self.metric]}f}" + (" dB" if self.metric == "psnr" else "")


def parse_target(text: str) -> Target:
    """``"ms_ssim=0.99"`` or ``"psnr=36"`` -> :class:`Target` (``ms-ssim`` is accepted too)."""
    name, sep, value = str(text).partition("=")
    metric = name.strip().lower().replace("-", "_")
    if not sep or metric not in METRICS:
        raise QualityError(f"target {text!r}: expected ms_ssim=VALUE or psnr=VALUE (e.g. ms_ssim=0.99, psnr=36)")
    try:
        v = float(value)
    except ValueError:
        raise QualityError(f"target {text!r}: {value!r} is not a number") from None
    lo, hi = _LIMITS[metric]
    if not (math.isfinite(v) and lo < v <= hi):
        raise QualityError(f"target {text!r}: {_NAMES[metric]} targets lie in ({lo:g}, {hi:g}]")
    return Target(metric, v)


def _calibrated(directory: Path | None) -> tuple[dict[str, Any], dict[OperatingPoint, Figures]]:
    """The installed models' cards by name, and every operating point's figures: the calibration's
    (the models' own validation figures without a calibration table)."""
    from wsicodec.models import list_models

    cards = {c.name: c for c in list_models(directory)}
    cal = load_calibration(directory)
    if cal is not None:
        return cards, dict(cal.points)
    return cards, {OperatingPoint(c.name): Figures(c.validation["bpp"], c.validation["psnr"], c.validation["ms_ssim"])
                   for c in cards.values() if all(k in c.validation for k in ("bpp", "psnr", "ms_ssim"))}


def _frontier_of(figures: dict[OperatingPoint, Figures], metric: str) -> list[tuple[OperatingPoint, Figures]]:
    out: list[tuple[OperatingPoint, Figures]] = []
    for p, f in sorted(figures.items(), key=lambda kv: (kv[1].bpp, kv[0].label)):
        if not out or f.get(metric) > out[-1][1].get(metric):
            out.append((p, f))
    return out


def frontier(metric: str, directory: Path | None = None, distortion: str | None = None
             ) -> list[tuple[OperatingPoint, Figures]]:
    """The operating points worth trying for a target on ``metric``: by the calibration's
    bits per pixel (the models' own validation figures without a calibration table), cheapest
    first, each better on ``metric`` than every cheaper one; ``distortion``: only the points of
    models trained for it (``mse``, ``ms-ssim``; None: all)."""
    cards, figures = _calibrated(directory)
    if distortion is not None:
        figures = {p: f for p, f in figures.items() if p.model in cards and cards[p.model].distortion == distortion}
    return _frontier_of(figures, metric)


def frontiers(metric: str, directory: Path | None = None) -> list[list[tuple[OperatingPoint, Figures]]]:
    """One :func:`frontier` per training distortion of the installed models (MSE, MS-SSIM), none
    empty. Within a family the points keep their calibration order on a slide; across families
    they need not (on a JPEG-compressed slide the models trained for MS-SSIM gain on the others),
    so a search bisects each family on its own."""
    cards, figures = _calibrated(directory)
    families: dict[str, dict[OperatingPoint, Figures]] = {}
    for p, f in figures.items():
        if p.model in cards:
            families.setdefault(cards[p.model].distortion, {})[p] = f
    found = [_frontier_of(families[k], metric) for k in sorted(families)]
    if not found:
        raise QualityError("no calibrated operating points to search a target among; give --model")
    return found


def sample_tiles(src: Any, grid: Any, read_canvas: Callable, glass: tuple[int, int, int], tiles: int = SAMPLE_TILES,
                 seed: int = SAMPLE_SEED) -> list[tuple[int, int]]:
    """``tiles`` tissue tiles ``(tx, ty)`` of ``grid`` (see the module docstring), in row order."""
    from wsicodec.tiling import is_background, tissue_mask

    mask = tissue_mask(src, grid)
    whole = np.zeros_like(mask)
    whole[: grid.height // grid.tile, : grid.width // grid.tile] = True
    rng = np.random.default_rng(seed)
    ranked = []
    for cand in (np.argwhere(mask & whole), np.argwhere(mask & ~whole), np.argwhere(~mask)):
        ranked += [tuple(int(v) for v in cand[i][::-1]) for i in rng.permutation(len(cand))]
    picked: list[tuple[int, int]] = []
    for tx, ty in ranked[: 4 * tiles + 16]:  # bounded: a thumbnail that shows tissue where there is none
        if not is_background(read_canvas(*grid.tile_box(tx, ty)), glass):
            picked.append((tx, ty))
            if len(picked) == tiles:
                break
    if not picked:
        raise QualityError("no tissue tiles to measure a target on (the slide looks like empty glass)")
    return sorted(picked, key=lambda t: (t[1], t[0]))


@dataclass
class Measured:
    """One tile coded and decoded: its bytes in the store (chunk + CRC-32C), its squared error
    sum, its MS-SSIM and its pixels."""

    bytes: int
    squared_error: float
    ms_ssim: float | None
    pixels: int


class TileCoder:
    """Codes single tiles of a canvas with one operating point the way ``compress`` does, and
    decodes them the way a reader does (see the module docstring)."""

    def __init__(self, point: OperatingPoint, device: str = "auto", precision: str = "auto",
                 model_dir: Path | None = None):
        from wsicodec.codec import LATENT_DTYPE, store_codec
        from wsicodec.engine import Transforms
        from wsicodec.models import load_model
        from wsicodec.models.rates import resolve

        net, card = load_model(point.model, model_dir)
        self.point, self.card = point, card
        self.coder = Transforms(net, card, device, 1, precision=precision, rate=resolve(net, card, point.rate))
        self._codec = store_codec(net, card)
        self._dtype = np.dtype(LATENT_DTYPE[card.spec.entropy_model])
        self.hyper = card.spec.entropy_model != "factorized"

    def code(self, read_canvas: Callable, grid: Any, tx: int, ty: int, glass: tuple[int, int, int]
             ) -> tuple[int, np.ndarray, np.ndarray]:
        """``(bytes, decoded, original)`` of tile ``(tx, ty)`` (pixels clipped to level 0)."""
        spec, s, c = self.card.spec, grid.stride, grid.chunk
        ring = spec.decode_halo
        margin = ring * s + spec.encode_halo
        cw, ch = grid.canvas
        x, y, w, h = grid.tile_box(tx, ty)
        wx0, wy0 = max(tx * grid.tile - margin, 0), max(ty * grid.tile - margin, 0)
        wx1, wy1 = min((tx + 1) * grid.tile + margin, cw), min((ty + 1) * grid.tile + margin, ch)
        window = read_canvas(wx0, wy0, wx1 - wx0, wy1 - wy0)
        lat = self.coder.analysis(window[None])[0]
        lx0, ly0, lx1, ly1 = grid.tile_latents(tx, ty)
        ox, oy = lx0 - wx0 // s, ly0 - wy0 // s
        # the chunk the writer codes: an edge chunk as far as the array reaches, filled beyond the
        # canvas with the glass latents (hyperprior) or zeros (docs/format.md)
        array_shape = latent_array_shape(grid, lat.shape[0], self.card.spec.entropy_model)
        chunk = np.zeros(stored_chunk_shape(array_shape, c, tx, ty), np.int64)
        if self.hyper:
            chunk[:] = self.coder.background_latents(glass)[:, None, None]
        chunk[:, : ly1 - ly0, : lx1 - lx0] = lat[:, oy : oy + ly1 - ly0, ox : ox + lx1 - lx0]
        codec = self._codec._numcodec((lat.shape[0], c, c), self._dtype)
        data = codec.encode(chunk.astype(self._dtype))
        stored = codec.decode(data).astype(np.int32)
        # decode as a reader: the tile's stored latents with `ring` latents of context around it
        rx0, ry0, rx1, ry1 = grid.latent_window(x, y, w, h, ring)
        context = lat[:, ry0 - wy0 // s : ry1 - wy0 // s, rx0 - wx0 // s : rx1 - wx0 // s].astype(np.int32)
        if self.hyper:  # stored hyperprior latents sit on a grid of 2^10 (around predicted means)
            unit = int(self.coder.unit)
            context = np.round(context / unit).astype(np.int32) * unit
        context[:, ly0 - ry0 : ly1 - ry0, lx0 - rx0 : lx1 - rx0] = stored[:, : ly1 - ly0, : lx1 - lx0]
        px = self.coder.synthesis(context[None])[0]
        decoded = px[y - ry0 * s : y - ry0 * s + h, x - rx0 * s : x - rx0 * s + w]
        original = window[y - wy0 : y - wy0 + h, x - wx0 : x - wx0 + w]
        return len(data) + 4, decoded, original  # + the CRC-32C every chunk carries in the store


def measure(tile_coder: TileCoder, read_canvas: Callable, grid: Any, tiles: list[tuple[int, int]],
            glass: tuple[int, int, int], advance: Callable[[int], None] = lambda n=1: None) -> dict[str, float]:
    """bpp, PSNR, MS-SSIM and the worst tile's PSNR of ``tiles`` coded with ``tile_coder``."""
    from wsicodec.bench.metrics import ms_ssim

    total_bytes, se, n, ssim_sum, ssim_px = 0, 0.0, 0, 0.0, 0
    worst = math.inf
    for tx, ty in tiles:
        nbytes, decoded, original = tile_coder.code(read_canvas, grid, tx, ty, glass)
        d = original.astype(np.float64) - decoded.astype(np.float64)
        tile_se = float((d * d).sum())
        total_bytes, se, n = total_bytes + nbytes, se + tile_se, n + d.size
        worst = min(worst, _psnr(tile_se / d.size))
        s = ms_ssim(original, decoded)
        if math.isfinite(s):
            ssim_sum += s * d.shape[0] * d.shape[1]
            ssim_px += d.shape[0] * d.shape[1]
        advance(1)
    pixels = n // 3
    return {"bpp": round(8 * total_bytes / pixels, 4), "psnr": round(_psnr(se / n), 3),
            "ms_ssim": round(ssim_sum / ssim_px, 5) if ssim_px else float("nan"),
            "worst_tile_psnr": round(worst, 3)}


def _psnr(mse: float) -> float:
    return 100.0 if mse <= 0 else min(100.0, 10 * math.log10(255.0 ** 2 / mse))


def choose_target(src: Any, read_canvas: Callable, glass: tuple[int, int, int], target: Target, tile: int,
                  stride: int = 16, *, tiles: int = SAMPLE_TILES, seed: int = SAMPLE_SEED, device: str = "auto",
                  precision: str = "auto", model_dir: Path | None = None, progress: bool = False) -> Choice:
    """The cheapest operating point whose figure on a sample of the slide's tissue tiles reaches
    ``target`` (see the module docstring); :class:`QualityError` when none does."""
    from wsicodec.tiling import TileGrid

    W, H = src.dimensions
    grid = TileGrid(W, H, tile, stride)
    t0 = time.time()
    sample = sample_tiles(src, grid, read_canvas, glass, tiles, seed)
    families = frontiers(target.metric, model_dir)
    steps = sum(1 + math.ceil(math.log2(len(f))) for f in families)  # the top, then a bisection
    tried: dict[OperatingPoint, dict[str, float]] = {}
    with _bar(progress, f"target {target}", steps * len(sample)) as (advance, describe):
        def figure(point: OperatingPoint) -> dict[str, float]:
            if point not in tried:
                describe(f"target {target}: {point}")
                tried[point] = measure(TileCoder(point, device, precision, model_dir), read_canvas, grid, sample,
                                       glass, advance)
            return tried[point]

        def ok(point: OperatingPoint) -> bool:
            return reaches(figure(point)[target.metric], target.value, target.metric)

        for candidates in families:  # each family's top, then its cheapest point that reaches the target
            if not ok(candidates[-1][0]):
                continue
            lo, hi = -1, len(candidates) - 1   # candidates[hi] reaches the target; none at or below lo does
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if ok(candidates[mid][0]):
                    hi = mid
                else:
                    lo = mid
    reached = [p for p in tried if ok(p)]
    if not reached:
        best = max((f[-1][0] for f in families), key=lambda p: tried[p][target.metric])
        raise QualityError(f"target {target} is out of reach: the best the installed models reach on "
                           f"{len(sample)} tissue tiles of this slide is {target.shown(tried[best][target.metric])} "
                           f"({best}, {tried[best]['bpp']:.3f} bpp there)")
    # the fewest bits on the sample among every point measured to reach it (the families' own
    # cheapest, or a top point that took fewer bits there)
    point = min(reached, key=lambda p: (tried[p]["bpp"], p.label))
    measured = tried[point]
    record = {
        "chosen_by": "target", "operating_point": point.to_dict(),
        "target": {"metric": target.metric, "value": target.value},
        "sample": {"tiles": [list(t) for t in sample], "tile_size": tile, "seed": seed,
                   "pixels": int(sum(grid.tile_box(*t)[2] * grid.tile_box(*t)[3] for t in sample))},
        "measured": measured,
        "tried": [{**p.to_dict(), **m} for p, m in sorted(tried.items(), key=lambda kv: (kv[1]["bpp"], kv[0].label))],
    }
    note = (f"target {target}: {point}, {target.shown(measured[target.metric])} on {len(sample)} tissue tiles "
            f"(seed {seed}; {measured['bpp']:.3f} bpp there; {len(tried)} operating points tried "
            f"in {time.time() - t0:.1f} s)")
    return Choice(point, record, note)


class _bar:
    """A progress bar (rich) whose description can change; a no-op when disabled."""

    def __init__(self, enabled: bool, label: str, total: int):
        self.enabled, self.label, self.total = enabled, label, total

    def __enter__(self) -> tuple[Callable[[int], None], Callable[[str], None]]:
        if not self.enabled:
            return (lambda n=1: None), (lambda text: None)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("tiles"), TimeElapsedColumn(), transient=True)
        self.progress.__enter__()
        task = self.progress.add_task(self.label, total=self.total)
        return ((lambda n=1: self.progress.advance(task, n)),
                (lambda text: self.progress.update(task, description=text)))

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.__exit__(*exc)
