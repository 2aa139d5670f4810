"""What the host can feed a GPU: ``compress`` of a real slide with the network's answer made
instant, so that everything else is timed as it runs (reading and decoding the slide on the
reading threads, glass detection, batching, the entropy coder and chunk files in the writer
processes, the store): on a GPU the host has to keep up with the network.

    python benchmarks/host_ceiling.py SLIDE [--writer-processes N] [--read-threads N] [--json OUT]

The latents are real: before the clock starts the model runs on the CPU on one window of each
window shape of the slide (interior, edges, corners), and every batch then gets
those latents back at once, so the range coder codes realistic symbols. The store is thrown away.
Compare with the same slide's ``compress`` on a GPU: where they are close, the host is the bound, not the GPU."""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def real_latents(slide: Path, model: str | None, tile: int) -> dict:
    """The model's latents (on the CPU) of one window of each window shape of the slide."""
    from wsicodec.engine import Transforms
    from wsicodec.models import load_model
    from wsicodec.pipeline import canvas_reader
    from wsicodec.quality import default_point
    from wsicodec.slide import open_input
    from wsicodec.tiling import TileGrid, measure_glass

    net, card = load_model(model or default_point().model)
    coder = Transforms(net, card, "cpu", 1)
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
    """Make ``Transforms.analysis_stream`` answer every batch at once from ``cache``."""
    def stream(self, batches, depth=2, chunk=None):
        for batch, wins, *_ in batches:
            q = cache[wins[0].shape]
            q = np.broadcast_to(q, (len(wins), *q.shape[1:]))
            yield (batch, q) if chunk is None else (batch, q, None)

    coder_cls.analysis_stream = stream


def window_parts(slide: Path, n: int, halo: int = 32, tile: int = 512) -> dict:
    """Milliseconds per window of the reading thread's steps, on the first ``n`` windows of the
    slide in reading order (one thread): OpenSlide's read in row-major and in reading order
    (each on a freshly opened slide), RGBA -> RGB, glass detection; the last two also as the
    plain numpy code (the slower alternative)."""
    import openslide

    from wsicodec.slide import flatten_rgba, image_rgb
    from wsicodec.tiling import TileGrid, is_background

    def numpy_is_background(p, glass, tolerance=20, max_fraction=0.001):
        diff = np.abs(p.astype(np.int16) - np.asarray(glass, np.int16)).max(axis=2)
        return bool((diff > tolerance).mean() <= max_fraction)

    W, H = openslide.OpenSlide(str(slide)).dimensions
    grid = TileGrid(W, H, tile, 16)

    def inside(t):  # windows wholly inside the slide
        return 0 < t[0] and (t[0] + 1) * tile + halo <= W and 0 < t[1] and (t[1] + 1) * tile + halo <= H

    out: dict = {}
    orders = (("read_region_row_major_ms", list(grid)), ("read_region_reading_order_ms", grid.reading_order()))
    for name, order in orders:
        windows = [t for t in order if inside(t)][:n]
        s = openslide.OpenSlide(str(slide))
        t0 = time.perf_counter()
        regions = [s.read_region((tx * tile - halo, ty * tile - halo), 0, (tile + 2 * halo,) * 2) for tx, ty in windows]
        out[name] = round((time.perf_counter() - t0) / len(windows) * 1e3, 2)
    regions = regions[: min(len(regions), 64)]
    bg, glass = (255, 255, 255), (238, 236, 240)
    converters = (("rgb_pillow_ms", lambda r: image_rgb(r, bg)),
                  ("rgb_numpy_ms", lambda r: flatten_rgba(np.asarray(r), bg)))
    for name, fn in converters:
        t0 = time.perf_counter()
        rgbs = [fn(r) for r in regions]
        out[name] = round((time.perf_counter() - t0) / len(regions) * 1e3, 2)
    tiles = [r[halo:-halo, halo:-halo] for r in rgbs]
    flags = {}
    for name, fn in (("glass_pillow_ms", is_background), ("glass_numpy_ms", numpy_is_background)):
        t0 = time.perf_counter()
        flags[name] = [fn(t, glass) for t in tiles]
        out[name] = round((time.perf_counter() - t0) / len(tiles) * 1e3, 2)
    out["glass_windows"] = sum(flags["glass_pillow_ms"])
    out["glass_same_answers"] = flags["glass_pillow_ms"] == flags["glass_numpy_ms"]
    out["windows"] = len(windows)
    return out


def chunk_write_parts(latents: np.ndarray, model: str | None, n: int = 64) -> dict:
    """Milliseconds per chunk: writing ``n`` tiles' real latents as wsicodec does
    (``LatentChunkFiles``) and through zarr's own array write (the alternative)."""
    import zarr
    from zarr.core.array import Array, AsyncArray

    from wsicodec.codec import store_codec
    from wsicodec.models import load_model
    from wsicodec.quality import default_point
    from wsicodec.store import LatentChunkFiles, StoreWriter
    from wsicodec.tiling import TileGrid

    net, card = load_model(model or default_point().model)
    lh = (latents.shape[-1] - 512 // card.stride) // 2
    chunk = np.ascontiguousarray(latents[0, :, lh : lh + 512 // card.stride, lh : lh + 512 // card.stride])
    side = 512 * int(np.ceil(np.sqrt(n)))
    grid = TileGrid(side, side, 512, card.stride)
    meta = {"model": {"name": card.name, "entropy_model": card.spec.entropy_model},
            "background": {"latents": [0] * card.latent_channels}}
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        w = StoreWriter(Path(tmp) / "w.zarr", meta, grid, store_codec(net, card), card.latent_channels)
        files = LatentChunkFiles(w.path)
        a = zarr.open_array(str(w.path / "latents"), mode="r+")._async_array
        a = Array(AsyncArray(metadata=a.metadata, store_path=a.store_path, config={"write_empty_chunks": True}))
        c = grid.chunk
        tiles = list(grid)[:n]
        for name, write in (("chunk_write_zarr_ms", lambda tx, ty: a.__setitem__(
                                (slice(None), slice(ty * c, ty * c + c), slice(tx * c, tx * c + c)), chunk)),
                            ("chunk_write_direct_ms", lambda tx, ty: files.write(tx, ty, chunk)),
                            ("chunk_encode_only_ms", lambda tx, ty: files.encode(tx, ty, chunk))):
            write(*tiles[0])
            t0 = time.perf_counter()
            for tx, ty in tiles:
                write(tx, ty)
            out[name] = round((time.perf_counter() - t0) / len(tiles) * 1e3, 3)
        w.abort()
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("slide", type=Path)
    ap.add_argument("--model", default=None)
    ap.add_argument("--writer-processes", type=int, default=None,
                    help="default: as compress on CUDA (pipeline.host_split)")
    ap.add_argument("--read-threads", type=int, default=None, help="default: as compress on CUDA (pipeline.host_split)")
    ap.add_argument("--batch-size", type=int, default=32, help="windows per network batch (CUDA's default)")
    ap.add_argument("--out-dir", type=Path, default=None, help="where the store is written (default: a temp folder)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--parts", type=int, default=0, metavar="N",
                    help="instead: time the reading thread's steps on N windows, and one chunk's write (one thread)")
    args = ap.parse_args(argv)
    if args.parts:
        row = window_parts(args.slide, args.parts)
        latents = real_latents(args.slide, args.model, 512)
        row.update(chunk_write_parts(max(latents.values(), key=lambda q: q.shape[-1] * q.shape[-2]), args.model))
        print(json.dumps(row))
        return row

    import wsicodec.engine as engine
    from wsicodec.pipeline import compress, host_split

    cores = os.cpu_count() or 1
    default_procs, default_reads = host_split(True)  # as compress on CUDA
    procs = args.writer_processes if args.writer_processes is not None else default_procs
    reads = args.read_threads if args.read_threads is not None else default_reads
    instant_network(engine.Transforms, real_latents(args.slide, args.model, 512))
    with tempfile.TemporaryDirectory(dir=args.out_dir) as tmp:
        out = Path(tmp) / "ceiling.zarr"
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        r = compress(args.slide, out, model=args.model, device="cpu", batch_size=args.batch_size, overwrite=True,
                     writer_processes=procs, read_threads=reads)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    tissue = 1 - r.glass_tiles / max(r.tiles, 1)
    row = {"slide": str(args.slide), "cores": cores, "writer_processes": procs, "read_threads": reads,
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
