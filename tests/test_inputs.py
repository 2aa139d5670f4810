"""TIFFs OpenSlide does not read (OME-TIFF, SubIFD pyramids, striped, BigTIFF) read with tifffile,
and the content check that refuses or annotates inputs the H&E models were not trained for.
Every input is written by the test with tifffile, from the bundled example slide or synthesised."""
from __future__ import annotations

import json

import numpy as np
import openslide
import pytest
import tifffile
from click.testing import CliRunner
from conftest import EXAMPLE

from wsicodec.cli import main
from wsicodec.content import assess, measure
from wsicodec.pipeline import compress
from wsicodec.slide import ImageSource, OpenSlideSource, SlideError, open_input
from wsicodec.slide_tiff import TiffSource
from wsicodec.store import WsiStore


@pytest.fixture(scope="module")
def he_region() -> np.ndarray:
    """1100 x 900 px of H&E tissue and glass from the bundled example slide."""
    s = openslide.OpenSlide(str(EXAMPLE))
    return np.asarray(s.read_region((600, 900), 0, (1100, 900)).convert("RGB"))


def write_ome(path, image: np.ndarray, *, physical: tuple[float, str] | None = (0.5, "µm"), levels: int = 2,
              tile: int = 256, compression: str = "jpeg", axes: str | None = None, **kw) -> None:
    """An OME-TIFF with its pyramid in SubIFDs (each level half the size of the one above)."""
    metadata: dict = {"axes": axes or ("YXS" if image.ndim == 3 and image.shape[-1] in (3, 4) else
                                       "YX" if image.ndim == 2 else "CYX")}
    if physical:
        size, unit = physical
        metadata.update(PhysicalSizeX=size, PhysicalSizeXUnit=unit, PhysicalSizeY=size, PhysicalSizeYUnit=unit)
    spatial = (0, 1) if metadata["axes"].startswith("Y") else (1, 2)
    opts = dict(tile=(tile, tile), compression=compression, **kw)
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(image, subifds=levels - 1, metadata=metadata, **opts)
        for k in range(1, levels):
            f = 2 ** k
            index = [slice(None)] * image.ndim
            index[spatial[0]] = index[spatial[1]] = slice(None, None, f)
            tif.write(image[tuple(index)], subfiletype=1, **opts)


def _nothing_left(folder, *inputs) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in inputs)


def _run(tiny_models, *args):
    return CliRunner().invoke(main, [str(a) for a in args], env={"WSICODEC_MODELS": str(tiny_models)})


# -- reading -------------------------------------------------------------------------------------
def test_jpeg_ome_tiff_with_subifd_pyramid_reads_lazily(he_region, tmp_path):
    path = tmp_path / "he.ome.tif"
    write_ome(path, he_region, physical=(0.5, "µm"), levels=3, photometric="rgb")
    page = tifffile.TiffFile(path).pages[0]
    assert page.compression == 7 and page.photometric == 6 and page.subsampling == (2, 2)  # JPEG YCbCr 4:2:0
    assert page.subifds and tifffile.TiffFile(path).is_ome
    reference = tifffile.imread(path)
    with open_input(path) as src:
        assert isinstance(src, TiffSource) and src.vendor == "ome-tiff"
        assert src.dimensions == (1100, 900) and src.mpp == (0.5, 0.5)
        assert src.level_dimensions == [(1100, 900), (550, 450), (275, 225)]
        decoded = []
        src._array(0)
        src._chunk_cache[0] = _spy(src._chunk_cache[0], decoded)
        window = src.read_rgb(300, 200, 200, 100)  # inside TIFF tiles (1, 0) and (1, 1)
        assert np.array_equal(window, reference[200:300, 300:500])
        assert sorted(decoded) == [(0, 1), (1, 1)]  # the tiles it touches, not the level
        edge = src.read_rgb(1000, 850, 200, 100)  # beyond the image: background
        assert np.array_equal(edge[:50, :100], reference[850:, 1000:]) and (edge[50:] == 255).all()
        # the thumbnail comes from the smallest level that is large enough
        levels_read = []
        read = src._read
        src._read = lambda level, *box: levels_read.append(level) or read(level, *box)
        thumb = src.thumbnail(256)
        assert thumb.shape == (209, 256, 3) and set(levels_read) == {2}
        assert np.abs(thumb.astype(int).mean() - reference.mean()) < 3


def _spy(cached, calls):
    def chunk(cy, cx):
        calls.append((cy, cx))
        return cached(cy, cx)

    return chunk


@pytest.mark.parametrize("ome", [True, False])
def test_jpeg_tiles_tagged_rgb_decode_by_their_stream(he_region, tmp_path, ome):
    """JPEG tiles holding YCbCr 4:2:0 under an RGB photometric tag (as some writers store them):
    libtiff fails on them ("Improper JPEG sampling factors") or gives wrong colours."""
    path = tmp_path / ("rgb.ome.tif" if ome else "rgb.tif")
    write_ome(path, he_region[:512, :768], levels=1, photometric="rgb") if ome else \
        tifffile.imwrite(path, he_region[:512, :768], tile=(256, 256), photometric="rgb", compression="jpeg")
    reference = tifffile.imread(path)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["PhotometricInterpretation"].overwrite(2)
    with open_input(path) as src:
        assert isinstance(src, TiffSource)
        assert np.array_equal(src.read_rgb(0, 0, 768, 512), reference)


@pytest.mark.parametrize("size, unit, mpp", [(0.25, "µm", 0.25), (250, "nm", 0.25), (0.0005, "mm", 0.5)])
def test_ome_physical_size_units(size, unit, mpp, tmp_path):
    path = tmp_path / "u.ome.tif"
    write_ome(path, np.full((64, 64, 3), 200, np.uint8), physical=(size, unit), levels=1, tile=32)
    with open_input(path) as src:
        assert src.mpp == pytest.approx((mpp, mpp))


def test_generic_striped_tiled_and_bigtiff(he_region, tmp_path):
    crop = he_region[:300, :400]
    striped, big, plain = tmp_path / "striped.tif", tmp_path / "big.tif", tmp_path / "plain.tif"
    tifffile.imwrite(striped, crop, rowsperstrip=16, compression="zlib", resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER", photometric="rgb")
    tifffile.imwrite(big, crop, bigtiff=True, rowsperstrip=32, compression="lzw", photometric="rgb",
                     resolution=(25400 / 0.25, 25400 / 0.25), resolutionunit="INCH")
    tifffile.imwrite(plain, crop, tile=(64, 64), compression="zlib", photometric="rgb")
    with open_input(striped) as s:
        assert isinstance(s, TiffSource) and s.is_image and s.mpp == pytest.approx((0.5, 0.5))
        assert np.array_equal(s.read_rgb(0, 0, 400, 300), crop)
        assert np.array_equal(s.read_rgb(17, 33, 101, 77), crop[33:110, 17:118])
    with open_input(big) as s:
        assert isinstance(s, TiffSource) and s.vendor == "bigtiff" and s.mpp == pytest.approx((0.25, 0.25))
        assert np.array_equal(s.read_rgb(5, 9, 300, 200), crop[9:209, 5:305])
    with open_input(plain) as s:  # a plain tiled RGB TIFF: OpenSlide's generic driver reads all of it
        assert isinstance(s, OpenSlideSource) and np.array_equal(s.read_rgb(0, 0, 400, 300), crop)


def test_planar_palette_min_is_white_alpha_and_imagej_units(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (100, 130, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", np.ascontiguousarray(np.moveaxis(rgb, 2, 0)), planarconfig="separate",
                     photometric="rgb", rowsperstrip=16)
    with open_input(tmp_path / "planar.tif") as s:
        assert isinstance(s, TiffSource) and np.array_equal(s.read_rgb(10, 20, 50, 60), rgb[20:80, 10:60])
    index = rng.integers(0, 2, (40, 50)).astype(np.uint8)
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, 1] = (65535, 32896, 0)
    tifffile.imwrite(tmp_path / "palette.tif", index, photometric="palette", colormap=colormap)
    with open_input(tmp_path / "palette.tif") as s:
        px = s.read_rgb(0, 0, 50, 40)
        assert s.channels == 3 and (px[index == 1] == (255, 128, 0)).all() and (px[index == 0] == 0).all()
    grey = rng.integers(0, 256, (40, 50)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "white.tif", grey, photometric="miniswhite")
    with open_input(tmp_path / "white.tif") as s:
        assert s.channels == 1 and np.array_equal(s.read_rgb(0, 0, 50, 40)[:, :, 1], 255 - grey)
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:  # a pyramid of reduced-resolution pages
        tif.write(np.tile(grey, (4, 4)), tile=(64, 64), compression="zlib")
        tif.write(np.tile(grey, (4, 4))[::4, ::4], tile=(64, 64), compression="zlib", subfiletype=1)
    with open_input(tmp_path / "pages.tif") as s:
        assert isinstance(s, TiffSource) and s.level_dimensions == [(200, 160), (50, 40)]
    tifffile.imwrite(tmp_path / "ij.tif", grey, imagej=True, resolution=(1 / 0.4, 1 / 0.4), metadata={"unit": "um"})
    with open_input(tmp_path / "ij.tif") as s:
        assert s.mpp == pytest.approx((0.4, 0.4))
    rgba = np.concatenate([rgb, np.full((100, 130, 1), 255, np.uint8)], axis=2)
    rgba[:50, :, 3] = 0
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"], rowsperstrip=20)
    with open_input(tmp_path / "rgba.tif") as s:  # transparent: the background colour
        px = s.read_rgb(0, 0, 130, 100)
        assert (px[:50] == 255).all() and np.array_equal(px[50:], rgb[50:])
    tifffile.imwrite(tmp_path / "z.ome.tif", rng.integers(0, 256, (3, 64, 64, 3)).astype(np.uint8), ome=True,
                     photometric="rgb", metadata={"axes": "ZYXS"})
    with open_input(tmp_path / "z.ome.tif") as s:
        c = assess(s)
        assert c.kind == "multi-plane" and "Z=3" in c.refusal(allow_non_he=True)


def test_sample_layouts_are_described_without_decoding(tmp_path):
    cases = {
        "g16.ome.tif": (np.zeros((64, 80), np.uint16), dict(), (1, 16)),
        "c5.ome.tif": (np.zeros((5, 64, 80), np.uint8), dict(axes="CYX"), (5, 8)),
        "grey.ome.tif": (np.zeros((64, 80), np.uint8), dict(), (1, 8)),
    }
    for name, (image, kw, (channels, bits)) in cases.items():
        write_ome(tmp_path / name, image, levels=1, tile=32, compression="zlib", **kw)
        with open_input(tmp_path / name) as src:
            assert isinstance(src, TiffSource) and (src.channels, src.bits) == (channels, bits)
            if bits > 8 or channels > 3:
                with pytest.raises(SlideError, match="not readable as 8-bit RGB"):
                    src.read_rgb(0, 0, 8, 8)
    from PIL import Image

    Image.fromarray(np.full((20, 30), 40000, np.uint16)).save(tmp_path / "g16.png")
    with open_input(tmp_path / "g16.png") as src:
        assert isinstance(src, ImageSource) and (src.channels, src.bits) == (1, 16) and src.unreadable


# -- the content check ---------------------------------------------------------------------------
def fluorescence_like(h: int = 512, w: int = 640, seed: int = 0) -> np.ndarray:
    """Bright blue nuclei and green cytoplasm on a black background."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 6, (h, w, 3)).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(40):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(6, 16)
        d = (yy - cy) ** 2 + (xx - cx) ** 2
        img[d < (2 * r) ** 2, 1] = 90
        img[d < r**2, 2] = 230
    return img


def ihc_like(h: int = 512, w: int = 640, seed: int = 1) -> np.ndarray:
    """DAB brown membranes and haematoxylin-blue nuclei on near-white glass."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(236, 3, (h, w, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(60):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(8, 20)
        d = (yy - cy) ** 2 + (xx - cx) ** 2
        img[d < (2 * r) ** 2] = (150, 100, 60)
        img[d < r**2] = (90, 95, 165)
    return img


def test_content_sorts_he_ihc_and_fluorescence(he_region):
    with open_input(EXAMPLE) as src:
        c = assess(src)
    assert c.kind == "brightfield" and c.stain == "H&E-like" and c.refusal() is None and c.note is None
    assert measure(he_region)["other_stain_share"] < 0.1
    ihc = measure(ihc_like())
    assert ihc["other_stain_share"] > 0.25 and ihc["brown"] > ihc["blue"]
    fl = measure(fluorescence_like())
    assert fl["dark_share"] > 0.5 and measure(he_region)["dark_share"] < 0.1


def test_fluorescence_refused_by_default_then_coded_without_glass_skipping(tiny_models, tmp_path):
    path = tmp_path / "fl.ome.tif"
    write_ome(path, fluorescence_like(), levels=2, photometric="rgb", physical=(325, "nm"))
    out = tmp_path / "fl.zarr"
    r = _run(tiny_models, "compress", path, out, "-q", "--tile", "256")
    assert r.exit_code != 0 and "Traceback" not in r.output
    line = r.output.strip()
    assert len(line.splitlines()) == 1 and line.startswith("wsicodec: error:") and "fl.ome.tif" in line
    assert "dark background" in line and "fluorescence" in line and "--allow-non-he" in line
    _nothing_left(tmp_path, path)
    res = compress(path, out, model_dir=tiny_models, tile=256, allow_non_he=True)
    with WsiStore(res.output, model_dir=tiny_models) as s:
        assert s.meta["content"]["kind"] == "dark-background" and "--allow-non-he" in s.meta["content"]["note"]
        assert s.meta["background"]["detection"].startswith("off: dark background")
        assert max(s.glass) < 10 and res.glass_tiles == 0
        assert s.meta["mpp"] == pytest.approx([0.325, 0.325])
    info = json.loads(_run(tiny_models, "info", out, "--json").output)
    assert "fluorescence" in info["content"] and "--allow-non-he" in info["content_note"]


@pytest.mark.parametrize("name, image, kw, needle", [
    ("g16.ome.tif", np.full((200, 300), 3000, np.uint16), {}, "16-bit unsigned samples"),
    ("c5.ome.tif", np.full((5, 200, 300), 20, np.uint8), dict(axes="CYX"), "5 channels"),
])
def test_16_bit_and_multichannel_are_refused_even_when_allowed(tiny_models, tmp_path, name, image, kw, needle):
    path = tmp_path / name
    write_ome(path, image, levels=1, tile=64, compression="zlib", **kw)
    for extra in ((), ("--allow-non-he",)):
        r = _run(tiny_models, "compress", path, tmp_path / "o.zarr", "-q", *extra)
        line = r.output.strip()
        assert r.exit_code != 0 and len(line.splitlines()) == 1 and line.startswith("wsicodec: error:"), r.output
        assert name in line and needle in line and "would lose data" in line
        _nothing_left(tmp_path, path)
    info = json.loads(_run(tiny_models, "info", path, "--json").output)
    assert info["compress"].startswith("refused:") and needle in info["content"]


def test_single_channel_needs_allow_and_is_coded_as_grey(tiny_models, tmp_path, he_region):
    path = tmp_path / "grey.ome.tif"
    grey = he_region[:256, :256].mean(axis=2).astype(np.uint8)
    write_ome(path, grey, levels=1, tile=128, compression="zlib")
    with pytest.raises(SlideError, match="single-channel"):
        compress(path, tmp_path / "g.zarr", model_dir=tiny_models, tile=128)
    _nothing_left(tmp_path, path)
    r = compress(path, tmp_path / "g.zarr", model_dir=tiny_models, tile=128, allow_non_he=True)
    with WsiStore(r.output, model_dir=tiny_models) as s:
        assert s.meta["content"]["kind"] == "single-channel" and s.dimensions == (256, 256)
    with open_input(path) as src:
        px = src.read_rgb(0, 0, 256, 256)
    assert np.array_equal(px[:, :, 0], grey) and np.array_equal(px[:, :, 2], grey)


def test_other_brightfield_stain_is_coded_with_a_note(tiny_models, tmp_path):
    path = tmp_path / "ihc.ome.tif"
    write_ome(path, ihc_like(), levels=2, photometric="rgb")
    r = _run(tiny_models, "compress", path, tmp_path / "ihc.zarr", "--tile", "256")
    assert r.exit_code == 0, r.output
    assert "note: brightfield, not H&E-like" in r.output and "DAB" in r.output
    with WsiStore(tmp_path / "ihc.zarr", model_dir=tiny_models) as s:
        content = s.meta["content"]
        assert content["stain"] == "other" and content["note"].startswith("brightfield, not H&E-like")
        assert s.meta["background"]["detection"].startswith("tile is glass")
    info = json.loads(_run(tiny_models, "info", tmp_path / "ihc.zarr", "--json").output)
    assert "not H&E-like" in info["content_note"]


# -- the whole way: compress, verify --against, bench ---------------------------------------------
def test_ome_tiff_round_trip_verify_and_bench(tiny_models, tmp_path, he_region):
    path = tmp_path / "he.ome.tif"
    write_ome(path, he_region[256:512, :384], physical=(500, "nm"), levels=2, photometric="rgb")
    out = tmp_path / "he.zarr"
    r = _run(tiny_models, "compress", path, out, "-q", "--tile", "128")
    assert r.exit_code == 0 and r.output == "", r.output
    with WsiStore(out, model_dir=tiny_models) as s:
        assert s.dimensions == (384, 256) and s.meta["mpp"] == pytest.approx([0.5, 0.5])
        assert s.properties["openslide.mpp-x"] == "0.5" and s.meta["vendor"] == "ome-tiff"
        assert s.meta["content"]["stain"] == "H&E-like" and s.meta["tiles"]["glass"] > 0
        assert "OME" in s.meta["properties"]["tiff.ImageDescription"]
    assert not list(tmp_path.glob(".*partial*"))
    r = _run(tiny_models, "verify", out, "--against", path, "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    quality = json.loads(r.output)["quality"]
    reference = tifffile.imread(path)
    with WsiStore(out, model_dir=tiny_models) as s:  # verify compared with the OME-TIFF's own pixels
        decoded = s.read_level0(0, 0, 384, 256)
    mse = np.mean((decoded.astype(np.float64) - reference) ** 2)
    assert quality["against"] == str(path) and quality["psnr"] == pytest.approx(10 * np.log10(255**2 / mse), abs=0.01)
    from wsicodec.bench.runner import collect_images

    images = collect_images([path], tiles=2, tile_size=128)
    assert len(images) == 2
    for im in images:
        x, y = map(int, im.name.split("@")[1].split(","))
        assert np.array_equal(im.rgb, reference[y : y + 128, x : x + 128])


def test_ome_label_series_is_kept_and_dropped_when_deidentified(tiny_models, tmp_path, he_region):
    path = tmp_path / "lab.ome.tif"
    label = np.zeros((40, 90, 3), np.uint8)
    label[10:30, 10:80] = (20, 200, 40)
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(he_region[:256, :256], tile=(128, 128), compression="zlib", photometric="rgb",
                  metadata={"axes": "YXS", "Name": "slide", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        tif.write(label, photometric="rgb", metadata={"axes": "YXS", "Name": "label"})
    r = compress(path, tmp_path / "a.zarr", model_dir=tiny_models, tile=128)
    with WsiStore(r.output, model_dir=tiny_models) as s:
        assert s.meta["associated"] == ["label"] and np.array_equal(np.asarray(s.associated_images["label"]), label)
        assert s.meta["properties"]["wsicodec.source-series"] == "0"
    r = compress(path, tmp_path / "d.zarr", model_dir=tiny_models, tile=128, deidentify=True)
    with WsiStore(r.output, model_dir=tiny_models) as s:
        assert s.meta["associated"] == [] and "tiff.ImageDescription" not in s.meta["properties"]
        assert s.meta["mpp"] == [0.5, 0.5]
