"""Many slides: --out-dir, manifest, skip complete outputs, failures reported, a 2-worker dask cluster."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from wsicodec.batch import compress_many, plan_outputs, read_manifest
from wsicodec.cli import main
from wsicodec.store import StoreError


@pytest.fixture()
def three_inputs(tmp_path, he_crop):
    paths = []
    for i in range(3):
        p = tmp_path / f"in{i}.png"
        Image.fromarray(np.ascontiguousarray(he_crop[i * 64 : i * 64 + 96, :128])).save(p)
        paths.append(str(p))
    return paths


def test_plan_and_manifest(tmp_path):
    assert [o.name for _, o in plan_outputs(["a/x.svs", "b/y.tiff"], tmp_path)] == ["x.zarr", "y.zarr"]
    with pytest.raises(StoreError, match="would overwrite"):
        plan_outputs(["a/x.svs", "b/x.svs"], tmp_path)
    (tmp_path / "m.txt").write_text("# slides\na.svs\n\nb.svs\n")
    assert read_manifest(tmp_path / "m.txt") == ["a.svs", "b.svs"]


def test_in_process_skips_complete_and_reports_failures(three_inputs, tiny_models, tmp_path):
    out = tmp_path / "out"
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"not a slide")
    r1 = compress_many(three_inputs + [str(bad)], out, model_dir=tiny_models, tile=64)
    assert [r.status for r in r1] == ["done", "done", "done", "failed"]
    assert "bad.svs" in r1[3].error
    r2 = compress_many(three_inputs, out, model_dir=tiny_models, tile=64)
    assert [r.status for r in r2] == ["skipped"] * 3


def test_two_worker_local_dask_cluster(three_inputs, tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("WSICODEC_MODELS", str(tiny_models))  # inherited by the worker processes
    out = tmp_path / "out"
    res = compress_many(three_inputs, out, workers=2, tile=64)
    assert sorted(r.status for r in res) == ["done"] * 3
    assert all((out / f"in{i}.zarr" / "zarr.json").exists() for i in range(3))


def test_cli_out_dir_and_manifest(three_inputs, tiny_models, tmp_path):
    env = {"WSICODEC_MODELS": str(tiny_models)}
    (tmp_path / "m.txt").write_text("\n".join(three_inputs[1:]))
    r = CliRunner().invoke(main, ["compress", three_inputs[0], "--manifest", str(tmp_path / "m.txt"),
                                  "--out-dir", str(tmp_path / "o"), "--tile", "64"], env=env)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["in0.zarr", "in1.zarr", "in2.zarr"]
    r = CliRunner().invoke(main, ["compress", three_inputs[0], "--workers", "2"], env=env)
    assert r.exit_code != 0 and "OUTPUT" in r.output
