"""Tile latency of ``wsicodec view``: a scripted pan and zoom over a store, cold and warm cache.

The viewer app is served by uvicorn on 127.0.0.1 and every DeepZoom tile is requested over HTTP,
one at a time (a browser asks for up to 6 at once; one at a time gives each tile's own time).

Two scripts, each first on a fresh server (cold: nothing decoded) and then again (warm):

* ``full-res pan``: a 1280x800 view at full resolution moved across the slide in a serpentine,
  half a view per step (what a pathologist reading the slide does);
* ``zoom in``: the whole slide at the zoom that fits the view, then each level up to full
  resolution at the slide's centre (the overview needs every tile of the store decoded once).

Also: the time of each store tile's decode inside the server (glass tiles included: they cost
no network run), the cost behind a cold tile.

    python benchmarks/view_latency.py [STORE] [--device cpu] [--json out.json]

Without STORE the bundled example slide is compressed first (default model) into a temp dir.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

VIEW_W, VIEW_H = 1280, 800


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def tiles_in_view(dz, level: int, cx: float, cy: float) -> list[tuple[int, int]]:
    """DeepZoom tiles a VIEW_W x VIEW_H view centred at level-0 (cx, cy) needs at ``level``."""
    d = 2 ** dz.scale(level)
    w, h = dz.level_dimensions[level]
    x0, y0 = max(0, cx / d - VIEW_W / 2), max(0, cy / d - VIEW_H / 2)
    x1, y1 = min(w, cx / d + VIEW_W / 2), min(h, cy / d + VIEW_H / 2)
    t = dz.tile_size
    cols, rows = dz.level_tiles[level]
    return [(c, r) for r in range(int(y0 // t), min(rows, math.ceil(y1 / t)))
            for c in range(int(x0 // t), min(cols, math.ceil(x1 / t)))]


def full_res_pan(dz) -> list[tuple[int, int, int]]:
    top = dz.level_count - 1
    W, H = dz.width, dz.height
    steps_x = list(range(VIEW_W // 2, max(W - VIEW_W // 2, VIEW_W // 2) + 1, VIEW_W // 2))
    seen, out = set(), []
    for i, cy in enumerate(range(VIEW_H // 2, max(H - VIEW_H // 2, VIEW_H // 2) + 1, VIEW_H // 2)):
        for cx in (steps_x if i % 2 == 0 else steps_x[::-1]):
            for c, r in tiles_in_view(dz, top, cx, cy):
                if (top, c, r) not in seen:  # a browser keeps the tiles it has
                    seen.add((top, c, r))
                    out.append((top, c, r))
    return out


def zoom_in(dz) -> list[tuple[int, int, int]]:
    W, H = dz.width, dz.height
    fit = max(0, math.ceil(math.log2(max(W / VIEW_W, H / VIEW_H))))
    out = []
    for scale in range(min(fit + 3, dz.level_count - 1), -1, -1):  # a few levels below the fit, as a viewer loads them
        level = dz.level_count - 1 - scale
        out += [(level, c, r) for c, r in tiles_in_view(dz, level, W / 2, H / 2)]
    return out


def serve(application):
    import uvicorn

    from wsicodec.view.serve import listen

    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(application, log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def run_script(store_path: Path, device: str, script_name: str) -> dict:
    from wsicodec.view import app

    application = app(store_path, device=device)
    viewer = application.state.viewer
    decode_ms: list[float] = []  # each level-0 block read (a store tile decode, or glass), timed in the server
    pyramid = viewer.pyramids["store"]
    read_block = pyramid._read_block

    def timed_read(bx: int, by: int):
        t0 = time.perf_counter()
        try:
            return read_block(bx, by)
        finally:
            decode_ms.append((time.perf_counter() - t0) * 1000)

    pyramid._read_block = timed_read
    dz = viewer.pyramids["store"].dz
    script = full_res_pan(dz) if script_name == "full-res pan" else zoom_in(dz)
    top = dz.level_count - 1
    server, thread, base = serve(application)
    result = {"script": script_name, "tiles": len(script)}
    # the client runs in its own process, as a browser does (in this one it would share the GIL)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as client:
        try:
            for phase in ("cold", "warm"):
                reads0 = viewer.pyramids["store"].reads
                decode_ms.clear()
                t_phase = time.perf_counter()
                ms = client.submit(fetch_all, base, script).result()
                result[phase] = {
                    "seconds": round(time.perf_counter() - t_phase, 2),
                    "store_tiles_decoded": viewer.pyramids["store"].reads - reads0,
                    "store_tile_decode": summary(decode_ms),
                    "all": summary(ms),
                    "full_res": summary([t for t, (lv, _, _) in zip(ms, script, strict=True) if lv == top]),
                }
        finally:
            server.should_exit = True
            thread.join(10)
            viewer.close()
    return result


def fetch_all(base: str, script: list[tuple[int, int, int]]) -> list[float]:
    """Milliseconds of each tile request, one at a time."""
    import httpx2

    out = []
    with httpx2.Client(base_url=base, timeout=600) as client:
        for level, c, r in script:
            t0 = time.perf_counter()
            resp = client.get(f"/store_files/{level}/{c}_{r}.png")
            out.append((time.perf_counter() - t0) * 1000)
            resp.raise_for_status()
    return out


def summary(ms: list[float]) -> dict:
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "p50_ms": round(percentile(ms, 0.5), 2), "p95_ms": round(percentile(ms, 0.95), 2),
            "max_ms": round(max(ms), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store", nargs="?", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        store = args.store
        if store is None:
            from importlib import resources

            from wsicodec.pipeline import compress

            example = Path(str(resources.files("wsicodec.examples") / "CMU-1-Small-Region.svs"))
            store = Path(tmp) / "example.zarr"
            compress(example, store, device=args.device)
        report = {
            "store": store.name, "device": args.device, "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_before": [round(v, 1) for v in os.getloadavg()],  # the machine may be shared
            "cuda": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
            "scripts": [run_script(store, args.device, s) for s in ("full-res pan", "zoom in")],
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    ft = report["scripts"][0]
    print(f"\nfull-res 254-px tiles, {ft['tiles']} in the pan: p50 cold {ft['cold']['full_res']['p50_ms']} ms "
          f"(p95 {ft['cold']['full_res']['p95_ms']}), warm {ft['warm']['full_res']['p50_ms']} ms "
          f"(p95 {ft['warm']['full_res']['p95_ms']}); store tiles decoded in the pan: "
          f"{ft['cold']['store_tile_decode']['n']}, p50 {ft['cold']['store_tile_decode']['p50_ms']} ms")


if __name__ == "__main__":
    main()
