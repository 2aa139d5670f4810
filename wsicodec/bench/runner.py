"""``run_benchmark``: sample the test images, run every codec's sweep, measure every metric, and
write ``results.csv``, ``summary.json``, one rate–distortion PNG per metric and ``report.md``
(BD-rate table and bpp-at-target table), printing the same tables in the terminal.
``plot_results`` draws the PNGs again from a ``results.csv``."""
from __future__ import annotations

import csv
import json
import math
import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsicodec.bench.codecs import ALL_CODECS, CLASSICAL, Codec, make_codec
from wsicodec.bench.metrics import ALL_METRICS, DEFAULT_METRICS, HIGHER_IS_BETTER, LABELS, PSNR_CAP, MetricSet
from wsicodec.bench.rd import average_curves, bd_rate, curve, is_monotone, rate_at_quality
from wsicodec.errors import BenchError

CSV_COLUMNS = ["image", "codec", "setting", "bytes", "pixels", "bpp", "psnr", "ms_ssim", "lpips", "st_lpips",
               "st_lpips_vgg", "encode_mpix_s", "decode_mpix_s"]
#: quality targets of the "bpp needed" table: (metric, target)
TARGETS = (("ms_ssim", 0.99), ("psnr", 38.0))
#: the "upper half" BD-rate table integrates over the quality range of the anchor's settings from
#: this quality up (70–95: what scanners and archives write); for the codecs with a 1–100 scale
UPPER_FROM = 70
UPPER_ANCHORS = ("jpeg", "webp", "jxl", "avif")
#: a sweep may lose this much quality from one setting to the next and still count as monotone
#: (PSNR in dB, MS-SSIM and LPIPS in their units); larger drops are reported.
MONOTONE_TOL = {"psnr": 0.05, "ms_ssim": 0.0005, "lpips": 0.002, "st_lpips": 0.002, "st_lpips_vgg": 0.002}


@dataclass
class TestImage:
    name: str
    rgb: np.ndarray
    source: str


def parse_list(value: str | Sequence[str] | None, known: Sequence[str], what: str) -> list[str] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [v for part in value for v in str(part).split(",")]
    items = [i.strip() for i in items if i.strip()]
    for i in items:
        if i not in known:
            raise BenchError(f"unknown {what} {i!r} (known: {', '.join(known)})")
    return list(dict.fromkeys(items))


def collect_images(inputs: Sequence[str | Path], tiles: int = 8, tile_size: int = 512, seed: int = 0,
                   notes: list[str] | None = None) -> list[TestImage]:
    """The test images: every image file whole; for every slide, ``tiles`` tissue tiles of
    ``tile_size`` pixels sampled at level 0 with ``seed`` (full tiles preferred; all tiles if the
    tissue detector finds none). Folders are searched for images and slides."""
    from wsicodec.slide import open_input
    from wsicodec.tiling import TileGrid, tissue_mask
    from wsicodec.train.data import find_inputs

    if tiles < 1 or tile_size < 16:
        raise BenchError(f"need --tiles >= 1 and --tile-size >= 16 (got {tiles}, {tile_size})")
    notes = notes if notes is not None else []
    paths = find_inputs(list(inputs))
    if not paths:
        raise BenchError(f"{', '.join(map(str, inputs))}: no images or slides found")
    out: list[TestImage] = []
    used: set[str] = set()

    def unique(name: str) -> str:
        base, k = name, 2
        while name in used:
            name, k = f"{base}~{k}", k + 1
        used.add(name)
        return name

    for path in paths:
        with open_input(path) as src:
            W, H = src.dimensions
            if src.is_image:
                out.append(TestImage(unique(path.stem), src.read_rgb(0, 0, W, H), str(path)))
                continue
            grid = TileGrid(W, H, tile_size, 1)
            mask = tissue_mask(src, grid)
            full = np.zeros_like(mask)
            full[: H // tile_size, : W // tile_size] = True
            cand = np.argwhere(mask & full)
            if len(cand) == 0:
                cand = np.argwhere(mask)
            if len(cand) == 0:
                notes.append(f"{path}: no tissue tiles found; sampling among all tiles")
                cand = np.argwhere(np.ones_like(mask))
            rng = np.random.default_rng(seed)
            pick = cand[rng.permutation(len(cand))[:tiles]]
            if len(pick) < tiles:
                notes.append(f"{path}: only {len(pick)} tissue tiles of {tile_size} px (asked for {tiles})")
            for ty, tx in sorted(map(tuple, pick)):
                x, y, w, h = grid.tile_box(int(tx), int(ty))
                out.append(TestImage(unique(f"{path.stem}@{x},{y}"), src.read_rgb(x, y, w, h), str(path)))
    return out


@dataclass
class BenchResult:
    out: Path
    rows: list[dict]
    summary: dict
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


def progress_bar(enabled: bool, console):
    from contextlib import nullcontext

    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


def run_benchmark(inputs: Sequence[str | Path], out: str | Path, codecs: str | Sequence[str] | None = None,
                  metrics: str | Sequence[str] | None = None, tiles: int = 8, tile_size: int = 512, seed: int = 0,
                  settings: dict[str, Sequence[Any]] | None = None, model_dir: Path | None = None,
                  device: str = "cpu", progress: bool = True, console=None,
                  reuse: str | Path | None = None, precision: str = "auto", effort: str = "standard"
                  ) -> BenchResult:
    """Benchmark ``codecs`` (default: all; ``wsicodec`` only if a model is shipped) on ``inputs``
    and write the result files into ``out``. ``settings`` overrides a codec's sweep (e.g.
    ``{"jpeg": [50, 80]}``; for ``wsicodec`` a list of model names). ``reuse``: an earlier
    ``results.csv`` whose rows for these images are kept, except for the codec settings (models)
    measured now. ``effort``: wsicodec's encoder effort (its curves get ``-high`` or ``-max`` appended)."""
    from rich.console import Console

    console = console or Console(quiet=not progress)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BenchError(f"{out}: exists and is not a folder")
    codec_names = parse_list(codecs, ALL_CODECS, "codec")
    metric_names = parse_list(metrics, ALL_METRICS, "metric") or list(DEFAULT_METRICS)
    notes: list[str] = []
    explicit = codec_names is not None
    codec_names = codec_names or list(ALL_CODECS)
    settings = settings or {}
    for k in settings:
        if k not in ALL_CODECS:
            raise BenchError(f"unknown codec {k!r} in settings (known: {', '.join(ALL_CODECS)})")

    images = collect_images(inputs, tiles, tile_size, seed, notes)
    built: list[Codec] = []
    try:
        for name in codec_names:
            try:
                built.append(make_codec(name, settings.get(name), model_dir=model_dir, device=device,
                                        precision=precision, effort=effort))
            except ValueError as e:
                if explicit:
                    raise
                notes.append(f"{e}; skipped")
        if not built:
            raise BenchError("no codec to benchmark")
        mset = MetricSet(tuple(metric_names))
        for m, why in mset.unavailable().items():
            notes.append(f"metric {m} unavailable: {why}")
        for n in notes:
            console.print(f"[yellow]note:[/] {n}")

        from wsicodec.bench.visual import CropKeeper

        keeper = CropKeeper([im.name for im in images])
        rows = _measure(images, built, mset, progress, console, keeper)
        if reuse:
            points = {(c.curve(x), str(x)) for c in built for x in c.settings}
            kept = reused_rows(reuse, {im.name for im in images}, points)
            notes.append(f"{len(kept)} measurements of {', '.join(sorted({r['codec'] for r in kept})) or 'no codec'} "
                         f"reused from {reuse}")
            rows += kept
    finally:
        for c in built:
            c.close()

    meta = {
        "images": [{"name": im.name, "source": im.source, "width": int(im.rgb.shape[1]),
                    "height": int(im.rgb.shape[0])} for im in images],
        "codecs": {c.name: {"settings": [str(s) for s in c.settings], "setting": c.setting_label} for c in built},
        "metrics": metric_names, "unavailable_metrics": mset.unavailable(), "psnr_cap_db": PSNR_CAP,
        "tiles": tiles, "tile_size": tile_size, "seed": seed,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "wsicodec_bytes": "entropy-coded latent chunks (files under <store>/latents/c/), store JSON metadata excluded",
    }
    out.mkdir(parents=True, exist_ok=True)
    visuals = _write_visuals(keeper, built, model_dir, out)
    summary, files = write_results(out, rows, meta, notes, visuals, console)
    return BenchResult(out, rows, summary, files + visuals, notes)


def write_results(out: Path, rows: list[dict], meta: dict, notes: list[str], visuals: Sequence[Path] = (),
                  console=None) -> tuple[dict, list[Path]]:
    """Write ``results.csv``, ``summary.json``, the plots and ``report.md`` of ``rows`` into
    ``out`` (``meta``: the run's description, as ``summary.json`` keeps it; ``notes`` gains a note
    per classical sweep that is not monotone, once); returns the averaged curves and the files
    written. Measures nothing: a results file merged from several runs is written the same way
    (``benchmarks/merge_results.py``)."""
    from wsicodec.bench.plots import rd_plot

    metric_names = list(meta["metrics"])
    summary = average_curves(rows, metric_names)
    mono = _monotonicity(rows, [c for c in meta["codecs"] if c in CLASSICAL], metric_names)
    for codec, bad in mono.items():
        for m, imgs in bad.items():
            note = (f"{codec}: {m} sweep is not monotone on {len(imgs)} image(s) "
                    f"({', '.join(imgs[:3])}{'…' if len(imgs) > 3 else ''})")
            if note not in notes:
                notes.append(note)
    computable = [m for m in metric_names if m not in meta["unavailable_metrics"]]
    bd = bd_table(summary, computable)
    bd_upper = bd_table(summary, computable, upper=True)
    need = target_table(summary)
    doc = {"meta": meta, "curves": summary, "bd_rate": bd, "bd_rate_upper": bd_upper, "bpp_at_target": need,
           "monotone_violations": mono, "notes": notes}
    files = [_write_csv(rows, out / "results.csv")]
    (out / "summary.json").write_text(json.dumps(_jsonable(doc), indent=2) + "\n")
    files.append(out / "summary.json")
    for m in computable:
        files.append(rd_plot(summary, m, out / f"rd_{m}.png"))
    files.append(_write_report(out / "report.md", meta, summary, bd, bd_upper, need, notes, computable, visuals))
    if console is not None:
        print_tables(console, bd, bd_upper, need, summary)
    return summary, files


def read_results(path: str | Path) -> list[dict]:
    """The rows of a ``results.csv`` (numbers as floats, empty cells as None)."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if k not in ("image", "codec", "setting"):
                    row[k] = float(v) if v not in ("", None) else None
            rows.append(row)
    return rows


def reused_rows(path: str | Path, images: set[str], measured: set[tuple[str, str]]) -> list[dict]:
    """Rows of an earlier ``results.csv`` for ``images``, leaving out the (codec, setting) pairs
    ``measured`` now."""
    return [r for r in read_results(path)
            if r.get("image") in images and (r.get("codec"), r.get("setting")) not in measured]


def plot_results(results: str | Path, out: str | Path | None = None,
                 metrics: str | Sequence[str] | None = None) -> list[Path]:
    """Draw the rate–distortion plots (``rd_<metric>.png``) of a ``results.csv`` again, without
    measuring anything: into ``out`` (default: the CSV's folder), for ``metrics`` (default: every
    metric the CSV has values of)."""
    from wsicodec.bench.plots import rd_plot

    results = Path(results)
    if not results.is_file():
        raise BenchError(f"{results}: no such results file")
    rows = read_results(results)
    if not rows or not {"image", "codec", "setting", "bpp"} <= set(rows[0]):
        raise BenchError(f"{results}: not a results.csv of wsicodec bench (no rows, or no image/codec/setting/bpp)")
    names = parse_list(metrics, ALL_METRICS, "metric") or \
        [m for m in ALL_METRICS if any(r.get(m) is not None for r in rows)]
    out = Path(out) if out is not None else results.parent
    out.mkdir(parents=True, exist_ok=True)
    summary = average_curves(rows, names)
    return [rd_plot(summary, m, out / f"rd_{m}.png") for m in names]


def _write_visuals(keeper, built: list[Codec], model_dir: Path | None, out: Path) -> list[Path]:
    """The Fig. 3 crops (:mod:`wsicodec.bench.visual`) at wsicodec's default model's rate."""
    from wsicodec.bench.visual import rate_anchors

    default = None
    if any(c.name == "wsicodec" for c in built):
        from wsicodec.models import ModelError
        from wsicodec.models.registry import default_model_name

        try:
            default = default_model_name(model_dir)
        except ModelError:  # no models: the anchors fall back to the other settings
            default = None
    return keeper.write(out, rate_anchors({c.name: [str(s) for s in c.settings] for c in built}, default))


def _measure(images: list[TestImage], codecs: list[Codec], mset: MetricSet, progress: bool, console,
             keeper=None) -> list[dict]:
    rows: list[dict] = []
    total = len(images) * sum(len(c.settings) for c in codecs)
    with progress_bar(progress, console) as bar:
        task = bar.add_task("bench", total=total) if bar else None
        for im in images:
            h, w = im.rgb.shape[:2]
            for codec in codecs:
                for s in codec.settings:
                    if bar:
                        bar.update(task, description=f"{codec.name} {s} · {im.name}")
                    coded = codec.run(im.rgb, s)
                    m = mset(im.rgb, coded.decoded)
                    pixels = w * h
                    if keeper is not None:
                        keeper.original(im.name, im.rgb)
                        keeper.keep(im.name, codec.curve(s), str(s), 8 * coded.bytes / pixels, m.get("psnr"),
                                    coded.decoded)
                    rows.append({
                        "image": im.name, "codec": codec.curve(s), "setting": str(s), "bytes": coded.bytes,
                        "pixels": pixels, "bpp": 8 * coded.bytes / pixels,
                        **{k: m.get(k) for k in ALL_METRICS},
                        "encode_mpix_s": pixels / 1e6 / max(coded.encode_s, 1e-9),
                        "decode_mpix_s": pixels / 1e6 / max(coded.decode_s, 1e-9),
                    })
                    if bar:
                        bar.advance(task)
    return rows


def _monotonicity(rows: list[dict], codecs: Iterable[str], metrics: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """Per classical codec and metric, the images whose sweep is not monotone."""
    bad: dict[str, dict[str, list[str]]] = {}
    for c in codecs:
        crow = [r for r in rows if r["codec"] == c]
        for im in dict.fromkeys(r["image"] for r in crow):
            sweep = [r for r in crow if r["image"] == im]
            checks = [("bytes", [r["bytes"] for r in sweep], [0] * len(sweep), True, 0.0)]
            for m in metrics:
                q = [r[m] for r in sweep]
                if all(v is not None and np.isfinite(v) for v in q):
                    checks.append((m, [r["bytes"] for r in sweep], q, HIGHER_IS_BETTER[m], MONOTONE_TOL.get(m, 0.0)))
            for m, r, q, hib, tol in checks:
                if not is_monotone(r, q, hib, tol):
                    bad.setdefault(c, {}).setdefault(m, []).append(im)
    return bad


def upper_range(summary: dict, anchor: str, metric: str) -> tuple[float, float] | None:
    """The quality range the anchor covers with its upper sweep settings (quality ≥
    :data:`UPPER_FROM`, the archives' range); None for a codec without a 1–100 quality scale or
    without two such points."""
    if anchor not in UPPER_ANCHORS:
        return None
    vals = []
    for p in summary[anchor]["points"]:
        try:
            upper = float(p["setting"]) >= UPPER_FROM
        except (TypeError, ValueError):
            continue
        if upper and p.get(metric) is not None:
            vals.append(p[metric])
    return (min(vals), max(vals)) if len(vals) >= 2 else None


def bd_table(summary: dict, metrics: Sequence[str],
             upper: bool = False) -> dict[str, dict[str, dict[str, float | None]]]:
    """BD-rate (%) of every codec against every classical codec, per metric:
    ``table[metric][codec][anchor]``; None where it cannot be computed. ``upper``: only over the
    quality range of the anchor's settings ≥ :data:`UPPER_FROM` (:func:`upper_range`)."""
    anchors = [c for c in summary if c in CLASSICAL and (not upper or c in UPPER_ANCHORS)]
    table: dict = {}
    for m in metrics:
        table[m] = {}
        for c in summary:
            rc, qc = curve(summary, c, m)
            table[m][c] = {}
            for a in anchors:
                ra, qa = curve(summary, a, m)
                within = upper_range(summary, a, m) if upper else None
                v = float("nan") if upper and within is None else bd_rate(ra, qa, rc, qc, within)
                table[m][c][a] = None if not math.isfinite(v) else v
    return table


def target_table(summary: dict) -> dict[str, dict[str, float | None]]:
    """bpp each codec needs (on its averaged curve) to reach each target of :data:`TARGETS`."""
    out: dict = {}
    for c in summary:
        out[c] = {}
        for m, t in TARGETS:
            r, q = curve(summary, c, m)
            v = rate_at_quality(r, q, t, HIGHER_IS_BETTER[m]) if r else float("nan")
            out[c][f"{m}>={t:g}"] = None if not math.isfinite(v) else v
    return out


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _write_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k), 6) if isinstance(r.get(k), float) else r.get(k) for k in CSV_COLUMNS})
    return path


def _md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.1f}%"


def _bpp(v: float | None) -> str:
    return "not reached" if v is None else f"{v:.3f}"


def _bd_rows(bd: dict, m: str) -> tuple[list[str], list[list[str]]]:
    codecs = list(bd[m])
    anchors = list(next(iter(bd[m].values()), {}))
    return ["codec \\ anchor"] + anchors, [[c] + [_pct(bd[m][c][a]) for a in anchors] for c in codecs]


def _target_rows(need: dict) -> tuple[list[str], list[list[str]]]:
    keys = [f"{m}>={t:g}" for m, t in TARGETS]
    header = ["codec"] + [f"bpp for {LABELS[m]} ≥ {t:g}" for m, t in TARGETS]
    return header, [[c] + [_bpp(need[c][k]) for k in keys] for c in need]


def _speed_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    rows = []
    for c, d in summary.items():
        enc = [p["encode_mpix_s"] for p in d["points"] if p.get("encode_mpix_s")]
        dec = [p["decode_mpix_s"] for p in d["points"] if p.get("decode_mpix_s")]
        rows.append([c, str(d["images"]), str(len(d["points"])),
                     f"{np.median(enc):.2f}" if enc else "", f"{np.median(dec):.2f}" if dec else ""])
    return ["codec", "images", "settings", "encode Mpx/s (median)", "decode Mpx/s (median)"], rows


def result_tables(summary: dict, metrics: Sequence[str], bd: dict | None = None, bd_upper: dict | None = None,
                  need: dict | None = None, plots: bool = False, level: int = 2) -> str:
    """The report's Markdown tables of averaged curves (``summary``): BD-rate per metric over the
    whole overlap and over the upper half, bits needed for each target, speed; with ``plots`` the
    ``rd_<metric>.png`` beside each metric. Tables not given are computed from ``summary``."""
    bd = bd if bd is not None else bd_table(summary, metrics)
    bd_upper = bd_upper if bd_upper is not None else bd_table(summary, metrics, upper=True)
    need = need if need is not None else target_table(summary)
    h = "#" * level
    parts: list[str] = []
    for m in metrics:
        parts += [f"{h} BD-rate, {LABELS[m]}", "", _md_table(*_bd_rows(bd, m)), "",
                  f"Upper half only: over the quality range of the anchor's settings {UPPER_FROM}–95 "
                  "(where archives keep slides):", "", _md_table(*_bd_rows(bd_upper, m)), ""]
        if plots:
            parts += [f"![{m}](rd_{m}.png)", ""]
    parts += [f"{h} Bits per pixel needed to reach a target", "", _md_table(*_target_rows(need)), "",
              f"{h} Speed", "", _md_table(*_speed_rows(summary)), "",
              "Speeds are wall-clock, single process; wsicodec's include loading the model and writing / "
              "reading the Zarr store.", ""]
    return "\n".join(parts)


def print_tables(console, bd: dict, bd_upper: dict, need: dict, summary: dict) -> None:
    from rich.table import Table

    def show(title: str, header: list[str], body: list[list[str]]) -> None:
        t = Table(title=title)
        for h in header:
            t.add_column(h, justify="right" if h != header[0] else "left")
        for row in body:
            t.add_row(*row)
        console.print(t)

    for m in bd:
        show(f"BD-rate, {LABELS[m]} (negative = fewer bits than the anchor)", *_bd_rows(bd, m))
        show(f"BD-rate, {LABELS[m]}, upper half (anchor quality {UPPER_FROM}–95)", *_bd_rows(bd_upper, m))
    show("bits per pixel needed to reach a target", *_target_rows(need))
    show("speed", *_speed_rows(summary))


def _write_report(path: Path, meta: dict, summary: dict, bd: dict, bd_upper: dict, need: dict, notes: list[str],
                  metrics: Sequence[str], visuals: Sequence[Path] = ()) -> Path:
    parts = [
        "# wsicodec bench report", "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} on {meta['machine']['platform']} "
        f"({meta['machine']['processor']}), Python {meta['machine']['python']}.", "",
        f"- Images: {len(meta['images'])} "
        f"({sum(i['width'] * i['height'] for i in meta['images']) / 1e6:.2f} Mpx in all); slides sampled as "
        f"{meta['tiles']} tissue tiles of {meta['tile_size']} px, seed {meta['seed']}.",
        "- Codecs and sweeps: " + "; ".join(f"{c} ({d['setting']}: {', '.join(d['settings'])})"
                                            for c, d in meta["codecs"].items()) + ".",
        "- Bytes: classical codecs count their whole encoded file (headers included). wsicodec counts "
        "its entropy-coded latent chunks (every file under `<store>/latents/c/`, each with its 20-byte "
        "header and 4-byte CRC32C), measured from a real `wsicodec compress` of the image; the store's "
        "JSON metadata (frozen model tables, slide properties) is constant per slide and part of the "
        "model, so it is not counted.",
        f"- PSNR is 8-bit RGB PSNR capped at {meta['psnr_cap_db']:g} dB; curves average each metric over "
        "images at each codec setting (PSNR averaged in dB).",
        "- BD-rate: Bjøntegaard delta rate (cubic fit of log-rate against quality, integrated over the "
        "overlapping quality range); negative means fewer bits than the anchor for the same quality. "
        "n/a: a curve with fewer than 2 points or no overlap.", "",
    ]
    if meta["unavailable_metrics"]:
        for m, why in meta["unavailable_metrics"].items():
            parts.append(f"- **{m} not computed:** {why}.")
        parts.append("")
    parts.append(result_tables(summary, metrics, bd, bd_upper, need, plots=True))
    if visuals:
        from wsicodec.bench.visual import CROP

        parts += ["## Visual comparison at the same rate (the paper's Fig. 3)", "",
                  (f"A {CROP}-px centre crop of the first test images, the original beside every codec at "
                   "its setting nearest wsicodec's bits per pixel on that image (its default model where "
                   "measured; without wsicodec, JPEG quality 80's). The captions give each setting, its bpp "
                   "and PSNR."), ""]
        parts += [f"![{p.stem}]({p.name})" for p in visuals] + [""]
    parts += ["## Averaged curves", ""]
    for c, d in summary.items():
        header = ["setting", "bpp"] + [m for m in metrics] + ["enc Mpx/s", "dec Mpx/s"]
        body = [[p["setting"], f"{p['bpp']:.4f}"] + [_fmt(p.get(m)) for m in metrics]
                + [_fmt(p.get("encode_mpix_s"), 3), _fmt(p.get("decode_mpix_s"), 3)] for p in d["points"]]
        parts += [f"### {c}", "", _md_table(header, body), ""]
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    path.write_text("\n".join(parts))
    return path
