"""Carrying training to another machine: JPEG XL training images, training packs (bounded size,
exact crops, validation figures as on the originals), and a run handed back as bounded parts and
merged home (sha256 checked, exact continuation)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wsicodec.train import TrainConfig, Trainer

EXAMPLE = Path(__file__).resolve().parents[1] / "wsicodec" / "examples" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """H&E images cut from the bundled example slide: PNGs and a lossless JPEG XL (train), and a
    validation folder."""
    import imagecodecs
    from PIL import Image

    from wsicodec.slide import open_input

    root = tmp_path_factory.mktemp("src")
    (root / "train").mkdir()
    (root / "val").mkdir()
    with open_input(EXAMPLE) as src:
        boxes = [(900, 1400, 300, 260), (1100, 900, 200, 200), (1250, 2350, 260, 330), (1000, 2000, 150, 150),
                 (100, 100, 200, 200)]  # the last: glass only
        for i, (x, y, w, h) in enumerate(boxes):
            Image.fromarray(src.read_rgb(x, y, w, h)).save(root / "train" / f"t{i}.png")
        jxl = src.read_rgb(950, 2600, 220, 200)
        (root / "train" / "x.jxl").write_bytes(imagecodecs.jpegxl_encode(jxl, lossless=True))
        Image.fromarray(src.read_rgb(1000, 1100, 300, 250)).save(root / "val" / "v0.png")
        Image.fromarray(src.read_rgb(1400, 2200, 100, 120)).save(root / "val" / "v1.png")
    return root, jxl


def test_jxl_and_plain_images_are_read_without_openslide(sources, monkeypatch):
    from PIL import Image

    from wsicodec.train.data import find_inputs, load_rgb

    root, jxl = sources
    monkeypatch.setitem(sys.modules, "openslide", None)  # import openslide fails from here on
    files = find_inputs([root / "train"])
    assert [f.name for f in files] == ["t0.png", "t1.png", "t2.png", "t3.png", "t4.png", "x.jxl"]
    [got] = load_rgb(root / "train" / "x.jxl")
    assert got.dtype == np.uint8 and np.array_equal(got, jxl)  # lossless: the same pixels
    [png] = load_rgb(root / "train" / "t1.png")
    assert np.array_equal(png, np.asarray(Image.open(root / "train" / "t1.png").convert("RGB")))
    bad = root / "bad.jxl"
    bad.write_bytes(b"not a jxl")
    with pytest.raises(ValueError, match="bad.jxl"):
        load_rgb(bad)


def _build(root, out, **kw):
    from wsicodec.train.pack import build_pack

    kw = {"crop": 96, "val_crop": 96, "max_mib": 5.0, "crops_per_sheet": 4, "log": lambda s: None, **kw}
    return build_pack(out, [root / "train"], [root / "val"], **kw)


def test_pack_holds_exact_crops_within_its_budget(sources, tmp_path):
    from wsicodec.train.data import find_inputs, load_images, load_rgb
    from wsicodec.train.pack import is_pack, load_pack_crops

    root, _ = sources
    report = _build(root, tmp_path / "pack")
    assert is_pack(tmp_path / "pack") and not list(tmp_path.glob("*.partial"))
    manifest = json.loads((tmp_path / "pack" / "pack.json").read_text())
    originals = [load_rgb(f)[0] for f in find_inputs([root / "train"])]
    crops = load_pack_crops(tmp_path / "pack")
    origins = [o for sheet in manifest["sheets"] for o in sheet["origins"]]
    assert len(crops) == len(origins) == report.crops == manifest["crops"] > 0
    for c, (i, y, x) in zip(crops, origins, strict=True):
        assert np.array_equal(c, originals[i][y : y + 96, x : x + 96])
    # every image gives a crop before any gives a second (round robin); glass gives none
    counts = {s["name"]: s["crops"] for s in manifest["sources"]}
    assert counts.pop("t4.png") == 0 and min(counts.values()) >= 1 and len(manifest["sheets"]) >= 2
    # a pack given as training data contributes its crops, not its sheets
    assert [im.shape for im in load_images([tmp_path / "pack"])] == [(96, 96, 3)] * len(crops)

    # a budget that holds the validation crops and a few training crops: fewer crops, within it
    val_bytes = sum((tmp_path / "pack" / v["file"]).stat().st_size for v in manifest["val"]["files"])
    small = _build(root, tmp_path / "small", max_mib=(val_bytes + 40_000) / 2**20)
    assert 0 < small.crops < report.crops and small.bytes <= val_bytes + 40_000
    small_counts = [s["crops"] for s in json.loads((tmp_path / "small" / "pack.json").read_text())["sources"]]
    assert max(small_counts) <= 1  # not enough for a second crop of any image

    # a damaged sheet is refused, naming the file
    sheet = tmp_path / "small" / "crops-000.webp"
    sheet.write_bytes(sheet.read_bytes()[:-10] + b"0" * 10)
    with pytest.raises(ValueError, match="crops-000.webp"):
        load_pack_crops(tmp_path / "small")
    with pytest.raises(ValueError, match="validation crops alone"):
        _build(root, tmp_path / "tiny", max_mib=0.001)


def test_images_smaller_than_the_crop_are_mirrored_out_not_left_out(sources):
    from wsicodec.errors import TrainError
    from wsicodec.train.data import CropSampler, load_rgb, mirror_to
    from wsicodec.train.pack import _candidate_crops

    root, _ = sources
    tissue = load_rgb(root / "train" / "t0.png")[0]
    small, tiny = tissue[:60, :90], tissue[:40, :40]  # over and under half of a 96-px crop
    padded, top, left = mirror_to(small, 96)
    assert padded.shape == (96, 96, 3) and (top, left) == (18, 3)
    assert np.array_equal(padded[top : top + 60, left : left + 90], small)
    assert np.array_equal(padded[top - 1, left : left + 90], small[0])  # mirrored at the edge
    assert np.array_equal(padded[top : top + 60, left - 1], small[:, 0])
    # a pack: one crop, its origin the mirrored margin (negative); the tiny image gives none
    [(y, x, crop)] = _candidate_crops(small, 96, np.random.default_rng(0))
    assert (y, x) == (-18, -3) and np.array_equal(crop, padded)
    assert _candidate_crops(tiny, 96, np.random.default_rng(0)) == []
    # training: the small image is sampled, mirrored, and the tiny one is left out
    sampler = CropSampler([small, tiny], 96, stain_jitter=0, colour_jitter=0)
    assert [im.shape for im in sampler.images] == [(96, 96, 3)]
    # drawn as often as its own 60 x 90 pixels warrant, not the mirrored 96 x 96
    sampler = CropSampler([small, tissue], 96, stain_jitter=0, colour_jitter=0)
    area = tissue.shape[0] * tissue.shape[1]
    assert sampler.weights.tolist() == pytest.approx([5400 / (5400 + area), area / (5400 + area)])
    with pytest.raises(TrainError, match="at least 48x48"):
        CropSampler([tiny], 96)


def test_excluded_training_files_are_left_out(sources, tmp_path):
    from click.testing import CliRunner

    from wsicodec.cli import main
    from wsicodec.train.data import find_inputs, load_images

    root, _ = sources
    names = [f.name for f in find_inputs([root / "train"], exclude=["*/train/t[01].*", "*.jxl"])]
    assert names == ["t2.png", "t3.png", "t4.png"]
    assert len(load_images([root / "train"], exclude=["*/t*.png"])) == 1  # the JPEG XL alone
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "run", str(root / "train"), "--out", str(out), "--steps", "2", "-N", "8",
                                  "-M", "8", "--patch", "64", "--batch", "2", "--val-every", "1000",
                                  "--exclude", "*/t[0-2].png"])
    assert r.exit_code == 0, r.output
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["config"]["exclude"] == ["*/t[0-2].png"]  # a continuation leaves them out too


def test_pack_validation_crops_give_the_originals_figures(sources, tmp_path):
    from wsicodec.train.loop import _val_images

    root, _ = sources
    _build(root, tmp_path / "pack", val_crop=256)
    for crop in (64, 128, 256):
        a, b = _val_images([root / "val"], crop), _val_images([tmp_path / "pack" / "val"], crop)
        assert len(a) == len(b) == 2 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _cfg(data, val, out, **kw):
    kw = {"steps": 10**6, "N": 8, "M": 8, "patch": 64, "batch": 2, "lr": 3e-3, "val_every": 10**6,
          "val_crop": 64, "device": "cpu", **kw}
    return TrainConfig(data=[str(data)], val=[str(val)], out=str(out), **kw)


def _same_weights(a, b) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_round_trip_through_a_bundle_of_bounded_parts(sources, tmp_path):
    """A run trained against a wall-clock limit 'elsewhere' (a copy of the run folder), handed back as
    bounded parts, merged home and continued exactly as it would have continued there."""
    from wsicodec.train.bundle import BundleError, bundle_run, merge_bundle

    root, _ = sources
    pack = tmp_path / "pack"
    _build(root, pack)
    home = tmp_path / "runs" / "r"
    t = Trainer(_cfg(pack, pack / "val", home, val_every=4))
    t.run(max_steps=4)                                   # validated at step 4: best_model.pt
    away = tmp_path / "away" / "r"
    shutil.copytree(home, away)                          # the copy that travels
    w = Trainer.from_checkpoint(away, wall_minutes=0.1)  # 6 s there, then validate and save
    w.run()
    assert w.step > 4 and (away / "best_model.pt").exists()
    out = tmp_path / "out"
    m = bundle_run(away, out, max_files=8, max_part_mib=0.05, log=lambda s: None)
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all((out / f).stat().st_size <= 0.05 * 2**20 for f in files)
    assert m["contents"] == "checkpoint" and len(m["parts"]) >= 2

    merge_bundle(out, home, log=lambda s: None)
    for name in ("checkpoint.pt", "val_log.csv"):
        assert (home / name).read_bytes() == (away / name).read_bytes()
    best_home, best_away = (torch.load(d / "best_model.pt", weights_only=False) for d in (home, away))
    assert best_home["step"] == best_away["step"] and _same_weights(best_home["model"], best_away["model"])
    assert torch.load(home / "weights.pt", weights_only=False)["step"] == w.step  # the file to keep in git
    back = Trainer.from_checkpoint(home)
    assert back.step == w.step and _same_weights(back.model.state_dict(), w.model.state_dict())
    rng = torch.get_rng_state()
    ra = w.train_step()
    torch.set_rng_state(rng)
    assert back.train_step() == ra

    # damaged or missing parts are refused before anything in the run folder changes
    before = (home / "checkpoint.pt").read_bytes()
    part = out / m["parts"][1]["file"]
    data = part.read_bytes()
    part.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(BundleError, match=part.name):
        merge_bundle(out, home, log=lambda s: None)
    part.unlink()
    with pytest.raises(BundleError, match="missing"):
        merge_bundle(out, home, log=lambda s: None)
    assert (home / "checkpoint.pt").read_bytes() == before


def test_bundle_drops_optimiser_state_when_the_checkpoint_does_not_fit(sources, tmp_path):
    from wsicodec.train.bundle import BundleError, bundle_run, merge_bundle

    root, _ = sources
    pack = tmp_path / "pack"
    _build(root, pack)
    run = tmp_path / "run"
    t = Trainer(_cfg(pack, pack / "val", run, val_every=2))
    t.run(max_steps=3)
    ckpt, best = (run / "checkpoint.pt").stat().st_size, (run / "best_model.pt").stat().st_size
    # room for the weights twice (last and best) but not for the checkpoint and the best
    cap = (ckpt + best) * 0.9 / 2**20
    m = bundle_run(run, tmp_path / "out", max_files=3, max_part_mib=cap / 2, log=lambda s: None)
    assert m["contents"] == "weights"
    assert {x["name"] for x in m["members"]} == {"weights.pt", "best_model.pt", "val_log.csv"}
    # the same bound on all the files together (a machine that takes back less), parts of any size
    total = bundle_run(run, tmp_path / "out2", max_files=8, max_part_mib=1000, max_total_mib=cap + 1,
                       log=lambda s: None)
    assert total["contents"] == "weights" and len(total["parts"]) == 1
    home = tmp_path / "home"
    shutil.copytree(run, home)  # home still holds an older checkpoint.pt ...
    merge_bundle(tmp_path / "out", home, log=lambda s: None)
    assert not (home / "checkpoint.pt").exists()  # ... which would be resumed instead of the new weights
    back = Trainer.from_checkpoint(home)
    assert back.step == 3 and _same_weights(back.model.state_dict(), t.model.state_dict())
    with pytest.raises(BundleError, match="exceed"):
        bundle_run(run, tmp_path / "none", max_files=2, max_part_mib=0.001, log=lambda s: None)

    # fp16 travel weights: about half the bytes, loaded into the fp32 model within fp16 rounding
    half = tmp_path / "half"
    merge_bundle(tmp_path / "out", half, log=lambda s: None, half_weights=True)
    assert (half / "weights.pt").stat().st_size < 0.7 * (home / "weights.pt").stat().st_size
    h = Trainer.from_checkpoint(half)
    assert h.step == 3
    for k, v in t.model.state_dict().items():
        w = h.model.state_dict()[k]
        assert w.dtype == v.dtype
        if v.is_floating_point():
            assert torch.allclose(w, v, rtol=1e-3, atol=1e-6), k
    # the architecture's constants travel in fp32: in fp16 the likelihood bound (1e-9) and GDN's
    # pedestals (~1e-11) are zero
    st = torch.load(half / "weights.pt", map_location="cpu", weights_only=False)
    constants = [k for k in st["model"] if k.endswith((".bound", ".pedestal"))]
    assert "gaussian_conditional.likelihood_lower_bound.bound" in constants or \
        "entropy_bottleneck.likelihood_lower_bound.bound" in constants
    assert all(st["model"][k].dtype == torch.float32 and (st["model"][k] != 0).all() for k in constants)
    # weights whose every float was stored as fp16 load with the model's own constants
    old = tmp_path / "all-fp16"
    old.mkdir()
    st["model"] = {k: v.half() if v.dtype == torch.float32 else v for k, v in st["model"].items()}
    assert all((st["model"][k] == 0).all() for k in constants if "likelihood" in k or "pedestal" in k)
    torch.save(st, old / "weights.pt")
    o = Trainer.from_checkpoint(old).model.state_dict()
    assert all(torch.equal(o[k], v) for k, v in t.model.state_dict().items() if k in constants)
