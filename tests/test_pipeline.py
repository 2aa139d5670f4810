"""Compress -> store -> reader -> TIFF on real and synthetic slides, with a tiny model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
import slide_files
import tifffile
from conftest import EXAMPLE, retire, shared_cases

from wsicodec import open_slide
from wsicodec.pipeline import compress, decompress
from wsicodec.store import WsiStore


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.fixture(scope="module")
def cmu_store(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmu") / "cmu.zarr"
    r = compress(EXAMPLE, out, model_dir=tiny_models, tile=256)
    return r


def test_example_slide_round_trip_metadata(cmu_store):
    src = openslide.OpenSlide(str(EXAMPLE))
    with open_slide(cmu_store.output) as s:
        assert s.dimensions == src.dimensions == (2220, 2967)
        assert s.properties["openslide.mpp-x"] == src.properties["openslide.mpp-x"]
        assert s.properties["openslide.vendor"] == "aperio"
        # label and macro kept (the thumbnail is made from the store's pyramid), pixels as the source's
        assert set(s.meta["associated"]) == {"label", "macro"} and s.meta["format_version"] == 5
        for name in ("label", "macro"):
            ref = np.asarray(src.associated_images[name].convert("RGB"))
            assert np.array_equal(np.asarray(s.associated_images[name]), ref)
        assert s.meta["source"] == {"file_name": EXAMPLE.name, "file_size": EXAMPLE.stat().st_size,
                                    "vendor": "aperio"}
        assert s.meta["model"]["name"] == "tiny" and len(s.meta["model"]["sha256"]) == 64
        assert s.level_dimensions[0] == (2220, 2967) and s.level_count == 2
        from wsicodec.engine import native_bf16  # provenance: what chose the latents

        assert s.meta["encoder"] == {"device": "cpu", "precision": "bf16" if native_bf16() else "fp32",
                                     "effort": "standard"}


def test_reader_decodes_regions_like_a_full_decode(cmu_store, tiny_models):
    with WsiStore(cmu_store.output, model_dir=tiny_models) as s:
        full = s.read_level0(0, 0, *s.dimensions)
        for x, y, w, h in [(0, 0, 100, 100), (250, 500, 300, 260), (2100, 2900, 120, 67), (511, 511, 3, 3)]:
            reg = np.asarray(s.read_region((x, y), 0, (w, h)))
            assert reg.shape == (h, w, 4) and (reg[:, :, 3] == 255).all()
            assert np.abs(reg[:, :, :3].astype(int) - full[y : y + h, x : x + w]).max() <= 1
        out = np.asarray(s.read_region((2200, 2950), 0, (40, 40)))
        assert (out[:17, :20, 3] == 255).all() and (out[17:, :, 3] == 0).all() and (out[:, 20:, 3] == 0).all()
        bands = []
        read_level0 = s.read_level0
        s.read_level0 = lambda *box: bands.append(box[3]) or read_level0(*box)
        low = s.read_region((0, 0), 1, s.level_dimensions[1])
        assert low.size == s.level_dimensions[1]
        assert max(bands) <= max(s.grid.tile, 4) and sum(bands) >= s.dimensions[1]  # bands, not the slide
        from wsicodec.store import box_reduce

        lw, lh = s.level_dimensions[1]
        padded = np.empty((lh * 4, lw * 4, 3), np.uint8)
        padded[:] = s.glass
        padded[: full.shape[0], : full.shape[1]] = full
        assert np.abs(np.asarray(low)[:, :, :3].astype(int) - box_reduce(padded, 4)).max() <= 1  # batches differ
        assert max(s.get_thumbnail((200, 200)).size) == 200


def test_decompress_writes_pyramid_openslide_reads(cmu_store, tiny_models, tmp_path, one_thread):
    out = tmp_path / "cmu.tif"
    decompress(cmu_store.output, out, compression="deflate", model_dir=tiny_models)
    s = openslide.OpenSlide(str(out))
    assert s.dimensions == (2220, 2967)
    assert s.level_count == 2 and s.level_dimensions[1] == (555, 742)
    assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.499, abs=1e-3)
    with WsiStore(cmu_store.output, model_dir=tiny_models) as st:
        ref = st.read_level0(0, 0, 2220, 2967)
    got = np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"))
    assert np.array_equal(got, ref)  # deflate is lossless
    with tifffile.TiffFile(out) as tf:
        assert len(tf.pages) == 2 and tf.pages[0].is_tiled and tf.pages[0].shape == (2967, 2220, 3)


def test_decompress_region_and_jpeg(cmu_store, tiny_models, tmp_path):
    out = tmp_path / "r.tif"
    decompress(cmu_store.output, out, region=(300, 400, 700, 500), compression="jpeg", quality=95,
               tile=128, model_dir=tiny_models)
    s = openslide.OpenSlide(str(out))
    assert s.dimensions == (700, 500)
    with WsiStore(cmu_store.output, model_dir=tiny_models) as st:
        ref = st.read_level0(300, 400, 700, 500)
    # JPEG q95 of the tiny model's noisy output: close to it, not exact
    assert _psnr(np.asarray(s.read_region((0, 0), 0, (700, 500)).convert("RGB")), ref) > 25


def test_decoding_precision(cmu_store, tiny_models, tmp_path):
    """precision "auto" decodes in half precision where that is native (bf16 on such CPUs),
    "fp32" never; both give nearly the same pixels; anything else is a one-line error."""
    from wsicodec.engine import native_bf16
    from wsicodec.store import StoreError

    box = (300, 400, 256, 256)
    with WsiStore(cmu_store.output, model_dir=tiny_models) as a, \
            WsiStore(cmu_store.output, model_dir=tiny_models, precision="fp32") as b:
        assert a.transforms.half_synthesis is native_bf16() and b.transforms.half_synthesis is False
        pa, pb = a.read_level0(*box), b.read_level0(*box)
    assert np.abs(pa.astype(int) - pb).max() <= 3
    with pytest.raises(StoreError, match="unknown decoding precision 'fp8'"):
        WsiStore(cmu_store.output, model_dir=tiny_models, precision="fp8")
    out = decompress(cmu_store.output, tmp_path / "f.tif", region=box, compression="none", tile=128,
                     model_dir=tiny_models, precision="fp32")
    assert np.array_equal(tifffile.imread(out, key=0), pb)


@pytest.fixture(scope="module")
def slide_formats(tmp_path_factory, example_tissue) -> dict[str, Path]:
    """Slides of other formats and vendors than the example, written in the test."""
    d = tmp_path_factory.mktemp("formats")
    tissue = example_tissue[:250, :300]
    return {"generic-tiff": slide_files.write_generic_tiff(d / "pyramid.tiff", tissue),
            "aperio": slide_files.write_aperio_svs(d / "small.svs", tissue)}


@pytest.mark.parametrize("source", ["generic-tiff", "aperio",
                                    *shared_cases("slides/fixtures", "boxes.tiff", "small.svs", "boxes_0.dcm")])
def test_openslide_formats_round_trip(source, slide_formats, tiny_models, tmp_path):
    src_path = source if isinstance(source, Path) else slide_formats[source]
    src = openslide.OpenSlide(str(src_path))
    if not isinstance(source, Path):
        assert src.properties["openslide.vendor"] == source  # the file is the format it is meant to be
    r = compress(src_path, tmp_path / "s.zarr", model_dir=tiny_models, tile=128)
    with WsiStore(r.output, model_dir=tiny_models) as s:
        assert s.dimensions == src.dimensions
        assert s.meta["vendor"] == src.properties.get("openslide.vendor")
        assert set(s.meta["associated"]) <= set(src.associated_images)
    decompress(r.output, tmp_path / "s.tif", model_dir=tiny_models)
    assert openslide.OpenSlide(str(tmp_path / "s.tif")).dimensions == src.dimensions


def test_plain_images_and_transparency(tiny_models, tmp_path):
    from PIL import Image

    rgba = np.zeros((70, 90, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :45, 3] = 255  # right half transparent -> background colour (white)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    from wsicodec.slide import open_input

    with open_input(tmp_path / "a.png") as src:
        px = src.read_rgb(0, 0, 90, 70)
        assert (px[:, :45] == (200, 0, 0)).all() and (px[:, 45:] == 255).all()
    r = compress(tmp_path / "a.png", tmp_path / "a.zarr", model_dir=tiny_models, tile=64)
    with WsiStore(r.output, model_dir=tiny_models) as s:
        assert s.dimensions == (90, 70)


def test_an_image_smaller_than_a_tile_is_one_tile_of_its_size(tiny_models, tmp_path, he_crop):
    from PIL import Image

    from wsicodec.tiling import default_tile

    assert [default_tile(w, h) for w, h in ((224, 224), (100, 30), (60, 20), (500, 200), (512, 100), (4000, 300))] == \
        [256, 128, 64, 512, 512, 512]
    Image.fromarray(he_crop[:150, :190]).save(tmp_path / "p.png")
    r = compress(tmp_path / "p.png", tmp_path / "p.zarr", model_dir=tiny_models)
    assert r.tiles == 1
    with WsiStore(r.output, model_dir=tiny_models) as s:
        assert s.meta["tile_size"] == 192 and s.dimensions == (190, 150)
        assert s.read_level0(0, 0, 190, 150).shape == (150, 190, 3)


def test_glass_tiles_are_skipped_and_cost_nothing(tiny_models, tmp_path, he_crop):
    from PIL import Image

    canvas = np.full((512, 512, 3), 243, np.uint8)
    canvas[:128, :128] = he_crop[:128, :128]
    Image.fromarray(canvas).save(tmp_path / "g.png")
    r = compress(tmp_path / "g.png", tmp_path / "g.zarr", model_dir=tiny_models, tile=128)
    assert r.tiles == 16 and r.glass_tiles == 15
    chunks = [p for p in (r.output / "latents").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(chunks) == 1
    with WsiStore(r.output, model_dir=tiny_models) as s:
        assert s.glass == (243, 243, 243)
        px = s.read_level0(256, 256, 128, 128)
        assert (px == 243).all()


def test_fresh_process_reads_latents_through_zarr(cmu_store):
    code = (
        "import sys, zarr, numpy as np\n"
        "a = zarr.open_group(sys.argv[1], mode='r')['latents'][...]\n"
        "import hashlib; print(a.shape, a.dtype, hashlib.sha256(a.tobytes()).hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(cmu_store.output)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    import hashlib

    with WsiStore(cmu_store.output) as s:
        here = np.asarray(s.latents[...])
    assert out.stdout.split()[-2:] == ["int16", hashlib.sha256(here.tobytes()).hexdigest()]


def test_zarr_json_is_self_describing(cmu_store):
    meta = json.loads((cmu_store.output / "latents" / "zarr.json").read_text())
    names = [c["name"] for c in meta["codecs"]]
    assert names == ["wsicodec.latents", "crc32c"]
    assert len(meta["codecs"][0]["configuration"]["tables"]["freqs"]) == 8
    group = json.loads((cmu_store.output / "zarr.json").read_text())
    # a factorized model's store: version 1 layout, 3 for the label and macro it holds, 5 for its
    # edge chunks, coded only as far as the image reaches
    assert group["attributes"]["wsicodec"]["format_version"] == 5


def test_glass_detection_matches_its_definition():
    """is_background (Pillow) against the definition in numpy: at most max_fraction of the pixels
    differ from the glass colour by more than the tolerance in some channel."""
    from wsicodec.tiling import is_background

    def reference(p, glass, tolerance=20, max_fraction=0.001):
        diff = np.abs(p.astype(np.int16) - np.asarray(glass, np.int16)).max(axis=2)
        return bool((diff > tolerance).mean() <= max_fraction)

    rng = np.random.default_rng(5)
    glass = (236, 238, 241)
    for n_off in (0, 1, 262, 263, 264, 5000):  # 262 of 512² pixels is the 0.1 % limit
        for channel in range(3):
            for delta in (-21, -20, 20, 21):
                tile = np.empty((512, 512, 3), np.uint8)
                tile[:] = glass
                tile += rng.integers(-3, 4, tile.shape).astype(np.uint8)  # wraps: noise around the colour
                idx = rng.choice(512 * 512, n_off, replace=False)
                flat = tile.reshape(-1, 3)
                flat[idx, channel] = np.clip(glass[channel] + delta, 0, 255)
                assert is_background(tile, glass) == reference(tile, glass), (n_off, channel, delta)
    crop = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)[::2, 1:]  # a strided view, odd shape
    for tol, frac in ((20, 0.001), (120, 0.3), (255, 0.0)):
        assert is_background(crop, (128, 128, 128), tol, frac) == reference(crop, (128, 128, 128), tol, frac)


def test_host_split_defaults():
    """compress's default (coder processes, reading threads): on CUDA a quarter of the cores code
    and three quarters read; on the CPU the network takes the cores and a quarter read."""
    from wsicodec.pipeline import host_split

    assert host_split(True, 16) == (4, 12) and host_split(True, 2) == (1, 2)
    assert host_split(False, 16) == (0, 4) and host_split(False, 2) == (0, 1)


def test_reading_order_is_every_tile_once_in_strips():
    """compress reads tiles in vertical strips (8 wide), row by row within each strip."""
    from wsicodec.tiling import TileGrid

    grid = TileGrid(10 * 512 + 100, 3 * 512, 512, 16)  # 11 x 3 tiles: strips of 8 and 3
    order = grid.reading_order()
    assert sorted(order) == sorted(grid) and len(order) == len(grid) == 33
    assert order[:9] == [(tx, 0) for tx in range(8)] + [(0, 1)]
    assert order[24:27] == [(8, 0), (9, 0), (10, 0)] and order[-1] == (10, 2)


def test_retired_models_still_load_but_are_not_listed(tiny_models, tmp_path):
    """A model replaced by a better one moves to ``retired/``: stores that name it still decode,
    ``list_models`` (``wsicodec models``, the benchmark's zoo) leaves it out."""
    import shutil

    from wsicodec.models import list_models, load_model

    folder = tmp_path / "models"
    shutil.copytree(tiny_models, folder)
    out = compress(EXAMPLE, tmp_path / "a.zarr", model_dir=folder, tile=256).output
    retire(folder, "tiny", by="")
    assert "tiny" not in [c.name for c in list_models(folder)]
    assert load_model("tiny", folder)[1].name == "tiny"
    with WsiStore(out, model_dir=folder) as s:
        assert s.read_level0(0, 0, 64, 64).shape == (64, 64, 3)


def test_retired_models_name_todays_replacement(tiny_models, tmp_path):
    """``list_retired`` follows each retired card's ``superseded_by`` to the listed model that
    replaces it now, through models retired since, and says none where the chain breaks off."""
    import shutil

    from wsicodec.models import list_models, list_retired

    folder = tmp_path / "models"
    shutil.copytree(tiny_models, folder)
    retire(folder, "tiny", by="tiny-other")
    retire(folder, "tiny-other", by="tiny-hyper")
    assert [c.name for c in list_models(folder)] == ["tiny-hyper"]
    assert [(c.name, c.superseded_by, now) for c, now in list_retired(folder)] == [
        ("tiny", "tiny-other", "tiny-hyper"), ("tiny-other", "tiny-hyper", "tiny-hyper")]
    retire(folder, "tiny-hyper", by="")
    assert [now for _, now in list_retired(folder)] == ["", "", ""]


def test_every_shipped_retired_model_has_a_listed_replacement():
    """The installed models folder: every superseded model is kept (weights beside its card) and
    its ``superseded_by`` chain ends at a model ``wsicodec models`` lists."""
    from wsicodec.models import list_models, list_retired, model_dir

    listed = {c.name for c in list_models() if not c.superseded_by}
    retired = list_retired()
    assert retired, f"{model_dir()}: no retired models found"
    for card, now in retired:
        assert now in listed, f"{card.name}: superseded_by {card.superseded_by!r} leads to no listed model"
        folder = model_dir() / ("" if (model_dir() / f"{card.name}.json").is_file() else "retired")
        assert (folder / f"{card.name}.pt").is_file(), f"{card.name}: weights missing"
