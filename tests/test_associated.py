"""Associated images: the label and macro keep the source's own compressed bytes where it has them,
else lossless WebP; no thumbnail is stored (it is made from the pyramid); stores written the
earlier way (raw pixels, format versions 1 and 2) still read and verify."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from conftest import code_chunks_whole

from wsicodec.associated import decode, encode, original_bytes
from wsicodec.pipeline import compress
from wsicodec.store import WsiStore, store_size
from wsicodec.verify import verify_store

EXAMPLE = Path(__file__).resolve().parents[1] / "wsicodec" / "examples" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def example_store(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("assoc") / "cmu.zarr"
    return compress(EXAMPLE, out, model_dir=tiny_models, tile=256, device="cpu").output


def test_macro_keeps_the_sources_jpeg_bytes_and_label_is_lossless(example_store, tiny_models):
    src = openslide.OpenSlide(str(EXAMPLE))
    meta = json.loads((example_store / "zarr.json").read_text())["attributes"]["wsicodec"]
    assert meta["format_version"] == 5 and meta["associated"] == ["label", "macro"]
    assert not (example_store / "associated" / "thumbnail").exists()
    with WsiStore(example_store, model_dir=tiny_models, device="cpu") as s:
        kept = {name: np.asarray(im) for name, im in s.associated_images.items()}
        assert set(kept) == {"label", "macro"}
        for name in kept:  # the pixels OpenSlide gives for the source, exactly
            assert np.array_equal(kept[name], np.asarray(src.associated_images[name].convert("RGB"))), name
        assert s.group["associated/macro"].attrs["media_type"] == "image/tiff"
        assert s.group["associated/label"].attrs["media_type"] == "image/webp"  # the source's is LZW
        stored = np.asarray(s.group["associated/macro"][...]).tobytes()
        thumb = s.get_thumbnail((300, 300))
        assert max(thumb.size) == 300
    with tifffile.TiffFile(EXAMPLE) as tif:  # every compressed strip of the source's macro page, as is
        page = next(p for p in tif.pages if "\nmacro " in (p.description or ""))
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
            tif.filehandle.seek(offset)
            assert tif.filehandle.read(count) in stored
    # together smaller than the source's own label (LZW) and macro (JPEG) pages
    assert store_size(example_store / "associated") < 374381 + 87258
    assert verify_store(example_store, model_dir=tiny_models).ok


def test_lossless_coding_round_trip_and_no_original_outside_aperio():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (37, 53, 3), np.uint8)
    e = encode(pixels)
    assert e.media_type == "image/webp" and (e.width, e.height) == (53, 37)
    assert np.array_equal(decode(e.media_type, e.data), pixels)
    assert original_bytes(EXAMPLE, "generic-tiff", "macro") is None
    assert original_bytes(EXAMPLE, "aperio", "label") is None  # LZW: coded losslessly instead
    with pytest.raises(ValueError, match="media type"):
        decode("image/gif", e.data)


def _as_written_before(store: Path, version: int) -> None:
    """Rewrite a store's associated images the way format versions 1 and 2 kept them: raw (h, w, 3)
    uint8 pixels, zstd + crc32c, with a thumbnail beside them (and its edge chunks whole, as
    before version 5)."""
    import zarr
    from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec

    src = openslide.OpenSlide(str(EXAMPLE))
    shutil.rmtree(store / "associated")
    group = zarr.open_group(str(store), mode="r+")
    for name, im in src.associated_images.items():
        pixels = np.asarray(im.convert("RGB"))
        arr = group.create_array(f"associated/{name}", shape=pixels.shape, chunks=pixels.shape, dtype="uint8",
                                 serializer=BytesCodec(), compressors=[ZstdCodec(level=9), Crc32cCodec()],
                                 dimension_names=["y", "x", "rgb"])
        arr[...] = pixels
    doc = json.loads((store / "zarr.json").read_text())
    doc["attributes"]["wsicodec"].update(format_version=version, associated=sorted(src.associated_images))
    (store / "zarr.json").write_text(json.dumps(doc))
    code_chunks_whole(store)


def test_stores_with_raw_associated_images_still_read(example_store, tiny_models, tmp_path):
    old = tmp_path / "old.zarr"
    shutil.copytree(example_store, old)
    _as_written_before(old, version=1)
    src = openslide.OpenSlide(str(EXAMPLE))
    with WsiStore(old, model_dir=tiny_models, device="cpu") as s, \
            WsiStore(example_store, model_dir=tiny_models, device="cpu") as new:
        assert s.meta["format_version"] == 1
        images = s.associated_images
        assert set(images) == {"label", "macro", "thumbnail"}
        for name, im in src.associated_images.items():
            assert np.array_equal(np.asarray(images[name]), np.asarray(im.convert("RGB")))
        assert np.array_equal(np.asarray(s.read_region((100, 200), 0, (300, 200))),
                              np.asarray(new.read_region((100, 200), 0, (300, 200))))
    rep = verify_store(old, model_dir=tiny_models)
    assert rep.ok, [str(p) for p in rep.problems]
    assert rep.associated == ["label", "macro", "thumbnail"]
