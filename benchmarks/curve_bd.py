"""BD-rate between two rate–distortion curves drawn from `wsicodec bench` results.csv files: a
curve is a codec (every setting of it: ``jxl``, ``wsicodec-hyperprior``) or a comma-separated list
of wsicodec models, e.g. a zoo against the zoo it replaces. A model measured under two codec names
(the hyperprior models at encoder effort high: ``wsicodec-hyperprior-high``) is named with its
codec, ``CODEC:MODEL``.

    python benchmarks/curve_bd.py OLD.csv NEW.csv --anchor hne-hp64-q1-v1,... --test hne-hp64-q1-v2,...
    python benchmarks/curve_bd.py docs/bench/val/results.csv --anchor jxl --test wsicodec-hyperprior --exclude glas

Rows of all files are pooled (the same image and setting twice: the later file's row). Curves
average over the images measured at every one of their settings (``wsicodec.bench.rd``)."""
from __future__ import annotations

import argparse
import csv

from wsicodec.bench.rd import average_curves, bd_rate, curve
from wsicodec.bench.runner import reused_rows

LOWER_IS_BETTER = {"st_lpips", "st_lpips_vgg", "lpips"}


def pooled_rows(paths: list[str], exclude: list[str]) -> list[dict]:
    rows: dict[tuple[str, str, str], dict] = {}
    for path in paths:
        with open(path, newline="") as f:
            images = {r["image"] for r in csv.DictReader(f)}
        images = {im for im in images if not any(im.startswith(p) for p in exclude)}
        for r in reused_rows(path, images, set()):
            rows[(r["image"], r["codec"], r["setting"])] = r
    return list(rows.values())


def select(rows: list[dict], spec: str, label: str) -> list[dict]:
    """The rows of curve ``spec`` (a codec, or comma-separated settings, each ``SETTING`` or
    ``CODEC:SETTING``), relabelled ``label``."""
    names = spec.split(",")
    if len(names) == 1 and any(r["codec"] == spec for r in rows):
        return [{**r, "codec": label} for r in rows if r["codec"] == spec]
    picked = []
    for name in names:
        codec, _, setting = name.rpartition(":")
        found = [r for r in rows if r["setting"] == setting and (not codec or r["codec"] == codec)]
        codecs = sorted({r["codec"] for r in found})
        if not found:
            raise SystemExit(f"not in the results: {name}")
        if len(codecs) > 1:
            raise SystemExit(f"{setting} was measured as {', '.join(codecs)}: name one, e.g. {codecs[0]}:{setting}")
        picked += found
    return [{**r, "codec": label} for r in picked]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", nargs="+")
    ap.add_argument("--anchor", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--exclude", action="append", default=[], help="leave out images whose name starts so")
    ap.add_argument("--metrics", default="psnr,ms_ssim,st_lpips")
    args = ap.parse_args()
    rows = pooled_rows(args.csv, args.exclude)
    metrics = args.metrics.split(",")
    summary = average_curves(select(rows, args.anchor, "anchor") + select(rows, args.test, "test"), metrics)
    print(f"images: anchor {summary['anchor']['images']}, test {summary['test']['images']}")
    for m in metrics:
        (ra, qa), (rb, qb) = curve(summary, "anchor", m), curve(summary, "test", m)
        if m in LOWER_IS_BETTER:
            qa, qb = [-q for q in qa], [-q for q in qb]
        print(f"{m}: BD-rate of test vs anchor {bd_rate(ra, qa, rb, qb):+.2f} %")
    shown = metrics[0]  # each point's figure on the first metric asked for (PSNR unless --metrics says)
    for name in ("anchor", "test"):
        points = summary[name]["points"]
        print(name, "; ".join(f"{p['setting']} {p['bpp']:.4f} bpp {shown} {p[shown]:.4f}" for p in points))


if __name__ == "__main__":
    main()
