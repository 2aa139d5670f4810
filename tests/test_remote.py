"""Remote inputs and outputs (fsspec URLs) against a local S3-compatible server: moto's server mode
on 127.0.0.1, started and stopped here. Skips when moto or s3fs is not installed."""
from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from wsicodec import open_slide, remote
from wsicodec.pipeline import compress, decompress
from wsicodec.slide import SlideError
from wsicodec.store import StoreError, WsiStore
from wsicodec.store.upload import upload_store

BUCKET = "wsicodec-test"
KEY, SECRET = "testing", "testing"


def _close_s3_connections(s3fs) -> None:
    """Close the HTTP clients of the cached S3 filesystems before the cache is dropped. zarr reads
    remote stores through asynchronous instances (one per set of storage options, kept in fsspec's
    instance cache and reused); unlike synchronous ones they have no finaliser that closes their
    aiohttp client, so dropping them unclosed makes aiohttp warn about an unclosed client.
    Their clients live on zarr's event loop, so they are closed there."""
    from zarr.core.sync import sync

    for fs in list(s3fs.S3FileSystem._cache.values()):
        client = getattr(fs, "_s3", None)
        if fs.asynchronous and client is not None:
            sync(client.close())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on loopback with one bucket; the environment points s3fs at it."""
    try:
        import s3fs
        from moto.server import ThreadedMotoServer
    except ImportError as e:  # pragma: no cover - depends on the environment
        pytest.skip(f"remote storage tests need moto[server] and s3fs ({e})")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                     "AWS_ENDPOINT_URL": endpoint, "NO_PROXY": "127.0.0.1,localhost",
                     "no_proxy": "127.0.0.1,localhost"}.items():
            mp.setenv(k, v)
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            mp.delenv(k, raising=False)
        s3fs.S3FileSystem.clear_instance_cache()
        options = {"endpoint_url": endpoint, "key": KEY, "secret": SECRET}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir(BUCKET)
        try:
            yield {"fs": fs, "options": options, "endpoint": endpoint}
        finally:
            _close_s3_connections(s3fs)
            s3fs.S3FileSystem.clear_instance_cache()
            server.stop()


@pytest.fixture(scope="module")
def slide_png(tmp_path_factory, s3):
    """A small textured RGB image (2 x 2 tiles of 64 px), locally and at s3://BUCKET/in/slide.png."""
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:100, 0:120]
    img = np.stack([128 + 60 * np.sin(x / 7 + c) * np.cos(y / 9) for c in range(3)], axis=2)
    img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    p = tmp_path_factory.mktemp("in") / "slide.png"
    Image.fromarray(img).save(p)
    s3["fs"].put_file(str(p), f"{BUCKET}/in/slide.png")
    return p


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, slide_png, tiny_models):
    """The reference: a local compress and decompress of the same image."""
    d = tmp_path_factory.mktemp("local")
    compress(slide_png, d / "slide.zarr", model_dir=tiny_models, tile=64, device="cpu")
    decompress(d / "slide.zarr", d / "slide.tif", compression="deflate", model_dir=tiny_models, device="cpu")
    return d


def _tif_pixels(path_or_bytes) -> np.ndarray:
    import io

    import tifffile

    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    return tifffile.imread(src, level=0)


def _meta(raw: bytes) -> dict:
    m = json.loads(raw)["attributes"]["wsicodec"]
    m.pop("created")
    return m


def test_urls_and_options():
    assert remote.is_url("s3://b/x.zarr") and remote.is_url("memory://x") and not remote.is_url("/tmp/x.zarr")
    p = remote.as_path("s3://b/dir/x.zarr/", {"anon": True})
    assert p == "s3://b/dir/x.zarr" and p.name == "x.zarr" and (p / "zarr.json").storage_options == {"anon": True}
    assert p.with_name(".x.zarr.partial") == "s3://b/dir/.x.zarr.partial"
    import pickle

    assert pickle.loads(pickle.dumps(p)).storage_options == {"anon": True}
    assert remote.parse_storage_options(["endpoint_url=http://h:1", "anon=true", "client_kwargs.region_name=x"]) == \
        {"endpoint_url": "http://h:1", "anon": True, "client_kwargs": {"region_name": "x"}}


def test_s3_round_trip_matches_local(s3, slide_png, local_run, tiny_models, tmp_path):
    fs, opts = s3["fs"], s3["options"]
    url = f"s3://{BUCKET}/out/slide.zarr"
    r = compress(f"s3://{BUCKET}/in/slide.png", url, model_dir=tiny_models, tile=64, device="cpu",
                 storage_options=opts)
    assert r.output == url and r.tiles == 4
    # the same store as the local run: metadata (source name and size included), latents, pixels
    fs.invalidate_cache()
    assert _meta(fs.cat_file(f"{BUCKET}/out/slide.zarr/zarr.json")) == \
        _meta((local_run / "slide.zarr" / "zarr.json").read_bytes())
    with open_slide(url, storage_options=opts, model_dir=tiny_models, device="cpu") as s, \
            WsiStore(local_run / "slide.zarr", model_dir=tiny_models, device="cpu") as ref:
        assert s.dimensions == ref.dimensions == (120, 100)
        np.testing.assert_array_equal(s.latents[...], ref.latents[...])
        np.testing.assert_array_equal(np.asarray(s.read_region((10, 20), 0, (70, 60))),
                                      np.asarray(ref.read_region((10, 20), 0, (70, 60))))
        assert r.bytes == remote.store_size(url)
    # remote store -> local TIFF, local store -> remote TIFF: both equal the local decode
    ref_px = _tif_pixels(local_run / "slide.tif")
    decompress(url, tmp_path / "from_s3.tif", compression="deflate", model_dir=tiny_models, device="cpu",
               storage_options=opts)
    np.testing.assert_array_equal(_tif_pixels(tmp_path / "from_s3.tif"), ref_px)
    out = decompress(local_run / "slide.zarr", f"s3://{BUCKET}/out/slide.tif", compression="deflate",
                     model_dir=tiny_models, device="cpu", storage_options=opts)
    assert out == f"s3://{BUCKET}/out/slide.tif" and remote.file_size(out) > 0
    np.testing.assert_array_equal(_tif_pixels(fs.cat_file(f"{BUCKET}/out/slide.tif")), ref_px)
    # existing outputs need overwrite; nothing was fetched or written before the refusal
    with pytest.raises(StoreError, match="already exists"):
        compress(f"s3://{BUCKET}/in/slide.png", url, model_dir=tiny_models, tile=64, storage_options=opts)
    with pytest.raises(StoreError, match="already exists"):
        decompress(local_run / "slide.zarr", f"s3://{BUCKET}/out/slide.tif", model_dir=tiny_models,
                   storage_options=opts)
    with pytest.raises(StoreError, match="--resume needs a local OUTPUT"):
        compress(slide_png, url, model_dir=tiny_models, tile=64, overwrite=True, resume=True, storage_options=opts)
    # overwrite with another tile size: no stale chunks of the old store are left behind
    compress(slide_png, url, model_dir=tiny_models, tile=128, device="cpu", overwrite=True, storage_options=opts)
    fs.invalidate_cache()
    keys = {k.split("slide.zarr/", 1)[1] for k in fs.find(f"{BUCKET}/out/slide.zarr")}
    assert keys == {"zarr.json", "latents/zarr.json", "latents/c/0/0/0", "tiles/zarr.json", "tiles/c/0/0"}
    with open_slide(url, storage_options=opts, model_dir=tiny_models) as s:
        assert s.meta["tile_size"] == 128


def test_upload_puts_group_metadata_last(s3, local_run, monkeypatch):
    opts = s3["options"]
    calls: list[str] = []

    class Recorder:
        def __init__(self, real):
            self.real = real

        def __getattr__(self, name):
            return getattr(self.real, name)

        def put(self, lpaths, rpaths, **kw):
            calls.extend(rpaths)
            return self.real.put(lpaths, rpaths, **kw)

        def put_file(self, lpath, rpath, **kw):
            calls.append(rpath)
            return self.real.put_file(lpath, rpath, **kw)

    real_fs = remote.RemotePath.fs
    monkeypatch.setattr(remote.RemotePath, "fs", lambda self: (Recorder(real_fs(self)[0]), real_fs(self)[1]))
    url = remote.RemotePath(f"s3://{BUCKET}/order/slide.zarr", opts)
    upload_store(local_run / "slide.zarr", url, overwrite=False)
    root = f"{BUCKET}/order/slide.zarr"
    n_files = sum(1 for f in (local_run / "slide.zarr").rglob("*") if f.is_file())
    assert len(calls) == n_files and calls[-1] == f"{root}/zarr.json"
    chunk_calls = [i for i, c in enumerate(calls) if not c.endswith("zarr.json")]
    assert max(chunk_calls) < calls.index(f"{root}/latents/zarr.json")


def test_unfinished_and_foreign_prefixes(s3, slide_png, local_run, tiny_models):
    fs, opts = s3["fs"], s3["options"]
    # an interrupted upload: chunks and array metadata, no group zarr.json -> not a store, and replaced
    root = f"{BUCKET}/cut/slide.zarr"
    fs.put_file(str(local_run / "slide.zarr" / "latents" / "zarr.json"), f"{root}/latents/zarr.json")
    fs.put_file(str(local_run / "slide.zarr" / "tiles" / "c" / "0" / "0"), f"{root}/tiles/c/0/0")
    with pytest.raises(StoreError, match="not a wsicodec store"):
        open_slide(f"s3://{root}", storage_options=opts)
    compress(slide_png, f"s3://{root}", model_dir=tiny_models, tile=64, device="cpu", storage_options=opts)
    with open_slide(f"s3://{root}", storage_options=opts, model_dir=tiny_models) as s:
        assert s.meta["complete"] is True
    # something that is not a store is never replaced, even with overwrite
    fs.pipe_file(f"{BUCKET}/other/notes.txt", b"keep me")
    with pytest.raises(StoreError, match="not a wsicodec store"):
        compress(slide_png, f"s3://{BUCKET}/other", model_dir=tiny_models, tile=64, overwrite=True,
                 storage_options=opts)
    assert fs.cat_file(f"{BUCKET}/other/notes.txt") == b"keep me"
    with pytest.raises(StoreError, match="no such store"):
        open_slide(f"s3://{BUCKET}/missing.zarr", storage_options=opts)
    with pytest.raises(SlideError, match="no such file"):
        compress(f"s3://{BUCKET}/in/missing.svs", f"s3://{BUCKET}/m.zarr", model_dir=tiny_models,
                 storage_options=opts)


def test_fetch_folder_input(s3, tmp_path):
    """A folder URL (a DICOM series) and an .mrxs file with its data folder are fetched whole."""
    fs, opts = s3["fs"], s3["options"]
    fs.pipe({f"{BUCKET}/dcm/a.dcm": b"a", f"{BUCKET}/dcm/sub/b.dcm": b"b", f"{BUCKET}/dcm2/c.dcm": b"c",
             f"{BUCKET}/mrxs/s.mrxs": b"m", f"{BUCKET}/mrxs/s/Slidedat.ini": b"i"})
    with remote.local_input(f"s3://{BUCKET}/dcm/", opts) as p:
        assert p.name == "dcm" and sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.is_file()) == \
            ["a.dcm", "sub/b.dcm"]
        tmp = p.parent
    assert not tmp.exists()
    with remote.local_input(f"s3://{BUCKET}/mrxs/s.mrxs", opts) as p:
        assert p.read_bytes() == b"m" and (p.parent / "s" / "Slidedat.ini").read_bytes() == b"i"


def test_cli_with_environment_and_storage_option(s3, slide_png, tiny_models, local_run, tmp_path):
    from wsicodec.cli import main

    env = {"WSICODEC_MODELS": str(tiny_models)}
    run = CliRunner().invoke
    # plain local paths are unchanged
    r = run(main, ["compress", str(slide_png), str(tmp_path / "l.zarr"), "--tile", "64", "-q"], env=env)
    assert r.exit_code == 0 and r.output == "", r.output
    r = run(main, ["decompress", str(tmp_path / "l.zarr"), str(tmp_path / "l.tif"), "--compression", "deflate"],
            env=env)
    assert r.exit_code == 0 and str(tmp_path / "l.tif") in r.output, r.output
    np.testing.assert_array_equal(_tif_pixels(tmp_path / "l.tif"), _tif_pixels(local_run / "slide.tif"))
    store, tif = f"s3://{BUCKET}/cli/slide.zarr", f"s3://{BUCKET}/cli/slide.tif"
    r = run(main, ["compress", f"s3://{BUCKET}/in/slide.png", store, "--tile", "64", "--device", "cpu"], env=env)
    assert r.exit_code == 0, r.output
    assert store in r.output
    r = run(main, ["compress", str(slide_png), store, "--tile", "64", "-q"], env=env)
    assert r.exit_code == 1 and r.output.strip().count("\n") == 0 and "already exists" in r.output
    r = run(main, ["decompress", store, tif, "--compression", "deflate", "--device", "cpu"], env=env)
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(_tif_pixels(s3["fs"].cat_file(tif.removeprefix("s3://"))),
                                  _tif_pixels(local_run / "slide.tif"))
    # explicit --storage-option; it holds for that command only
    r = run(main, ["info", store, "--json", "--storage-option", f"endpoint_url={s3['endpoint']}"], env=env)
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["kind"] == "wsicodec store" and d["dimensions"] == [120, 100] and d["bytes"] > 0
    assert remote.current_options() is None
    r = run(main, ["info", store, "--storage-option", "endpoint_url"], env=env)
    assert r.exit_code == 2 and "KEY=VALUE" in r.output
    r = run(main, ["info", f"s3://{BUCKET}/in/slide.png", "--json"], env=env)
    assert r.exit_code == 0 and json.loads(r.output)["dimensions"] == [120, 100], r.output
    r = run(main, ["verify", store, "--json", "--device", "cpu"], env=env)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["path"] == store and json.loads(r.output)["ok"] is True
    # an S3 input to a local store: the same latents as the local run
    r = run(main, ["compress", f"s3://{BUCKET}/in/slide.png", str(tmp_path / "from_s3.zarr"), "--tile", "64", "-q"],
            env=env)
    assert r.exit_code == 0, r.output
    with open_slide(tmp_path / "from_s3.zarr") as a, open_slide(local_run / "slide.zarr") as b:
        np.testing.assert_array_equal(a.latents[...], b.latents[...])
        assert a.meta["source"] == b.meta["source"]
    # many inputs into an S3 prefix; a re-run skips the complete outputs
    r = run(main, ["compress", f"s3://{BUCKET}/in/slide.png", "--out-dir", f"s3://{BUCKET}/batch", "--tile", "64",
                   "--device", "cpu"], env=env)
    assert r.exit_code == 0, r.output
    with open_slide(f"s3://{BUCKET}/batch/slide.zarr", model_dir=tiny_models) as s:
        assert s.dimensions == (120, 100)
    from wsicodec.batch import compress_many

    res = compress_many([f"s3://{BUCKET}/in/slide.png"], f"s3://{BUCKET}/batch", model_dir=tiny_models, tile=64,
                        storage_options=s3["options"])
    assert [x.status for x in res] == ["skipped"]
