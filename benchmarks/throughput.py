"""Encode / decode throughput of wsicodec and JPEG-XL on the same tiles, in the same run.

    python benchmarks/throughput.py [--model NAME] [--models-dir DIR] [--device cpu|cuda]
        [--batch-size 8] [--threads N] [--tiles 16] [--repeats 3] [--jxl-distance 1.0] [--json OUT]

What is timed, per 512 x 512 tile of real H&E (the developer data's ``histology/val``, see the README):

* wsicodec encode = what ``compress`` does per tile: ``Transforms.analysis`` of the tile's
  576 x 576 encode window (tile + 32 px halo each side), in batches of ``--batch-size``, then
  the store's chunk codec (``wsicodec.codec.store_codec``) on the tile's 32 x 32 latents (for a
  hyperprior model this includes its hyper-encoder and integer hyper-decoder);
* wsicodec decode = what ``decompress`` does per tile: the chunk codec's decode, then
  ``Transforms.synthesis`` of its 40 x 40 latent window (chunk + 4 latents of halo, here the
  chunk's edge values repeated) in batches, cropped to the tile;
* JPEG-XL = imagecodecs ``jpegxl_encode(tile, effort=7, distance=D)`` / ``jpegxl_decode`` of the
  512 x 512 tile, with ``numthreads`` = ``--threads``.

Megapixels are tile pixels (512 x 512 per tile; the halo wsicodec also computes is its own cost).
Each repeat times wsicodec and then JPEG-XL, so both see the same machine load; the reported
figure is the median over repeats. Without a shipped model (and no ``--model``), an untrained
N=64 / M=96 ``bmshj2018-factorized`` is built: the transforms' cost does not depend on the
weights (the entropy coder's a little does, through the number of symbols it escapes)."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "histology" / "val"
TILE = 512


def load_tiles(data: Path, n: int, window: int) -> list[np.ndarray]:
    """``n`` windows of ``window`` px (tile + halo) cut from the images in ``data`` that are large
    enough, round-robin over images so every image contributes."""
    from PIL import Image

    per_image = []
    for p in sorted(data.glob("*")):
        if p.suffix.lower() not in (".webp", ".png", ".jpg", ".jpeg", ".tif", ".tiff"):
            continue
        a = np.asarray(Image.open(p).convert("RGB"))
        H, W = a.shape[:2]
        if H < window or W < window:
            continue
        xs = sorted({0, (W - window) // 2, W - window})
        ys = sorted({0, (H - window) // 2, H - window})
        per_image.append([np.ascontiguousarray(a[y : y + window, x : x + window]) for y in ys for x in xs])
    if not per_image:
        raise SystemExit(f"no image of at least {window} x {window} px in {data}")
    out: list[np.ndarray] = []
    i = 0
    while len(out) < n:
        for wins in per_image:
            if i < len(wins) and len(out) < n:
                out.append(wins[i])
        i += 1
        if i > max(len(w) for w in per_image):  # fewer distinct windows than asked: repeat
            i = 0
    return out


def load_engine(engine_file: str | None):
    if not engine_file:
        import wsicodec.engine as engine

        return engine
    spec = importlib.util.spec_from_file_location("wsicodec_engine_under_test", engine_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def get_model(name: str | None, models_dir: Path | None):
    """(model, card, note, rate): the named or shipped default model (``NAME@K``: a variable-rate
    model's point K), else an untrained N=64/M=96."""
    import torch

    from wsicodec.models.rates import resolve, split_model_ref
    from wsicodec.models.registry import ModelCard, ModelError, build_model, load_model
    from wsicodec.quality import default_point

    if name is None:
        try:
            name = default_point(models_dir).model
        except ModelError:
            name = None
    if name is not None:
        name, position = split_model_ref(name)
        model, card = load_model(name, models_dir)
        rate = resolve(model, card, position)
        point = f"@{rate.label}" if rate is not None else ""
        return model, card, f"model {card.name}{point} ({card.architecture}, {card.params})", rate
    torch.manual_seed(0)
    params = {"N": 64, "M": 96}
    model = build_model("bmshj2018-factorized", **params)
    model.update(force=True)
    card = ModelCard(name="untrained-N64-M96", architecture="bmshj2018-factorized", params=params)
    return model.eval(), card, ("no shipped model: an untrained bmshj2018-factorized N=64/M=96 "
                                "(speed does not depend on training)"), None


class CanvasSource:
    """An in-memory H&E canvas of ``side_tiles`` x ``side_tiles`` tiles (each a window cut from
    the H&E tiles, rotated by a multiple of 90 degrees), with the two members
    ``pipeline.canvas_reader`` reads a slide through."""

    def __init__(self, windows: list[np.ndarray], side_tiles: int):
        rng = np.random.default_rng(0)
        side = side_tiles * TILE
        self.rgb = np.empty((side, side, 3), np.uint8)
        for ty in range(side_tiles):
            for tx in range(side_tiles):
                w = windows[int(rng.integers(len(windows)))]
                self.rgb[ty * TILE : (ty + 1) * TILE, tx * TILE : (tx + 1) * TILE] = np.rot90(
                    w[:TILE, :TILE], int(rng.integers(4)))
        self.dimensions = (side, side)

    def read_rgb(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self.rgb[y : y + h, x : x + w].copy()  # a fresh array, as a slide read gives


def pipeline_throughput(coder, card, model, canvas: CanvasSource, processes: int, read_threads: int,
                        io_threads: int, out_dir: Path, write: bool = True,
                        decode_processes: int | None | str = "skip") -> dict:
    """What ``compress`` does after decoding the slide, timed end to end on ``canvas``:
    ``encode_tiles`` (reading threads, batches, the analysis with the next batch queued on the
    GPU) -> ``pipeline.write_tiles`` on ``max(io_threads, processes)`` threads -> the chunk codec
    and the chunk files, in ``processes`` worker processes (0: in the writer threads) -> ``finish``.
    The workers are started before the clock starts (a one-off cost per slide, reported as
    ``worker_start_s``). ``write=False``: the same loop without the writer (reading and the
    network alone). ``decode_processes`` other than ``"skip"``: then also time reading the store
    back (:func:`decode_throughput`)."""
    import shutil

    from wsicodec.codec import store_codec
    from wsicodec.engine import encode_tiles
    from wsicodec.pipeline import canvas_reader, store_metadata, write_tiles
    from wsicodec.store import StoreWriter, store_size
    from wsicodec.tiling import TileGrid
    from wsicodec.writers import ChunkWriterProcesses

    glass = (240, 240, 240)
    read = canvas_reader(canvas, glass)
    side = canvas.dimensions[0]
    grid = TileGrid(side, side, TILE, card.stride)
    mpx = side * side / 1e6
    if not write:
        t0 = time.perf_counter()
        n = sum(1 for _ in encode_tiles(read, grid, coder, None, read_threads=read_threads))
        seconds = time.perf_counter() - t0
        return {"tiles": n, "megapixels": round(mpx, 1), "seconds": round(seconds, 3),
                "mpx_per_s": round(mpx / seconds, 1), "read_threads": read_threads, "writer": None}
    # the metadata compress writes (of a source that is the canvas): the store reads back as any
    meta, _ = store_metadata(SimpleNamespace(dimensions=canvas.dimensions, properties={}, associated_images={},
                                             file_size=0, vendor="canvas", mpp=(0.25, 0.25), objective_power=None),
                             Path("canvas"), card, coder, glass, grid, skip_glass=False, deidentify=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    writer = StoreWriter(out_dir / "pipeline.zarr", meta, grid, store_codec(model, card), card.latent_channels,
                         overwrite=True,
                         chunk_writers=(lambda path: ChunkWriterProcesses(path, processes)) if processes else None)
    lat0 = np.zeros((card.latent_channels, grid.chunk, grid.chunk), np.int32)
    for _ in range(processes):  # one write each (the pool hands workers out in turn): all started
        writer.write_tile(0, 0, lat0)
    start_s = time.perf_counter() - t0
    writers = max(io_threads, processes)
    t0 = time.perf_counter()
    write_tiles(encode_tiles(read, grid, coder, None, read_threads=read_threads), writer, writers,
                coder.batch_size, processes > 0)
    final = writer.finish(overwrite=True)
    seconds = time.perf_counter() - t0
    latent_bytes = store_size(final / "latents")
    decode = decode_throughput(final, coder, decode_processes) if decode_processes != "skip" else None
    shutil.rmtree(final, ignore_errors=True)
    return {"canvas_px": side, "tiles": len(grid), "megapixels": round(mpx, 1), "seconds": round(seconds, 3),
            "mpx_per_s": round(mpx / seconds, 1), "writer_processes": processes, "read_threads": read_threads,
            "writer_threads": writers, "worker_start_s": round(start_s, 2),
            "latent_bpp": round(8 * latent_bytes / (mpx * 1e6), 4), "decode": decode}


def decode_throughput(store: Path, coder, processes: int | None) -> dict:
    """What ``decompress`` and the viewer do to get pixels, timed on the store the loop wrote:
    ``WsiStore.decode_tiles`` over every tile in row-major order (each latent chunk decoded once;
    a hyperprior's side information on the GPU and its range decoding in ``processes`` worker
    processes on CUDA; the synthesis in batches, under fp16 on CUDA), the TIFF writing left out.
    The worker processes are started and the model loaded before the clock starts."""
    from wsicodec.store import WsiStore

    with WsiStore(store, device=str(coder.device), batch_size=coder.batch_size, decode_processes=processes) as s:
        t0 = time.perf_counter()
        s.load_model()
        on_device = s._device_hyper() is not None
        if on_device:
            s._decoder_processes()  # the workers started off the clock
        start_s = time.perf_counter() - t0
        tiles = [(tx, ty) for ty in range(s.grid.tiles_y) for tx in range(s.grid.tiles_x)]
        t0 = time.perf_counter()
        n = sum(1 for _ in s.decode_tiles(tiles))
        seconds = time.perf_counter() - t0
        W, H = s.dimensions
    return {"tiles": n, "megapixels": round(W * H / 1e6, 1), "seconds": round(seconds, 3),
            "mpx_per_s": round(W * H / 1e6 / seconds, 1), "side_information_on_device": on_device,
            "decoder_processes": s._decode_processes if on_device else 0, "start_s": round(start_s, 2)}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model name (default: the shipped default)")
    ap.add_argument("--models-dir", type=Path, default=None)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch threads and JPEG-XL numthreads (default: all cores)")
    ap.add_argument("--tiles", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--jxl-distance", type=float, default=1.0, help="JPEG-XL Butteraugli distance (1.0 ~ quality 90)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--channels-last", choices=["on", "off"], default=None,
                    help="Transforms channels_last (default: the engine's default)")
    ap.add_argument("--half-synthesis", choices=["on", "off"], default=None,
                    help="Transforms half_synthesis (default: the engine's default)")
    ap.add_argument("--blas-threads", choices=["1", "keep"], default="1",
                    help="Transforms blas_threads: 1 (the default, as compress) or keep numpy's BLAS threads")
    ap.add_argument("--keep-heap", choices=["on", "off"], default=None,
                    help="Transforms keep_heap (glibc mallopt; default: the engine's default)")
    ap.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                    help="the analysis's arithmetic (auto: as compress, fp16 on CUDA, bf16 on a CPU with native bf16)")
    ap.add_argument("--pipeline", type=int, default=0, metavar="SIDE",
                    help="also time the whole compress loop on a SIDE x SIDE-tile in-memory canvas")
    ap.add_argument("--writer-processes", type=int, default=None,
                    help="--pipeline: chunk-writer processes "
                         "(default: as compress: a quarter of the cores on CUDA, else 0)")
    ap.add_argument("--read-threads", type=int, default=None,
                    help="--pipeline: reading threads (default: as compress, pipeline.host_split)")
    ap.add_argument("--decode-processes", type=int, default=None,
                    help="--pipeline: range-decoding processes when the store is read back "
                         "(default: as WsiStore, half the cores on CUDA, else 0)")
    ap.add_argument("--out-dir", type=Path, default=None, help="--pipeline: where the store is written (then removed)")
    ap.add_argument("--profile-coder", action="store_true",
                    help="print where the chunk codec's encode spends its time (cProfile, 8 tiles)")
    ap.add_argument("--engine-file", default=None, help=argparse.SUPPRESS)  # compare another engine.py
    ap.add_argument("--skip-jxl", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)

    import imagecodecs
    import torch

    from wsicodec.codec import LATENT_DTYPE, store_codec

    torch.set_num_threads(max(1, args.threads))
    engine = load_engine(args.engine_file)
    model, card, note, rate_point = get_model(args.model, args.models_dir)
    kwargs = {"rate": rate_point}
    if args.channels_last is not None:
        kwargs["channels_last"] = args.channels_last == "on"
    if args.half_synthesis is not None:
        kwargs["half_synthesis"] = args.half_synthesis == "on"
    if args.keep_heap is not None:
        kwargs["keep_heap"] = args.keep_heap == "on"
    if args.blas_threads == "keep":  # 1 is the engine's default
        kwargs["blas_threads"] = None
    coder = engine.Transforms(model, card, args.device, args.batch_size, precision=args.precision, **kwargs)
    spec = card.spec
    chunk_codec = store_codec(model, card)._numcodec(
        (card.latent_channels, TILE // spec.stride, TILE // spec.stride), np.dtype(LATENT_DTYPE[spec.entropy_model]))
    s, ehalo, dhalo = spec.stride, spec.encode_halo, spec.decode_halo
    windows = load_tiles(args.data, args.tiles, TILE + 2 * ehalo)
    tiles = [np.ascontiguousarray(w[ehalo : ehalo + TILE, ehalo : ehalo + TILE]) for w in windows]
    n, bs, lh = len(tiles), coder.batch_size, ehalo // s

    def chunk(q: np.ndarray) -> np.ndarray:
        """A window's latents cut to its tile's chunk (what the store codes)."""
        return np.ascontiguousarray(q[:, lh : lh + TILE // s, lh : lh + TILE // s])

    mpx = n * TILE * TILE / 1e6
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    # -- wsicodec ---------------------------------------------------------------------------
    state: dict = {}

    def analysis():
        state["lat"] = [q for b in range(0, n, bs) for q in coder.analysis(np.stack(windows[b : b + bs]))]
        sync()

    def entropy_encode():
        state["chunks"] = [chunk_codec.encode(chunk(q)) for q in state["lat"]]

    def entropy_decode():
        state["dec"] = [np.pad(chunk_codec.decode(b).astype(np.int32),
                               ((0, 0), (dhalo, dhalo), (dhalo, dhalo)), mode="edge") for b in state["chunks"]]

    def synthesis():
        o = dhalo * s
        state["px"] = [p[o : o + TILE, o : o + TILE] for b in range(0, n, bs)
                       for p in coder.synthesis(np.stack(state["dec"][b : b + bs]))]
        sync()

    # -- a hyperprior's chunk codec in two halves: the symbols made in batches on the device (what
    # compress does on CUDA, DeviceHyperSymbols), then the range coder alone (the chunk writers' part)
    hyper = None
    if spec.entropy_model != "factorized":
        from wsicodec.codec import HyperSymbols, code_hyper_symbols, hyper_entropy_model
        from wsicodec.engine import DeviceHyperSymbols

        hyper = coder.hyper or DeviceHyperSymbols(coder.model, card, coder.device)
        hm = hyper_entropy_model({"name": card.name, "sha256": card.sha256})

    def hyper_symbols():
        out = []
        for b in range(0, n, bs):
            chunks = np.stack([chunk(q) for q in state["lat"][b : b + bs]])
            z, y, index = (t.cpu().numpy() for t in hyper(torch.from_numpy(chunks).to(coder.device)))
            out += [HyperSymbols(*parts) for parts in zip(z, y, index, strict=True)]
        state["sym"] = out

    def range_coder():
        state["sym_chunks"] = [code_hyper_symbols(x, hm) for x in state["sym"]]

    # -- JPEG-XL ----------------------------------------------------------------------------
    def jxl_encode():
        state["jxl"] = [imagecodecs.jpegxl_encode(t, effort=7, distance=args.jxl_distance, numthreads=args.threads)
                        for t in tiles]

    def jxl_decode():
        state["jxl_px"] = [imagecodecs.jpegxl_decode(b, numthreads=args.threads) for b in state["jxl"]]

    # warm-up (first-call allocations, oneDNN kernel selection), untimed
    coder.analysis(np.stack(windows[:bs]))
    side = TILE // s + 2 * dhalo
    coder.synthesis(np.zeros((min(bs, n), card.latent_channels, side, side), np.int32))
    if not args.skip_jxl:
        imagecodecs.jpegxl_decode(imagecodecs.jpegxl_encode(tiles[0], effort=7, distance=args.jxl_distance))

    times: dict[str, list[float]] = {k: [] for k in ("analysis", "entropy_encode", "entropy_decode", "synthesis",
                                                      "jxl_encode", "jxl_decode", "hyper_symbols", "range_coder")}
    for _ in range(args.repeats):
        for name, fn in (("analysis", analysis), ("entropy_encode", entropy_encode),
                         ("entropy_decode", entropy_decode), ("synthesis", synthesis)):
            times[name].append(timed(fn))
        if hyper is not None:
            times["hyper_symbols"].append(timed(hyper_symbols))
            times["range_coder"].append(timed(range_coder))
        if not args.skip_jxl:
            times["jxl_encode"].append(timed(jxl_encode))
            times["jxl_decode"].append(timed(jxl_decode))

    def med(k):
        return statistics.median(times[k]) if times[k] else float("nan")

    enc = statistics.median(a + e for a, e in zip(times["analysis"], times["entropy_encode"], strict=True))
    dec = statistics.median(a + e for a, e in zip(times["entropy_decode"], times["synthesis"], strict=True))
    rate = lambda t: round(mpx / t, 3) if t == t and t > 0 else None  # noqa: E731
    w_enc, w_dec = rate(enc), rate(dec)
    j_enc, j_dec = rate(med("jxl_encode")), rate(med("jxl_decode"))
    if args.profile_coder:
        import cProfile
        import io
        import pstats

        prof, buf = cProfile.Profile(), io.StringIO()
        prof.runcall(lambda: [chunk_codec.encode(chunk(q)) for q in state["lat"][:8]])
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
        print(buf.getvalue(), file=sys.stderr)
    agreement = None
    if coder.precision != "fp32":  # how many latents the faster arithmetic changes, on these tiles
        ref = engine.Transforms(model, card, args.device, args.batch_size, precision="fp32", **kwargs)
        qa = np.concatenate([ref.analysis(np.stack(windows[b : b + bs])) for b in range(0, n, bs)]).astype(np.int64)
        qb = np.stack(state["lat"]).astype(np.int64)
        if hyper is not None:  # fixed point (y·2^A): compare y rounded to integers, as a factorized model's
            qa, qb = np.rint(qa / coder.unit), np.rint(qb / coder.unit)
        agreement = {"latents_differing_from_fp32": float(np.mean(qa != qb)),
                     "max_abs_difference": int(np.abs(qa - qb).max())}
        print(f"{coder.precision} vs fp32 latents: {agreement}", file=sys.stderr)
    if args.pipeline:
        import tempfile

        from wsicodec.pipeline import host_split

        default_procs, default_reads = host_split(args.device == "cuda")
        procs = args.writer_processes if args.writer_processes is not None else default_procs
        reads = args.read_threads if args.read_threads is not None else default_reads
        canvas = CanvasSource(windows, args.pipeline)
        with tempfile.TemporaryDirectory(dir=args.out_dir) as tmp:
            pipe = pipeline_throughput(coder, card, model, canvas, max(0, procs), reads, 2, Path(tmp),
                                       decode_processes=args.decode_processes)
            pipe["without_writer"] = pipeline_throughput(coder, card, model, canvas, 0, reads, 2, Path(tmp),
                                                         write=False)
        print(f"pipeline: {pipe['mpx_per_s']} Mpx/s ({pipe['megapixels']} Mpx in {pipe['seconds']} s, "
              f"{pipe['writer_processes']} coder processes, {pipe['read_threads']} reading threads; "
              f"without the writer {pipe['without_writer']['mpx_per_s']} Mpx/s)", file=sys.stderr)
        dec = pipe["decode"]
        print(f"decode: {dec['mpx_per_s']} Mpx/s ({dec['megapixels']} Mpx in {dec['seconds']} s, "
              f"{dec['decoder_processes']} decoder processes)", file=sys.stderr)
    else:
        pipe = None
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    result = {
        "model": note,
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
        "engine": args.engine_file or "wsicodec.engine",
        "coder": {"batch_size": bs, "threads": torch.get_num_threads(),
                  "channels_last": getattr(coder, "channels_last", None),
                  "half_synthesis": getattr(coder, "half_synthesis", None),
                  "heap_kept": getattr(engine, "_HEAP_KEPT", None), "blas_threads": args.blas_threads},
        "precision": coder.precision, "precision_agreement": agreement, "pipeline": pipe,
        # hyperprior: chunks whose bytes are the same whether the symbols were made on the device in
        # batches or by the chunk codec (float z may differ in rare rounding cases; both decode alike)
        "hyper_symbols_same_bytes": (float(np.mean([a == b for a, b in zip(state["sym_chunks"], state["chunks"],
                                                                          strict=True)]))
                                     if hyper is not None else None),
        "tiles": n, "tile_size": TILE, "megapixels": mpx, "repeats": args.repeats,
        "jxl": {"effort": 7, "distance": args.jxl_distance, "numthreads": args.threads,
                "bpp": round(8 * sum(map(len, state.get("jxl", []))) / (mpx * 1e6), 3) if "jxl" in state else None},
        "seconds_median": {k: round(med(k), 4) for k in times},
        "mpx_per_s": {"wsicodec_encode": w_enc, "wsicodec_decode": w_dec, "jxl_encode": j_enc, "jxl_decode": j_dec,
                      "analysis": rate(med("analysis")), "entropy_encode": rate(med("entropy_encode")),
                      "entropy_decode": rate(med("entropy_decode")), "synthesis": rate(med("synthesis")),
                      "hyper_symbols": rate(med("hyper_symbols")), "range_coder": rate(med("range_coder"))},
        "ratio_wsicodec_over_jxl": {"encode": round(w_enc / j_enc, 3) if j_enc else None,
                                    "decode": round(w_dec / j_dec, 3) if j_dec else None},
        "machine": {"nproc": os.cpu_count(), "cpu": cpu, "torch": torch.__version__,
                    "imagecodecs": imagecodecs.__version__, "python": platform.python_version(),
                    "loadavg_1min": round(os.getloadavg()[0], 2)},
    }
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"throughput, Mpx/s ({n} tiles of {TILE} px, {args.device}, batch {bs}, "
                        f"{result['coder']['threads']} threads)")
        for col in ("", "encode", "decode"):
            t.add_column(col, justify="right" if col else "left")
        t.add_row("wsicodec", f"{w_enc:.2f}", f"{w_dec:.2f}")
        t.add_row("  network (analysis / synthesis)", f"{rate(med('analysis')):.2f}", f"{rate(med('synthesis')):.2f}")
        t.add_row("  entropy coder", f"{rate(med('entropy_encode')):.2f}", f"{rate(med('entropy_decode')):.2f}")
        if hyper is not None:
            t.add_row(f"    its symbols in batches on {args.device}", f"{rate(med('hyper_symbols')):.2f}", "")
            t.add_row("    then the range coder alone", f"{rate(med('range_coder')):.2f}", "")
        if not args.skip_jxl:
            t.add_row(f"JPEG-XL (effort 7, d {args.jxl_distance})", f"{j_enc:.2f}", f"{j_dec:.2f}")
            t.add_row("wsicodec / JPEG-XL", f"{w_enc / j_enc:.2f}x", f"{w_dec / j_dec:.2f}x")
        con = Console(stderr=True)
        con.print(t)
        con.print(note)
    except ImportError:
        pass
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
