"""wsicodec bench: metrics, BD-rate, codec sweeps, the end-to-end benchmark and the distortion
study, and both CLI forms. Small crops, short sweeps, tiny untrained models; no network."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EXAMPLE as EXAMPLE_SLIDE
from conftest import read_rgb, shared_cases

#: the repository's measurement scripts (not part of the package)
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def he_crop(example_tissue) -> np.ndarray:
    return np.ascontiguousarray(example_tissue[300:492, 300:492])  # 192 x 192 H&E: a hair follicle


@pytest.fixture()
def sweep_image(request, he_crop) -> np.ndarray:
    """The parametrized test image: ``he_crop``, or a crop of a shared H&E image where one is given."""
    if request.param == "example":
        return he_crop
    return np.ascontiguousarray(read_rgb(request.param)[100:292, 60:252])


@pytest.fixture(scope="module")
def bench_models(tmp_path_factory) -> Path:
    from wsicodec.models import ModelCard, build_model, save_model

    d = tmp_path_factory.mktemp("bench-models")
    for i, name in enumerate(["tiny-lo", "tiny-hi"]):
        torch.manual_seed(i)
        m = build_model("bmshj2018-factorized", N=8, M=8)
        save_model(m, ModelCard(name=name, architecture="bmshj2018-factorized", params={"N": 8, "M": 8},
                                lmbda=0.001 * (i + 1)), d)
    # an older model of tiny-hi's rate: still in the folder, not in the default zoo
    save_model(build_model("bmshj2018-factorized", N=8, M=8),
               ModelCard(name="tiny-old", architecture="bmshj2018-factorized", params={"N": 8, "M": 8},
                         lmbda=0.002, superseded_by="tiny-hi"), d)
    return d


# -- metrics -----------------------------------------------------------------------------------

def test_identical_images_give_psnr_cap_and_ms_ssim_one():
    from wsicodec.bench.metrics import PSNR_CAP, MetricSet, ms_ssim, psnr

    rng = np.random.default_rng(0)
    for shape in [(200, 180, 3), (64, 72, 3)]:  # the second needs a smaller MS-SSIM window
        a = rng.integers(0, 256, shape).astype(np.uint8)
        assert psnr(a, a) == PSNR_CAP == 100.0
        assert ms_ssim(a, a) == 1.0
        b = a.copy()
        b[20:30, 20:30] = 255 - b[20:30, 20:30]
        assert 0.5 < ms_ssim(a, b) < 1.0
        assert 10 < psnr(a, b) < PSNR_CAP
    m = MetricSet(("psnr", "ms_ssim", "st_lpips"))(a, a)
    assert m["psnr"] == PSNR_CAP and m["ms_ssim"] == 1.0 and m["st_lpips"] == pytest.approx(0.0, abs=1e-6)


def test_psnr_value_and_shape_check():
    from wsicodec.bench.metrics import psnr

    a = np.zeros((8, 8, 3), np.uint8)
    assert psnr(a, a + 1) == pytest.approx(10 * np.log10(255 ** 2))
    with pytest.raises(ValueError, match="shape"):
        psnr(a, np.zeros((8, 9, 3), np.uint8))


@pytest.mark.parametrize("metric", ["STLPIPS", "STLPIPSVGG"])
def test_st_lpips_loads_bundled_weights_and_ranks_distortion(he_crop, metric):
    from wsicodec.bench import metrics
    from wsicodec.bench.distortions import jpeg_roundtrip

    m = getattr(metrics, metric)()
    assert m.available, m.reason
    mild, strong = m(he_crop, jpeg_roundtrip(he_crop, 90)), m(he_crop, jpeg_roundtrip(he_crop, 10))
    assert 0 < mild < strong
    assert m(he_crop, he_crop) == pytest.approx(0.0, abs=1e-6)


def test_lpips_never_downloads(tmp_path, monkeypatch):
    """Without cached AlexNet weights the metric is unavailable (NaN) with a reason; with them
    (here a random stand-in) it loads from the cache."""
    from wsicodec.bench.metrics import ALEXNET_WEIGHTS, LPIPS

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda *a, **k: pytest.fail("LPIPS tried to download"))
    a = np.zeros((64, 64, 3), np.uint8)
    m = LPIPS()
    assert not m.available and "not cached" in m.reason
    assert np.isnan(m(a, a))

    import torchvision

    torch.manual_seed(0)
    feats = torchvision.models.alexnet(weights=None).features.state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in feats.items()}, tmp_path / "hub" / "checkpoints" / ALEXNET_WEIGHTS)
    m = LPIPS()
    assert m.available, m.reason
    assert m(a, a) == pytest.approx(0.0, abs=1e-6)


# -- rate-distortion helpers ---------------------------------------------------------------------

def test_bd_rate_self_is_zero_and_halved_rates_minus_50():
    from wsicodec.bench.rd import bd_rate

    r = [0.15, 0.3, 0.62, 1.1, 2.0, 3.3]
    q = [27.0, 30.1, 33.5, 36.0, 39.2, 42.0]
    assert bd_rate(r, q, r, q) == pytest.approx(0.0, abs=1e-9)
    assert bd_rate(r, q, [x / 2 for x in r], q) == pytest.approx(-50.0, abs=1e-6)
    assert bd_rate(r, q, [x * 2 for x in r], q) == pytest.approx(100.0, abs=1e-6)
    # lower-is-better metric (LPIPS-like): same answer, direction does not matter
    lp = [0.3, 0.2, 0.12, 0.08, 0.05, 0.03]
    assert bd_rate(r, lp, [x / 2 for x in r], lp) == pytest.approx(-50.0, abs=1e-6)
    # few points or no overlap: NaN
    assert np.isnan(bd_rate(r, q, [1.0], [30.0]))
    assert np.isnan(bd_rate(r, q, [1, 2], [50, 60]))


def test_bd_rate_within_a_quality_range_and_over_the_anchor_upper_half():
    from wsicodec.bench.rd import average_curves, bd_rate
    from wsicodec.bench.runner import bd_table, upper_range

    r = [0.15, 0.3, 0.62, 1.1, 2.0, 3.3]
    q = [27.0, 30.1, 33.5, 36.0, 39.2, 42.0]
    # log-rate 0.1 per dB above the anchor's from 36 dB: the BD-rate over a range is exp(0.1 x
    # (its middle - 36)) - 1 exactly (the difference of the two cubic fits is that line)
    test = [x * np.exp(0.1 * (y - 36.0)) for x, y in zip(r, q, strict=True)]
    assert bd_rate(r, q, test, q) == pytest.approx(100 * (np.exp(0.1 * (34.5 - 36)) - 1), abs=1e-6)
    assert bd_rate(r, q, test, q, within=(36.0, 42.0)) == pytest.approx(100 * (np.exp(0.3) - 1), abs=1e-6)
    assert np.isnan(bd_rate(r, q, test, q, within=(50.0, 60.0)))
    settings = ["10", "30", "50", "70", "90", "95"]
    rows = [{"image": "a", "codec": "jxl", "setting": s, "bpp": x, "psnr": y, "pixels": 1}
            for s, x, y in zip(settings, r, q, strict=True)]
    rows += [{"image": "a", "codec": "wsicodec", "setting": f"m{i}", "bpp": x / 2, "psnr": y, "pixels": 1}
             for i, (x, y) in enumerate(zip(r, q, strict=True))]
    summary = average_curves(rows, ["psnr"])
    assert upper_range(summary, "jxl", "psnr") == (36.0, 42.0)  # the anchor's settings 70-95
    assert upper_range(summary, "wsicodec", "psnr") is None     # no quality scale
    assert bd_table(summary, ["psnr"], upper=True)["psnr"]["wsicodec"]["jxl"] == pytest.approx(-50.0, abs=1e-6)


def test_rate_at_quality_and_monotone():
    from wsicodec.bench.rd import is_monotone, rate_at_quality

    r, q = [0.5, 1.0, 2.0], [30.0, 34.0, 40.0]
    assert rate_at_quality(r, q, 34.0) == 1.0
    assert rate_at_quality(r, q, 37.0) == pytest.approx(2 ** 0.5)
    assert np.isnan(rate_at_quality(r, q, 41.0))
    assert rate_at_quality(r, q, 20.0) == 0.5
    assert is_monotone(r, q) and not is_monotone(r, [30, 29, 40])
    assert is_monotone(r, [0.3, 0.2, 0.1], higher_is_better=False)
    assert not is_monotone([1, 0.5, 2], q)


# -- codecs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("sweep_image", ["example", *shared_cases("data/histology/val", "crchisto-img22.webp")],
                         indirect=True)
@pytest.mark.parametrize("name", ["jpeg", "webp", "jxl", "avif", "j2k"])
def test_classical_sweep_is_monotone(name, sweep_image):
    from wsicodec.bench.codecs import make_codec
    from wsicodec.bench.metrics import ms_ssim, psnr
    from wsicodec.bench.rd import is_monotone
    from wsicodec.bench.runner import MONOTONE_TOL

    codec = make_codec(name)
    assert len(codec.settings) >= 5
    runs = [codec.run(sweep_image, s) for s in codec.settings]
    sizes = [r.bytes for r in runs]
    assert all(np.diff(sizes) > 0), sizes
    p = [psnr(sweep_image, r.decoded) for r in runs]
    s = [ms_ssim(sweep_image, r.decoded) for r in runs]
    assert is_monotone(sizes, p, tol=MONOTONE_TOL["psnr"]), p
    assert is_monotone(sizes, s, tol=MONOTONE_TOL["ms_ssim"]), s
    assert 28 < max(p) and min(p) < max(p) - 5  # a sweep from visible loss to good quality


def test_wsicodec_codec_counts_latent_chunks_only(he_crop, bench_models):
    from wsicodec.bench.codecs import WsicodecCodec, wsicodec_bytes

    c = WsicodecCodec(model_dir=bench_models)
    assert c.settings == ["tiny-lo", "tiny-hi"]  # ordered by lambda; the superseded tiny-old left out
    assert WsicodecCodec(["tiny-old"], model_dir=bench_models).settings == ["tiny-old"]  # named: measured
    try:
        r = c.run(he_crop[:150, :170], "tiny-lo")
        store = Path(c._tmp.name) / "bench.zarr"
        chunk_files = [f for f in (store / "latents" / "c").rglob("*") if f.is_file()]
        assert len(chunk_files) == 1
        assert r.bytes == wsicodec_bytes(store) == chunk_files[0].stat().st_size > 24
        assert r.decoded.shape == (150, 170, 3) and r.decoded.dtype == np.uint8
    finally:
        c.close()


# -- end to end ---------------------------------------------------------------------------------

def _tiny_inputs(tmp_path: Path, tissue: np.ndarray) -> list[Path]:
    from PIL import Image

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(tissue[:128, :160]).save(a)
    Image.fromarray(tissue[600:744, 500:628]).save(b)
    return [a, b, EXAMPLE_SLIDE]


def test_bench_end_to_end_writes_every_output(tmp_path, bench_models, example_tissue):
    from wsicodec.bench.runner import CSV_COLUMNS, run_benchmark

    inputs = _tiny_inputs(tmp_path, example_tissue)
    out = tmp_path / "out"
    settings = {"jpeg": [30, 80, 95], "webp": [30, 90], "jxl": [30, 90], "avif": [30, 90], "j2k": [30, 42]}
    r = run_benchmark(inputs, out, tiles=1, tile_size=128, seed=3, settings=settings,
                      model_dir=bench_models, progress=False)
    names = list(dict.fromkeys(row["image"] for row in r.rows))
    assert len(names) == 3 and names[:2] == ["a", "b"] and names[2].startswith("CMU-1-Small-Region@")
    for f in ["results.csv", "summary.json", "report.md", "rd_psnr.png", "rd_ms_ssim.png", "rd_st_lpips.png"]:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_COLUMNS
    per_image = sum(len(v) for v in settings.values()) + 2  # + two wsicodec models
    assert len(rows) == 3 * per_image
    for row in rows:
        assert int(row["bytes"]) > 0
        assert float(row["bpp"]) == pytest.approx(8 * int(row["bytes"]) / int(row["pixels"]), rel=1e-4)
        assert 0 < float(row["ms_ssim"]) <= 1 and float(row["psnr"]) > 0 and float(row["st_lpips"]) >= 0
        assert float(row["encode_mpix_s"]) > 0 and float(row["decode_mpix_s"]) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["curves"]) == {"jpeg", "webp", "jxl", "avif", "j2k", "wsicodec"}
    assert summary["bd_rate"]["psnr"]["jpeg"]["jpeg"] == pytest.approx(0.0, abs=1e-9)
    assert summary["meta"]["tile_size"] == 128
    report = (out / "report.md").read_text()
    assert "BD-rate" in report and "MS-SSIM ≥ 0.99" in report and "PSNR (dB) ≥ 38" in report
    assert "latents/c/" in report
    lp = summary["meta"]["unavailable_metrics"].get("lpips")
    if lp:  # no cached AlexNet weights: column empty, said once, no plot
        assert all(row["lpips"] == "" for row in rows) and not (out / "rd_lpips.png").exists()
        assert sum("lpips unavailable" in n for n in summary["notes"]) == 1


def _write_results(path: Path, rows: list[dict]) -> Path:
    from wsicodec.bench.runner import CSV_COLUMNS

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_COLUMNS})
    return path


def _rows(codec: str, points: list[tuple[str, float, float]]) -> list[dict]:
    """Rows of two images for each (setting, bpp, psnr) point: the second image 10 % more bits, 1 dB less."""
    return [{"image": im, "codec": codec, "setting": s, "bytes": int(bpp * 1000 * k / 8), "pixels": 1000,
             "bpp": bpp * k, "psnr": q - d, "st_lpips": 0.5 / q, "encode_mpix_s": 1.0, "decode_mpix_s": 1.0}
            for s, bpp, q in points for im, k, d in (("a", 1.0, 0.0), ("b", 1.1, 1.0))]


def test_plots_are_redrawn_from_a_results_file(tmp_path):
    from PIL import Image

    from wsicodec.bench.runner import plot_results
    from wsicodec.errors import BenchError

    jpeg = _rows("jpeg", [("30", 0.6, 28.0), ("80", 1.5, 32.0), ("95", 3.0, 36.0)])
    # the models in another order than their rates, as a merged results file may hold them
    models = _rows("wsicodec", [("m-q2-v1", 0.4, 29.0), ("m-q1-v1", 0.2, 26.0)])
    results = _write_results(tmp_path / "results.csv", jpeg + models)
    files = plot_results(results, tmp_path / "plots")
    assert [f.name for f in files] == ["rd_psnr.png", "rd_st_lpips.png"]  # the metrics with values
    two_panels = Image.open(files[0]).size
    # every point under 1 bpp: one panel shows it all
    low = _write_results(tmp_path / "low.csv", models + _rows("jpeg", [("30", 0.6, 28.0), ("50", 0.9, 30.0)]))
    (one_panel,) = plot_results(low, metrics="psnr")
    assert one_panel == tmp_path / "rd_psnr.png"
    assert Image.open(one_panel).size[0] < 0.6 * two_panels[0]
    with pytest.raises(BenchError, match="not a results.csv"):
        plot_results(_write_results(tmp_path / "empty.csv", []))


def test_low_rate_panel_limits_and_model_tags():
    from wsicodec.bench.plots import _low_rate_limits, model_tag
    from wsicodec.bench.rd import average_curves

    rows = _rows("jpeg", [("30", 0.6, 28.0), ("80", 1.5, 32.0)]) + _rows("wsicodec", [("m-q1-v1", 0.2, 26.0)])
    summary = average_curves(rows, ["psnr"])
    (x0, x1), (y0, y1) = _low_rate_limits(summary, "psnr", 1.0)
    assert x0 < 0.21 < 0.63 < x1 < 1.1 and y0 < 25.5 < 27.5 < y1 < 29  # the two low points, not 1.5 bpp
    assert _low_rate_limits(summary, "psnr", 5.0) is None  # nothing left out: no second panel
    assert [model_tag(s) for s in ("hne-hp64-q3-v2", "hne-f64-q10-v1", "tiny", "80", "hne-vbr128-v1@3", "m@4.5")] == \
        ["q3", "q10", "tiny", "80", "@3", "@4.5"]


def test_higher_effort_curves_pair_with_their_standard_curve():
    from wsicodec.bench.plots import _style

    for base in ("wsicodec-hyperprior", "wsicodec-hyperprior-ms-ssim", "wsicodec-hne-vbr128-v2",
                 "wsicodec-hne-vbrms128-v1-ms-ssim"):
        colour, _, line = _style(base)
        assert _style(base + "-high") == (colour, "x", "--") and line == "-"
        assert _style(base + "-max") == (colour, "+", ":")
    assert _style("wsicodec-hyperprior-high")[0] != _style("wsicodec-hyperprior-ms-ssim-high")[0]
    # a variable-rate model trained for MS-SSIM stands apart from the MSE-trained one
    assert _style("wsicodec-hne-vbrms128-v1-ms-ssim")[:2] != _style("wsicodec-hne-vbr128-v4")[:2]


def test_bench_rejects_unknown_codec_and_missing_input(tmp_path):
    from wsicodec.bench.runner import run_benchmark
    from wsicodec.errors import WsicodecError

    with pytest.raises(WsicodecError, match="unknown codec 'gif'"):
        run_benchmark([EXAMPLE_SLIDE], tmp_path / "o", codecs="jpeg,gif", progress=False)
    with pytest.raises(WsicodecError, match="nope.png"):
        run_benchmark([tmp_path / "nope.png"], tmp_path / "o", codecs="jpeg", progress=False)


def test_lab_shift_round_trip_and_size():
    from wsicodec.bench.distortions import lab_shift, lab_to_rgb, rgb_to_lab

    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)
    assert np.array_equal(lab_to_rgb(rgb_to_lab(a)), a)
    grey = np.full((4, 4, 3), 128, np.uint8)
    d = rgb_to_lab(lab_shift(grey, 20)) - rgb_to_lab(grey)
    assert np.linalg.norm(d[0, 0]) == pytest.approx(20, abs=1.0) and d[0, 0, 1] > 0 and d[0, 0, 2] > 0


# -- CLI ----------------------------------------------------------------------------------------

def test_cli_bench_adds_chosen_models_to_reused_classical_rows(tmp_path, bench_models, he_crop):
    from click.testing import CliRunner
    from PIL import Image

    from wsicodec.cli import main

    img = tmp_path / "crop.png"
    Image.fromarray(he_crop[:96, :112]).save(img)
    runner = CliRunner()

    def bench(out: str, *args: str) -> list[dict]:
        res = runner.invoke(main, ["bench", str(img), "--out", str(tmp_path / out), "--metrics", "psnr", "-q", *args])
        assert res.exit_code == 0, res.output
        with open(tmp_path / out / "results.csv") as f:
            return list(csv.DictReader(f))

    def add_model(out: str, model: str, reuse: str) -> list[dict]:
        return bench(out, "--codecs", "wsicodec", "--models", model, "--models-dir", str(bench_models),
                     "--reuse", str(tmp_path / reuse / "results.csv"))

    jpeg_rows = bench("first", "--codecs", "jpeg")
    rows = add_model("second", "tiny-hi", "first")
    assert [r for r in rows if r["codec"] == "jpeg"] == jpeg_rows   # kept as measured
    assert [r["setting"] for r in rows if r["codec"] == "wsicodec"] == ["tiny-hi"]
    summary = json.loads((tmp_path / "second" / "summary.json").read_text())
    assert "jpeg" in summary["bd_rate"]["psnr"]["wsicodec"]
    assert any("reused from" in n for n in summary["notes"])
    rows3 = add_model("third", "tiny-lo", "second")  # the first model's row is kept as measured
    assert sorted(r["setting"] for r in rows3 if r["codec"] == "wsicodec") == ["tiny-hi", "tiny-lo"]
    assert [r for r in rows3 if r["setting"] == "tiny-hi"] == [r for r in rows if r["setting"] == "tiny-hi"]


def test_cli_bench_and_distortions(tmp_path, he_crop):
    from click.testing import CliRunner
    from PIL import Image

    from wsicodec.cli import main

    img = tmp_path / "crop.png"
    Image.fromarray(he_crop[:96, :112]).save(img)
    runner = CliRunner()
    res = runner.invoke(main, ["bench", str(img), "--out", str(tmp_path / "rd"), "--codecs", "jpeg,webp",
                               "--metrics", "psnr,ms_ssim", "-q"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rd" / "results.csv").is_file() and (tmp_path / "rd" / "rd_psnr.png").is_file()
    assert not (tmp_path / "rd" / "rd_st_lpips.png").exists()

    res = runner.invoke(main, ["bench", "distortions", str(img), "--out", str(tmp_path / "dist"),
                               "--metrics", "psnr,ms_ssim", "-q"])
    assert res.exit_code == 0, res.output
    for f in ["distortions.csv", "distortions.json", "distortions.png", "distortions_strip.png"]:
        assert (tmp_path / "dist" / f).is_file(), f
    doc = json.loads((tmp_path / "dist" / "distortions.json").read_text())
    jp = doc["curves"]["jpeg"]
    assert jp["levels"] == [90, 80, 70, 60, 50, 40, 30, 20, 10]
    assert jp["mean"]["psnr"][0] > jp["mean"]["psnr"][-1]
    sh = doc["curves"]["lab_shift"]
    assert sh["levels"][0] == 0 and sh["levels"][-1] == 50 and sh["mean"]["mse"][0] == 0
    assert sh["mean"]["ms_ssim"][0] == 1.0 and sh["mean"]["ms_ssim"][-1] < 1.0

    res = runner.invoke(main, ["bench", "plot", str(tmp_path / "rd" / "results.csv"), "--out", str(tmp_path / "re")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "re").iterdir()) == ["rd_ms_ssim.png", "rd_psnr.png"]
    res = runner.invoke(main, ["bench", "plot", str(tmp_path / "none.csv")])
    assert res.exit_code == 1 and "none.csv" in res.output and "Traceback" not in res.output

    res = runner.invoke(main, ["bench", str(tmp_path / "missing.png"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 1
    assert "missing.png" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["bench", str(img), "--out", str(tmp_path / "x"), "--codecs", "gif"])
    assert res.exit_code == 1 and "unknown codec 'gif'" in res.output


# -- Fig. 3: crops at the same rate ---------------------------------------------------------------

def test_visual_comparison_at_nearest_rate(tmp_path, bench_models):
    from openslide import OpenSlide
    from PIL import Image

    from wsicodec.bench.runner import run_benchmark

    with OpenSlide(str(EXAMPLE_SLIDE)) as slide:  # a tissue crop of the bundled slide, 300 x 280
        crop = slide.read_region((900, 1300), 0, (300, 280)).convert("RGB")
    crop.save(tmp_path / "tissue.png")
    out = tmp_path / "out"
    run_benchmark([tmp_path / "tissue.png"], out, codecs="jpeg,webp,wsicodec", metrics="psnr",
                  settings={"jpeg": [10, 50, 95], "webp": [5, 60, 95]}, model_dir=bench_models, progress=False)
    fig = out / "visual_tissue.png"
    assert fig.is_file()
    im = np.asarray(Image.open(fig).convert("RGB"))
    assert im.shape[1] > 4 * 200 and im.std() > 10  # four panels (original, jpeg, webp, wsicodec)
    assert "![visual_tissue](visual_tissue.png)" in (out / "report.md").read_text()


def test_nearest_settings_match_the_anchor_rate():
    from wsicodec.bench.visual import _Decoded, nearest_settings, rate_anchors

    px = np.zeros((2, 2, 3), np.uint8)
    results = [_Decoded("jpeg", q, bpp, 30.0, px) for q, bpp in (("10", 0.2), ("50", 0.7), ("90", 2.5))]
    results += [_Decoded("wsicodec", m, bpp, 31.0, px) for m, bpp in (("lo", 0.3), ("mid", 0.8), ("hi", 1.6))]
    results += [_Decoded("wsicodec-hyperprior", "hp", 0.6, 31.5, px)]
    anchors = rate_anchors({"jpeg": ["10", "50", "90"], "wsicodec": ["lo", "mid", "hi", "hp"]}, "mid")
    assert anchors[0] == ("wsicodec", "mid")
    anchor, chosen = nearest_settings(results, anchors)
    assert (anchor.curve, anchor.setting) == ("wsicodec", "mid")
    assert [(r.curve, r.setting) for r in chosen] == [("jpeg", "50"), ("wsicodec", "mid"),
                                                       ("wsicodec-hyperprior", "hp")]
    # without wsicodec, JPEG quality 80's rate (the reference point), else the middle setting
    jpeg_only = [r for r in results if r.curve == "jpeg"]
    anchor, chosen = nearest_settings(jpeg_only, rate_anchors({"jpeg": ["10", "50", "90"]}, None))
    assert (anchor.setting, [r.setting for r in chosen]) == ("50", ["50"])


def test_benchmarks_doc_rewrites_only_its_generated_blocks(tmp_path):
    import subprocess
    import sys

    script = BENCHMARKS / "benchmarks_doc.py"
    jxl = _rows("jxl", [("30", 0.6, 28.0), ("70", 1.5, 32.0), ("90", 2.4, 35.5), ("95", 3.5, 38.0)])
    models = _rows("wsicodec-hyperprior", [("m-q2-v1", 0.8, 31.0), ("m-q1-v1", 0.3, 27.0), ("m-q3-v1", 1.6, 34.0)])
    (tmp_path / "bench").mkdir()
    results = _write_results(tmp_path / "bench" / "results.csv", jxl + models)
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Title\n\nhand text\n<!-- begin generated: headline -->\nold\n<!-- end generated: headline -->\n"
                   "middle\n<!-- begin generated: results -->\nold\n<!-- end generated: results -->\ntail\n")
    subprocess.run([sys.executable, str(script), str(results), str(doc), "--metrics", "psnr"], check=True,
                   capture_output=True)
    text = doc.read_text()
    assert "old" not in text and text.startswith("# Title\n\nhand text\n") and text.endswith("tail\n")
    assert "**hyperprior zoo** (0.32–1.68 bpp, top point `m-q3-v1`: 33.50 dB)" in text
    assert "JPEG-XL −" in text and "upper half: JPEG-XL" in text
    assert text.index("| `m-q1-v1`") < text.index("| `m-q2-v1`") < text.index("| `m-q3-v1`")  # by rate
    assert "![PSNR (dB)](bench/rd_psnr.png)" in text and (tmp_path / "bench" / "rd_psnr.png").is_file()


def test_benchmarks_doc_names_each_curve_after_its_models(monkeypatch):
    import importlib
    import sys

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    family = importlib.import_module("benchmarks_doc").family
    sys.modules.pop("benchmarks_doc", None)
    assert family("wsicodec-hyperprior") == "hyperprior zoo"
    assert family("wsicodec-hyperprior-ms-ssim-high") == "hyperprior models trained for MS-SSIM, encoder effort high"
    assert family("wsicodec-hne-vbr128-v4") == "variable-rate model `hne-vbr128-v4`"
    assert family("wsicodec-hne-vbrms128-v1-ms-ssim-max") == (
        "variable-rate model `hne-vbrms128-v1` trained for MS-SSIM, encoder effort max")
