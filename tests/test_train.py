"""Training: the loss falls, resume is exact, export round-trips with identical CDF tables."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsicodec.train import TrainConfig, Trainer


@pytest.fixture()
def data_dir(tmp_path, he_crop):
    d = tmp_path / "data"
    d.mkdir()
    Image.fromarray(he_crop[:200, :200]).save(d / "a.png")
    Image.fromarray(he_crop[200:400, 100:300]).save(d / "b.png")
    return d


def _cfg(data_dir, out, **kw):
    kw = {"val_every": 1000, "steps": 60, "N": 8, "M": 8, "patch": 64, "val_crop": 128, **kw}
    return TrainConfig(data=[str(data_dir)], out=str(out), batch=4, lr=3e-3, val=[str(data_dir)], **kw)


def test_few_steps_reduce_the_loss(data_dir, tmp_path):
    torch.manual_seed(0)
    t = Trainer(_cfg(data_dir, tmp_path / "run"))
    losses = [t.train_step()["loss"] for _ in range(60)]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


def test_resume_continues_with_identical_state(data_dir, tmp_path):
    a = Trainer(_cfg(data_dir, tmp_path / "a"))
    a.run(max_steps=6)
    b = Trainer.from_checkpoint(tmp_path / "a")
    assert b.step == 6
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    rng = torch.get_rng_state()  # the global generator is shared: give each the same start
    ra = a.train_step()
    torch.set_rng_state(rng)
    rb = b.train_step()
    assert ra == rb  # same batch, same noise, same weights, same optimiser state
    for va, vb in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb)


def test_export_load_round_trip_identical_cdfs(data_dir, tmp_path):
    from wsicodec.codec import EntropyTables
    from wsicodec.models import load_model

    t = Trainer(_cfg(data_dir, tmp_path / "run"))
    t.run(max_steps=3)
    card = t.export("mini", tmp_path / "models", use_best=False)
    model, loaded = load_model("mini", tmp_path / "models")
    assert loaded.sha256 == card.sha256 and loaded.steps == 3 and "bpp" in loaded.validation
    # the card names the data and validation folders, not where they lay on the exporting machine
    name = Path(data_dir).name
    assert loaded.data == name and loaded.validation["set"] == f"{name} ({len(t.val)} images)"
    t.model.update(force=True)
    assert EntropyTables.from_entropy_bottleneck(model.entropy_bottleneck) == \
        EntropyTables.from_entropy_bottleneck(t.model.entropy_bottleneck)


def test_validation_uses_real_bits(data_dir, tmp_path):
    t = Trainer(_cfg(data_dir, tmp_path / "run"))
    v = t.validate_and_schedule()
    assert v["bpp"] > 0 and 0 < v["psnr"] < 100
    (row,) = csv.DictReader(open(tmp_path / "run" / "val_log.csv"))
    # the transforms' own PSNR without quantization, logged beside the coded one
    assert float(row["psnr_unquantized"]) > 0 and abs(float(row["psnr_unquantized"]) - v["psnr"]) < 10


def test_weights_file_carries_a_run_across_machines(data_dir, tmp_path):
    a = Trainer(_cfg(data_dir, tmp_path / "a"))
    a.run(max_steps=4)
    w = a.save_weights()
    b = Trainer(_cfg(data_dir, tmp_path / "b"))
    b.init_weights_from(w)
    assert b.step == 4
    for va, vb in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb)


def test_time_budget_stops_training_and_validates_there(data_dir, tmp_path):
    t = Trainer(_cfg(data_dir, tmp_path / "run", max_minutes=0.02, val_every=10**9, steps=10**9))
    t.run()
    assert 0 < t.step and 1.2 <= t.train_seconds < 1.2 + 5  # CPU seconds: the budget, plus the last step
    rows = list(csv.DictReader(open(tmp_path / "run" / "val_log.csv")))
    assert [int(r["step"]) for r in rows] == [t.step] and float(rows[0]["train_minutes"]) >= 0.02


def test_export_from_a_moved_weights_only_run(data_dir, tmp_path):
    import shutil

    from wsicodec.models import load_model

    a = Trainer(_cfg(data_dir, tmp_path / "a"))
    a.run(max_steps=3)
    a.save_weights()
    moved = tmp_path / "carried"
    moved.mkdir()
    # the weights alone, as a run folder copied elsewhere holds them
    shutil.copy(tmp_path / "a" / "weights.pt", moved / "weights.pt")
    card = Trainer.from_checkpoint(moved).export("carried", tmp_path / "models", use_best=False, notes="n")
    _, loaded = load_model("carried", tmp_path / "models")
    assert loaded.sha256 == card.sha256 and loaded.steps == 3 and loaded.notes == "n"
    assert not (tmp_path / "a" / "models").exists() and (moved / "weights.pt").exists()


def test_psi_schedule_switches_halfway_through_a_fine_tune():
    cfg = TrainConfig(data=[], out="", feature_net="stlpips", psi=[0.5, 0.7], steps=1000)
    assert cfg.psi_at(0) == 0.5 and cfg.psi_at(499) == 0.5 and cfg.psi_at(500) == 0.7
    cfg = TrainConfig(data=[], out="", feature_net="stlpips", psi=[0.5, 0.7], steps=83_000)
    assert cfg.psi_at(81_000, start=80_000) == 0.5 and cfg.psi_at(81_600, start=80_000) == 0.7
    assert TrainConfig(data=[], out="", steps=10).psi_at(9) == 0.0  # no feature network: Baseline


def test_hyperprior_warm_starts_from_a_factorized_model_and_learns(data_dir, tmp_path):
    torch.manual_seed(0)
    fact = Trainer(_cfg(data_dir, tmp_path / "f"))
    fact.run(max_steps=2)
    fact.save_weights()
    t = Trainer(_cfg(data_dir, tmp_path / "h", architecture="mbt2018-mean"))
    taken = t.init_weights_from(tmp_path / "f" / "weights.pt")
    assert taken and all(k.startswith(("g_a.", "g_s.")) for k in taken)
    assert len(taken) == len([k for k in t.model.state_dict() if k.startswith(("g_a.", "g_s."))])
    assert torch.equal(t.model.g_s[0].weight, fact.model.g_s[0].weight) and t.step == 0
    losses = [t.train_step()["loss"] for _ in range(60)]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    v = t.validate_and_schedule()  # real bits through the hyperprior's own coder
    assert v["bpp"] > 0 and v["psnr"] > 10



def test_entropy_model_alone_learns_a_1x1_hyper_decoder_on_fixed_transforms(data_dir, tmp_path):
    torch.manual_seed(0)
    base = Trainer(_cfg(data_dir, tmp_path / "base", architecture="mbt2018-mean"))
    base.run(max_steps=20)
    base.save()
    t = Trainer(_cfg(data_dir, tmp_path / "h1", architecture="mbt2018-mean", params={"h_kernel": 1},
                     freeze_transforms=True))
    t.init_weights_from(tmp_path / "base" / "checkpoint.pt")
    three = base.model.h_s[4].weight
    assert t.model.h_s[4].weight.shape == (*three.shape[:2], 1, 1)
    assert torch.allclose(t.model.h_s[4].weight[..., 0, 0], three.sum(dim=(2, 3)))  # the taps' sum
    g_a, g_s = ([p.detach().clone() for p in m.parameters()] for m in (t.model.g_a, t.model.g_s))
    terms = [t.train_step() for _ in range(40)]
    assert all(r["mse"] == 0 and r["loss"] == r["bpp"] for r in terms)  # the rate alone
    assert np.mean([r["bpp"] for r in terms[-10:]]) < np.mean([r["bpp"] for r in terms[:10]])
    assert all(torch.equal(a, b) for a, b in zip(g_a, t.model.g_a.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(g_s, t.model.g_s.parameters(), strict=True))
    v = t.validate_and_schedule()
    assert v["bpp"] > 0 and v["psnr"] > 10
    with pytest.raises(ValueError, match="single-rate mbt2018-mean"):
        Trainer(_cfg(data_dir, tmp_path / "f", freeze_transforms=True))

def test_bf16_training_keeps_fp32_weights_and_validates_in_fp32(data_dir, tmp_path):
    from wsicodec.train.device import set_transform_precision as _set_precision
    from wsicodec.train.loop import validate

    torch.manual_seed(0)
    t = Trainer(_cfg(data_dir, tmp_path / "bf16", precision="bf16"))
    plain = Trainer(_cfg(data_dir, tmp_path / "fp32"))
    assert list(t.model.state_dict()) == list(plain.model.state_dict())  # same keys: checkpoints interchange
    seen = []
    hook = t.model.g_s[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    losses = [t.train_step()["loss"] for _ in range(40)]
    assert np.isfinite(losses).all() and np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    assert seen[0] == torch.bfloat16  # the transforms ran in bf16 ...
    assert all(p.dtype == torch.float32 for p in t.model.parameters())  # ... on fp32 weights
    seen.clear()
    got = validate(t.model, t.val)
    assert seen and set(seen) == {torch.float32}  # evaluation in fp32
    plain.model.load_state_dict(t.model.state_dict())
    ref = validate(plain.model, plain.val)
    assert (ref["bpp"], ref["psnr"]) == (got["bpp"], got["psnr"])
    hook.remove()
    with pytest.raises(ValueError, match="precision"):
        _set_precision(t.model, "fp8")


def test_export_command_writes_a_loadable_model(data_dir, tmp_path):
    from click.testing import CliRunner

    from wsicodec.cli import main
    from wsicodec.models import load_model

    a = Trainer(_cfg(data_dir, tmp_path / "a"))
    a.run(max_steps=2)
    a.save_weights()
    result = CliRunner().invoke(main, ["train", "export", str(tmp_path / "a"), "cli-mini", "--last",
                                       "--models-dir", str(tmp_path / "models"), "--notes", "from the CLI"])
    assert result.exit_code == 0, result.output
    _, card = load_model("cli-mini", tmp_path / "models")
    assert card.steps == 2 and card.notes == "from the CLI" and card.sha256 in result.output


def test_ms_ssim_distortion_trains_on_one_minus_ms_ssim_and_the_card_records_it(data_dir, tmp_path):
    from wsicodec.errors import TrainError
    from wsicodec.models import load_model
    from wsicodec.train.loop import objective

    torch.manual_seed(0)
    lmbda = 40.0
    t = Trainer(_cfg(data_dir, tmp_path / "ms", architecture="mbt2018-mean", distortion="ms-ssim",
                     lmbda=lmbda, patch=192, val_crop=192))
    terms = [t.train_step() for _ in range(30)]
    for r in terms:
        assert 0 < r["feat"] < 1 and r["loss"] == pytest.approx(lmbda * r["feat"] + r["bpp"], rel=1e-5)
    assert np.mean([r["loss"] for r in terms[-5:]]) < np.mean([r["loss"] for r in terms[:5]])
    v = t.validate_and_schedule()
    (row,) = csv.DictReader(open(tmp_path / "ms" / "val_log.csv"))
    assert float(row["objective"]) == pytest.approx(lmbda * (1 - v["ms_ssim"]) + v["bpp"], abs=1e-4)
    assert objective("mse", 0.01, {"psnr": 30.0, "bpp": 1.0}) == pytest.approx(0.01 * 255**2 / 1000 + 1.0)
    card = t.export("mini-ms", tmp_path / "models", use_best=False)
    _, loaded = load_model("mini-ms", tmp_path / "models")
    assert card.distortion == loaded.distortion == "ms-ssim" and loaded.lmbda == lmbda
    # the entropy model alone, on an MS-SSIM model's fixed transforms: the rate is the whole loss
    frozen = Trainer(_cfg(data_dir, tmp_path / "ms-frozen", architecture="mbt2018-mean", distortion="ms-ssim",
                          lmbda=lmbda, patch=192, val_crop=192, freeze_transforms=True))
    r = frozen.train_step()
    assert r["loss"] == pytest.approx(r["bpp"], rel=1e-5)
    for bad, match in (({"patch": 128}, "161 px"), ({"feature_net": "stlpips"}, "no --feature-net"),
                       ({"distortion": "ssim"}, "one of")):
        with pytest.raises(TrainError, match=match):
            Trainer(_cfg(data_dir, tmp_path / "bad", **{"distortion": "ms-ssim", "patch": 192, **bad}))
