"""Merge a later `wsicodec bench` run into an earlier results folder, measuring nothing: the later
run's rows replace the earlier rows of the same (image, codec, setting), and `summary.json`, the
plots and `report.md` are written again from the merged rows (the earlier run's description kept,
a note added). For a change that moves some images' bytes but not the codec's speed (a store
layout, say), `--keep-speeds` keeps the earlier rows' speeds, so that every speed still comes
from one machine and one run. `--add` also takes rows the earlier run lacks (new settings or
curves on the same images, e.g. the zoo at another encoder effort).

    python benchmarks/merge_results.py docs/bench/val NEW/results.csv --keep-speeds \\
        --note "bytes and quality of the GlaS images' wsicodec rows re-measured on DATE (MACHINE)"
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wsicodec.bench.runner import read_results, write_results

KEY = ("image", "codec", "setting")
SPEEDS = ("encode_mpix_s", "decode_mpix_s")


def merge(earlier: list[dict], later: list[dict], keep_speeds: bool, add: bool = False
          ) -> tuple[list[dict], int, int]:
    """``earlier`` with each row that ``later`` measured again replaced (in place, order kept),
    and with ``add`` the rows it lacks appended; the counts replaced and added. Without ``add``
    such rows are an error (a re-measurement adds nothing); an image ``earlier`` lacks always is."""
    new = {tuple(r[k] for k in KEY): r for r in later}
    replaced, out = 0, []
    for row in earlier:
        again = new.pop(tuple(row[k] for k in KEY), None)
        if again is not None:
            again = dict(again)
            if keep_speeds:
                again.update({k: row.get(k) for k in SPEEDS})
            row, replaced = again, replaced + 1
        out.append(row)
    images = {row["image"] for row in earlier}
    if new and not add or any(key[0] not in images for key in new):
        raise SystemExit(f"{len(new)} rows of the later run are not in the earlier one, e.g. {next(iter(new))}")
    return out + list(new.values()), replaced, len(new)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="the earlier run's --out folder (results.csv, summary.json)")
    ap.add_argument("later", type=Path, help="the later run's results.csv")
    ap.add_argument("--keep-speeds", action="store_true", help="keep the earlier rows' encode / decode speeds")
    ap.add_argument("--add", action="store_true", help="also add the later run's rows the earlier one lacks")
    ap.add_argument("--note", required=True, help="what was measured again, when and where (kept in the notes)")
    args = ap.parse_args(argv)
    summary = json.loads((args.folder / "summary.json").read_text())
    rows, n, added = merge(read_results(args.folder / "results.csv"), read_results(args.later), args.keep_speeds,
                           args.add)
    notes = [*summary.get("notes", []), f"{n} rows replaced, {added} added: {args.note}"
             + (" (speeds kept from the earlier run)" if args.keep_speeds else "")]
    visuals = sorted(args.folder.glob("visual_*.png"))
    write_results(args.folder, rows, summary["meta"], notes, visuals)
    print(f"{args.folder}: {n} rows replaced, {added} added; results.csv, summary.json, plots and report.md "
          "written again")
    return 0


if __name__ == "__main__":
    sys.exit(main())
