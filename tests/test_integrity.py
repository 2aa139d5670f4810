"""Never lose a slide: verify, crash safety and resume, input safety, hostile stores."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import disk_full_after
from PIL import Image

from wsicodec.cli import main
from wsicodec.pipeline import compress
from wsicodec.store import StoreError, WsiStore, partial_path
from wsicodec.verify import verify_store


def _image(path: Path, size: int = 1000) -> Path:
    """A tissue-like blob on glass: about half of the tiles are glass."""
    rng = np.random.default_rng(0)
    im = np.full((size, size, 3), 235, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    blob = ((xx - 0.45 * size) ** 2 / (0.35 * size) ** 2 + (yy - 0.52 * size) ** 2 / (0.3 * size) ** 2) < 1
    im[blob] = (rng.integers(0, 60, (int(blob.sum()), 3)) + np.array([150, 60, 140])).astype(np.uint8)
    Image.fromarray(im).save(path)
    return path


@pytest.fixture()
def run(tiny_models):
    def _run(*args):
        return CliRunner().invoke(main, [str(a) for a in args], env={"WSICODEC_MODELS": str(tiny_models)})

    return _run


def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code != 0
    err = result.output.strip().splitlines()[-1]
    assert "Traceback" not in result.output and err.startswith("wsicodec: error:"), result.output
    for n in needles:
        assert n in err, err


@pytest.fixture(scope="module")
def small_store(tiny_models, tmp_path_factory):
    """A 2x2-tile store (3 coded, 1 glass) and its source image."""
    d = tmp_path_factory.mktemp("small")
    img = np.full((256, 256, 3), 235, np.uint8)
    noise = np.random.default_rng(1).integers(60, 200, (256, 256, 3))
    img[:128], img[128:, :128] = noise[:128], noise[128:, :128]  # tile (1, 1) is glass
    Image.fromarray(img).save(d / "s.png")
    compress(d / "s.png", d / "s.zarr", tile=128, model_dir=tiny_models, device="cpu")
    return d / "s.zarr", d / "s.png"


def _copy(store: Path, tmp_path: Path, name: str = "c.zarr") -> Path:
    out = tmp_path / name
    shutil.copytree(store, out)
    return out


def _chunks(store: Path) -> list[Path]:
    return sorted(p for p in (store / "latents" / "c").rglob("*") if p.is_file())


# -- verify ------------------------------------------------------------------------------------

def test_good_store_verifies_clean(small_store, run, tiny_models):
    store, src = small_store
    rep = verify_store(store, against=src, model_dir=tiny_models, device="cpu")
    assert rep.ok, [str(p) for p in rep.problems]
    assert (rep.tiles, rep.coded, rep.glass, rep.chunks_decoded) == (4, 3, 1, 3)
    assert rep.model["checked"] and rep.quality["psnr"] > 0 and 0 < rep.quality["ms_ssim"] <= 1
    r = run("verify", store)
    assert r.exit_code == 0 and r.output.strip().endswith("OK") and "verified" in r.output, r.output
    r = run("verify", store, "--json")
    assert r.exit_code == 0 and json.loads(r.output)["ok"] is True


def test_every_flipped_byte_is_detected(small_store, tmp_path):
    store = _copy(small_store[0], tmp_path)
    chunk = min(_chunks(store), key=lambda p: p.stat().st_size)
    ty, tx = int(chunk.parent.name), int(chunk.name)
    good = chunk.read_bytes()
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0xFF if i % 2 else 0x01
        chunk.write_bytes(bytes(bad))
        rep = verify_store(store, check_model=False)
        assert not rep.ok and [p.tile for p in rep.problems] == [(tx, ty)], (i, [str(p) for p in rep.problems])
    for n in (0, 3, 4, len(good) - 1):  # truncated
        chunk.write_bytes(good[:n])
        rep = verify_store(store, check_model=False)
        assert [p.tile for p in rep.problems] == [(tx, ty)]
    chunk.write_bytes(good)
    assert verify_store(store, check_model=False).ok
    print(f"flipped bytes tried: {len(good)}")


def test_missing_chunk_and_stray_files_are_named(small_store, tmp_path, run, tiny_models):
    store = _copy(small_store[0], tmp_path)
    chunk = _chunks(store)[0]
    ty, tx = int(chunk.parent.name), int(chunk.name)
    chunk.unlink()
    rep = verify_store(store, model_dir=tiny_models)
    assert [(p.what, p.tile) for p in rep.problems] == [("chunk", (tx, ty))]
    assert "missing" in rep.problems[0].message
    r = run("verify", store)
    assert f"tile ({tx}, {ty})" in r.output and "missing" in r.output
    _one_line_error(r, "1 problem(s)")
    # a chunk for the glass tile, and a file beyond the grid
    import zarr

    state = np.asarray(zarr.open_group(str(store), mode="r")["tiles"][...])
    gy, gx = (int(v[0]) for v in np.nonzero(state == 2))
    glass_chunk = store / "latents" / "c" / "0" / str(gy) / str(gx)
    glass_chunk.parent.mkdir(exist_ok=True)
    shutil.copy(_chunks(store)[0], glass_chunk)
    (store / "latents" / "c" / "0" / "9").mkdir()
    (store / "latents" / "c" / "0" / "9" / "0").write_bytes(b"x")
    rep = verify_store(store, check_model=False)
    texts = [str(p) for p in rep.problems]
    assert any("unexpected file latents/c/0/9/0" in t for t in texts), texts
    assert any(p.tile == (gx, gy) and "glass tile has a chunk" in p.message for p in rep.problems), texts


def test_verify_reports_the_model(small_store, tmp_path, tiny_models, run):
    import torch

    from wsicodec.models import ModelCard, build_model, save_model

    other = tmp_path / "models"
    shutil.copytree(tiny_models, other)
    torch.manual_seed(7)
    save_model(build_model("bmshj2018-factorized", N=8, M=8),
               ModelCard(name="tiny", architecture="bmshj2018-factorized", params={"N": 8, "M": 8}), other)
    rep = verify_store(small_store[0], model_dir=other)
    assert [p.what for p in rep.problems] == ["model"] and "different model" in rep.problems[0].message
    r = CliRunner().invoke(main, ["verify", str(small_store[0])], env={"WSICODEC_MODELS": str(other)})
    assert "NOT verified" in r.output
    _one_line_error(r, "problem")


def test_partial_store_is_rejected(small_store, tmp_path, run, tiny_models):
    store = _copy(small_store[0], tmp_path)
    meta_file = store / "zarr.json"
    doc = json.loads(meta_file.read_text())
    doc["attributes"]["wsicodec"]["complete"] = False
    meta_file.write_text(json.dumps(doc))
    for cmd in (("verify", store), ("decompress", store, tmp_path / "o.tif"), ("info", store)):
        _one_line_error(run(*cmd), "incomplete store")
    # a complete store still under its partial name is refused too
    part = partial_path(tmp_path / "p.zarr")
    shutil.copytree(small_store[0], part)
    _one_line_error(run("verify", part), "incomplete store")
    with pytest.raises(StoreError, match="incomplete"):
        WsiStore(part)
    _one_line_error(run("decompress", tmp_path / "p.zarr", tmp_path / "o.tif"), "no such store", "--resume")


# -- crash safety and resume -----------------------------------------------------------------------

KILLER = r'''
import os, signal, sys, time
import wsicodec.store.writer as st
point, n = os.environ.get("KILL_POINT", ""), int(os.environ.get("KILL_AFTER", "0"))
delay = float(os.environ.get("TILE_DELAY", "0"))
st.StoreWriter.CHECKPOINT_SECONDS = float(os.environ.get("CHECKPOINT_S", "1.0"))
count = [0]
orig_write, orig_ckpt, orig_sync = st.StoreWriter.write_tiles, st.StoreWriter.checkpoint, st._sync
def die():
    os.kill(os.getpid(), signal.SIGKILL)
def write_tiles(self, tiles):
    time.sleep(delay * len(tiles))
    orig_write(self, tiles)
    count[0] += len(tiles)
    if point == "tile" and count[0] >= n:
        die()
def checkpoint(self):
    if point == "checkpoint" and count[0] >= n:
        die()  # chunks written, tile map not yet
    orig_ckpt(self)
def sync():
    orig_sync()
    if point == "finish":
        die()  # complete: true written, not yet moved into place
st.StoreWriter.write_tiles, st.StoreWriter.checkpoint, st._sync = write_tiles, checkpoint, sync
from wsicodec.cli import main
main(sys.argv[1:], prog_name="wsicodec")
'''


def _files(store: Path) -> dict[str, bytes]:
    out = {}
    for f in sorted(store.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            if f.relative_to(store).as_posix() == "zarr.json":
                doc = json.loads(data)
                doc["attributes"]["wsicodec"].pop("created")
                data = json.dumps(doc).encode()
            out[f.relative_to(store).as_posix()] = data
    return out


def test_killed_runs_resume_to_an_identical_store(tiny_models, tmp_path):
    img = _image(tmp_path / "img.png")
    ref = compress(img, tmp_path / "ref.zarr", tile=128, model_dir=tiny_models, device="cpu").output
    out = tmp_path / "out.zarr"
    part = partial_path(out)
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "WSICODEC_MODELS": str(tiny_models), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(script), "compress", str(img), str(out), "--tile", "128", "-q", "--device", "cpu"]

    # 1. killed from outside once 8 chunk files are on disk
    p = subprocess.Popen(args, env={**env, "TILE_DELAY": "0.05"})
    t0 = time.time()
    while len(_chunks(part)) < 8 if part.is_dir() else True:
        assert p.poll() is None and time.time() - t0 < 120, "compress ended before it could be killed"
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not out.exists() and part.is_dir()
    created = json.loads((part / "zarr.json").read_text())["attributes"]["wsicodec"]["created"]
    assert json.loads((part / "zarr.json").read_text())["attributes"]["wsicodec"]["complete"] is False
    with pytest.raises(StoreError, match="incomplete"):
        WsiStore(part)
    with pytest.raises(StoreError, match="unfinished"):
        WsiStore(out)
    # 2-4. resumed and killed again: after some tiles (frequent checkpoints), between chunks and the
    # tile map, and after `complete: true` but before the move into place
    kills = [("tile", 6, "0.01"), ("checkpoint", 5, "0.0"), ("finish", 0, "1.0")]
    for point, n, ckpt in kills:
        time.sleep(1.1)  # a resumed run must keep the first run's `created`, not take its own
        r = subprocess.run(args + ["--resume"], env={**env, "KILL_POINT": point, "KILL_AFTER": str(n),
                                                      "CHECKPOINT_S": ckpt}, capture_output=True, text=True)
        assert r.returncode == -signal.SIGKILL, (point, r.stderr)
        assert not out.exists() and part.is_dir(), point
    leftovers = [f for f in part.rglob("*.partial")]
    r = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.is_dir() and not part.exists()
    assert _files(out) == _files(ref)
    assert json.loads((out / "zarr.json").read_text())["attributes"]["wsicodec"]["created"] == created
    assert verify_store(out, model_dir=tiny_models).ok
    print(f"kill points: external after 8 chunks, {kills}; zarr temp files cleaned: {len(leftovers)}")


def test_full_disk_is_a_one_line_error_and_resume_finishes(tiny_models, tmp_path, monkeypatch):
    """No space left while writing: a StoreError naming the file and saying how to go on; the
    tiles written are kept and --resume finishes the same store an uninterrupted run writes."""
    img = _image(tmp_path / "img.png", 400)
    ref = compress(img, tmp_path / "ref.zarr", tile=128, model_dir=tiny_models, device="cpu").output
    out = tmp_path / "out.zarr"
    free_disk = disk_full_after(monkeypatch, 2)
    with pytest.raises(StoreError, match="No space left on device.*--resume"):
        compress(img, out, tile=128, model_dir=tiny_models, device="cpu", io_threads=1)
    assert partial_path(out).is_dir() and not out.exists()
    free_disk()
    r = compress(img, out, tile=128, model_dir=tiny_models, device="cpu", resume=True)
    assert r.resumed_tiles >= 2
    assert _files(out) == _files(ref)


def test_partial_store_without_resume_starts_over(tiny_models, tmp_path):
    img = _image(tmp_path / "img.png", 400)
    ref = compress(img, tmp_path / "ref.zarr", tile=128, model_dir=tiny_models, device="cpu").output
    out = tmp_path / "out.zarr"
    part = partial_path(out)
    shutil.copytree(ref, part)
    doc = json.loads((part / "zarr.json").read_text())
    doc["attributes"]["wsicodec"].update(complete=False, created="2000-01-01T00:00:00+00:00")
    (part / "zarr.json").write_text(json.dumps(doc))
    victim = _chunks(part)[0]
    victim.write_bytes(b"garbage")  # would be kept if it were not discarded... it fails its CRC anyway
    (part / "latents" / "c" / "0" / "0" / "7.0123456789abcdef0123456789abcdef.partial").write_bytes(b"tmp")
    r = compress(img, out, tile=128, model_dir=tiny_models, device="cpu")
    assert r.resumed_tiles == 0 and not part.exists()
    created = json.loads((out / "zarr.json").read_text())["attributes"]["wsicodec"]["created"]
    assert created != "2000-01-01T00:00:00+00:00"
    assert _files(out) == _files(ref)
    # with --resume: the good chunks are kept, the bad one and zarr's temp file are redone / removed
    shutil.rmtree(out)
    shutil.copytree(ref, part)
    (part / "zarr.json").write_text(json.dumps(doc))
    _chunks(part)[0].write_bytes(b"garbage")
    (part / "latents" / "c" / "0" / "0" / "7.0123456789abcdef0123456789abcdef.partial").write_bytes(b"tmp")
    r = compress(img, out, tile=128, model_dir=tiny_models, device="cpu", resume=True)
    assert r.resumed_tiles == r.tiles - 1
    assert _files(out) == _files(ref)
    created = json.loads((out / "zarr.json").read_text())["attributes"]["wsicodec"]["created"]
    assert created == "2000-01-01T00:00:00+00:00"
    # a partial store from other settings is not resumed silently
    shutil.copytree(ref, part)
    (part / "zarr.json").write_text(json.dumps(doc))
    shutil.rmtree(out)
    with pytest.raises(StoreError, match="other settings"):
        compress(img, out, tile=64, model_dir=tiny_models, device="cpu", resume=True)
    # nor one an earlier wsicodec began in another store format (the layout of its chunks may differ)
    doc["attributes"]["wsicodec"]["format_version"] = 1
    (part / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="store format version 1, this wsicodec writes version 5 here"):
        compress(img, out, tile=128, model_dir=tiny_models, device="cpu", resume=True)


# -- input safety ----------------------------------------------------------------------------------

def _huge_tiff(path: Path, W: int, H: int, T: int = 256) -> Path:
    """A tiled RGB TIFF header claiming W x H pixels; every tile points at one 16-byte blob."""
    import struct

    n = -(-W // T) * -(-H // T)
    blob = bytes(16)
    data_off = 8
    offs_off = data_off + len(blob)
    cnts_off = offs_off + 4 * n
    bps_off = cnts_off + 4 * n
    ifd_off = bps_off + 6
    tags = [(256, 4, 1, W), (257, 4, 1, H), (258, 3, 3, bps_off), (259, 3, 1, 1), (262, 3, 1, 2),
            (277, 3, 1, 3), (284, 3, 1, 1), (322, 3, 1, T), (323, 3, 1, T), (324, 4, n, offs_off),
            (325, 4, n, cnts_off)]
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_off)) + blob
    out += struct.pack(f"<{n}I", *([data_off] * n)) + struct.pack(f"<{n}I", *([len(blob)] * n))
    out += struct.pack("<3H", 8, 8, 8) + struct.pack("<H", len(tags))
    for tag, typ, cnt, val in tags:
        out += struct.pack("<HHIHH", tag, typ, cnt, val, 0) if typ == 3 and cnt == 1 else \
            struct.pack("<HHII", tag, typ, cnt, val)
    out += struct.pack("<I", 0)
    path.write_bytes(bytes(out))
    return path


def _png_header(path: Path, W: int, H: int) -> Path:
    """A PNG whose IHDR claims W x H pixels, with one tiny IDAT."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))
    return path


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, for big.png: refused anyway
def test_huge_or_malformed_dimensions_are_refused_before_allocating(run, tmp_path):
    import resource

    cases = [(_png_header(tmp_path / "bomb.png", 100000, 100000), "larger than"),      # PIL's bomb check
             (_png_header(tmp_path / "big.png", 40000, 40000), "larger than"),         # PIL only warns here
             (_png_header(tmp_path / "wide.png", 1 << 21, 1), "outside 1.."),
             (_huge_tiff(tmp_path / "huge.tif", 2_000_000, 2_000_000, T=4096), "outside 1..")]
    for src, needle in cases:
        _one_line_error(run("compress", src, tmp_path / "o.zarr", "-q"), src.name, needle)
        _one_line_error(run("info", src), src.name, needle)
    assert not (tmp_path / "o.zarr").exists()
    # and without allocating: the same under a 1.5 GB address-space limit (no torch in this process)
    code = ("import sys\nfrom wsicodec.slide import open_input, SlideError\n"
            "for p in sys.argv[1:]:\n"
            "    try: open_input(p)\n"
            "    except SlideError as e: print('refused', e)\n")
    limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (1500 << 20, 1500 << 20))  # noqa: E731
    r = subprocess.run([sys.executable, "-c", code, *(str(c[0]) for c in cases)], capture_output=True, text=True,
                       preexec_fn=limit, timeout=120)
    assert r.returncode == 0 and r.stdout.count("refused") == len(cases), r.stdout + r.stderr


def test_thumbnail_of_a_slide_without_small_level_is_read_in_strips(monkeypatch):
    from conftest import EXAMPLE

    import wsicodec.slide as slide

    with slide.open_input(EXAMPLE) as s:
        whole = s.thumbnail(512)
        monkeypatch.setattr(slide, "MAX_THUMBNAIL_READ", 1 << 18)
        reads = []
        orig = s._slide.read_region
        monkeypatch.setattr(s._slide, "read_region", lambda *a: reads.append(a[2]) or orig(*a))
        strips = s.thumbnail(512)
    assert strips.shape == whole.shape and np.abs(strips.astype(int) - whole).mean() < 8
    assert len(reads) > 10 and all(w * h <= 1 << 18 for w, h in reads)


def test_output_must_not_touch_the_input(run, tmp_path):
    img = _image(tmp_path / "in.png", 64)
    _one_line_error(run("compress", img, img, "--overwrite"), "over the input")
    assert img.stat().st_size > 0
    folder = tmp_path / "case"
    folder.mkdir()
    inner = _image(folder / "in.png", 64)
    # the output would replace the folder holding the input
    _one_line_error(run("compress", inner, folder, "--overwrite"), "inside it")
    assert inner.exists()
    # a folder input (DICOM folder, .zarr store): no output inside it
    store = tmp_path / "s.zarr"
    assert run("compress", img, store, "-q").exit_code == 0
    _one_line_error(run("compress", store, store / "x.zarr"), "inside the input folder")
    # --overwrite replaces only a wsicodec store
    (tmp_path / "notes.txt").write_text("precious")
    _one_line_error(run("compress", img, tmp_path / "notes.txt", "--overwrite"), "not a wsicodec store")
    assert (tmp_path / "notes.txt").read_text() == "precious"
    # symbolic links are not written through
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link.zarr").symlink_to(elsewhere)
    _one_line_error(run("compress", img, tmp_path / "link.zarr", "--overwrite"), "symbolic link")
    (tmp_path / "dangling.zarr").symlink_to(tmp_path / "nowhere")
    _one_line_error(run("compress", img, tmp_path / "dangling.zarr"), "symbolic link")
    assert not (tmp_path / "nowhere").exists() and not any(elsewhere.iterdir())
    partial_path(tmp_path / "p.zarr").symlink_to(elsewhere)
    _one_line_error(run("compress", img, tmp_path / "p.zarr"), "symbolic link")
    (tmp_path / "link.tif").symlink_to(tmp_path / "target.tif")
    _one_line_error(run("decompress", store, tmp_path / "link.tif"), "symbolic link")
    assert not (tmp_path / "target.tif").exists()


# -- hostile stores ----------------------------------------------------------------------------------

def test_fuzzed_stores_fail_cleanly(small_store, tiny_models, run):
    """Random metadata values, bit flips in any zarr.json, truncated files, wrong shapes and
    versions: always a StoreError / CodecError / ModelError (a one-line CLI error), never a crash
    or a hang."""
    import tempfile

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from wsicodec.codec import CodecError
    from wsicodec.models import ModelError

    good, _ = small_store
    files = sorted(p.relative_to(good).as_posix() for p in good.rglob("*") if p.is_file())
    jsons = [f for f in files if f.endswith("zarr.json")]
    meta_keys = list(json.loads((good / "zarr.json").read_text())["attributes"]["wsicodec"])
    json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.floats()
                               | st.text(max_size=8), lambda c: st.lists(c, max_size=4)
                               | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=8)
    mutation = st.one_of(
        st.tuples(st.just("value"), st.sampled_from(meta_keys), st.one_of(st.none(), st.text(max_size=8)), json_values),
        st.tuples(st.just("delete"), st.sampled_from(meta_keys)),
        st.tuples(st.just("bitflip"), st.sampled_from(jsons), st.integers(0, 10**6), st.integers(0, 7)),
        st.tuples(st.just("truncate"), st.sampled_from(files), st.floats(0, 1)),
        st.tuples(st.just("shape"), st.sampled_from(["latents/zarr.json", "tiles/zarr.json"]),
                  st.sampled_from(["shape", "chunk_grid"]), st.lists(st.integers(-3, 2**40), max_size=4)),
        st.tuples(st.just("version"), json_values),
    )
    seen = {"tried": 0, "clean_errors": 0, "read_ok": 0}

    def mutate(root: Path, m: tuple) -> None:
        kind = m[0]
        if kind in ("value", "delete", "version"):
            doc = json.loads((root / "zarr.json").read_text())
            meta = doc["attributes"]["wsicodec"]
            if kind == "delete":
                meta.pop(m[1])
            elif kind == "version":
                meta["format_version"] = m[1]
            elif m[2] is not None and isinstance(meta.get(m[1]), dict):
                meta[m[1]][m[2]] = m[3]
            else:
                meta[m[1]] = m[3]
            (root / "zarr.json").write_text(json.dumps(doc))
        elif kind == "bitflip":
            f = root / m[1]
            data = bytearray(f.read_bytes())
            data[m[2] % len(data)] ^= 1 << m[3]
            f.write_bytes(bytes(data))
        elif kind == "truncate":
            f = root / m[1]
            data = f.read_bytes()
            f.write_bytes(data[: int(len(data) * m[2])])
        elif kind == "shape":
            doc = json.loads((root / m[1]).read_text())
            if m[2] == "shape":
                doc["shape"] = m[3]
            else:
                doc["chunk_grid"]["configuration"]["chunk_shape"] = m[3]
            (root / m[1]).write_text(json.dumps(doc))

    def on_alarm(*_):
        raise TimeoutError("hang")

    old = signal.signal(signal.SIGALRM, on_alarm)

    @settings(max_examples=250, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(mutation)
    def fuzz(m):
        seen["tried"] += 1
        with tempfile.TemporaryDirectory() as d:
            root = Path(d) / "f.zarr"
            shutil.copytree(good, root)
            mutate(root, m)
            signal.alarm(20)
            try:
                try:
                    with WsiStore(root, model_dir=tiny_models, device="cpu") as s:
                        _ = s.properties, s.level_dimensions, s.associated_images  # each reads and checks
                        s.read_region((0, 0), 0, (40, 40))
                    seen["read_ok"] += 1
                except (StoreError, CodecError, ModelError):
                    seen["clean_errors"] += 1
                try:
                    verify_store(root, check_model=False)
                except StoreError:
                    pass
            finally:
                signal.alarm(0)
            if seen["tried"] % 10 == 0:  # the CLI turns all of it into one line
                r = run("info", root, "--json")
                assert r.exit_code == 0 or (r.output.startswith("wsicodec: error:")
                                            and len(r.output.strip().splitlines()) == 1), (m, r.output)

    try:
        fuzz()
    finally:
        signal.signal(signal.SIGALRM, old)
    print(f"fuzzed stores: {seen}")
    assert seen["tried"] >= 250 and seen["clean_errors"] > 100
