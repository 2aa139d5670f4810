"""Figures: one rate–distortion plot per metric (as in the paper's Fig. 2) and the distortion
study (Fig. 1): metric responses and an example image strip; image grids (Fig. 3). matplotlib,
Agg backend."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsicodec.bench.codecs import REFERENCE_POINT
from wsicodec.bench.metrics import HIGHER_IS_BETTER, LABELS

_STYLE = {"jpeg": ("tab:blue", "o"), "webp": ("tab:orange", "s"), "jxl": ("tab:green", "^"),
          "avif": ("tab:purple", "D"), "j2k": ("tab:brown", "v"), "wsicodec": ("tab:red", "*"),
          "wsicodec-hyperprior": ("darkred", "P")}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def better_label(metric: str) -> str:
    return f"{LABELS.get(metric, metric)}  ({'↑' if HIGHER_IS_BETTER.get(metric, True) else '↓'} better)"


def rd_plot(summary: dict, metric: str, path: Path, title: str | None = None) -> Path:
    """bpp (x, ← better) against ``metric`` (y, arrow says which way is better) for every codec's
    averaged sweep; the JPEG quality-80 point is marked and labelled."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    ref_codec, ref_setting = REFERENCE_POINT
    for codec, data in summary.items():
        pts = [p for p in data["points"] if p.get(metric) is not None]
        if not pts:
            continue
        colour, marker = _STYLE.get(codec, ("black", "x"))
        ax.plot([p["bpp"] for p in pts], [p[metric] for p in pts], marker=marker, color=colour,
                label=codec, linewidth=1.5, markersize=5 if marker != "*" else 9)
        if codec.startswith("wsicodec") and len(pts) > 1:
            for p in pts:
                ax.annotate(str(p["setting"]), (p["bpp"], p[metric]), textcoords="offset points",
                            xytext=(4, -10), fontsize=7, color=colour)
        if codec == ref_codec:
            for p in pts:
                if str(p["setting"]) == ref_setting:
                    ax.plot([p["bpp"]], [p[metric]], marker="o", markersize=13, markerfacecolor="none",
                            markeredgecolor="black", markeredgewidth=1.5, zorder=5)
                    ax.annotate("JPEG q=80", (p["bpp"], p[metric]), textcoords="offset points",
                                xytext=(8, 8), fontsize=8, fontweight="bold")
    ax.set_xlabel("bits per pixel  (← better)")
    ax.set_ylabel(better_label(metric))
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right" if HIGHER_IS_BETTER.get(metric, True) else "upper right", fontsize=8)
    ax.set_title(title or f"Rate–distortion: {LABELS.get(metric, metric)}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def distortion_plot(summary: dict, metrics: Sequence[str], path: Path) -> Path:
    """Fig. 1: rows = metrics, columns = distortion kinds; mean over images ± one std."""
    plt = _plt()
    kinds = list(summary)
    fig, axes = plt.subplots(len(metrics), len(kinds), figsize=(4.2 * len(kinds), 2.6 * len(metrics)),
                             dpi=120, squeeze=False)
    for j, kind in enumerate(kinds):
        d = summary[kind]
        levels = d["levels"]
        for i, m in enumerate(metrics):
            ax = axes[i][j]
            mean = np.array([v if v is not None else np.nan for v in d["mean"][m]], float)
            std = np.array([v if v is not None else np.nan for v in d["std"][m]], float)
            if np.all(np.isnan(mean)):
                ax.text(0.5, 0.5, f"{LABELS.get(m, m)} unavailable", ha="center", va="center",
                        transform=ax.transAxes)
            else:
                ax.plot(levels, mean, marker="o", color="tab:blue")
                ax.fill_between(levels, mean - std, mean + std, alpha=0.2, color="tab:blue")
            if kind == "jpeg":
                ax.invert_xaxis()
            ax.set_ylabel(better_label(m), fontsize=8)
            ax.grid(True, alpha=0.3)
            if i == 0:
                ax.set_title(d["title"])
            if i == len(metrics) - 1:
                ax.set_xlabel(d["xlabel"])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def image_strip(images: Sequence[np.ndarray], labels: Sequence[str], path: Path, size: int = 256) -> Path:
    """The example distortions side by side, each labelled (centre crops of ``size`` pixels)."""
    plt = _plt()
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.5), dpi=120, squeeze=False)
    for ax, im, lab in zip(axes[0], images, labels, strict=True):
        h, w = im.shape[:2]
        y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
        ax.imshow(im[y0 : y0 + size, x0 : x0 + size])
        ax.set_title(lab, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def image_grid(images: Sequence[np.ndarray], labels: Sequence[str], title: str, path: Path,
               columns: int = 4) -> Path:
    """Images at their own pixels in a grid of at most ``columns``, each labelled, one title."""
    plt = _plt()
    n = len(images)
    cols = min(n, columns)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.7 * rows + 0.4), dpi=150,
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, px, label in zip(axes.flat, images, labels, strict=False):
        ax.imshow(px, interpolation="nearest")
        ax.set_title(label, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
