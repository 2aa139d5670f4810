"""Write the measured part of docs/benchmarks.md from a `wsicodec bench` results.csv, measuring
nothing: the headline figures, every wsicodec model's mean figures, the BD-rate tables (whole
overlap and upper half), the bits needed for each target, the speeds, and the plots (redrawn
beside the CSV). Hand-written text outside the generated blocks is kept.

    python benchmarks/benchmarks_doc.py docs/bench/val/results.csv [docs/benchmarks.md]

The generated blocks sit between ``<!-- begin generated: NAME -->`` and ``<!-- end generated:
NAME -->`` lines (NAME: ``headline``, ``results``); each is replaced whole."""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from model_table import table as model_table

from wsicodec.bench.codecs import MS_SSIM_SUFFIX
from wsicodec.bench.metrics import LABELS
from wsicodec.bench.rd import average_curves
from wsicodec.bench.runner import bd_table, plot_results, read_results, result_tables, upper_range
from wsicodec.effort import effort_suffix

ANCHOR_NAMES = {"jpeg": "JPEG", "webp": "WebP", "jxl": "JPEG-XL", "avif": "AVIF", "j2k": "JPEG 2000"}
FAMILY = {"wsicodec": "factorized zoo", "wsicodec-hyperprior": "hyperprior zoo",
          "wsicodec-hyperprior-ms-ssim": "hyperprior models trained for MS-SSIM"}


def family(curve_name: str) -> str:
    if suffix := effort_suffix(curve_name):  # the same models at a higher encoder effort
        return f"{family(curve_name.removesuffix(suffix))}, encoder effort {suffix[1:]}"
    if curve_name in FAMILY:
        return FAMILY[curve_name]
    model = curve_name.removeprefix("wsicodec-")  # a variable-rate model's curve is named after it
    if model.endswith(MS_SSIM_SUFFIX):
        return f"variable-rate model `{model.removesuffix(MS_SSIM_SUFFIX)}` trained for MS-SSIM"
    return f"variable-rate model `{model}`"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.1f} %".replace("-", "−")


def headline(summary: dict, whole: dict, upper: dict, metric: str = "psnr") -> str:
    """One line per wsicodec curve: its rate span, BD-rate on ``metric`` against every classical
    codec over the whole overlap (``whole``, a :func:`bd_table`) and over the upper half
    (``upper``), and its best figures. A curve of models trained for MS-SSIM is measured on
    MS-SSIM, what it was trained for, and comes last."""
    lines = []
    order = [c for c in summary if c.startswith("wsicodec")]

    def rank(c: str) -> tuple:  # MS-SSIM curves last; a curve at a higher effort after its own
        suffix = effort_suffix(c)
        base = c.removesuffix(suffix)
        return MS_SSIM_SUFFIX in c, order.index(base) if base in order else order.index(c), suffix != "", suffix

    curves = sorted(order, key=rank)
    for c in curves:
        m = "ms_ssim" if MS_SSIM_SUFFIX in c else metric
        digits = 4 if m == "ms_ssim" else 2
        pts = summary[c]["points"]
        bpp = [p["bpp"] for p in pts]
        top = max(pts, key=lambda p: p["bpp"])
        anchors = [a for a in whole[m][c] if a in ANCHOR_NAMES]
        w = ", ".join(f"{ANCHOR_NAMES[a]} {_pct(whole[m][c][a])}" for a in anchors)
        u = ", ".join(f"{ANCHOR_NAMES[a]} {_pct(upper[m][c].get(a))}" for a in anchors if a in upper[m][c])
        ms = f", MS-SSIM {top['ms_ssim']:.4f}" if top.get("ms_ssim") is not None else ""
        covered = ""
        if (r := upper_range(summary, "jxl", m)) if "jxl" in summary else None:
            q = [p[m] for p in pts if p.get(m) is not None]
            lo, hi = max(r[0], min(q)), min(r[1], max(q))
            covered = (f" (the upper half covers {lo:.{digits}f}–{hi:.{digits}f} of JPEG-XL's "
                       f"{r[0]:.{digits}f}–{r[1]:.{digits}f})" if hi > lo
                       else " (the curve does not reach JPEG-XL's upper half)")
        lines.append(f"* **{family(c)}** ({min(bpp):.2f}–{max(bpp):.2f} bpp, top point `{top['setting']}`: "
                     f"{top['psnr']:.2f} dB{ms}). BD-rate on {LABELS[m]}: {w}; upper half: {u}{covered}.")
    return "\n".join(lines)


def results_block(results: Path, doc: Path, summary: dict, metrics: list[str], whole: dict, upper: dict) -> str:
    rel = Path(os.path.relpath(results.parent, doc.parent))
    parts = [f"Full output: [`report.md`]({rel}/report.md), [`results.csv`]({rel}/results.csv), "
             f"[`summary.json`]({rel}/summary.json).", ""]
    parts += [f"![{LABELS[m]}]({rel}/rd_{m}.png)" for m in metrics] + [""]
    for c in (c for c in summary if c.startswith("wsicodec")):
        models = [p["setting"] for p in sorted(summary[c]["points"], key=lambda p: p["bpp"])]
        parts += [f"**{family(c)[0].upper() + family(c)[1:]}**, mean over the images:", "",
                  model_table(results, models, curve=c), ""]
    ranges = []
    for a in ANCHOR_NAMES:
        if a in summary and (r := upper_range(summary, a, "psnr")):
            ranges.append(f"{ANCHOR_NAMES[a]} {r[0]:.2f}–{r[1]:.2f} dB")
    if ranges:
        parts += [f"The upper half's PSNR ranges (each anchor's quality 70–95): {', '.join(ranges)}.", ""]
    parts.append(result_tables(summary, metrics, whole, upper, level=3))
    return "\n".join(parts)


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- begin generated: {name} -->\n).*?(<!-- end generated: {name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"no generated block {name!r} in the document")
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("doc", type=Path, nargs="?", default=Path("docs/benchmarks.md"))
    ap.add_argument("--metrics", default="psnr,ms_ssim,st_lpips")
    args = ap.parse_args()
    metrics = args.metrics.split(",")
    rows = read_results(args.results)
    metrics = [m for m in metrics if any(r.get(m) is not None for r in rows)]
    summary = average_curves(rows, metrics)
    plot_results(args.results, metrics=metrics)
    text = args.doc.read_text()
    whole, upper = bd_table(summary, metrics), bd_table(summary, metrics, upper=True)
    text = replace_block(text, "headline", headline(summary, whole, upper))
    text = replace_block(text, "results", results_block(args.results, args.doc, summary, metrics, whole, upper))
    args.doc.write_text(text)
    print(f"{args.doc}: generated blocks rewritten from {args.results}", file=sys.stderr)


if __name__ == "__main__":
    main()
