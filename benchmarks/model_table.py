"""Mean figures per wsicodec model from a `wsicodec bench` results.csv, as a Markdown table
(the training ablation and the zoo tables in docs/training.md are made with it).

    python benchmarks/model_table.py docs/bench/ablation/results.csv [--models A,B]

Means over the images of the benchmark (each image weighs the same, as in the bench's curves)."""
from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

COLUMNS = (("bpp", "bpp", 3), ("psnr", "PSNR (dB)", 2), ("ms_ssim", "MS-SSIM", 4),
           ("st_lpips", "ST-LPIPS Alex ↓", 4), ("st_lpips_vgg", "ST-LPIPS VGG ↓", 4))


def table(path: Path, models: list[str] | None = None, curve: str | None = None) -> str:
    """``curve``: only that curve's rows (the same models at another encoder effort are another curve)."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if not row["codec"].startswith("wsicodec") or (models and row["setting"] not in models):
                continue
            if curve is not None and row["codec"] != curve:
                continue
            for key, *_ in COLUMNS:
                if row.get(key) not in (None, ""):
                    acc[row["setting"]][key].append(float(row[key]))
    order = models or sorted(acc, key=lambda m: sum(acc[m]["bpp"]) / len(acc[m]["bpp"]))
    cols = [c for c in COLUMNS if any(acc[m][c[0]] for m in order)]
    lines = ["| model | images | " + " | ".join(c[1] for c in cols) + " |",
             "|---|---:|" + "---:|" * len(cols)]
    for m in order:
        vals = acc[m]
        n = len(vals["bpp"])
        cells = [f"{sum(vals[k]) / len(vals[k]):.{d}f}" if vals[k] else "–" for k, _, d in cols]
        lines.append(f"| `{m}` | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--models", default=None, help="comma-separated, in this order (default: all, by rate)")
    args = ap.parse_args()
    print(table(args.results, args.models.split(",") if args.models else None))


if __name__ == "__main__":
    main()
