"""The variable-rate gained hyperprior (mbt2018-mean-gain): operating points chosen by gains,
stores of format 4 that record their point, the same chunk codec and seam-free tiling, and old
stores still read."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import differing_files, side_information_on_device
from PIL import Image

from wsicodec.models import ModelCard, build_model, load_model, save_model
from wsicodec.models.rates import RateError, point_from_meta, rate_point, split_model_ref
from wsicodec.pipeline import compress
from wsicodec.store import WsiStore, read_store_meta
from wsicodec.verify import verify_store

LADDER = [0.001, 0.004, 0.016, 0.064]
PARAMS = {"N": 8, "M": 16, "N_s1": 8, "N_s": 8, "H": 8, "K": len(LADDER)}


@pytest.fixture(scope="module")
def vbr_models(tmp_path_factory, tiny_models):
    """The tiny models of conftest plus 'tiny-vbr': an untrained gained hyperprior whose gains
    start from a 4-point λ ladder (each point's gain 2x the last's); its analysis output is
    scaled up so that latents spread over several quantization steps."""
    import shutil

    d = tmp_path_factory.mktemp("vbr-models")
    for f in tiny_models.iterdir():
        shutil.copy(f, d / f.name)
    torch.manual_seed(5)
    m = build_model("mbt2018-mean-gain", **PARAMS, lambdas=LADDER)
    with torch.no_grad():
        m.g_a[-1].weight.mul_(20)
        m.h_a[0].weight.mul_(0.2)
    points = [{"index": k, "lambda": lmbda, "validation": {}} for k, lmbda in enumerate(LADDER)]
    save_model(m, ModelCard(name="tiny-vbr", architecture="mbt2018-mean-gain", params=PARAMS,
                            operating_points=points, default_point=1), d)
    return d


@pytest.fixture(scope="module")
def texture(tmp_path_factory) -> np.ndarray:
    """A smooth random colour texture, 208 x 176 px (not a multiple of the 64-px tile)."""
    rng = np.random.default_rng(0)
    small = rng.integers(40, 230, (12, 14, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((208, 176), Image.Resampling.BICUBIC))
    return np.clip(big.astype(np.int16) + rng.integers(-12, 13, big.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def texture_png(tmp_path_factory, texture):
    p = tmp_path_factory.mktemp("img") / "texture.png"
    Image.fromarray(texture).save(p)
    return p


def test_inference_network_equals_the_training_one_bit_for_bit(vbr_models):
    light, card = load_model("tiny-vbr", vbr_models)
    full, _ = load_model("tiny-vbr", vbr_models, trainable=True)
    assert type(light).__module__ == "wsicodec.models.networks"
    with torch.no_grad():  # GDN's β and γ away from their initial values, as trained ones are
        trained = dict(full.named_parameters())
        for name, p_light in light.named_parameters():
            trained[name].mul_(1 + 0.2 * torch.rand_like(trained[name])).add_(0.01)
            p_light.copy_(trained[name])
    x = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    for k in range(card.params["K"]):
        with torch.no_grad():
            gain, inverse = full.gains(k)
            point = rate_point(light, k)
            assert np.allclose(point.gain, gain.double().numpy().ravel(), rtol=1e-6)
            assert torch.equal(torch.exp(light.log_gain[k]), gain.ravel())
            y = full.g_a(x) * gain
            assert torch.equal(light.g_a(x) * torch.exp(light.log_gain[k])[None, :, None, None], y)
            z = full.h_a(y)
            assert torch.equal(light.h_a(y), z)
            assert torch.equal(light.h_s(z), full.h_s(z))
            assert torch.equal(light.g_s(y * inverse), full.g_s(y * inverse))


def test_rate_points_and_model_references(vbr_models):
    light, _ = load_model("tiny-vbr", vbr_models)
    p1, p2, mid = rate_point(light, 1), rate_point(light, 2), rate_point(light, 1.5)
    assert (mid.index, mid.t) == (1, 0.5)
    assert np.allclose(mid.gain, np.sqrt(p1.gain * p2.gain))  # geometric interpolation
    assert np.allclose(p2.gain / p1.gain, 2.0)  # the ladder's λ ratio 4 → gain ratio 2 at the start
    assert rate_point(light, 3).index == 3
    meta = json.loads(json.dumps(mid.to_meta()))  # float64 vectors survive JSON exactly
    again = point_from_meta(light, meta)
    assert np.array_equal(again.gain, mid.gain) and np.array_equal(again.inverse_gain, mid.inverse_gain)
    assert point_from_meta(light, {"index": 2, "t": 0.0}).position == 2
    for bad in ({"index": 4, "t": 0.0}, {"index": 1, "t": 1.0}, {"index": 1, "t": 0.5}, {"index": True}):
        with pytest.raises(RateError):
            point_from_meta(light, bad)
    with pytest.raises(RateError):
        rate_point(light, 3.5)
    assert split_model_ref("hne@4.5") == ("hne", 4.5) and split_model_ref("hne") == ("hne", None)
    with pytest.raises(RateError):
        split_model_ref("hne@high")


def test_operating_points_give_more_bytes_and_less_error(vbr_models, texture_png, texture, tmp_path, one_thread):
    """Each point up the ladder writes more bytes and decodes closer to the model's unquantized
    reconstruction (an untrained model's pixels are not the image; its quantization error is
    what the rate controls). A point between two lies between them."""
    light, _ = load_model("tiny-vbr", vbr_models)
    x = torch.from_numpy(texture).permute(2, 0, 1)[None].float() / 255
    results = {}
    for position in (0, 1, 1.5, 2, 3):
        out = tmp_path / f"p{position}.zarr"
        r = compress(texture_png, out, model=f"tiny-vbr@{position}", tile=64, skip_glass=False, model_dir=vbr_models,
                     device="cpu", precision="fp32")
        meta = read_store_meta(out)
        assert meta["format_version"] == 4
        assert meta["operating_point"]["index"] == int(position)
        assert ("gain" in meta["operating_point"]) == (position != int(position))
        point = rate_point(light, position)
        with torch.no_grad():
            g = torch.from_numpy(point.gain).float()[None, :, None, None]
            gi = torch.from_numpy(point.inverse_gain).float()[None, :, None, None]
            ref = (light.g_s(light.g_a(x) * g * gi).clamp(0, 1) * 255).round()[0].permute(1, 2, 0).numpy()
        with WsiStore(out, model_dir=vbr_models, device="cpu", precision="fp32") as s:
            decoded = s.read_level0(0, 0, *s.dimensions).astype(np.float64)
            assert s.properties["wsicodec.operating-point"] == f"{position:g}"
        assert verify_store(out, model_dir=vbr_models).ok
        results[position] = (r.latent_bytes, float(np.mean((decoded - ref) ** 2)))
    ladder = [results[p] for p in (0, 1, 1.5, 2, 3)]
    assert all(a[0] < b[0] for a, b in zip(ladder, ladder[1:], strict=False)), ladder
    assert all(a[1] > b[1] for a, b in zip(ladder, ladder[1:], strict=False)), ladder


def test_default_point_and_refusals(vbr_models, texture_png, tmp_path):
    out = tmp_path / "default.zarr"
    compress(texture_png, out, model="tiny-vbr", tile=64, model_dir=vbr_models, device="cpu")
    assert read_store_meta(out)["operating_point"] == {"index": 1, "t": 0.0}
    from wsicodec.info import describe

    assert describe(out)["operating_point"] == "tiny-vbr@1" and describe(out)["format_version"] == 4
    with pytest.raises(RateError, match="outside"):
        compress(texture_png, tmp_path / "x.zarr", model="tiny-vbr@7", tile=64, model_dir=vbr_models, device="cpu")
    with pytest.raises(RateError, match="single rate"):
        compress(texture_png, tmp_path / "y.zarr", model="tiny-hyper@1", tile=64, model_dir=vbr_models, device="cpu")
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()


def test_a_store_with_a_changed_operating_point_is_refused(vbr_models, texture_png, tmp_path):
    from wsicodec.store import StoreError

    out = tmp_path / "s.zarr"
    compress(texture_png, out, model="tiny-vbr@2", tile=64, model_dir=vbr_models, device="cpu")
    doc = json.loads((out / "zarr.json").read_text())
    doc["attributes"]["wsicodec"]["operating_point"] = {"index": 9, "t": 0.0}
    (out / "zarr.json").write_text(json.dumps(doc))
    with WsiStore(out, model_dir=vbr_models, device="cpu") as s:
        with pytest.raises(StoreError, match="operating_point index"):
            s.read_level0(0, 0, 16, 16)
    assert not verify_store(out, model_dir=vbr_models).ok


# 208 x 176 px in 64-px tiles: a factorized model's 13 x 11 latents end inside a chunk of 4 (version
# 5: edge chunks cut at the image), a hyperprior's array (16 x 12, whole side-information blocks) does not
@pytest.mark.parametrize("model, version", [("tiny", 5), ("tiny-hyper", 2)])
def test_single_rate_stores_keep_their_version_and_decode(vbr_models, texture_png, tmp_path, model, version):
    out = tmp_path / f"{model}.zarr"
    compress(texture_png, out, model=model, tile=64, model_dir=vbr_models, device="cpu")
    meta = read_store_meta(out)
    assert meta["format_version"] == version and "operating_point" not in meta
    with WsiStore(out, model_dir=vbr_models, device="cpu") as s:
        assert s.read_level0(0, 0, *s.dimensions).shape == (176, 208, 3)
    assert verify_store(out, model_dir=vbr_models).ok


def test_tiled_equals_whole_image(vbr_models, texture_png):
    """No seams at an operating point between two trained ones (gains on both sides of the
    rounding: the halo figures of the registry hold for the gained model)."""
    from wsicodec.checks import seam_check

    r = seam_check(texture_png, model="tiny-vbr@2.5", tile=64, model_dir=vbr_models)
    assert r["latents_differing"] < 1e-3
    assert r["psnr_db"] >= 50 and r["border_psnr_db"] >= 50
    assert r["region_vs_full_max_abs_diff"] <= 1


def test_benchmark_measures_every_trained_point(vbr_models):
    from wsicodec.bench.codecs import WsicodecCodec

    codec = WsicodecCodec(model_dir=vbr_models)
    try:
        settings = codec.default_settings()
        assert [s for s in settings if s.startswith("tiny-vbr")] == [f"tiny-vbr@{k}" for k in range(4)]
        assert codec.curve("tiny-vbr@2") == "wsicodec-tiny-vbr" and codec.curve("tiny-hyper") == "wsicodec-hyperprior"
    finally:
        codec.close()


def test_command_line_names_points_and_refuses_missing_ones(vbr_models, texture_png, tmp_path):
    from click.testing import CliRunner

    from wsicodec.cli import main

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args], env={"WSICODEC_MODELS": str(vbr_models)})

    r = run("models")
    assert r.exit_code == 0 and all(f"tiny-vbr@{k}" in r.output for k in range(4)) and "tiny-vbr@1 *" not in r.output
    r = run("compress", texture_png, tmp_path / "a.zarr", "--model", "tiny-vbr@3", "--tile", 64, "-q")
    assert r.exit_code == 0, r.output
    r = run("compress", texture_png, tmp_path / "b.zarr", "--model", "tiny-vbr@9", "--tile", 64, "-q")
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "outside this model's 0 … 3" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "b.zarr").exists()


def test_a_store_without_its_operating_point_is_refused(vbr_models, texture_png, tmp_path):
    from wsicodec.store import StoreError, check_meta

    out = tmp_path / "s.zarr"
    compress(texture_png, out, model="tiny-vbr@1", tile=64, model_dir=vbr_models, device="cpu")
    doc = json.loads((out / "zarr.json").read_text())
    meta = doc["attributes"]["wsicodec"]
    assert check_meta({**meta, "format_version": 2}) is not None  # a point in a version-2 store: damaged
    del meta["operating_point"]
    (out / "zarr.json").write_text(json.dumps(doc))
    with WsiStore(out, model_dir=vbr_models, device="cpu") as s:
        with pytest.raises(StoreError, match="records none"):
            s.read_level0(0, 0, 16, 16)


def test_symbols_made_by_the_engine_give_the_same_store(vbr_models, texture_png, tmp_path, monkeypatch):
    """The side information made in the engine's batches from the gained latents (as on CUDA),
    coded in worker processes that load the model themselves: the store the chunk writers make
    alone, byte for byte (no gain reaches the entropy coding)."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764115200")
    kw = dict(model="tiny-vbr@2.5", model_dir=vbr_models, tile=64, precision="fp32", skip_glass=False)
    a = compress(texture_png, tmp_path / "a.zarr", **kw).output
    made = side_information_on_device(monkeypatch)
    b = compress(texture_png, tmp_path / "b.zarr", **kw, writer_processes=2).output
    assert len(made) == 1 and all(made)
    files, differ = differing_files(a, b)
    assert len(files) > 10
    assert differ == []


def test_high_effort_at_an_interpolated_point(vbr_models, texture_png, texture, tmp_path, one_thread):
    """A higher encoder effort searches the gained latents with the point's λ interpolated
    between the trained ones: fewer bits plus λ·255²·MSE than the analysis's own latents."""
    from conftest import rd_objective

    from wsicodec.refine import _lambda

    light, card = load_model("tiny-vbr", vbr_models)
    lmbda = _lambda(card, rate_point(light, 1.5))
    assert LADDER[1] < lmbda < LADDER[2]
    objective = {}
    for effort in ("standard", "high"):
        out = tmp_path / f"{effort}.zarr"
        compress(texture_png, out, model="tiny-vbr@1.5", tile=64, skip_glass=False, model_dir=vbr_models,
                 device="cpu", precision="fp32", effort=effort)
        assert verify_store(out, model_dir=vbr_models).ok
        objective[effort] = rd_objective(out, texture, lmbda, model_dir=vbr_models)
    assert objective["high"] < objective["standard"], objective
