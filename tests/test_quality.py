"""Choosing an operating point: the calibration rule, the shipped calibration table (and that it
holds on the bundled example slide), ``--quality``, ``--target`` and what the store records."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import EXAMPLE, one_line_error

from wsicodec.cli import main
from wsicodec.quality import QUALITIES, Figures, OperatingPoint, QualityError, choose, derive, load_calibration, reaches
from wsicodec.target import frontiers, parse_target


# -- the rule ------------------------------------------------------------------------------------
def _jpeg(q: int) -> Figures:
    """A JPEG-like sweep: bits, PSNR and MS-SSIM all grow with the quality."""
    return Figures(0.6 + 0.03 * q, 24 + 0.1 * q, 0.90 + 0.0009 * q)


def test_rule_picks_the_cheapest_point_at_least_as_good_as_jpeg():
    jpeg = {q: _jpeg(q) for q in QUALITIES}
    a, b, c = OperatingPoint("a"), OperatingPoint("b"), OperatingPoint("c")
    points = {a: Figures(0.5, 27.0, 0.93), b: Figures(1.0, 30.0, 0.95), c: Figures(1.5, 31.0, 0.99)}
    mapping, default, top, limit, matches = derive(points, jpeg)
    # a: PSNR >= JPEG up to q30, MS-SSIM up to q33: q1-30; b: PSNR up to q60, MS-SSIM up to q55
    assert [mapping[q] for q in (1, 30, 31, 55)] == [(a, True), (a, True), (b, True), (b, True)]
    assert matches == {a: 30, b: 55, c: 70}
    assert mapping[56] == (c, True) and mapping[70] == (c, True)
    assert limit == 70 and top == c and mapping[71] == (c, False) and mapping[100] == (c, False)
    # default: the fewest bits with MS-SSIM >= JPEG q80's (0.972): c
    assert default == c
    # qualities and the default choose among the points of models trained for pixel fidelity:
    # d (say, trained for MS-SSIM) would be cheaper at q31-33 and the default, but is not chosen
    d = OperatingPoint("d")
    with_d = {**points, d: Figures(0.98, 29.0, 0.98)}
    mapping, default, _, _, matches = derive(with_d, jpeg)
    assert mapping[31] == (d, True) and default == d and matches[d] == 50
    mapping, default, top, limit, matches = derive(with_d, jpeg, [a, b, c])
    assert mapping[31] == (b, True) and default == c and (top, limit) == (c, 70) and matches[d] == 50
    # the default prefers a single-rate model's point: d (say, a variable-rate point) is cheaper
    # than c but the default stays c; with no single-rate point qualifying, d
    assert derive(with_d, jpeg, None, [a, b, c])[1] == c and derive(with_d, jpeg, None, [a, b])[1] == d
    mapping, default, top, limit, _ = derive(points, jpeg, [a, b])  # none reaches q80's MS-SSIM
    assert default == top == b and limit == 55 and mapping[56] == (b, False)
    with pytest.raises(QualityError, match="pixel fidelity"):
        derive(points, jpeg, [])
    # fewer bytes than JPEG is part of the promise: JPEG takes 0.99 bpp at q13, 1.02 at q14
    points[a] = Figures(1.03, 27.0, 0.93)
    mapping = derive(points, jpeg)[0]
    # below q14 no point is cheaper than JPEG: the cheapest one at least as good, b, unmatched
    assert mapping[13] == (b, False) and mapping[14] == (b, True) and (a, True) not in mapping.values()


def test_a_quality_no_point_matches_in_fewer_bytes_takes_the_cheapest_as_good():
    """A gap inside the range (b is as good as JPEG q31-33 but bigger) takes b, not the top point;
    beyond every point's quality, the top point."""
    jpeg = {q: _jpeg(q) for q in QUALITIES}
    a, b, c = OperatingPoint("a"), OperatingPoint("b"), OperatingPoint("c")
    points = {a: Figures(0.5, 27.0, 0.93), b: Figures(1.6, 30.0, 0.95), c: Figures(3.5, 31.0, 0.99)}
    mapping, _, top, limit, _ = derive(points, jpeg)
    assert mapping[30] == (a, True) and limit == 30 and top == c
    assert [mapping[q] for q in (31, 33, 34, 55)] == [(b, False), (b, False), (b, True), (b, True)]
    assert mapping[56] == (c, False) and mapping[71] == (c, False)  # c is bigger than JPEG there


def test_rule_holds_on_every_image_not_only_on_average():
    jpeg = {q: Figures.of([(0.6 + 0.03 * q, 24 + 0.1 * q - d, 0.9 + 0.0009 * q) for d in (1, -1)]) for q in QUALITIES}
    a, b = OperatingPoint("a"), OperatingPoint("b")
    # a: 27 dB on average, JPEG q30's average; but 25.5 on the second image, where JPEG passes it at q6
    points = {a: Figures.of([(0.5, 28.5, 0.99), (0.5, 25.5, 0.99)]), b: Figures.of([(0.7, 29, 0.99), (0.7, 29, 0.99)])}
    mapping, _, _, limit, matches = derive(points, jpeg)
    assert matches == {a: 5, b: 40} and mapping[5] == (a, True) and mapping[6] == (b, True) and limit == 40


def test_rule_uses_the_running_maximum_of_jpeg_and_unrounded_figures():
    jpeg = {q: _jpeg(q) for q in QUALITIES}
    jpeg[41] = Figures(jpeg[41].bpp, jpeg[39].psnr, jpeg[41].ms_ssim)   # a dip: q41 below q40
    a, b = OperatingPoint("a"), OperatingPoint("b")
    points = {a: Figures(0.5, 24 + 0.1 * 40 - 0.01, 0.99), b: Figures(0.6, 40.0, 0.999)}
    mapping = derive(points, jpeg)[0]
    assert mapping[40] == (b, True) and mapping[41] == (b, True)  # q41 needs q40's PSNR still
    # a tie only after rounding for display is not "as good"
    assert reaches(0.98352, 0.98352, "ms_ssim") and not reaches(0.98347, 0.98352, "ms_ssim")
    assert reaches(31.650, 31.649, "psnr") and not reaches(31.646, 31.649, "psnr")
    with pytest.raises(QualityError, match="missing"):
        derive(points, {q: jpeg[q] for q in range(1, 100)})


# -- the shipped table ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def calibration():
    cal = load_calibration()  # the installed weights folder; refuses a table of other weights
    assert cal is not None, "the weights folder has no quality.json"
    return cal


def test_shipped_table_follows_the_rule(calibration):
    cal = calibration
    mapping, default, top, limit, matches = derive(cal.points, cal.jpeg, cal.fidelity, cal.single_rate)
    assert mapping == cal.mapping and (default, top, limit) == (cal.default, cal.top, cal.limit)
    assert set(cal.mapping) == set(QUALITIES) and limit is not None
    assert all(cal.mapping[q][1] for q in range(1, limit + 1))
    points = [cal.mapping[q][0] for q in QUALITIES]
    bpp = [cal.points[p].bpp for p in points[:limit]]
    assert bpp == sorted(bpp)  # a higher quality never gives fewer bits
    assert choose().point == cal.default


# Crops of the example's level 0 with tissue (x, y of the top-left corner). Each sits 4 px off
# the 8-px grid of the slide's own JPEG tiles: JPEG re-coding a JPEG-decoded image on its own
# block grid re-uses the source's quantization, a generation effect rather than the codec's
# merit (docs/quality.md measures both).
CROPS = ((996, 724), (1268, 2468), (980, 1636), (1236, 1460))
CROP = 256


def test_calibration_holds_on_the_example_slide(calibration, one_thread):
    """Every quality the table matches: wsicodec at that quality is at least as good as JPEG at
    the same quality on PSNR and MS-SSIM (means over the crops, compared at the shown decimals),
    in fewer bytes. Each crop is coded once per operating point."""
    import imagecodecs

    from wsicodec.bench.metrics import ms_ssim, psnr
    from wsicodec.slide import open_input
    from wsicodec.target import TileCoder
    from wsicodec.tiling import TileGrid

    cal = calibration
    with open_input(EXAMPLE) as src:
        crops = [src.read_rgb(x, y, CROP, CROP) for x, y in CROPS]
    grid = TileGrid(CROP, CROP, CROP, 16)  # a crop is one tile: whole-image coding, as on the calibration set
    matched = [q for q in QUALITIES if cal.mapping[q][1]]
    ours: dict[OperatingPoint, Figures] = {}
    for point in {cal.mapping[q][0] for q in matched}:
        coder = TileCoder(point, "cpu", "fp32")
        runs = []
        for crop in crops:
            nbytes, decoded, original = coder.code(lambda x, y, w, h, c=crop: c[y : y + h, x : x + w], grid, 0, 0,
                                                   (255, 255, 255))
            runs.append((8 * nbytes / CROP**2, psnr(original, decoded), ms_ssim(original, decoded)))
        ours[point] = Figures(*np.mean(runs, axis=0))
    failures = []
    for q in matched:
        runs = []
        for crop in crops:
            data = imagecodecs.jpeg8_encode(crop, level=q)
            decoded = imagecodecs.jpeg8_decode(data)
            runs.append((8 * len(data) / CROP**2, psnr(crop, decoded), ms_ssim(crop, decoded)))
        jpeg = Figures(*np.mean(runs, axis=0))
        point = cal.mapping[q][0]
        f = ours[point]
        if not (reaches(f.psnr, jpeg.psnr, "psnr") and reaches(f.ms_ssim, jpeg.ms_ssim, "ms_ssim")
                and f.bpp < jpeg.bpp):
            failures.append(f"q{q} {point}: {f.shown()} against JPEG {jpeg.shown()}")
    assert not failures, "\n".join(failures)


# -- the command line ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_input(tmp_path_factory):
    """A 512-px tissue region of the example slide as a PNG: one tile."""
    from PIL import Image

    from wsicodec.slide import open_input

    with open_input(EXAMPLE) as src:
        rgb = src.read_rgb(964, 1404, 512, 512)
    path = tmp_path_factory.mktemp("quality") / "region.png"
    Image.fromarray(rgb).save(path)
    return path


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _record(store):
    return json.loads((store / "zarr.json").read_text())["attributes"]["wsicodec"]["quality"]


def test_quality_on_the_command_line(calibration, small_input, tmp_path, one_thread):
    cal = calibration
    q = cal.limit
    store = tmp_path / "q.zarr"
    r = _cli("compress", small_input, store, "--quality", q, "--quiet")
    assert r.exit_code == 0, r.output
    point = cal.mapping[q][0]
    rec = _record(store)
    assert rec["chosen_by"] == "quality" and rec["quality"] == q and rec["matched"] is True
    assert rec["operating_point"] == point.to_dict()
    assert rec["calibration"]["jpeg"]["quality"] == q
    info = json.loads(_cli("info", store, "--json").output)
    assert info["model"] == point.model and info["operating_point"] == point.label
    assert info["quality"] == q and info["quality_matched"] is True
    assert "JPEG q" in _cli("info", store).output

    if cal.limit < 100:  # beyond the limit: one line that says so, and the top point
        store = tmp_path / "q100.zarr"
        r = _cli("compress", small_input, store, "--quality", 100, "--quiet")
        assert r.exit_code == 0, r.output
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and "no installed model matches JPEG q100" in lines[0], r.output
        assert _record(store)["matched"] is False and _record(store)["operating_point"] == cal.top.to_dict()

    store = tmp_path / "d.zarr"
    assert _cli("compress", small_input, store, "--quiet").exit_code == 0
    assert _record(store)["chosen_by"] == "default" and _record(store)["operating_point"]["model"] == cal.default.model


def test_target_on_the_command_line(calibration, small_input, tmp_path, one_thread):
    store = tmp_path / "t.zarr"
    r = _cli("compress", small_input, store, "--target", "ms_ssim=0.97", "--target-tiles", 1)
    assert r.exit_code == 0, r.output
    rec = _record(store)
    assert rec["chosen_by"] == "target" and rec["target"] == {"metric": "ms_ssim", "value": 0.97}
    assert rec["sample"]["tiles"] == [[0, 0]] and rec["sample"]["seed"] == 0 and rec["sample"]["pixels"] == 512 * 512
    assert reaches(rec["measured"]["ms_ssim"], 0.97, "ms_ssim")
    assert f"target ms_ssim=0.97: {rec['operating_point']['model']}" in r.output  # printed
    # the cheapest that reaches it: in its family the frontier point below it was measured and
    # missed, and no other family's point that reached it took fewer bits on the sample
    chosen = OperatingPoint.from_dict(rec["operating_point"])
    tried = {OperatingPoint.from_dict(t): t for t in rec["tried"]}
    family = next([p for p, _ in f] for f in frontiers("ms_ssim") if chosen in [p for p, _ in f])
    i = family.index(chosen)
    assert i == 0 or not reaches(tried[family[i - 1]]["ms_ssim"], 0.97, "ms_ssim")
    assert all(t["bpp"] >= tried[chosen]["bpp"] for t in tried.values() if reaches(t["ms_ssim"], 0.97, "ms_ssim"))
    info = _cli("info", store).output
    assert "target" in info and "ms_ssim=0.97" in info and str(rec["measured"]["ms_ssim"]) in info

    r = _cli("verify", store, "--against", small_input, "--json")
    assert r.exit_code == 0, r.output
    t = json.loads(r.output)["quality"]["target"]
    assert t["met"] is True and t["measured"] == pytest.approx(rec["measured"]["ms_ssim"], abs=2e-3)

    # a target the store misses: verify --against says so and fails
    doc = json.loads((store / "zarr.json").read_text())
    doc["attributes"]["wsicodec"]["quality"]["target"]["value"] = 0.99995
    (store / "zarr.json").write_text(json.dumps(doc))
    r = _cli("verify", store, "--against", small_input)
    assert r.exit_code == 1 and "target ms_ssim=0.99995 not met" in r.output and "NOT met" in r.output


def test_target_search_bisects_each_family_of_models_on_its_own(monkeypatch):
    """On a slide where the models trained for MS-SSIM gain on the others, one bisection over all
    points would stop in the MSE family; each family bisected on its own finds the cheaper one."""
    from wsicodec import target as target_mod

    mse = [OperatingPoint(f"m{i}") for i in range(4)]
    mss = [OperatingPoint(f"s{i}") for i in range(2)]
    on_slide = {  # bpp, MS-SSIM on the sample
        mse[0]: (0.4, 0.95), mse[1]: (0.7, 0.97), mse[2]: (1.0, 0.985), mse[3]: (1.4, 0.992),
        mss[0]: (0.5, 0.980), mss[1]: (0.8, 0.991),
    }
    families = [[(p, Figures(b, 30.0, 0.0)) for p, (b, _) in sorted(on_slide.items(), key=lambda kv: kv[1][0])
                 if p.model[0] == k] for k in "ms"]
    monkeypatch.setattr(target_mod, "frontiers", lambda metric, directory=None: families)
    monkeypatch.setattr(target_mod, "sample_tiles", lambda *a, **k: [(0, 0)])
    monkeypatch.setattr(target_mod, "TileCoder", lambda point, *a: point)
    monkeypatch.setattr(target_mod, "measure", lambda point, *a: {"bpp": on_slide[point][0], "psnr": 30.0,
                                                                   "ms_ssim": on_slide[point][1]})

    class Source:
        dimensions = (512, 512)

    choice = target_mod.choose_target(Source(), None, (255, 255, 255), parse_target("ms_ssim=0.99"), 512)
    assert choice.point == mss[1] and choice.record["measured"]["bpp"] == 0.8
    assert {OperatingPoint.from_dict(t) for t in choice.record["tried"]} >= {mse[3], mss[1]}
    with pytest.raises(QualityError, match=r"out of reach.*0\.9920 \(m3"):
        target_mod.choose_target(Source(), None, (255, 255, 255), parse_target("ms_ssim=0.995"), 512)


def test_target_and_quality_errors_are_one_line(small_input, tmp_path, one_thread):
    out = tmp_path / "o.zarr"
    r = _cli("compress", small_input, out, "--target", "psnr=99", "--target-tiles", 1)
    one_line_error(r, "target psnr=99 is out of reach", "the best the installed models reach", "dB")
    assert not out.exists()
    one_line_error(_cli("compress", small_input, out, "--target", "ssim=0.9"), "expected ms_ssim=VALUE or psnr=VALUE")
    one_line_error(_cli("compress", small_input, out, "--target", "ms_ssim=1.5"), "MS-SSIM targets lie in")
    one_line_error(_cli("compress", small_input, out, "--quality", 50, "--model", "hne-hp64-q1-v2"),
                    "one of --model, --quality and --target")
    one_line_error(_cli("compress", small_input, out, "--target-tiles", 2), "--target-tiles needs --target")
    assert _cli("compress", small_input, out, "--quality", 0).exit_code != 0  # click's range check
    assert not out.exists()
    with pytest.raises(QualityError):
        parse_target("ms_ssim=")


def test_models_lists_operating_points_with_quality(calibration):
    rows = json.loads(_cli("models", "--json").output)
    by = {r["operating_point"]: r for r in rows}
    d = calibration.default.label
    assert by[d]["default"] and by[d]["bpp"] == pytest.approx(calibration.points[calibration.default].bpp, abs=1e-6)
    assert by[calibration.top.label]["qualities"].endswith("–100 (top)") or calibration.limit == 100
    out = _cli("models").output
    assert f"{d} *" in out and "≥ JPEG" in out and "--quality" in out


def test_bench_takes_a_classical_codec_sweep():
    """`wsicodec bench --settings jpeg=1-100`: the JPEG sweep the calibration is built from."""
    import click

    from wsicodec.bench.cli import parse_sweeps

    assert parse_sweeps(("jpeg=1-3,50", "webp=80")) == {"jpeg": [1, 2, 3, 50], "webp": [80]}
    for bad in ("jpeg", "jpeg=a-b", "wsicodec=1-2"):
        with pytest.raises(click.BadParameter):
            parse_sweeps((bad,))
