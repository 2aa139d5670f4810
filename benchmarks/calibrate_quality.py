"""Rebuild the quality calibration table (``quality.json`` in the weights folder) from
``wsicodec bench`` results, and print it as the Markdown table of ``docs/quality.md``.

    python benchmarks/calibrate_quality.py docs/bench/val/results.csv docs/bench/val-jpeg/results.csv

Every installed operating point and JPEG at every quality 1–100 must have been measured on the
same images (later files win for the same image, codec and setting). The first file's folder
names the set (``val``) unless ``--set`` does. ``--check`` only compares the table with the
one in the weights folder (exit status 1 when it differs).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _unmatched(cal, point) -> str:
    return " (no match: the top point)" if point == cal.top else " (no match in fewer bytes: as good, more bytes)"


def markdown(cal) -> str:
    """The calibration as Markdown: the operating points, then quality -> operating point."""
    from wsicodec.quality import DEFAULT_REFERENCE

    lines = ["| operating point | bpp | PSNR (dB) | MS-SSIM | matches JPEG up to | `--quality` |",
             "|---|---|---|---|---|---|"]
    for p, f in sorted(cal.points.items(), key=lambda kv: kv[1].bpp):
        used = ", ".join(text + ("" if m else _unmatched(cal, p)) for text, m in cal.runs_of(p))
        mark = " (default)" if p == cal.default else ""
        m = cal.matches.get(p)
        lines.append(f"| `{p}`{mark} | {f.bpp:.3f} | {f.psnr:.2f} | {f.ms_ssim:.4f} | "
                     f"{'q' + str(m) if m else 'none'} | {used} |")
    lines += ["", "| `--quality` | operating point | its bpp / PSNR / MS-SSIM "
                  "| JPEG at the range's ends: bpp / PSNR / MS-SSIM |",
              "|---|---|---|---|"]
    q = 1
    while q <= 100:
        p, matched = cal.mapping[q]
        end = q
        while end < 100 and cal.mapping[end + 1] == (p, matched):
            end += 1
        f, lo, hi = cal.points[p], cal.jpeg[q], cal.jpeg[end]
        span = f"{q}–{end}" if end > q else str(q)
        lines.append(f"| {span}{'' if matched else _unmatched(cal, p)} | `{p}` | "
                     f"{f.bpp:.3f} / {f.psnr:.2f} / {f.ms_ssim:.4f} | "
                     f"q{q}: {lo.bpp:.3f} / {lo.psnr:.2f} / {lo.ms_ssim:.4f}"
                     + (f"; q{end}: {hi.bpp:.3f} / {hi.psnr:.2f} / {hi.ms_ssim:.4f}" if end > q else "") + " |")
        q = end + 1
    metric, ref_q = DEFAULT_REFERENCE
    lines += ["", f"Limit: q{cal.limit}. Top operating point: `{cal.top}`. Default: `{cal.default}` "
                  f"(fewest bits per pixel with {metric} at least JPEG q{ref_q}'s, a single-rate model's where "
                  "one qualifies)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="wsicodec bench results.csv files")
    ap.add_argument("--models-dir", type=Path, default=None, help="weights folder (default: the installed one)")
    ap.add_argument("--set", dest="set_name", default=None,
                    help="name of the image set (default: the first file's folder)")
    ap.add_argument("--check", action="store_true", help="only compare with the table in the weights folder")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the Markdown table to this file")
    args = ap.parse_args(argv)

    from wsicodec.quality import build_calibration, calibration_path, dumps

    cal = build_calibration(args.results, args.models_dir, args.set_name or args.results[0].parent.name)
    text = dumps(cal)
    path = calibration_path(args.models_dir)
    if args.check:
        same = path.is_file() and path.read_text() == text
        print(f"{path}: {'up to date' if same else 'differs from the rebuilt table'}")
        return 0 if same else 1
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    md = markdown(cal)
    if args.markdown:
        args.markdown.write_text(md)
    print(md)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
