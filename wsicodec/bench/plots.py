"""Figures: one rate–distortion plot per metric (as in the paper's Fig. 2; the whole range and a
low-rate panel), the distortion study (Fig. 1): metric responses and an example image strip; image
grids (Fig. 3). matplotlib, Agg backend."""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsicodec.bench.codecs import MS_SSIM_SUFFIX, REFERENCE_POINT
from wsicodec.bench.metrics import HIGHER_IS_BETTER, LABELS
from wsicodec.effort import effort_suffix

_STYLE = {"jpeg": ("tab:blue", "o"), "webp": ("tab:orange", "s"), "jxl": ("tab:green", "^"),
          "avif": ("tab:purple", "D"), "j2k": ("tab:brown", "v"), "wsicodec": ("tab:red", "*"),
          "wsicodec-hyperprior": ("darkred", "P"), "wsicodec-hyperprior-ms-ssim": ("tab:pink", "X")}
#: curves of other wsicodec models (a variable-rate model's, ``wsicodec-<model>``; one trained for
#: MS-SSIM, ``wsicodec-<model>-ms-ssim``, apart from the MSE-trained one) and of any other codec
_OTHER_MODEL, _OTHER_MS_SSIM_MODEL, _OTHER = ("tab:cyan", "h"), ("tab:olive", "p"), ("black", "x")
#: a curve at a higher encoder effort (``...-high``, ``...-max``): its marker and line style
_EFFORT_STYLE = {"-high": ("x", "--"), "-max": ("+", ":")}


def _style(codec: str) -> tuple[str, str, str]:
    """Colour, marker and line style of a curve: a curve at a higher encoder effort is its
    standard curve's colour in its own marker and line style, so that each pairs with its own."""
    if suffix := effort_suffix(codec):
        return _style(codec.removesuffix(suffix))[0], *_EFFORT_STYLE[suffix]
    if codec in _STYLE:
        colour, marker = _STYLE[codec]
    elif codec.startswith("wsicodec-"):
        colour, marker = _OTHER_MS_SSIM_MODEL if codec.endswith(MS_SSIM_SUFFIX) else _OTHER_MODEL
    else:
        colour, marker = _OTHER
    return colour, marker, "-"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def better_label(metric: str) -> str:
    return f"{LABELS.get(metric, metric)}  ({'↑' if HIGHER_IS_BETTER.get(metric, True) else '↓'} better)"


#: upper end (bpp) of the rate–distortion plots' low-rate panel, where the learned models sit
LOW_RATE_BPP = 1.0
_LOG_TICKS = (0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0)


def model_tag(setting: str) -> str:
    """The short label of a model on a plot: its quality level (``hne-hp64-q3-v2`` -> ``q3``), a
    variable-rate model's operating point (``hne-vbr128-v1@3`` -> ``@3``), or the whole name."""
    point = re.search(r"@[\d.]+$", str(setting))
    if point:
        return point.group(0)
    m = re.search(r"(?:^|-)(q\d+)(?:-|$)", str(setting))
    return m.group(1) if m else str(setting)


def _tags_text(tags: list[str]) -> str:
    """A curve's model tags for its legend entry; one model's points as a range (``@0–@7``)."""
    if len(tags) > 2 and all(t.startswith("@") for t in tags):
        return f"{tags[0]}–{tags[-1]}"
    return ", ".join(tags)


def _draw_curves(ax, summary: dict, metric: str, low_rate: bool) -> None:
    ref_codec, ref_setting = REFERENCE_POINT
    for codec, data in summary.items():
        # in rate order: a curve is drawn through its points from the lowest rate up, whatever
        # order the settings were measured (or a results file was merged) in
        pts = sorted((p for p in data["points"] if p.get(metric) is not None), key=lambda p: p["bpp"])
        if not pts:
            continue
        colour, marker, linestyle = _style(codec)
        learned = codec.startswith("wsicodec")
        label = codec
        if learned and len(pts) > 1:
            label = f"{codec} ({_tags_text([model_tag(p['setting']) for p in pts])})"
        ax.plot([p["bpp"] for p in pts], [p[metric] for p in pts], marker=marker, color=colour, label=label,
                linestyle=linestyle, linewidth=2.0 if learned else 1.3, markersize=9 if marker == "*" else 5,
                zorder=4 if learned else 3)
        # a curve at a higher effort pairs with its standard curve's labelled points: no labels of its own
        if learned and low_rate and len(pts) > 1 and not effort_suffix(codec):
            # each model's quality level beside its point, off the curve on the side away from the
            # other family: the hyperprior (the better curve) towards better quality and lower
            # rate, the factorized family the other way, so the two families' labels never meet
            left = codec.endswith("hyperprior")
            up = left == HIGHER_IS_BETTER.get(metric, True)
            for p in pts:
                ax.annotate(model_tag(p["setting"]), (p["bpp"], p[metric]), textcoords="offset points",
                            xytext=(-6 if left else 6, 6 if up else -6), ha="right" if left else "left",
                            va="bottom" if up else "top", fontsize=8, color=colour, fontweight="bold",
                            clip_on=True)
        if codec == ref_codec and not low_rate:
            for p in pts:
                if str(p["setting"]) == ref_setting:
                    ax.plot([p["bpp"]], [p[metric]], marker="o", markersize=13, markerfacecolor="none",
                            markeredgecolor="black", markeredgewidth=1.5, zorder=5)
                    # below the JPEG curve where higher is better, above it where lower is: clear
                    # of the codecs that beat it
                    below = HIGHER_IS_BETTER.get(metric, True)
                    ax.annotate("JPEG q=80", (p["bpp"], p[metric]), textcoords="offset points",
                                xytext=(9, -9 if below else 9), va="top" if below else "bottom", fontsize=8,
                                fontweight="bold")


def _low_rate_limits(summary: dict, metric: str, top: float) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """x and y limits of the low-rate panel: the points at most ``top`` bpp, with a margin; None
    when fewer than two points are that low or every point is (the full plot shows it all)."""
    pts = [(p["bpp"], p[metric]) for d in summary.values() for p in d["points"]
           if p.get(metric) is not None and p["bpp"] > 0]
    low = [(r, q) for r, q in pts if r <= top]
    if len(low) < 2 or len(low) == len(pts):
        return None
    rates, quals = [r for r, _ in low], [q for _, q in low]
    pad = 0.08 * (max(quals) - min(quals) or 1.0)
    return (min(rates) / 1.15, top * 1.05), (min(quals) - pad, max(quals) + pad)


def rd_plot(summary: dict, metric: str, path: Path, title: str | None = None,
            low_rate_bpp: float = LOW_RATE_BPP) -> Path:
    """bpp (x, ← better) against ``metric`` (y, arrow says which way is better) for every codec's
    averaged sweep: the whole range on the left (the JPEG quality-80 point marked), and on the
    right the rates up to ``low_rate_bpp`` on a log axis, where each learned model's point is
    labelled with its quality level. One legend names the curves (and the models of the learned
    ones, in rate order)."""
    plt = _plt()
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    limits = _low_rate_limits(summary, metric, low_rate_bpp)
    # the legend goes below the axes (constrained layout makes room for it): inside, it hid the
    # curves it names once the learned curves reached the classical codecs' rates
    if limits is None:
        fig, ax_all = plt.subplots(figsize=(6.4, 6.0), dpi=120, layout="constrained")
        axes = [ax_all]
    else:
        fig, axes = plt.subplots(1, 2, figsize=(12.8, 6.6), dpi=120, gridspec_kw={"width_ratios": [1, 1.15]},
                                 layout="constrained")
        ax_all = axes[0]
    _draw_curves(ax_all, summary, metric, low_rate=False)
    ax_all.set_xlim(left=0)
    ax_all.set_title("all rates")
    if limits is not None:
        ax_low = axes[1]
        _draw_curves(ax_low, summary, metric, low_rate=True)
        ax_low.set_xscale("log")
        (x0, x1), (y0, y1) = limits
        ax_low.set_xlim(x0, x1)
        ax_low.set_ylim(y0, y1)
        ticks = [t for t in _LOG_TICKS if x0 <= t <= x1]
        ax_low.xaxis.set_major_locator(FixedLocator(ticks))
        ax_low.xaxis.set_major_formatter(lambda v, _pos: f"{v:g}")
        ax_low.xaxis.set_minor_locator(NullLocator())
        ax_low.xaxis.set_minor_formatter(NullFormatter())
        ax_low.set_title(f"below {low_rate_bpp:g} bpp (log scale)")
        ax_all.axvspan(0, x1, color="0.85", alpha=0.35, zorder=0)
    for ax in axes:
        ax.set_xlabel("bits per pixel  (← better)")
        ax.set_ylabel(better_label(metric))
        ax.grid(True, alpha=0.3)
    handles, labels = ax_all.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2 if limits is not None else 1, fontsize=8)
    fig.suptitle(title or f"Rate–distortion: {LABELS.get(metric, metric)}")
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
