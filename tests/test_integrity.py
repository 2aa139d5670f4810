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
    from wsicodec.models import ModelCard, build_model, save_model
    import torch

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
import wsicodec.store as st
point, n = os.environ.get("KILL_POINT", ""), int(os.environ.get("KILL_AFTER", "0"))
delay = float(os.environ.get("TILE_DELAY", "0"))
st.StoreWriter.__init__.__defaults__ = (False, False, float(os.environ.get("CHECKPOINT_S", "1.0")))
count = [0]
orig_write, orig_ckpt, orig_sync = st.StoreWriter.write_tile, st.StoreWriter.checkpoint, st._sync
def die():
    os.kill(os.getpid(), signal.SIGKILL)
def write_tile(self, *a):
    time.sleep(delay)
    orig_write(self, *a)
    count[0] += 1
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
st.StoreWriter.write_tile, st.StoreWriter.checkpoint, st._sync = write_tile, checkpoint, sync
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
    assert json.loads((out / "zarr.json").read_text())["attributes"]["wsicodec"]["created"] != "2000-01-01T00:00:00+00:00"
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
    assert json.loads((out / "zarr.json").read_text())["attributes"]["wsicodec"]["created"] == "2000-01-01T00:00:00+00:00"
    # a partial store from other settings is not resumed silently
    shutil.copytree(ref, part)
    (part / "zarr.json").write_text(json.dumps(doc))
    shutil.rmtree(out)
    with pytest.raises(StoreError, match="other settings"):
        compress(img, out, tile=64, model_dir=tiny_models, device="cpu", resume=True)
