"""compress --deidentify on the example Aperio slide (label + macro, names, dates, IDs)."""
from __future__ import annotations

import json

from click.testing import CliRunner
from conftest import EXAMPLE

from wsicodec.cli import main
from wsicodec.store import WsiStore


def test_deidentify_example_slide(tiny_models, tmp_path):
    env = {"WSICODEC_MODELS": str(tiny_models)}
    store = tmp_path / "d.zarr"
    r = CliRunner().invoke(main, ["compress", str(EXAMPLE), str(store), "--deidentify", "-q", "--tile", "512"], env=env)
    assert r.exit_code == 0, r.output
    meta = json.loads((store / "zarr.json").read_text())["attributes"]["wsicodec"]
    assert meta["deidentified"] is True and meta["source"]["file_name"] is None
    removed = set(meta["deidentification"]["removed_properties"])
    for key in ("aperio.Filename", "aperio.Date", "aperio.Time", "aperio.User", "aperio.ImageID",
                "aperio.ScanScope ID", "tiff.ImageDescription", "openslide.comment", "openslide.quickhash-1",
                "openslide.associated.label.width", "openslide.associated.macro.height"):
        assert key in removed and key not in meta["properties"], key
    assert meta["deidentification"]["removed_associated"] == ["label", "macro"]
    # nothing left to keep (the thumbnail is made from the store's pyramid); version 5 for the edge
    # chunks, coded only as far as the image reaches
    assert meta["associated"] == [] and not (store / "associated").exists() and meta["format_version"] == 5
    props = meta["properties"]
    assert props["aperio.MPP"] == "0.4990" and props["aperio.AppMag"] == "20" and meta["mpp"][0] == 0.499
    assert props["openslide.objective-power"] == "20" and "aperio.StripeWidth" in props
    text = (store / "zarr.json").read_text()
    for secret in ("CMU-1", "12/29/09", "09:59:15", "b414003d", "CPAPERIOCS", "1004486"):
        assert secret not in text, secret
    with WsiStore(store) as s:
        assert s.associated_images == {}
    r = CliRunner().invoke(main, ["info", str(store), "--json"], env=env)
    assert json.loads(r.output)["deidentified"] is True
    r = CliRunner().invoke(main, ["verify", str(store)], env=env)
    assert r.exit_code == 0, r.output
