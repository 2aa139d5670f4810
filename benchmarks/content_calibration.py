"""The content check's measurements (wsicodec.content.measure) over folders of images and slides,
to see where its thresholds fall against real data.

    python benchmarks/content_calibration.py FOLDER_OR_FILE... [--json OUT]

For every input: its overview (a slide's thumbnail, an image whole, shrunk to at most 1024 px),
``dark_share``, ``stained_share``, ``other_stain_share`` and the decision of
``wsicodec.content.assess``. Prints, per folder, the largest ``dark_share`` and
``other_stain_share`` (with the 99th percentile) and how many inputs were not sorted as H&E-like
brightfield, then the thresholds for comparison."""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def main() -> None:
    from wsicodec import content
    from wsicodec.slide import SlideError, open_input
    from wsicodec.train.data import find_inputs

    ap = argparse.ArgumentParser()
    ap.add_argument("inputs", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, default=None, help="also write every row here")
    args = ap.parse_args()
    rows = []
    for group in args.inputs:
        for path in find_inputs([group]):
            try:
                with open_input(path) as src:
                    c = content.assess(src)
            except SlideError as e:
                print(f"skipped: {e}", file=sys.stderr)
                continue
            rows.append({"group": str(group), "input": str(path), "kind": c.kind, "stain": c.stain, **c.measured})
    by_group = defaultdict(list)
    for r in rows:
        by_group[r["group"]].append(r)
    for group, rs in by_group.items():
        dark = np.array([r.get("dark_share", 0.0) for r in rs])
        other = np.array([r.get("other_stain_share", 0.0) for r in rs])
        not_he = [r for r in rs if (r["kind"], r["stain"]) != ("brightfield", "H&E-like")]
        print(f"{group}: {len(rs)} inputs; dark_share max {dark.max():.3f} (p99 {np.percentile(dark, 99):.3f}); "
              f"other_stain_share max {other.max():.3f} (p99 {np.percentile(other, 99):.3f}); "
              f"not H&E-like brightfield: {len(not_he)}")
        for r in not_he:
            print(f"    {Path(r['input']).name}: {r['kind']} / {r['stain']}")
    print(f"thresholds: dark background at dark_share >= {content.DARK_SHARE} (luma < {content.DARK_LUMA}); "
          f"other stain at other_stain_share >= {content.OTHER_STAIN_SHARE}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
