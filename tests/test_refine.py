"""Encoder effort: at ``effort="high"`` each tile's latents are optimised for the model's own
rate-distortion objective. The store decodes with the same decoder, costs less in that
objective, is the same on every run, and a model that cannot use it is refused up front."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import differing_files, disk_full_after, one_line_error, rd_objective
from PIL import Image

from wsicodec.bench.codecs import WsicodecCodec
from wsicodec.cli import main
from wsicodec.effort import EFFORTS, Effort, EffortError, effort_setting, effort_suffix
from wsicodec.models import load_model
from wsicodec.pipeline import compress
from wsicodec.store import read_store_meta
from wsicodec.verify import verify_store


@pytest.fixture()
def crop_png(he_crop, tmp_path):
    """The 400 x 368 H&E crop as PNG: with 128-px tiles, 12 tiles, 5 of them cut by the edges."""
    path = tmp_path / "crop.png"
    Image.fromarray(he_crop).save(path)
    return path


@pytest.mark.parametrize("model", ["hne-hp64-q3-v4", "hne-hp64-ms5-v2"])
def test_high_effort_lowers_the_objective_and_decodes_as_before(model, crop_png, he_crop, tmp_path, one_thread):
    _, card = load_model(model)
    stores = {}
    for effort in ("standard", "high", "max"):
        stores[effort] = tmp_path / f"{effort}.zarr"
        compress(crop_png, stores[effort], model=model, tile=128, skip_glass=False, device="cpu",
                 precision="fp32", effort=effort)
        assert verify_store(stores[effort]).ok
        assert read_store_meta(stores[effort])["encoder"]["effort"] == effort
    standard, high, most = (rd_objective(stores[e], he_crop, card.lmbda, card.distortion)
                            for e in ("standard", "high", "max"))
    assert most < high < standard, (most, high, standard)
    again = tmp_path / "again.zarr"  # seeded annealing noise: the same store on every run
    compress(crop_png, again, model=model, tile=128, skip_glass=False, device="cpu", precision="fp32",
             effort="high")
    files, differing = differing_files(stores["high"], again)
    assert [f for f in differing if f.name != "zarr.json"] == [] and files


def test_every_effort_is_offered_by_both_commands():
    from wsicodec.bench.cli import command as bench

    for command in (main.commands["compress"], bench.commands["run"]):
        option = next(p for p in command.params if p.name == "effort")
        assert list(option.type.choices) == list(EFFORTS)
    assert [EFFORTS[e].steps for e in EFFORTS] == sorted(EFFORTS[e].steps for e in EFFORTS)
    assert [effort_suffix(f"wsicodec-hyperprior-{e}") for e in EFFORTS] == ["", "-high", "-max"]


def test_effort_is_refused_where_it_cannot_apply(crop_png, tmp_path):
    with pytest.raises(EffortError, match="unknown effort"):
        effort_setting("extreme")
    out = tmp_path / "f.zarr"
    with pytest.raises(EffortError, match="hyperprior"):
        compress(crop_png, out, model="hne-f64-q1-v1", effort="high", device="cpu")
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))
    result = CliRunner().invoke(main, ["compress", str(crop_png), str(out), "--model", "hne-f64-q1-v1",
                                       "--effort", "high", "-q"])
    one_line_error(result, "hne-f64-q1-v1", "hyperprior")
    assert not out.exists()


def test_bench_names_higher_effort_curves_apart():
    codecs = {e: WsicodecCodec(["hne-hp64-q3-v4"], effort=e) for e in ("standard", "high", "max")}
    try:
        assert codecs["standard"].curve("hne-hp64-q3-v4") == "wsicodec-hyperprior"
        assert codecs["high"].curve("hne-hp64-q3-v4") == "wsicodec-hyperprior-high"
        assert codecs["high"].curve("hne-hp64-ms5-v2") == "wsicodec-hyperprior-ms-ssim-high"
        assert codecs["max"].curve("hne-hp64-q3-v4") == "wsicodec-hyperprior-max"
    finally:
        for codec in codecs.values():
            codec.close()


def test_side_information_on_the_device_or_by_the_cpu_codec_agree(he_crop, monkeypatch):
    """The search takes each chunk's ẑ, tables and means from the engine's exact device path, or
    from the CPU chunk codec where that path is unavailable: the same values either way."""
    import torch

    from wsicodec.engine import DeviceHyperSymbols, Transforms
    from wsicodec.refine import LatentRefiner

    net, card = load_model("hne-hp64-q3-v4")
    transforms = Transforms(net, card, "cpu", precision="fp32")
    latents = torch.from_numpy(transforms.analysis(he_crop[None, :256, :256]))  # one 16 x 16 chunk
    background = np.zeros(card.latent_channels, np.int32)
    on_device = LatentRefiner(transforms, Effort(1, 0.01), background, lambda tx, ty: (16, 16))
    assert on_device.hyper is not None
    monkeypatch.setattr(DeviceHyperSymbols, "checked", classmethod(lambda cls, *a: None))
    by_codec = LatentRefiner(transforms, Effort(1, 0.01), background, lambda tx, ty: (16, 16))
    assert by_codec.hyper is None and by_codec.entropy_model is not None
    for a, b in zip(on_device._side_information(latents), by_codec._side_information(latents), strict=True):
        assert torch.equal(a.to(torch.int64), b.to(torch.int64))


def test_an_interrupted_high_effort_run_resumes_to_the_same_store(crop_png, tmp_path, monkeypatch, one_thread):
    """Each tile's search depends on that tile alone (its own noise seed): a run stopped by a full
    disk and resumed writes the chunks an uninterrupted run writes, whatever the batches."""
    from wsicodec.errors import StoreError

    options = dict(model="hne-hp64-q3-v4", tile=128, skip_glass=False, device="cpu", precision="fp32",
                   effort="high")
    ref = compress(crop_png, tmp_path / "ref.zarr", **options).output
    out = tmp_path / "out.zarr"
    free_disk = disk_full_after(monkeypatch, 5)
    with pytest.raises(StoreError, match="--resume"):
        compress(crop_png, out, io_threads=1, **options)
    free_disk()
    r = compress(crop_png, out, resume=True, **options)
    assert r.resumed_tiles >= 5
    files, differing = differing_files(ref, out)
    assert [f for f in differing if f.name != "zarr.json"] == [] and files
