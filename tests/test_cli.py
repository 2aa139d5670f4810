"""The command line: the main job, info/models, and every bad input as a one-line error."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import slide_files
import torch
from click.testing import CliRunner
from conftest import EXAMPLE, one_line_error, retire, shared_cases

from wsicodec.cli import main


@pytest.fixture()
def run(tiny_models):
    def _run(*args: str):
        return CliRunner().invoke(main, [str(a) for a in args], env={"WSICODEC_MODELS": str(tiny_models)})

    return _run


def test_compress_info_decompress(run, tmp_path):
    store, tif = tmp_path / "s.zarr", tmp_path / "s.tif"
    r = run("compress", EXAMPLE, store, "--quiet", "--tile", "256")
    assert r.exit_code == 0, r.output
    assert r.output == ""
    r = run("info", store, "--json")
    d = json.loads(r.output)
    assert d["dimensions"] == [2220, 2967] and d["model"] == "tiny" and d["mpp"][0] == pytest.approx(0.499)
    assert d["image_bits_per_pixel"] > 0 and d["times_smaller"] > 0
    assert d["bytes"] == d["image_bytes"] + sum(a["bytes"] for a in d["associated"].values()) + d["other_bytes"]
    assert set(d["associated"]) == {"label", "macro"}  # the thumbnail is made from the store's pyramid
    assert d["associated"]["macro"]["kept_as"] == "the source's own JPEG"
    assert "than the source" in d["summary"][0]
    r = run("info", store)
    assert r.exit_code == 0 and "bits per pixel" in r.output and "the rest: label" in r.output
    assert d["encoder"]["device"] == "cpu" and d["encoder"]["precision"] in ("fp32", "bf16")
    r = run("decompress", store, tif, "--compression", "zstd", "--precision", "fp32")
    assert r.exit_code == 0, r.output
    assert tif.exists() and "bytes" in r.output
    r = run("info", EXAMPLE, "--json")
    assert json.loads(r.output)["vendor"] == "aperio"
    r = run("models", "--json")
    assert {m["name"] for m in json.loads(r.output)} == {"tiny", "tiny-other", "tiny-hyper"}
    assert "tiny *" in run("models").output


@pytest.fixture(scope="module")
def damaged_inputs(tmp_path_factory, example_tissue) -> dict[str, Path]:
    """Inputs no reader can use, named as a user would have them."""
    d = tmp_path_factory.mktemp("damaged")
    svs = slide_files.write_aperio_svs(d / "good.svs", example_tissue[:128, :128])
    return {
        "garbage": slide_files.write_garbage(d / "broken.svs"),
        "unknown compression": slide_files.write_unknown_compression_tiff(d / "unopenable.tiff"),
        "corrupt tiles": slide_files.write_corrupt_svs(d / "unreadable.svs", svs),
    }


@pytest.mark.parametrize("damaged", ["garbage", "unknown compression", "corrupt tiles",
                                     *shared_cases("slides/fixtures", "broken.svs", "unopenable.tiff",
                                                   "unreadable.svs")])
def test_damaged_slides_are_one_line_errors(run, damaged_inputs, damaged, tmp_path):
    path = damaged if isinstance(damaged, Path) else damaged_inputs[damaged]
    one_line_error(run("compress", path, tmp_path / "o.zarr"), path.name)
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def test_bad_inputs_are_one_line_errors(run, tmp_path):
    one_line_error(run("compress", tmp_path / "nope.svs", tmp_path / "o.zarr"), "nope.svs", "no such file")
    one_line_error(run("compress", EXAMPLE, tmp_path / "o.zarr", "--model", "nosuch"), "unknown model", "nosuch")
    assert not list(tmp_path.iterdir())  # nothing half-written left behind
    (tmp_path / "exists.zarr").mkdir()
    one_line_error(run("compress", EXAMPLE, tmp_path / "exists.zarr"), "already exists", "--overwrite")
    one_line_error(run("decompress", tmp_path / "nostore.zarr", tmp_path / "o.tif"), "no such store")
    one_line_error(run("decompress", tmp_path / "exists.zarr", tmp_path / "o.tif"), "not a wsicodec store")
    one_line_error(run("info", tmp_path / "nothing"), "nothing")


def test_models_retired_lists_each_with_its_replacement(tiny_models, tmp_path):
    folder = tmp_path / "models"
    shutil.copytree(tiny_models, folder)
    retire(folder, "tiny", by="tiny-hyper")

    def models(*args):
        return CliRunner().invoke(main, ["models", *args], env={"WSICODEC_MODELS": str(folder), "COLUMNS": "200"})

    assert [(m["name"], m["replacement"]) for m in json.loads(models("--retired", "--json").output)] == [
        ("tiny", "tiny-hyper")]
    assert "tiny " not in models().output
    r = models("--retired")
    assert r.exit_code == 0 and "retired models" in r.output
    assert [line.split()[:1] + line.split()[-2:] for line in r.output.splitlines() if line.startswith("  tiny")] == [
        ["tiny", "tiny-hyper", "tiny-hyper"]]


def test_store_from_another_model_is_refused(run, tiny_models, tmp_path):
    from wsicodec.models import ModelCard, build_model, save_model

    small = tmp_path / "small.png"
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(small)
    store = tmp_path / "s.zarr"
    assert run("compress", small, store, "-q").exit_code == 0
    other = tmp_path / "other-models"
    shutil.copytree(tiny_models, other)
    torch.manual_seed(99)
    save_model(build_model("bmshj2018-factorized", N=8, M=8),
               ModelCard(name="tiny", architecture="bmshj2018-factorized", params={"N": 8, "M": 8}), other)
    r = CliRunner().invoke(main, ["decompress", str(store), str(tmp_path / "o.tif")],
                           env={"WSICODEC_MODELS": str(other)})
    one_line_error(r, "different model")
    (other / "tiny.pt").write_bytes((other / "tiny.pt").read_bytes()[:-8] + b"tampered")
    r = CliRunner().invoke(main, ["decompress", str(store), str(tmp_path / "o.tif")],
                           env={"WSICODEC_MODELS": str(other)})
    one_line_error(r, "refusing a modified model")
    assert not (tmp_path / "o.tif").exists()


def test_existing_tiff_needs_overwrite(run, tmp_path):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(tmp_path / "a.png")
    assert run("compress", tmp_path / "a.png", tmp_path / "a.zarr", "-q").exit_code == 0
    (tmp_path / "a.tif").write_bytes(b"x")
    one_line_error(run("decompress", tmp_path / "a.zarr", tmp_path / "a.tif", "-q"), "already exists")
    assert run("decompress", tmp_path / "a.zarr", tmp_path / "a.tif", "-q", "--overwrite").exit_code == 0
    one_line_error(run("decompress", tmp_path / "a.zarr", tmp_path / "b.tif", "--region", "0", "0", "99", "9"),
                    "not inside the slide")


def test_command_line_starts_without_torch():
    """`wsicodec --help`, `info` and `models` start without importing torch (1.5-2 s): the train
    group and the model loader import it on use."""
    import subprocess
    import sys

    code = ("import sys, wsicodec.cli, wsicodec.info\nfrom wsicodec.models import list_models\n"
            "assert list_models()\nassert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1000:]
