"""How fast the host reads a slide's encode windows, by number of readers: what ``compress``'s
reading threads do per tile (OpenSlide ``read_region`` of the 576-px window, RGBA -> RGB, glass
detection), on threads that share one OpenSlide handle (as ``compress`` does), on threads with a
handle each, and on processes with a handle each. On a GPU the slide's reading bounds
``compress`` (``host_ceiling.py``); this says whether more readers, or processes, would lift it.

    python benchmarks/read_scaling.py SLIDE [--windows 384] [--readers 1 4 8 12] [--json OUT]

Each run reads the same first ``--windows`` windows of the slide in compress's reading order,
split into contiguous runs, one per reader, on a freshly opened slide (a cold OpenSlide cache).
Megapixels are tile pixels (512 x 512 a window), as in the other benchmarks."""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TILE, HALO = 512, 32


def windows(slide: str, n: int) -> list[tuple[int, int, int, int]]:
    from wsicodec.slide import open_input
    from wsicodec.tiling import TileGrid

    with open_input(Path(slide)) as src:
        grid = TileGrid(*src.dimensions, TILE, 16)
    boxes = [grid.encode_window(tx, ty, HALO) for tx, ty in grid.reading_order()][:n]
    return [(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes]


def read_part(slide: str, boxes, src=None) -> int:
    """Read and check ``boxes`` as a reading thread does; the number of glass windows."""
    from wsicodec.slide import open_input
    from wsicodec.tiling import is_background

    own = src is None
    src = open_input(Path(slide)) if own else src
    glass = 0
    for x, y, w, h in boxes:
        glass += is_background(src.read_rgb(x, y, w, h), (255, 255, 255))
    if own:
        src.close()
    return glass


def parts(boxes, k: int):
    step = -(-len(boxes) // k)
    return [boxes[i:i + step] for i in range(0, len(boxes), step)]


def run(slide: str, boxes, k: int, how: str) -> dict:
    from wsicodec.slide import open_input

    split = parts(boxes, k)
    if how == "processes":
        with ProcessPoolExecutor(k, mp_context=multiprocessing.get_context("fork")) as pool:
            list(pool.map(int, range(k)))  # workers started before the clock
            t0 = time.perf_counter()
            list(pool.map(read_part, [slide] * len(split), split))
            s = time.perf_counter() - t0
    else:
        shared = open_input(Path(slide)) if how == "threads, one handle" else None
        with ThreadPoolExecutor(k) as pool:
            t0 = time.perf_counter()
            list(pool.map(lambda b: read_part(slide, b, shared), split))
            s = time.perf_counter() - t0
        if shared is not None:
            shared.close()
    return {"readers": k, "how": how, "seconds": round(s, 3),
            "mpx_per_s": round(len(boxes) * TILE * TILE / 1e6 / s, 1)}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("slide")
    ap.add_argument("--windows", type=int, default=384)
    ap.add_argument("--readers", type=int, nargs="+", default=[1, 4, 8, 12])
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    boxes = windows(args.slide, args.windows)
    rows = []
    for k in args.readers:
        for how in ("threads, one handle", "threads, own handles", "processes"):
            if k == 1 and how != "threads, one handle":
                continue
            rows.append(run(args.slide, boxes, k, how))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
