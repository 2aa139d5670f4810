"""The streaming compressor: store bytes independent of thread counts, bounded in-flight work,
errors from the writer threads surface, decoding with latents prefetched on a thread."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EXAMPLE, code_chunks_whole

from wsicodec.pipeline import compress
from wsicodec.store import WsiStore
from wsicodec.store.format import TILE_CODED
from wsicodec.streaming import BackgroundSink, prefetch


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_store_is_byte_identical_for_1_and_n_threads(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764115200")  # reproducible `created`
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = compress(EXAMPLE, tmp_path / "a.zarr", model_dir=tiny_models, tile=256, io_threads=1).output
        torch.set_num_threads(2)
        b = compress(EXAMPLE, tmp_path / "b.zarr", model_dir=tiny_models, tile=256, io_threads=4).output
        # entropy coding and chunk writes in 3 worker processes, the slide read on 3 threads
        c = compress(EXAMPLE, tmp_path / "c.zarr", model_dir=tiny_models, tile=256, writer_processes=3,
                     read_threads=3).output
    finally:
        torch.set_num_threads(before)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert len(fa) > 50 and fa.keys() == fb.keys() == fc.keys()
    assert [k for k in fa if fa[k] != fb[k]] == []
    assert [k for k in fa if fa[k] != fc[k]] == []
    assert b'"created": "2025-11-26T00:00:00+00:00"' in fa["zarr.json"]


def test_sink_bounds_work_in_flight_and_runs_in_parallel():
    lock, live, peak, seen = threading.Lock(), [0], [0], []

    def work(i):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.01)
        with lock:
            live[0] -= 1
            seen.append(i)

    with BackgroundSink(work, workers=3, depth=4) as sink:
        for i in range(40):
            sink.put(i)
    assert sorted(seen) == list(range(40))
    assert 2 <= peak[0] <= 3


def test_sink_raises_the_first_error_and_skips_the_rest():
    done = []

    def work(i):
        if i == 3:
            raise OSError("disk full")
        done.append(i)

    with pytest.raises(OSError, match="disk full"):
        with BackgroundSink(work, workers=1, depth=1) as sink:
            for i in range(100):
                sink.put(i)
    assert max(done) < 10


def test_prefetch_stops_its_thread_when_the_consumer_stops():
    made = []

    def slow(i):
        made.append(i)
        return i * 2

    gen = prefetch(range(1000), slow, depth=2)
    assert [next(gen) for _ in range(3)] == [(0, 0), (1, 2), (2, 4)]
    gen.close()
    n = len(made)
    time.sleep(0.2)
    assert len(made) == n <= 6
    assert not [t for t in threading.enumerate() if t.daemon and t.is_alive() and "prefetch" in t.name]


def test_prefetch_on_several_threads_keeps_the_order_and_stops():
    def slow(i):
        time.sleep(0.002 * (i % 3))
        return i * i

    assert list(prefetch(range(50), slow, depth=4, threads=4)) == [(i, i * i) for i in range(50)]
    gen = prefetch(range(1000), slow, depth=2, threads=3)
    next(gen)
    gen.close()
    time.sleep(0.05)
    assert not [t for t in threading.enumerate() if "prefetch" in t.name and t.is_alive()]


def test_prefetch_on_several_threads_raises_the_error():
    def bad(i):
        if i == 5:
            raise ValueError("unreadable tile")
        return i

    with pytest.raises(ValueError, match="unreadable tile"):
        list(prefetch(range(20), bad, depth=2, threads=3))


def test_chunk_writer_process_failures_are_one_line_errors(tmp_path):
    from wsicodec.writers import ChunkWriterProcesses, WriterError

    with ChunkWriterProcesses(tmp_path / "not-a-store", 1) as w:  # the worker cannot open it
        with pytest.raises(WriterError, match="not-a-store: cannot open the store's latents") as e:
            w.write([(0, 0)], np.zeros((1, 2, 4, 4), np.int16))
        assert "\n" not in str(e.value)
    w = ChunkWriterProcesses(tmp_path / "not-a-store", 1)
    w._procs[0].kill()  # a worker that dies
    w._procs[0].wait()
    with pytest.raises(WriterError, match="ended unexpectedly"):
        w.write([(0, 0)], np.zeros((1, 2, 4, 4), np.int16))
    w.close()


def test_chunk_writer_frames_of_several_tiles(tiny_models, tmp_path):
    """One frame carries several tiles (int32, cast in the worker): the files are those written
    in this process; a value out of the store's int16 range is a one-line error naming the tile."""
    from wsicodec.store import LatentChunkFiles, chunk_file
    from wsicodec.writers import ChunkWriterProcesses, WriterError

    part = compress(EXAMPLE, tmp_path / "a.zarr", model_dir=tiny_models, tile=256).output
    rng = np.random.default_rng(3)
    chunks = rng.integers(-300, 300, (3, 8, 16, 16)).astype(np.int32)
    tiles = [(0, 0), (1, 0), (0, 1)]
    with ChunkWriterProcesses(part, 2) as w:
        w.write(tiles, chunks)
        by_worker = [chunk_file(part, tx, ty).read_bytes() for tx, ty in tiles]
        chunks[1, 0, 0, 0] = 40000
        with pytest.raises(WriterError, match=r"a.zarr: latent values overflow int16 at tile \(1, 0\)") as e:
            w.write(tiles, chunks)
        assert "\n" not in str(e.value)
    files = LatentChunkFiles(part)
    chunks[1, 0, 0, 0] = 7
    for (tx, ty), q in zip(tiles, chunks, strict=True):
        files.write(tx, ty, q)
    here = [chunk_file(part, tx, ty).read_bytes() for tx, ty in tiles]
    assert here[0] == by_worker[0] and here[2] == by_worker[2] and here[1] != by_worker[1]
    with WsiStore(part, model_dir=tiny_models) as s:
        np.testing.assert_array_equal(np.asarray(s.latents[:, 16:32, :16]), chunks[2])


def test_chunk_writer_refuses_hyperprior_symbols_for_a_factorized_store(tiny_models, tmp_path):
    """A frame of HyperSymbols (what a GPU makes for a hyperprior store) sent to a factorized
    store's worker: a one-line error naming the store, and the worker goes on."""
    from wsicodec.codec import HyperSymbols
    from wsicodec.writers import ChunkWriterProcesses, WriterError

    part = compress(EXAMPLE, tmp_path / "a.zarr", model_dir=tiny_models, tile=256).output
    sym = HyperSymbols(np.zeros((8, 4, 4), np.int32), np.zeros((8, 16, 16), np.int32), np.zeros((8, 16, 16), np.uint8))
    with ChunkWriterProcesses(part, 1) as w:
        with pytest.raises(WriterError, match="a.zarr: hyperprior symbols for a store of another entropy model"):
            w.write([(0, 0)], [sym])
        w.write([(0, 0)], np.zeros((1, 8, 16, 16), np.int16))


def test_chunk_writers_import_this_wsicodec_from_any_folder(tiny_models, tmp_path, monkeypatch):
    """The workers run ``python -m wsicodec.writers``, and ``-m`` puts the working folder first on
    sys.path: run from a folder holding another ``wsicodec`` (a checkout, an older copy), they
    must still import this one; a relative store path means the caller's folder."""
    from wsicodec.store import chunk_file
    from wsicodec.writers import ChunkWriterProcesses

    part = compress(EXAMPLE, tmp_path / "a.zarr", model_dir=tiny_models, tile=256).output
    impostor = tmp_path / "wsicodec"
    impostor.mkdir()
    (impostor / "__init__.py").write_text("raise ImportError('the wrong wsicodec')\n")
    monkeypatch.chdir(tmp_path)
    with ChunkWriterProcesses(Path("a.zarr"), 1) as w:
        w.write([(1, 1)], np.full((1, 8, 16, 16), 3, np.int16))
    with WsiStore(part, model_dir=tiny_models) as s:
        assert (np.asarray(s.latents[:, 16:32, 16:32]) == 3).all()
    assert chunk_file(part, 1, 1).is_file()


def test_chunk_writer_processes_leave_ctrl_c_to_the_parent(tiny_models, tmp_path):
    """A terminal's Ctrl-C reaches the workers too: they ignore it (no tracebacks, no lost
    chunks); the parent keeps the work for --resume and ends them by closing their pipes."""
    import os
    import signal

    from wsicodec.writers import ChunkWriterProcesses

    part = compress(EXAMPLE, tmp_path / "a.zarr", model_dir=tiny_models, tile=256).output
    with ChunkWriterProcesses(part, 1) as w:
        w.write([(0, 0)], np.zeros((1, 8, 16, 16), np.int16))  # the worker is up
        os.kill(w._procs[0].pid, signal.SIGINT)
        time.sleep(0.2)
        w.write([(0, 0)], np.ones((1, 8, 16, 16), np.int16))  # and still writes
        procs = list(w._procs)
    assert [p.returncode for p in procs] == [0]  # ended by the closed pipe, not by the signal
    with WsiStore(part, model_dir=tiny_models) as s:
        assert (np.asarray(s.latents[:, :16, :16]) == 1).all()


def test_decoding_with_prefetch_matches_tile_by_tile(tiny_models, tmp_path):
    out = compress(EXAMPLE, tmp_path / "c.zarr", model_dir=tiny_models, tile=256).output
    with WsiStore(out, model_dir=tiny_models) as s:
        tiles = list(s.grid)[:40]
        grouped = {(tx, ty): px for tx, ty, px in s.decode_tiles(tiles, group=7)}
        for t in tiles[::9]:
            (_, _, one), = s.decode_tiles([t], group=1)
            assert np.abs(one.astype(int) - grouped[t].astype(int)).max() <= 1


@pytest.mark.parametrize("model", ["tiny", "tiny-hyper"])
def test_each_latent_chunk_is_decoded_once(tiny_models, tmp_path, model, monkeypatch):
    """A tile's halo reaches into its neighbours' chunks: reading tile by tile (the viewer) or band
    by band (decompress) decodes each chunk once and keeps it, and the latents are the ones a
    reader that keeps nothing gets; a budget of no bytes keeps only the chunk just decoded."""
    out = compress(EXAMPLE, tmp_path / "c.zarr", model=model, model_dir=tiny_models, tile=256).output
    with WsiStore(out, model_dir=tiny_models) as s:
        reads: list[tuple] = []
        latents = s.latents

        class Counting:
            shape = latents.shape

            def __getitem__(self, key):
                reads.append(key)
                return latents[key]

        s.latents = Counting()
        g, halo = s.grid, s.transforms.spec.decode_halo
        windows = [g.latent_window(*g.tile_box(tx, ty), halo) for tx, ty in g]
        kept = [s.fetch_latents(*w) for w in windows]
        coded = int((s.tile_state == TILE_CODED).sum())
        assert len(reads) == coded == len(set(map(str, reads)))
        monkeypatch.setattr(WsiStore, "chunk_cache_bytes", 0)
        s.close()
        reads.clear()
        for w, q in zip(windows, kept, strict=True):
            np.testing.assert_array_equal(s.fetch_latents(*w), q)
        assert len(reads) > 2 * coded  # nothing kept: the neighbours' chunks decoded again
        assert len(s._chunks) == 1

@pytest.mark.parametrize("model", ["tiny", "tiny-hyper"])
def test_chunk_files_are_the_bytes_zarr_writes(tiny_models, tmp_path, model):
    """StoreWriter writes latent chunks itself (LatentChunkFiles, no zarr in the loop): each whole
    chunk must be what zarr's own write of the same chunk gives. An edge chunk is coded only as
    far as the array reaches (format version 5), where zarr codes it whole; the store zarr
    rewrites stays valid, and a factorized model's values stay the same everywhere."""
    import shutil

    import zarr

    from wsicodec.codec import chunk_stream_shape
    from wsicodec.verify import verify_store

    out = compress(EXAMPLE, tmp_path / "a.zarr", model=model, model_dir=tiny_models, tile=256).output
    ref = tmp_path / "ref.zarr"
    shutil.copytree(out, ref)
    a = zarr.open_array(str(ref / "latents"), mode="r")
    C, c, _ = a.chunks
    ours = _files(out / "latents" / "c")
    rows, cols = a.shape[1:]
    assert rows % c and cols % c  # the store has edge chunks
    before = np.asarray(a[...])
    code_chunks_whole(ref)  # zarr codes the same values again
    theirs = _files(ref / "latents" / "c")
    edge = {k for k in ours if chunk_stream_shape(ours[k])[1:] != (c, c)}
    assert edge and len(ours) - len(edge) > 10 and theirs.keys() == ours.keys()
    assert {k: v for k, v in theirs.items() if k not in edge} == {k: v for k, v in ours.items() if k not in edge}
    assert all(chunk_stream_shape(theirs[k]) == (C, c, c) and len(theirs[k]) > len(ours[k]) for k in edge)
    after = np.asarray(zarr.open_array(str(ref / "latents"), mode="r")[...])
    if model == "tiny":
        assert np.array_equal(before, after)
    rep = verify_store(ref, model_dir=tiny_models)
    assert rep.ok, rep.problems
