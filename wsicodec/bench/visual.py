"""The paper's Fig. 3 for a benchmark: for each of the first few test images, a crop of the
original beside the same crop decoded by every codec at (about) the same bits per pixel, written
as ``visual_<image>.png``.

The common rate is wsicodec's at its default model on that image (the learned codec is what the
figure is about); without wsicodec, the reference point (JPEG quality 80). Every other curve
shows its setting whose rate on that image is nearest (in log rate); the caption gives the
setting, its bits per pixel and PSNR, so the match can be judged.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["CROP", "VISUAL_IMAGES", "CropKeeper", "nearest_settings", "rate_anchors", "visual_name"]

#: test images that get a figure (the first ones, in the benchmark's order)
VISUAL_IMAGES = 3
#: side of the centre crop shown, in pixels
CROP = 256


def visual_name(image: str) -> str:
    """``visual_<image>.png`` with the image name made safe as a file name."""
    return f"visual_{re.sub(r'[^A-Za-z0-9._-]+', '_', image)}.png"


def _centre(rgb: np.ndarray, size: int) -> tuple[slice, slice]:
    h, w = rgb.shape[:2]
    y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return slice(y0, y0 + size), slice(x0, x0 + size)


@dataclass
class _Decoded:
    curve: str
    setting: str
    bpp: float
    psnr: float | None
    crop: np.ndarray


@dataclass
class CropKeeper:
    """Keeps the centre crop of each decoded result of the first ``images`` test images while a
    benchmark runs (crops only: a benchmark does not hold every decoded image)."""

    images: Sequence[str]
    size: int = CROP
    originals: dict[str, np.ndarray] = field(default_factory=dict)
    decoded: dict[str, list[_Decoded]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.images = list(self.images)[:VISUAL_IMAGES]

    def original(self, image: str, rgb: np.ndarray) -> None:
        if image in self.images:
            self.originals[image] = np.array(rgb[_centre(rgb, self.size)])

    def keep(self, image: str, curve: str, setting: str, bpp: float, psnr: float | None, rgb: np.ndarray) -> None:
        if image in self.images:
            crop = np.array(rgb[_centre(rgb, self.size)])
            self.decoded.setdefault(image, []).append(_Decoded(curve, str(setting), float(bpp), psnr, crop))

    def write(self, out: Path, anchors: Sequence[tuple[str, str]]) -> list[Path]:
        """One figure per kept image; ``anchors``: the (curve, setting) pairs whose rate the
        others match, the first one measured on the image is used (see :func:`nearest_settings`)."""
        files = []
        for image in self.images:
            results = self.decoded.get(image)
            if not results or image not in self.originals:
                continue
            anchor, chosen = nearest_settings(results, anchors)
            if chosen:
                files.append(_figure(self.originals[image], chosen, anchor, out / visual_name(image), image))
        return files


def rate_anchors(settings: dict[str, list[str]], default_model: str | None) -> list[tuple[str, str]]:
    """Whose rate a figure shows every codec at, in order of preference: wsicodec's default
    model, its middle model, then the reference point (JPEG quality 80), then any first setting.
    ``settings``: each codec's sweep as measured (strings)."""
    from wsicodec.bench.codecs import REFERENCE_POINT

    out = []
    models = settings.get("wsicodec", [])
    if default_model in models:
        out.append(("wsicodec", default_model))
    if models:
        out.append(("wsicodec", models[len(models) // 2]))
    out.append(REFERENCE_POINT)
    out += [(codec, sweep[len(sweep) // 2]) for codec, sweep in settings.items() if sweep]
    return out


def nearest_settings(results: list, anchors: Sequence[tuple[str, str]]) -> tuple[object | None, list]:
    """The anchor (the first of ``anchors`` measured on this image, matched by setting; for
    wsicodec any of its curves) and, for each curve, the result whose bpp is nearest the
    anchor's (in log rate)."""
    anchor = None
    for codec, setting in anchors:
        anchor = next((r for r in results if r.setting == str(setting)
                       and (r.curve == codec or r.curve.startswith(codec + "-"))), None)
        if anchor is not None:
            break
    if anchor is None:
        return None, []
    chosen = []
    for curve in dict.fromkeys(r.curve for r in results):
        if curve == anchor.curve:
            chosen.append(anchor)
            continue
        own = [r for r in results if r.curve == curve and r.bpp > 0]
        if own:
            chosen.append(min(own, key=lambda r: abs(math.log(r.bpp / anchor.bpp))))
    return anchor, chosen


def _figure(original: np.ndarray, chosen: list, anchor, path: Path, image: str) -> Path:
    from wsicodec.bench.plots import image_grid

    labels = ["original"] + [
        f"{r.curve} {r.setting}\n{r.bpp:.3f} bpp"
        + (f", {r.psnr:.2f} dB" if r.psnr is not None and math.isfinite(r.psnr) else "")
        for r in chosen]
    title = (f"{image}: centre crop, each codec at its rate nearest {anchor.bpp:.3f} bpp\n"
             f"({anchor.curve} {anchor.setting})")
    return image_grid([original] + [r.crop for r in chosen], labels, title, path)
