"""How fast a store's latents are read back, and what keeping decoded chunks and range decoding in
worker processes change:

    python benchmarks/read_latents.py STORE [--group 16 1] [--processes 0 1 2] [--device cpu|cuda]

1. ``WsiStore.fetch_latents`` over the whole slide in ``decode_tiles``' windows (row-major groups
   of ``--group`` tiles, each window with the synthesis's halo), once with decoded chunks kept
   (the default) and once with none kept (``chunk_cache_bytes = 0``): seconds and chunk decodes.
2. For a hyperprior store: its coded chunks through the whole chunk codec in this process, then
   the range decoding alone, given their tables and means (the side information decoded
   beforehand), in this process and in ``--processes`` worker processes
   (:class:`wsicodec.decoders.ChunkDecoderProcesses`, started off the clock).

Mpx/s are of slide pixels (1) and of chunk pixels (2)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def windows(store, group: int) -> list[tuple[int, int, int, int]]:
    g, halo = store.grid, store.transforms.spec.decode_halo
    tiles = [(tx, ty) for ty in range(g.tiles_y) for tx in range(g.tiles_x)]
    out = []
    for i in range(0, len(tiles), group):
        boxes = [g.tile_box(tx, ty) for tx, ty in tiles[i : i + group]]
        x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
        out.append(g.latent_window(x0, y0, x1 - x0, y1 - y0, halo))
    return out


def fetch(path: Path, group: int, keep: bool, device: str) -> dict:
    from wsicodec.store import WsiStore

    with WsiStore(path, device=device, decode_processes=0) as s:
        if not keep:
            s.chunk_cache_bytes = 0
        s.load_model()
        boxes = windows(s, group)
        t0 = time.perf_counter()
        for box in boxes:
            s.fetch_latents(*box)
        seconds = time.perf_counter() - t0
        W, H = s.dimensions
        coded = int((s.tile_state == 1).sum())
    return {"group": group, "chunks_kept": keep, "seconds": round(seconds, 3),
            "mpx_per_s": round(W * H / 1e6 / seconds, 2), "chunk_decodes": s.chunks_decoded, "coded_chunks": coded}


def range_decoding(path: Path, processes: list[int]) -> list[dict]:
    from wsicodec.codec import decode_hyper_chunk, decode_hyper_latents, hyper_entropy_model, read_hyper_chunk
    from wsicodec.decoders import ChunkDecoderProcesses
    from wsicodec.store import WsiStore, chunk_file

    with WsiStore(path, device="cpu") as s:
        s.load_model()
        hm = hyper_entropy_model(s.meta["model"])
        C, c = int(s.latents.shape[0]), s.grid.chunk
        data = [chunk_file(path, tx, ty).read_bytes()[:-4] for tx, ty in s.grid if s.tile_state[ty, tx] == 1]
        chunks = [read_hyper_chunk(d, hm, (C, c, c), within=True) for d in data]
        model, px_per_latent = s.meta["model"], s.grid.stride**2
    data = [d for d, ch in zip(data, chunks, strict=True) if ch.shape == chunks[0].shape]
    chunks = [ch for ch in chunks if ch.shape == chunks[0].shape]  # one shape: the inner chunks
    params = [hm.parameters(ch.z) for ch in chunks]
    index = np.stack([p[0] for p in params])
    mean = np.stack([p[1] for p in params]).astype(np.int32)
    mpx = len(chunks) * chunks[0].shape[1] * chunks[0].shape[2] * px_per_latent / 1e6
    t0 = time.perf_counter()
    for d in data:  # the whole chunk codec in this process: side information on the CPU, then the rest
        decode_hyper_chunk(d, hm)
    seconds = time.perf_counter() - t0
    out = [{"processes": None, "what": "whole chunk codec (decode_hyper_chunk)", "chunks": len(chunks),
            "seconds": round(seconds, 3), "mpx_per_s": round(mpx / seconds, 1)}]
    for n in processes:
        if n == 0:
            t0 = time.perf_counter()
            for i, ch in enumerate(chunks):
                decode_hyper_latents(ch, index[i], mean[i], hm)
            seconds = time.perf_counter() - t0
        else:
            with ChunkDecoderProcesses(model, n) as workers:
                workers.decode(chunks[:n], index[:n], mean[:n])  # started, model loaded
                t0 = time.perf_counter()
                workers.decode(chunks, index, mean)
                seconds = time.perf_counter() - t0
        out.append({"processes": n, "chunks": len(chunks), "seconds": round(seconds, 3),
                    "mpx_per_s": round(mpx / seconds, 1)})
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--group", type=int, nargs="+", default=[16, 1])
    ap.add_argument("--processes", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from wsicodec.store.format import entropy_model, read_store_meta

    result = {"store": str(args.store),
              "fetch": [fetch(args.store, g, keep, args.device) for g in args.group for keep in (True, False)]}
    for r in result["fetch"]:
        print(json.dumps(r))
    if entropy_model(read_store_meta(args.store)) != "factorized":
        result["range_decoding"] = range_decoding(args.store, args.processes)
        for r in result["range_decoding"]:
            print(json.dumps(r))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
