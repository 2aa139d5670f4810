"""The viewer app: DeepZoom geometry and tiles of the example store, its caches, hostile URLs,
damaged chunks, and the command line's one-line errors."""
from __future__ import annotations

import io
import logging
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import EXAMPLE
from PIL import Image

from wsicodec.cli import main
from wsicodec.store import TILE_CODED, WsiStore, chunk_file


@pytest.fixture(scope="module")
def client(example_store):
    from starlette.testclient import TestClient

    from wsicodec.view import app

    application = app(WsiStore(example_store, device="cpu", precision="fp32"), against=EXAMPLE)
    with TestClient(application) as c:
        c.viewer = application.state.viewer
        yield c


def _png(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def _xml(text: str) -> list:
    import xml.etree.ElementTree as ET

    return [(e.tag, sorted(e.attrib.items())) for e in ET.fromstring(text.encode()).iter()]


def test_dzi_matches_openslide_deepzoom(client):
    from openslide import OpenSlide
    from openslide.deepzoom import DeepZoomGenerator

    with OpenSlide(str(EXAMPLE)) as slide:
        ref = DeepZoomGenerator(slide, tile_size=254, overlap=1, limit_bounds=False)
        for name in ("store", "original"):
            r = client.get(f"/{name}.dzi")
            assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
            assert _xml(r.text) == _xml(ref.get_dzi("png"))
        dz = client.viewer.pyramids["store"].dz
        assert dz.level_count == ref.level_count == 13
        assert dz.level_dimensions == ref.level_dimensions and dz.level_tiles == ref.level_tiles
        for level in (ref.level_count - 1, ref.level_count - 3, 3):
            cols, rows = ref.level_tiles[level]
            for col in range(cols):
                for row in range(rows):
                    x, y, w, h = dz.tile_box(level, col, row)
                    assert (w, h) == ref.get_tile_dimensions(level, (col, row))
                    if level == ref.level_count - 1:  # full resolution: the same level-0 box
                        assert ref.get_tile_coordinates(level, (col, row))[0] == (x, y)


def test_full_resolution_tiles_equal_read_region(client, example_store, one_thread):
    store = WsiStore(example_store, device="cpu", precision="fp32")
    dz = client.viewer.pyramids["store"].dz
    top = dz.level_count - 1
    cols, rows = dz.level_tiles[top]
    # a corner, tiles straddling store tiles (512 px), the bottom-right edge
    for col, row in [(0, 0), (2, 1), (4, 6), (cols - 1, rows - 1)]:
        px = _png(client.get(f"/store_files/{top}/{col}_{row}.png"))
        x, y, w, h = dz.tile_box(top, col, row)
        assert px.shape == (h, w, 3)
        ref = np.asarray(store.read_region((x, y), 0, (w, h)).convert("RGB"))
        assert np.array_equal(px, ref), (col, row)
    original = _png(client.get(f"/original_files/{top}/2_1.png"))
    x, y, w, h = dz.tile_box(top, 2, 1)
    from openslide import OpenSlide

    with OpenSlide(str(EXAMPLE)) as slide:
        ref = np.asarray(slide.read_region((x, y), 0, (w, h)).convert("RGB"))
    assert np.array_equal(original, ref)


def test_lower_levels_are_box_averages_of_level_0(client, example_store):
    """A DeepZoom level 1/4 of full size is the store's level 1 (a 4x box average) up to the
    rounding of averaging twice by 2 (and the partial boxes at the right and bottom edges)."""
    store = WsiStore(example_store, device="cpu", precision="fp32")
    dz = client.viewer.pyramids["store"].dz
    level = dz.level_count - 3
    assert store.level_downsamples[1] == 4
    x, y, w, h = dz.tile_box(level, 1, 1)
    px = _png(client.get(f"/store_files/{level}/1_1.png")).astype(int)
    ref = np.asarray(store.read_region((x * 4, y * 4), 1, (w, h)).convert("RGB")).astype(int)
    assert px.shape == ref.shape
    assert np.abs(px - ref).max() <= 1
    assert px.std() > 10  # tissue, not a flat colour


def test_cache_decodes_each_store_tile_once(example_store):
    from starlette.testclient import TestClient

    from wsicodec.view import app

    application = app(WsiStore(example_store, device="cpu"))
    client = TestClient(application)
    pyramid = application.state.viewer.pyramids["store"]
    top = pyramid.dz.level_count - 1
    # DeepZoom tile (3, 3) lies inside store tile (1, 1): level-0 pixels 761..1017 of 512..1024
    assert pyramid.dz.tile_box(top, 3, 3) == (761, 761, 256, 256)
    before = pyramid.reads
    _png(client.get(f"/store_files/{top}/3_3.png"))
    assert pyramid.reads == before + 1  # one decode, of store tile (1, 1)
    _png(client.get(f"/store_files/{top}/3_3.png"))
    assert pyramid.reads == before + 1  # the same tile again: nothing decoded
    _png(client.get(f"/store_files/{top}/2_3.png"))  # 507..763: store tiles (0, 1) and (1, 1)
    assert pyramid.reads == before + 2  # only (0, 1) is new
    low = f"/store_files/{top - 4}/0_0.png"  # 1/16 scale: made from every store tile
    _png(client.get(low))
    after_low = pyramid.reads
    assert after_low == len(application.state.viewer.store.grid)  # each store tile decoded once in all
    _png(client.get(low))
    _png(client.get(f"/store_files/{top - 5}/0_0.png"))
    assert pyramid.reads == after_low


@pytest.mark.parametrize("url,status", [
    ("/store_files/12/99_0.png", 404),
    ("/store_files/13/0_0.png", 404),
    ("/store_files/0/1_0.png", 404),
    ("/store_files/12/0_0.webp", 404),       # not the format this server sends
    ("/nosuch_files/12/0_0.png", 404),
    ("/nosuch.dzi", 404),
    ("/store_files/12/a_b.png", 400),
    ("/store_files/12/0_0.jpg", 400),
    ("/store_files/-1/0_0.png", 400),
    ("/store_files/12/0_0_0.png", 400),
    ("/store_files/99999999/0_0.png", 400),
    ("/store_files/12/0_0.png/..%2f..%2f..%2fetc%2fpasswd", 400),
    ("/store_files/%2e%2e/%2e%2e/pyproject.toml", 400),
    ("/static/%2e%2e/server.py", 404),
    ("/static/..%2f..%2fcli.py", 404),
    ("/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", 404),
    ("/associated/..%2f..%2fzarr.json.png", 404),
    ("/associated/nosuch.png", 404),
    ("/api/psnr?level=x&x=0&y=0&w=1&h=1", 400),
    ("/api/psnr?level=99&x=0&y=0&w=1&h=1", 400),
    ("/api/psnr", 400),
])
def test_hostile_urls_are_refused(client, url, status):
    r = client.get(url)
    assert r.status_code == status, (url, r.status_code, r.text)
    assert "Traceback" not in r.text and len(r.content) < 200


def test_page_panel_and_associated_images(client):
    r = client.get("/")
    assert r.status_code == 200 and "openseadragon.min.js" in r.text
    assert client.get("/static/openseadragon/openseadragon.min.js").status_code == 200
    assert client.get("/static/openseadragon/LICENSE.txt").status_code == 200
    info = client.get("/api/info").json()
    assert info["dimensions"] == [2220, 2967] and info["mpp"][0] == pytest.approx(0.499)
    assert 0 < info["image_bits_per_pixel"] < info["bits_per_pixel"] and info["times_smaller"] > 1
    assert info["grid"]["tiles_x"] == 5 and info["grid"]["tiles_y"] == 6
    assert info["grid"]["glass"], "the example slide has glass tiles"
    assert info["against"]["name"] == EXAMPLE.name
    label = _png(client.get("/associated/label.png"))
    assert label.shape[0] > 10
    p = client.get("/api/psnr", params={"level": 12, "x": 1024, "y": 1024, "w": 700, "h": 700}).json()
    assert p["blocks"] == 4 and 25 < p["psnr"] < 60


def test_damaged_chunk_is_a_marked_tile_and_one_logged_line(example_store, tmp_path, caplog):
    from starlette.testclient import TestClient

    from wsicodec.view import app

    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(example_store, damaged)
    store = WsiStore(damaged, device="cpu")
    assert store.tile_state[2, 2] == TILE_CODED
    f = chunk_file(damaged, 2, 2)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    application = app(store)
    with TestClient(application) as c, caplog.at_level(logging.ERROR, logger="wsicodec.view"):
        top = application.state.viewer.pyramids["store"].dz.level_count - 1
        px = _png(c.get(f"/store_files/{top}/4_4.png"))  # level-0 (1015, 1015): inside store tile (2, 2)
        px = _png(c.get(f"/store_files/{top}/4_4.png"))
        red = (px[:, :, 0] > 200) & (px[:, :, 1] < 60) & (px[:, :, 2] < 60)
        assert red.mean() > 0.3
        assert _png(c.get(f"/store_files/{top - 4}/0_0.png")).shape[0] > 0  # the overview still draws
        assert [2, 2] in c.get("/api/unreadable").json()["store"]
    lines = [r.getMessage() for r in caplog.records if "(2, 2)" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and str(damaged) in lines[0], lines


def test_view_command_line_errors(example_store, tmp_path):
    import socket

    run = CliRunner().invoke
    r = run(main, ["view", str(example_store), "--against", str(tmp_path / "nope.svs"), "--no-browser"])
    assert r.exit_code == 1 and r.output.strip() == f"wsicodec: error: {tmp_path / 'nope.svs'}: no such file"
    (tmp_path / ".half.zarr.partial").mkdir()
    r = run(main, ["view", str(tmp_path / "half.zarr"), "--no-browser"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and "unfinished" in r.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run(main, ["view", str(example_store), "--port", str(port), "--no-browser"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert "port is in use" in r.output and "Traceback" not in r.output
    with socket.socket() as busy:  # every interface: a warning first, then the same one-line error
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run(main, ["view", str(example_store), "--host", "0.0.0.0", "--port", str(port), "--no-browser"])
    assert r.exit_code == 1 and "warning: listening on 0.0.0.0" in r.output and "port is in use" in r.output
