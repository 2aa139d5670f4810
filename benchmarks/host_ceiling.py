"""What the host can feed a GPU: ``compress`` of a real slide with the network's answer made
instant, so that everything else is timed as it runs (reading and decoding the slide on the
reading threads, glass detection, batching, the entropy coder and chunk files in the coder
processes, the store). Issue 5: the GPU goal needs the host to keep up.

    python benchmarks/host_ceiling.py SLIDE [--coder-processes N] [--read-threads N] [--json OUT]

The latents are real: before the clock starts the model runs on the CPU on one window of each
window shape of the slide (interior, edges, corners), and every batch then gets
those latents back at once, so the range coder codes realistic symbols. The store is thrown away. Compare with the same
slide's ``compress`` on a GPU: where they are close, the host is the bound, not the GPU."""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def real_latents(slide: Path, model: str | None, tile: int) -> dict:
    """The model's latents (on the CPU) of one window of each window shape of the slide."""
    from wsicodec.engine import LatentCoder
    from wsicodec.models import load_model
    from wsicodec.models.registry import default_model_name
    from wsicodec.pipeline import canvas_reader
    from wsicodec.slide import open_input
    from wsicodec.tiling import TileGrid, measure_glass

    net, card = load_model(model or default_model_name())
    coder = LatentCoder(net, card, "cpu", 1)
    cache: dict = {}
    with open_input(slide) as src:
        W, H = src.dimensions
        grid = TileGrid(W, H, tile, card.stride)
        read = canvas_reader(src, measure_glass(src.thumbnail(1024)))
        edges = {0, 1, grid.tiles_x - 2, grid.tiles_x - 1}, {0, 1, grid.tiles_y - 2, grid.tiles_y - 1}
        for tx, ty in {(min(max(tx, 0), grid.tiles_x - 1), min(max(ty, 0), grid.tiles_y - 1))
                       for tx in edges[0] for ty in edges[1]}:
            x0, y0, x1, y1 = grid.encode_window(tx, ty, card.spec.encode_halo)
            win = read(x0, y0, x1 - x0, y1 - y0)
            if win.shape not in cache:
                cache[win.shape] = coder.analysis(win[None])
    return cache


def instant_network(coder_cls, cache: dict) -> None:
    """Make ``LatentCoder.analysis_stream`` answer every batch at once from ``cache``."""
    def stream(self, batches, depth=2):
        for batch, wins in batches:
            q = cache[wins[0].shape]
            yield batch, np.broadcast_to(q, (len(wins), *q.shape[1:]))

    coder_cls.analysis_stream = stream


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("slide", type=Path)
    ap.add_argument("--model", default=None)
    ap.add_argument("--coder-processes", type=int, default=None, help="default: as compress on CUDA (cores / 4)")
    ap.add_argument("--read-threads", type=int, default=None, help="default: as compress on CUDA (3/4 of the cores)")
    ap.add_argument("--batch-size", type=int, default=32, help="windows per network batch (CUDA's default)")
    ap.add_argument("--out-dir", type=Path, default=None, help="where the store is written (default: a temp folder)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import wsicodec.engine as engine
    from wsicodec.pipeline import compress

    cores = os.cpu_count() or 1
    procs = args.coder_processes if args.coder_processes is not None else max(1, cores // 4)
    reads = args.read_threads if args.read_threads is not None else max(2, 3 * cores // 4)
    instant_network(engine.LatentCoder, real_latents(args.slide, args.model, 512))
    with tempfile.TemporaryDirectory(dir=args.out_dir) as tmp:
        out = Path(tmp) / "ceiling.zarr"
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        r = compress(args.slide, out, model=args.model, device="cpu", batch_size=args.batch_size, overwrite=True,
                     coder_processes=procs, read_threads=reads)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    tissue = 1 - r.glass_tiles / max(r.tiles, 1)
    row = {"slide": str(args.slide), "cores": cores, "coder_processes": procs, "read_threads": reads,
           "batch_size": args.batch_size, "tiles": r.tiles, "glass_tiles": r.glass_tiles,
           "megapixels": round(r.pixels / 1e6, 1), "seconds": round(r.seconds, 2), "call_s": round(wall, 2),
           "slide_mpx_per_s": round(r.pixels / 1e6 / r.seconds, 1),
           "tissue_mpx_per_s": round(r.pixels / 1e6 * tissue / r.seconds, 1),
           "parent_cpu_s": round((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), 1),
           "latent_bpp": round(r.latent_bpp, 4)}
    print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))
    return row


if __name__ == "__main__":
    main()
