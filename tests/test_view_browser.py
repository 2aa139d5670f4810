"""The viewer in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright
loads the page from uvicorn, both viewers draw tissue, panning one moves the other."""
from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLE

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def server(example_store):
    import uvicorn

    from wsicodec.store import WsiStore
    from wsicodec.view import app
    from wsicodec.view.serve import listen

    application = app(WsiStore(example_store, device="cpu"), against=EXAMPLE)
    sock = listen("127.0.0.1", 0)
    srv = uvicorn.Server(uvicorn.Config(application, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv.should_exit = True
    thread.join(10)
    sock.close()


def _get_raw(base: str, path: str) -> tuple[int, bytes]:
    """A request line sent as is (no client-side clean-up of ``..``)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


@pytest.mark.parametrize("path", ["/static/../../../../../../etc/passwd", "/store_files/../../../../etc/passwd",
                                  "/static/openseadragon/../../server.py", "/..%2f..%2f..%2fetc/passwd"])
def test_raw_traversal_requests_reach_no_file(server, path):
    status, data = _get_raw(server, path)
    assert status in (400, 404), data[:200]
    assert b"root:" not in data and b"import" not in data and b"Traceback" not in data


def _canvas_pixels(page, viewer: str) -> np.ndarray:
    """RGBA pixels of a viewer's drawing canvas (the canvas drawer, read back in the page)."""
    flat = page.evaluate(f"""() => {{
        const c = window.wsiview.{viewer}.drawer.canvas;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height);
        return [c.width, c.height, Array.from(d.data)];
    }}""")
    w, h, data = flat
    return np.asarray(data, np.uint8).reshape(h, w, 4)


def _tissue_fraction(rgba: np.ndarray) -> float:
    """Share of pixels that look like stained tissue: coloured (not grey / white / black)."""
    rgb = rgba[:, :, :3].astype(int)
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    return float(((chroma > 25) & (rgb.max(axis=2) > 60)).mean())


def _wait_drawn(page, timeout_s: float = 180) -> None:
    page.wait_for_function("() => window.wsiview && window.wsiview.ready()", timeout=timeout_s * 1000)


def test_viewer_in_headless_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM} (Debian package 'chromium'; .ci/run installs it)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 820})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server + "/")
            _wait_drawn(page)
            page.wait_for_timeout(500)  # let the animation settle
            for viewer in ("store", "original"):
                frac = _tissue_fraction(_canvas_pixels(page, viewer))
                assert frac > 0.2, (viewer, frac)
            page.wait_for_function("() => document.getElementById('psnr').textContent.includes('dB')",
                                   timeout=60000)
            page.screenshot(path=str(tmp_path / "viewer.png"))

            def centre(viewer: str) -> tuple[float, float]:
                return tuple(page.evaluate(f"() => {{ const c = window.wsiview.{viewer}.viewport.getCenter();"
                                           " return [c.x, c.y]; }"))

            before = centre("original")
            box = page.locator("#store-viewer").bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(x, y)
            page.mouse.down()
            page.mouse.move(x - 150, y - 80, steps=10)
            page.mouse.up()
            page.wait_for_timeout(1500)
            after, store_after = centre("original"), centre("store")
            assert after[0] > before[0] + 0.02 and after[1] > before[1] + 0.01, (before, after)
            assert np.allclose(after, store_after, atol=1e-3)
            # and the other way round: the original drags the store along
            box = page.locator("#original-viewer").bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(x, y)
            page.mouse.down()
            page.mouse.move(x + 100, y, steps=10)
            page.mouse.up()
            page.wait_for_timeout(1500)
            assert centre("store")[0] < store_after[0] - 0.02
            assert np.allclose(centre("store"), centre("original"), atol=1e-3)
            _wait_drawn(page)
            page.screenshot(path=str(tmp_path / "viewer-panned.png"))
            # curtain: the original under the store on one canvas, the store clipped at the line
            page.select_option("#mode", "curtain")
            page.wait_for_function("() => window.wsiview.store.world.getItemCount() === 2")
            _wait_drawn(page)
            assert page.is_hidden("#original-pane") and page.is_visible("#curtain-line")
            assert _tissue_fraction(_canvas_pixels(page, "store")) > 0.2
            page.screenshot(path=str(tmp_path / "viewer-curtain.png"))
            assert not errors, errors
        finally:
            browser.close()
    print(f"screenshots in {tmp_path}")
