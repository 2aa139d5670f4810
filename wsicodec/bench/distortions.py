"""``run_distortions``: the paper's Fig. 1 — how PSNR / MSE, MS-SSIM and the LPIPS-type metrics
respond to JPEG blocking (quality 90 down to 10) and to a colour shift added in CIELAB.

The colour shift of size ``s`` adds ``s / sqrt(2)`` to both a* and b* (so the shift is ``s`` ΔE*ab
units, towards red–yellow, the direction of a warm scanner cast) and converts back to sRGB
(clipped to the gamut). sRGB <-> CIELAB uses the D65 white point and the sRGB transfer curve.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsicodec.bench.metrics import ALL_METRICS, DEFAULT_METRICS, LABELS, MetricSet
from wsicodec.errors import BenchError

JPEG_QUALITIES = (90, 80, 70, 60, 50, 40, 30, 20, 10)
LAB_SHIFTS = (0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50)
_M = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
               [0.0193339, 0.1191920, 0.9503041]])
_WHITE = _M.sum(axis=1)  # D65 XYZ of sRGB white


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    c = rgb.astype(np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _M.T / _WHITE
    d = 6 / 29
    f = np.where(xyz > d ** 3, np.cbrt(xyz), xyz / (3 * d * d) + 4 / 29)
    L = 116 * f[..., 1] - 16
    a = 500 * (f[..., 0] - f[..., 1])
    b = 200 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    L, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    fy = (L + 16) / 116
    f = np.stack([fy + a / 500, fy, fy - b / 200], axis=-1)
    d = 6 / 29
    xyz = np.where(f > d, f ** 3, 3 * d * d * (f - 4 / 29)) * _WHITE
    lin = np.clip(xyz @ np.linalg.inv(_M).T, 0, 1)
    c = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return np.clip(np.round(c * 255), 0, 255).astype(np.uint8)


def lab_shift(rgb: np.ndarray, shift: float, direction: Sequence[float] = (0.0, 1.0, 1.0)) -> np.ndarray:
    """``rgb`` with ``shift`` ΔE*ab added along ``direction`` in (L*, a*, b*) (normalised)."""
    if shift == 0:
        return rgb.copy()
    d = np.asarray(direction, np.float64)
    d = d / np.linalg.norm(d)
    return lab_to_rgb(rgb_to_lab(rgb) + shift * d)


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    import imagecodecs

    return np.asarray(imagecodecs.jpeg8_decode(imagecodecs.jpeg8_encode(np.ascontiguousarray(rgb), level=int(quality))))


def run_distortions(inputs: Sequence[str | Path], out: str | Path, metrics: str | Sequence[str] | None = None,
                    jpeg_qualities: Sequence[int] = JPEG_QUALITIES, lab_shifts: Sequence[float] = LAB_SHIFTS,
                    tiles: int = 4, tile_size: int = 512, seed: int = 0, progress: bool = True,
                    console=None) -> dict:
    """Measure the metric responses on ``inputs`` (images, folders, slides → tissue tiles) and write
    ``distortions.csv``, ``distortions.json``, ``distortions.png`` (metric vs distortion, mean ± std
    over images) and ``distortions_strip.png`` (the example distortions on the first image).
    Returns the averaged summary."""
    from rich.console import Console

    from wsicodec.bench.plots import distortion_plot, image_strip
    from wsicodec.bench.runner import collect_images, parse_list, progress_bar

    console = console or Console(quiet=not progress)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BenchError(f"{out}: exists and is not a folder")
    names = parse_list(metrics, ALL_METRICS, "metric") or list(DEFAULT_METRICS)
    names = ["mse" if n == "psnr" else n for n in names]
    if "mse" in names:
        names.insert(names.index("mse") + 1, "psnr")
    notes: list[str] = []
    images = collect_images(inputs, tiles, tile_size, seed, notes)
    mset = MetricSet(tuple(names))
    for m, why in mset.unavailable().items():
        notes.append(f"metric {m} unavailable: {why}")
    for n in notes:
        console.print(f"[yellow]note:[/] {n}")
    kinds = {
        "jpeg": {"levels": [int(q) for q in jpeg_qualities], "title": "JPEG blocking",
                 "xlabel": "JPEG quality (stronger distortion →)", "short": "JPEG quality", "apply": jpeg_roundtrip},
        "lab_shift": {"levels": [float(s) for s in lab_shifts], "title": "Colour shift in CIELAB",
                      "xlabel": "shift ΔE*ab (added to a* and b*)", "short": "Lab shift ΔE", "apply": lab_shift},
    }
    rows: list[dict] = []
    total = len(images) * sum(len(k["levels"]) for k in kinds.values())
    with progress_bar(progress, console) as bar:
        task = bar.add_task("distortions", total=total) if bar else None
        for im in images:
            for kind, spec in kinds.items():
                for lev in spec["levels"]:
                    d = spec["apply"](im.rgb, lev)
                    rows.append({"image": im.name, "distortion": kind, "level": lev, **mset(im.rgb, d)})
                    if bar:
                        bar.advance(task)
    out.mkdir(parents=True, exist_ok=True)
    cols = ["image", "distortion", "level"] + names
    with open(out / "distortions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(r[k], float) and not np.isfinite(r[k]) else r[k]) for k in cols})
    summary: dict = {}
    for kind, spec in kinds.items():
        s = {k: spec[k] for k in ("levels", "title", "xlabel", "short")}
        s.update({"mean": {}, "std": {}})
        for m in names:
            means, stds = [], []
            for lev in spec["levels"]:
                v = np.array([r[m] for r in rows if r["distortion"] == kind and r["level"] == lev], float)
                ok = np.isfinite(v).all() and len(v)
                means.append(float(v.mean()) if ok else None)
                stds.append(float(v.std()) if ok else None)
            s["mean"][m], s["std"][m] = means, stds
        summary[kind] = s
    doc = {"images": [im.name for im in images], "metrics": names, "unavailable_metrics": mset.unavailable(),
           "lab_shift_direction": "equal parts +a* and +b* (ΔE*ab = shift)", "curves": summary, "notes": notes}
    (out / "distortions.json").write_text(json.dumps(doc, indent=2) + "\n")
    # the plot shows MSE rather than PSNR: PSNR of the undistorted image is the 100 dB cap
    distortion_plot(summary, [m for m in names if m != "psnr"] if "mse" in names else names,
                    out / "distortions.png")
    ref = images[0].rgb
    qs = [q for q in (90, 50, 10) if q in kinds["jpeg"]["levels"]] or kinds["jpeg"]["levels"][:3]
    ss = [s for s in (25.0, 50.0) if s in kinds["lab_shift"]["levels"]] or kinds["lab_shift"]["levels"][-1:]
    strip = [ref] + [jpeg_roundtrip(ref, q) for q in qs] + [lab_shift(ref, s) for s in ss]
    labels = ["original"] + [f"JPEG q={q}" for q in qs] + [f"Lab shift {s:g}" for s in ss]
    image_strip(strip, labels, out / "distortions_strip.png")
    _print(console, summary, names)
    return doc


def _print(console, summary: dict, names: Sequence[str]) -> None:
    from rich.table import Table

    for s in summary.values():
        t = Table(title=f"{s['title']} (mean over images)")
        t.add_column(s["short"])
        for m in names:
            t.add_column(LABELS.get(m, m), justify="right")
        for i, lev in enumerate(s["levels"]):
            t.add_row(f"{lev:g}", *("" if s["mean"][m][i] is None else f"{s['mean'][m][i]:.4g}" for m in names))
        console.print(t)
