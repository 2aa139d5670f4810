"""The mean-scale hyperprior: an integer-exact hyper-decoder, its chunk codec, stores written and
read with it (same bytes for any thread count, decodable by zarr in a fresh process)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import EXAMPLE, code_chunks_whole, differing_files, side_information_on_device

from wsicodec.codec import (
    CodecError,
    HyperEntropyModel,
    HyperSymbols,
    code_hyper_symbols,
    decode_hyper_chunk,
    encode_hyper_chunk,
)
from wsicodec.models import build_model, load_model
from wsicodec.models.integer import ACT_BITS, ACT_LIMIT, WEIGHT_BITS, DeviceHyperDecoder, IntegerHyperDecoder
from wsicodec.pipeline import compress
from wsicodec.store import WsiStore
from wsicodec.verify import verify_store


def _reference_h_s(h_s, z: np.ndarray) -> np.ndarray:
    """The integer hyper-decoder of docs/format.md written out with int64 loops (no floats)."""
    a = z.astype(np.int64)
    for m in h_s:
        if isinstance(m, torch.nn.LeakyReLU):
            a = np.where(a < 0, a // 100, a)
            continue
        w = np.rint(m.weight.detach().double().numpy() * 2**WEIGHT_BITS).astype(np.int64)
        b = np.rint(m.bias.detach().double().numpy() * 2 ** (WEIGHT_BITS + ACT_BITS)).astype(np.int64)
        k, s, p = m.kernel_size[0], m.stride[0], m.padding[0]
        C, H, W = a.shape
        if isinstance(m, torch.nn.ConvTranspose2d):  # out[o, y*s+i-p, x*s+j-p] += a[c, y, x] w[c, o, i, j]
            Ho, Wo = (H - 1) * s - 2 * p + k + m.output_padding[0], (W - 1) * s - 2 * p + k + m.output_padding[0]
            acc = np.zeros((w.shape[1], Ho + 2 * k, Wo + 2 * k), np.int64)
            for i in range(k):
                for j in range(k):
                    contrib = np.einsum("chw,co->ohw", a, w[:, :, i, j])
                    acc[:, i : i + (H - 1) * s + 1 : s, j : j + (W - 1) * s + 1 : s] += contrib
            acc = acc[:, p : p + Ho, p : p + Wo]
        else:
            pad = np.pad(a, ((0, 0), (p, p), (p, p)))
            acc = np.zeros((w.shape[0], H, W), np.int64)
            for i in range(k):
                for j in range(k):
                    acc += np.einsum("chw,oc->ohw", pad[:, i : i + H, j : j + W], w[:, :, i, j])
        a = (acc + b[:, None, None]) >> WEIGHT_BITS
    return a


@pytest.mark.parametrize("h_kernel", [3, 1])
def test_integer_hyper_decoder_is_exact_and_close_to_float(h_kernel):
    torch.manual_seed(0)
    m = build_model("mbt2018-mean", N=8, M=12, h_kernel=h_kernel).eval()
    assert m.h_s[4].kernel_size == (h_kernel, h_kernel)
    rng = np.random.default_rng(0)
    z = rng.integers(-6000, 6000, (3, 8, 4, 5))
    got = IntegerHyperDecoder(m.h_s)(z)
    for i in range(3):
        assert np.array_equal(got[i], _reference_h_s(m.h_s, z[i]))
    with torch.no_grad():
        ref = m.h_s(torch.from_numpy(z / 2**ACT_BITS).float()).numpy()
    assert got.shape == ref.shape == (3, 24, 16, 20)
    assert np.abs(got / 2**ACT_BITS - ref).max() < 0.02


@pytest.mark.parametrize("h_kernel", [3, 1])
def test_device_hyper_decoder_is_the_integer_one(h_kernel):
    """The torch version (unfold / fold and float64 matmul, for GPUs) gives the numpy decoder's
    integers, up to the clamp limit, and says so itself (the check run before a device is used)."""
    torch.manual_seed(1)
    m = build_model("mbt2018-mean", N=8, M=12, h_kernel=h_kernel).eval()
    ref = IntegerHyperDecoder(m.h_s)
    dev = DeviceHyperDecoder(ref, "cpu")
    rng = np.random.default_rng(3)
    for bound in (6000, ACT_LIMIT):
        z = rng.integers(-bound, bound, (3, 8, 4, 5))
        got = dev(torch.from_numpy(z))
        assert got.dtype == torch.int64 and np.array_equal(got.numpy(), ref(z))
    assert np.array_equal(dev(torch.from_numpy(z[:1])).numpy()[0], _reference_h_s(m.h_s, z[0]))
    assert dev.agrees(ref, 8)


def _tiny_hyper(tiny_models):
    return load_model("tiny-hyper", tiny_models)


def test_hyper_chunk_round_trip_and_damage(tiny_models):
    model, _ = _tiny_hyper(tiny_models)
    _round_trip_and_damage(HyperEntropyModel(model))


def test_table_lookup_picks_the_binary_searchs_tables(tiny_models, monkeypatch):
    import wsicodec.codec as codec

    model, _ = _tiny_hyper(tiny_models)
    hm = HyperEntropyModel(model)
    th = hm.thresholds
    assert hm._index_lut is not None
    rng = np.random.default_rng(0)
    edges = np.concatenate([th - 1, th, th + 1, [-(1 << 26), 0, 1 << 26]])
    scales = np.concatenate([edges, rng.integers(-(1 << 20), 1 << 20, 5000)]).reshape(1, -1, 1)
    want = np.searchsorted(th, scales, side="left")
    got = hm.table_index(scales)
    assert got.dtype == np.uint8 and np.array_equal(got, want)
    monkeypatch.setattr(codec, "_MAX_INDEX_LUT", 0)  # a scale table too wide for a lookup: the search
    wide = HyperEntropyModel(model)
    assert wide._index_lut is None and np.array_equal(wide.table_index(scales), want)


def test_hyper_chunk_round_trip_with_a_1x1_hyper_decoder(tmp_path):
    from wsicodec.models import ModelCard, save_model

    torch.manual_seed(2)
    m = build_model("mbt2018-mean", N=8, M=8, h_kernel=1)
    with torch.no_grad():
        m.h_a[0].weight.mul_(0.2)
    save_model(m, ModelCard(name="h1", architecture="mbt2018-mean", params={"N": 8, "M": 8, "h_kernel": 1}), tmp_path)
    model, card = load_model("h1", tmp_path)
    assert model.h_s[4].kernel_size == (1, 1) and card.params["h_kernel"] == 1
    _round_trip_and_damage(HyperEntropyModel(model))


def _round_trip_and_damage(hm) -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(0, 6, (8, 8, 12)).astype(np.float32)
    y_fp = np.rint(y * 2**ACT_BITS).astype(np.int32)
    data = encode_hyper_chunk(y_fp, hm)
    out = decode_hyper_chunk(data, hm, y_fp.shape)
    assert out.dtype == np.int32 and out.shape == y_fp.shape
    assert np.abs(out - y_fp).max() <= 2 ** (ACT_BITS - 1)         # ŷ within half a step of y
    assert np.array_equal(decode_hyper_chunk(data, hm), out)
    with pytest.raises(CodecError):
        decode_hyper_chunk(data[:-3], hm)
    with pytest.raises(CodecError):
        decode_hyper_chunk(b"WSLC" + data[4:], hm)
    with pytest.raises(CodecError):
        decode_hyper_chunk(data, hm, (8, 8, 8))
    with pytest.raises(CodecError):
        encode_hyper_chunk(y_fp[:, :6], hm)  # sides must be multiples of 4


def test_hyper_symbols_made_in_batches_code_to_the_codecs_bytes(tiny_models):
    """DeviceHyperSymbols (what a GPU computes for the chunk writers) on this CPU: the same symbols
    and tables as the chunk codec, and chunks of the same bytes."""
    from wsicodec.engine import DeviceHyperSymbols

    model, card = _tiny_hyper(tiny_models)
    hm = HyperEntropyModel(model)
    rng = np.random.default_rng(2)
    y_fp = np.rint(rng.normal(0, 6, (5, 8, 16, 16)) * 2**ACT_BITS).astype(np.int32)
    z, sym, index = DeviceHyperSymbols(model, card, torch.device("cpu"))(torch.from_numpy(y_fp))
    assert (z.dtype, sym.dtype, index.dtype) == (torch.int32, torch.int32, torch.uint8)
    for i in range(5):
        ref = hm.symbols(y_fp[i])
        assert np.array_equal(z[i].numpy(), ref.z)
        assert np.array_equal(sym[i].numpy(), ref.y) and np.array_equal(index[i].numpy(), ref.index)
        made = HyperSymbols(z[i].numpy(), sym[i].numpy(), index[i].numpy())
        assert code_hyper_symbols(made, hm) == encode_hyper_chunk(y_fp[i], hm)
    with pytest.raises(CodecError, match="do not fit"):
        code_hyper_symbols(HyperSymbols(ref.z, ref.y[:, :8], ref.index[:, :8]), hm)


def test_hyper_symbols_on_a_device_that_is_not_exact_are_not_used(tiny_models, monkeypatch):
    from wsicodec.engine import Transforms

    model, card = _tiny_hyper(tiny_models)
    assert Transforms(model, card, "cpu", hyper_on_device=True).hyper is not None
    assert Transforms(model, card, "cpu").hyper is None  # default: CUDA only
    monkeypatch.setattr(DeviceHyperDecoder, "agrees", lambda self, ref, channels: False)
    with pytest.warns(RuntimeWarning, match="computed on the CPU instead"):
        assert Transforms(model, card, "cpu", hyper_on_device=True).hyper is None


def test_hyper_store_with_symbols_made_by_the_engine_is_the_same_store(tiny_models, tmp_path, monkeypatch):
    """compress with the side information made in the engine's batches (as on CUDA), coded in
    this process and in worker processes: the bytes of the store the chunk writers make alone."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764115200")
    kw = dict(model="tiny-hyper", model_dir=tiny_models, tile=256, precision="fp32")
    a = compress(EXAMPLE, tmp_path / "a.zarr", **kw).output
    made = side_information_on_device(monkeypatch)
    b = compress(EXAMPLE, tmp_path / "b.zarr", **kw).output
    c = compress(EXAMPLE, tmp_path / "c.zarr", **kw, writer_processes=2).output
    assert len(made) == 2 and all(made)
    files, differ_b = differing_files(a, b)
    assert len(files) > 50
    assert differ_b == []
    assert differing_files(a, c)[1] == []


@pytest.fixture(scope="module")
def hyper_store(tiny_models, tmp_path_factory):
    return compress(EXAMPLE, tmp_path_factory.mktemp("hyper") / "h.zarr", model="tiny-hyper",
                    model_dir=tiny_models, tile=256)


def test_hyper_store_reads_like_a_slide_and_verifies(hyper_store, tiny_models, one_thread):
    with WsiStore(hyper_store.output, model_dir=tiny_models) as s:
        # a hyperprior's layout (2), encoded label and macro (3), edge chunks cut at the image (5)
        assert s.meta["format_version"] == 5
        assert s.meta["model"]["entropy_model"] == "gaussian-mean-scale"
        assert s.properties["wsicodec.format-version"] == "5"
        lat = np.asarray(s.latents[...])
        assert lat.dtype == np.int32 and np.abs(lat).max() > 2**ACT_BITS
        # the array reaches to the next whole side-information position beyond the canvas (139 x
        # 186 latents): there lies the background (coded, so within half a quantization step of it)
        assert lat.shape == (8, 188, 140) and s.grid.latent_shape == (186, 139)
        bg = np.asarray(s.meta["background"]["latents"]).reshape(-1, 1, 1)
        half = 2 ** (ACT_BITS - 1)
        coded = [(tx, ty) for ty in range(12) for tx in range(9) if s.tile_state[ty, tx] == 1]
        edge = [(tx, ty) for tx, ty in coded if tx == 8 or ty == 11]
        assert edge and all((abs(lat[:, 186:, tx * 16 : (tx + 1) * 16] - bg) <= half).all() if ty == 11 else
                            (abs(lat[:, ty * 16 : (ty + 1) * 16, 139:] - bg) <= half).all() for tx, ty in edge)
        full = s.read_level0(0, 0, 2220, 2967)
        part = s.read_level0(700, 900, 300, 200)  # a region decodes to the same pixels as the whole
        assert np.array_equal(part, full[900:1100, 700:1000])
    rep = verify_store(hyper_store.output, model_dir=tiny_models)
    assert rep.ok, rep.problems


def test_edge_chunks_are_coded_only_as_far_as_the_image_reaches(hyper_store):
    from wsicodec.codec import chunk_stream_shape

    shapes = {}
    for f in (hyper_store.output / "latents" / "c" / "0").glob("*/*"):
        shapes[int(f.parent.name), int(f.name)] = chunk_stream_shape(f.read_bytes())
    assert len(shapes) > 50
    for (ty, tx), shape in shapes.items():  # 16 x 16 latents a tile; the array is 188 x 140
        assert shape == (8, 12 if ty == 11 else 16, 12 if tx == 8 else 16), (tx, ty)
    assert any(ty == 11 for ty, _ in shapes) and any(tx == 8 for _, tx in shapes)


def test_verify_names_a_chunk_that_holds_fewer_latents_than_its_layout(hyper_store, tiny_models, tmp_path):
    import shutil

    import google_crc32c
    import zarr

    from wsicodec.store import chunk_file

    bad = tmp_path / "bad.zarr"
    shutil.copytree(hyper_store.output, bad)
    a = zarr.open_array(str(bad / "latents"), mode="r")
    codec = a.metadata.codecs[0]._numcodec(a.chunks, np.dtype(a.dtype))
    ty, tx = next((int(f.parent.name), int(f.name)) for f in (bad / "latents" / "c" / "0").glob("*/*")
                  if int(f.parent.name) < 11 and int(f.name) < 8)
    data = codec.encode(np.asarray(a[:, ty * 16 : ty * 16 + 8, tx * 16 : tx * 16 + 16]))  # half a chunk
    chunk_file(bad, tx, ty).write_bytes(data + int(google_crc32c.value(data)).to_bytes(4, "little"))
    rep = verify_store(bad, model_dir=tiny_models)
    assert not rep.ok and [str(p) for p in rep.problems] == [
        f"chunk: tile ({tx}, {ty}): latents/c/0/{ty}/{tx} holds 8 x 16 latents, the layout 16 x 16"]


def test_stores_of_whole_edge_chunks_still_read(hyper_store, tiny_models, tmp_path, one_thread):
    """A store written before version 5 codes its edge chunks whole, the background beyond the
    canvas: it reads and verifies, and its pixels are those of the same latents in a version-5
    store (tiles off the edge: identical; at the edge the side information saw another extent)."""
    from wsicodec.codec import chunk_stream_shape
    from wsicodec.store import TILE_CODED, StoreWriter, read_store_meta

    old = tmp_path / "old.zarr"
    with WsiStore(hyper_store.output, model_dir=tiny_models) as new:
        lat, grid, state = np.asarray(new.latents[...]), new.grid, new.tile_state
        meta = {**read_store_meta(hyper_store.output), "format_version": 2, "associated": []}
        writer = StoreWriter(old, meta, grid, new.latents.metadata.codecs[0], lat.shape[0])
        tiles = []
        for tx, ty in grid:
            x0, y0, x1, y1 = grid.tile_latents(tx, ty)
            tiles.append((tx, ty, lat[:, y0:y1, x0:x1] if state[ty, tx] == TILE_CODED else None))
        writer.write_tiles(tiles)
        writer.finish()
        with WsiStore(old, model_dir=tiny_models) as s:
            assert s.meta["format_version"] == 2 and s.latents.shape == (8, 192, 144)
            edge = [f for f in (old / "latents" / "c" / "0").glob("*/*") if f.name == "8" or f.parent.name == "11"]
            assert edge and all(chunk_stream_shape(f.read_bytes()) == (8, 16, 16) for f in edge)
            a, b = s.read_level0(0, 0, 2220, 2967), new.read_level0(0, 0, 2220, 2967)
    assert np.array_equal(a[: 11 * 256 - 64, : 8 * 256 - 64], b[: 11 * 256 - 64, : 8 * 256 - 64])
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    assert 0 < mse and 10 * np.log10(255**2 / mse) > 40
    rep = verify_store(old, model_dir=tiny_models)
    assert rep.ok, rep.problems


@pytest.mark.parametrize(("layout", "processes"), [("edges cut (version 5)", 0), ("edges cut (version 5)", 2),
                                                  ("whole edge chunks (version 2)", 0)])
def test_side_information_decoded_in_batches_on_a_device_gives_the_same_latents(
        hyper_store, tiny_models, tmp_path, monkeypatch, layout, processes):
    """On CUDA a reader runs the integer hyper-decoder for many chunks at once on the GPU and only
    range-decodes on the host, in worker processes; here the same path on the CPU's torch: the
    latents are zarr's, edge chunks included, and a damaged chunk is named in one line."""
    import shutil

    import wsicodec.engine as engine
    from wsicodec.errors import StoreError
    from wsicodec.store import chunk_file

    store = tmp_path / "h.zarr"
    shutil.copytree(hyper_store.output, store)
    if layout.startswith("whole"):
        code_chunks_whole(store)
    made = []

    class OnDevice(engine.Transforms):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "hyper_on_device": True})
            made.append(self.hyper)

    with WsiStore(store, model_dir=tiny_models) as s:
        want = np.asarray(s.latents[...])
        coded = [(tx, ty) for tx, ty in s.grid if s.tile_state[ty, tx] == 1]
        pixels = s.read_level0(300, 500, 900, 700)
    monkeypatch.setattr(engine, "Transforms", OnDevice)
    with WsiStore(store, model_dir=tiny_models, decode_processes=processes) as s:
        np.testing.assert_array_equal(s.read_level0(300, 500, 900, 700), pixels)  # bands of 64 with workers
    with WsiStore(store, model_dir=tiny_models, decode_processes=processes) as s:
        rows, cols = s.grid.latent_shape
        got = s.fetch_latents(0, 0, cols, rows)
        assert len(made) == 2 and made[-1] is not None and len(s._chunks) == len(coded)
        assert (s._decoders is not None) == (processes > 0)
        c = s.grid.chunk
        for tx, ty in coded:
            box = np.s_[:, ty * c : min((ty + 1) * c, rows), tx * c : min((tx + 1) * c, cols)]
            np.testing.assert_array_equal(got[box], want[box])
        # reading threads (the viewer's) share the reader and its workers: nothing kept, so each
        # box of two coded chunks goes to the workers
        from concurrent.futures import ThreadPoolExecutor

        s.chunk_cache_bytes = 0
        boxes = [(tx * c, ty * c, min((tx + 2) * c, cols), min((ty + 1) * c, rows))
                 for tx, ty in coded if (tx + 1, ty) in coded][:12]
        assert len(boxes) == 12
        with ThreadPoolExecutor(4) as pool:
            for (x0, y0, x1, y1), q in zip(boxes, pool.map(lambda b: s.fetch_latents(*b), boxes), strict=True):
                np.testing.assert_array_equal(q, want[:, y0:y1, x0:x1])
    tx, ty = coded[len(coded) // 2]
    f = chunk_file(store, tx, ty)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with WsiStore(store, model_dir=tiny_models, decode_processes=processes) as s, pytest.raises(StoreError) as err:
        s.fetch_latents(0, 0, cols, rows)
    assert str(err.value) == f"{store}: latent chunk of tile {(tx, ty)}: corrupt (its CRC-32C does not match)"
    # a stream that passes its checksum but not the range decoder: named by the workers too
    import google_crc32c

    body = bytearray(data[:-4])
    body[len(body) - 8 : len(body) - 4] = b"\xff\xff\xff\xff"
    f.write_bytes(bytes(body) + int(google_crc32c.value(bytes(body))).to_bytes(4, "little"))
    with WsiStore(store, model_dir=tiny_models, decode_processes=processes) as s, pytest.raises(StoreError) as err:
        s.fetch_latents(0, 0, cols, rows)
    assert str(err.value).startswith(f"{store}: latent chunk of tile {(tx, ty)}: corrupt (")


def test_hyper_store_fresh_process_zarr_decodes(hyper_store, tiny_models):
    code = (
        "import sys, zarr, hashlib\n"
        "a = zarr.open_group(sys.argv[1], mode='r')['latents'][...]\n"
        "print(a.dtype, hashlib.sha256(a.tobytes()).hexdigest())\n"
    )
    env = {**os.environ, "WSICODEC_MODELS": str(tiny_models)}
    out = subprocess.run([sys.executable, "-c", code, str(hyper_store.output)], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    with WsiStore(hyper_store.output, model_dir=tiny_models) as s:
        here = np.asarray(s.latents[...])
    assert out.stdout.split()[-2:] == ["int32", hashlib.sha256(here.tobytes()).hexdigest()]


def test_hyper_store_is_byte_identical_for_1_and_2_threads(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764115200")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = compress(EXAMPLE, tmp_path / "a.zarr", model="tiny-hyper", model_dir=tiny_models, tile=256,
                     io_threads=1).output
        torch.set_num_threads(2)
        b = compress(EXAMPLE, tmp_path / "b.zarr", model="tiny-hyper", model_dir=tiny_models, tile=256,
                     io_threads=3, batch_size=3).output
        # chunk coding in worker processes, which find the model through model_dir
        c = compress(EXAMPLE, tmp_path / "c.zarr", model="tiny-hyper", model_dir=tiny_models, tile=256,
                     writer_processes=2, read_threads=3).output
    finally:
        torch.set_num_threads(before)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) > 50
    assert [f for f in files if (a / f).read_bytes() != (b / f).read_bytes()] == []
    assert [f for f in files if (a / f).read_bytes() != (c / f).read_bytes()] == []


def test_hyper_tile_size_must_fit_the_side_information(tiny_models, tmp_path):
    from wsicodec.store import StoreError

    with pytest.raises(StoreError, match="multiple of 64"):
        compress(EXAMPLE, tmp_path / "x.zarr", model="tiny-hyper", model_dir=tiny_models, tile=208)


def test_bench_draws_one_curve_per_entropy_model_family(tiny_models):
    from wsicodec.bench.codecs import WsicodecCodec

    codec = WsicodecCodec(model_dir=tiny_models)
    try:
        assert codec.curve("tiny") == codec.curve("tiny-other") == "wsicodec"
        assert codec.curve("tiny-hyper") == "wsicodec-hyperprior"
    finally:
        codec.close()


def test_a_model_trained_for_ms_ssim_is_its_own_curve_and_says_so(tmp_path):
    from wsicodec.bench.codecs import WsicodecCodec
    from wsicodec.models import ModelCard, build_model, save_model
    from wsicodec.quality import model_rows

    m = build_model("mbt2018-mean", N=8, M=8)
    for name, distortion in (("hp-mse", "mse"), ("hp-ms", "ms-ssim")):
        save_model(m, ModelCard(name=name, architecture="mbt2018-mean", params={"N": 8, "M": 8},
                                validation={"bpp": 1.0, "psnr": 30.0, "ms_ssim": 0.98}, distortion=distortion),
                   tmp_path)
    codec = WsicodecCodec(model_dir=tmp_path)
    try:
        assert codec.curve("hp-mse") == "wsicodec-hyperprior"
        assert codec.curve("hp-ms") == "wsicodec-hyperprior-ms-ssim"
    finally:
        codec.close()
    kinds = {r["name"]: r["kind"] for r in model_rows(tmp_path)[0]}
    assert kinds == {"hp-mse": "hyperprior", "hp-ms": "hyperprior, MS-SSIM"}
