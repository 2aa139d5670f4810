"""Training a variable-rate model: a λ ladder per batch element, validation at every point, a
model card listing the points, exact resume."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from wsicodec.errors import TrainError
from wsicodec.train import TrainConfig, Trainer
from wsicodec.train.ladder import DEFAULT_LADDER, ladder_of

LADDER = [0.002, 0.02, 0.2]
PARAMS = {"N_s1": 8, "N_s": 8, "H": 8}


@pytest.fixture()
def data_dir(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "data"
    d.mkdir()
    for i in range(2):
        small = rng.integers(30, 230, (10, 10, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize((192, 192), Image.Resampling.BICUBIC))
        Image.fromarray(img).save(d / f"{i}.png")
    return d


def _cfg(data_dir, out, lambdas=LADDER, **kw):
    kw = {"patch": 64, **kw}
    return TrainConfig(data=[str(data_dir)], out=str(out), architecture="mbt2018-mean-gain", N=8, M=16,
                       lambdas=lambdas, params=PARAMS, batch=4, lr=3e-3, steps=100, val_every=1000,
                       val=[str(data_dir)], val_crop=192, **kw)


def test_ladders_belong_to_variable_rate_architectures():
    assert ladder_of("mbt2018-mean-gain", []) == list(DEFAULT_LADDER)
    assert ladder_of("mbt2018-mean", []) is None
    with pytest.raises(ValueError, match="one λ"):
        ladder_of("mbt2018-mean", [0.01, 0.1])
    with pytest.raises(ValueError, match="increasing"):
        ladder_of("mbt2018-mean-gain", [0.1, 0.01])


def test_a_feature_network_is_refused(data_dir, tmp_path):
    with pytest.raises(ValueError, match="no --feature-net"):
        Trainer(_cfg(data_dir, tmp_path / "run", feature_net="stlpips"))


def test_gains_start_at_the_ladders_rates(data_dir, tmp_path):
    t = Trainer(_cfg(data_dir, tmp_path / "run"))
    g = torch.exp(t.model.log_gain[:, 0]).detach()
    assert torch.allclose(g[1:] / g[:-1], torch.full((2,), 10 ** 0.5), rtol=1e-5)  # λ ×10 → gain ×√10
    assert torch.allclose(t.model.log_inverse_gain, -t.model.log_gain)


def test_steps_validation_export_and_resume(data_dir, tmp_path):
    from wsicodec.models import load_model

    torch.manual_seed(0)
    a = Trainer(_cfg(data_dir, tmp_path / "a"))
    terms = [a.train_step() for _ in range(3)]
    assert all(np.isfinite(t["loss"]) and t["bpp"] > 0 for t in terms)
    a.validate_and_schedule()
    with open(tmp_path / "a" / "val_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["point"]) for r in rows] == [0, 1, 2] and [float(r["lambda"]) for r in rows] == LADDER
    bpp = [float(r["bpp"]) for r in rows]
    assert bpp[0] < bpp[1] < bpp[2]  # the gains' starting rates already order the points
    assert all(float(r["psnr_unquantized"]) > 0 for r in rows)
    a.save()

    b = Trainer.from_checkpoint(tmp_path / "a")
    rng = torch.get_rng_state()  # the points each element trains come from this generator
    ra = a.train_step()
    torch.set_rng_state(rng)
    assert b.train_step() == ra

    card = a.export("mini-vbr", tmp_path / "models", use_best=False)
    assert card.params == {"N": 8, "M": 16, **PARAMS, "K": 3} and card.default_point == 1
    assert [p["lambda"] for p in card.operating_points] == LADDER
    assert all("psnr" in p["validation"] for p in card.operating_points)
    model, loaded = load_model("mini-vbr", tmp_path / "models")
    assert loaded.operating_points == card.operating_points and model.log_gain.shape == (3, 16)



def test_gains_carry_to_another_ladder():
    from wsicodec.models.gained import log_gains_for_ladder

    logs = torch.tensor([[0.0, 1.0], [2.0, 5.0]])  # points at λ 1 and λ 100, two channels
    carried = log_gains_for_ladder(logs, [1.0, 100.0], [0.01, 1.0, 10.0, 100.0, 1e4])
    assert torch.allclose(carried[1], logs[0]) and torch.allclose(carried[3], logs[1])
    assert torch.allclose(carried[2], (logs[0] + logs[1]) / 2)  # halfway in log λ
    shift = 0.5 * math.log(100.0)  # beyond the ends: the high-rate slope, not the learned one
    assert torch.allclose(carried[0], logs[0] - shift) and torch.allclose(carried[4], logs[1] + shift)
    with pytest.raises(ValueError, match="increasing"):
        log_gains_for_ladder(logs, [100.0, 1.0], [1.0])


def test_fine_tune_at_another_ladder_keeps_the_transforms(data_dir, tmp_path):
    torch.manual_seed(0)
    a = Trainer(_cfg(data_dir, tmp_path / "a"))
    a.train_step()
    a.save()
    b = Trainer(_cfg(data_dir, tmp_path / "b", lambdas=[0.02, 2.0]))
    b.init_weights_from(tmp_path / "a" / "checkpoint.pt")
    assert torch.equal(b.model.g_a[0].weight, a.model.g_a[0].weight)
    assert b.model.log_gain.shape == (2, 16)
    assert torch.allclose(b.model.log_gain[0], a.model.log_gain[1])  # λ 0.02 was trained
    assert torch.allclose(b.model.log_gain[1], a.model.log_gain[2] + 0.5 * math.log(10.0))
    torch.save(a.model.state_dict(), tmp_path / "bare.pt")  # a model file: its ladder is unknown
    with pytest.raises(TrainError, match="ladder is unknown"):
        b.init_weights_from(tmp_path / "bare.pt")

def test_a_ladder_trains_for_ms_ssim(data_dir, tmp_path):
    from pytorch_msssim import ms_ssim

    from wsicodec.models import load_model
    from wsicodec.train.ladder import ladder_loss

    ladder = [20.0, 200.0]
    t = Trainer(_cfg(data_dir, tmp_path / "ms", lambdas=ladder, distortion="ms-ssim", patch=192))
    x = t.next_batch()
    torch.manual_seed(5)  # the points drawn, then the training noise
    terms = ladder_loss(t.model, x, ladder, "ms-ssim")
    torch.manual_seed(5)
    index = torch.randint(0, 2, (x.shape[0],))
    out = t.model(x, index)
    bpp = sum(torch.log(lk).reshape(x.shape[0], -1).sum(1) for lk in out["likelihoods"].values()) / (
        -math.log(2) * x.shape[2] * x.shape[3])
    feat = 1 - ms_ssim(out["x_hat"], x, data_range=1.0, size_average=False)  # each element its own
    expected = torch.mean(bpp + torch.tensor(ladder)[index] * feat)
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5) and 0 < terms["feat"] < 1
    t.validate_and_schedule()
    rows = list(csv.DictReader(open(tmp_path / "ms" / "val_log.csv")))
    for lmbda, r in zip(ladder, rows, strict=True):
        expected = lmbda * (1 - float(r["ms_ssim"])) + float(r["bpp"])
        assert float(r["objective"]) == pytest.approx(expected, abs=lmbda * 1e-5 + 1e-4)  # the log rounds to 5 places
    card = t.export("mini-vbr-ms", tmp_path / "models", use_best=False)
    assert load_model("mini-vbr-ms", tmp_path / "models")[1].distortion == card.distortion == "ms-ssim"


def test_gains_carry_across_distortions_and_ladders_of_the_same_length(data_dir, tmp_path):
    from wsicodec.train.ladder import MS_SSIM_LAMBDA_PER_MSE

    torch.manual_seed(0)
    a = Trainer(_cfg(data_dir, tmp_path / "a", lambdas=[0.02, 0.2]))
    a.train_step()
    a.save()
    same = Trainer(_cfg(data_dir, tmp_path / "same", lambdas=[0.02, 0.2]))
    same.init_weights_from(tmp_path / "a" / "checkpoint.pt")
    assert torch.equal(same.model.log_gain, a.model.log_gain)
    moved = Trainer(_cfg(data_dir, tmp_path / "moved", lambdas=[0.2, 2.0]))  # as many points, other λ
    moved.init_weights_from(tmp_path / "a" / "checkpoint.pt")
    assert torch.allclose(moved.model.log_gain[0], a.model.log_gain[1])
    # an MS-SSIM ladder: its λ put in MSE units first (λ 40 spends about the bits of MSE λ 0.02)
    ms = Trainer(_cfg(data_dir, tmp_path / "ms", lambdas=[0.02 * MS_SSIM_LAMBDA_PER_MSE, 2000.0],
                      distortion="ms-ssim", patch=192))
    ms.init_weights_from(tmp_path / "a" / "checkpoint.pt")
    assert torch.allclose(ms.model.log_gain[0], a.model.log_gain[0])
    beyond = 2000.0 / MS_SSIM_LAMBDA_PER_MSE / 0.2  # MSE λ 1 against the ladder's top, 0.2
    assert torch.allclose(ms.model.log_gain[1], a.model.log_gain[1] + 0.5 * math.log(beyond))
    assert torch.allclose(ms.model.log_inverse_gain[0], a.model.log_inverse_gain[0])


def test_single_rate_config_builds_the_same_model_as_before(data_dir, tmp_path):
    from wsicodec.models import build_model

    cfg = TrainConfig(data=[str(data_dir)], out=str(tmp_path / "s"), architecture="mbt2018-mean", N=8, M=8)
    assert cfg.ladder is None and cfg.model_params == {"N": 8, "M": 8}
    torch.manual_seed(3)
    built = cfg.build(initial=True)
    torch.manual_seed(3)
    ref = build_model("mbt2018-mean", N=8, M=8)
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), ref.state_dict().values(), strict=True))


def test_export_at_other_lambdas_and_continue_from_the_shipped_model(data_dir, tmp_path):
    """A model exported at more points than it trained (gains interpolated and extrapolated as for
    a fine-tune, weights rounded to fp16 and stored in half the bytes) codes at every point, its
    card marks the trained ones, and a run starts from the shipped file at its trained ladder
    again (the card beside the file tells its λ)."""
    from wsicodec.models import load_model
    from wsicodec.models.gained import log_gains_for_ladder
    from wsicodec.train.bundle import travels_as_half

    torch.manual_seed(0)
    t = Trainer(_cfg(data_dir, tmp_path / "run"))
    t.train_step()
    models = tmp_path / "models"
    points = [0.001, 0.002, 0.0063, 0.02, 0.2]
    card = t.export("mini-vbr-at", models, use_best=False, half=True, lambdas=points)
    assert [p["lambda"] for p in card.operating_points] == points
    assert [p["trained"] for p in card.operating_points] == [False, True, False, True, True]
    bpp = [p["validation"]["bpp"] for p in card.operating_points]  # real bits at every point
    assert bpp == sorted(bpp) and bpp[0] > 0
    state = torch.load(models / "mini-vbr-at.pt", weights_only=True)
    expected = log_gains_for_ladder(t.model.log_gain.detach(), LADDER, points)
    assert torch.allclose(state["log_gain"].float(), expected, atol=1e-3)  # fp16 rounding only
    halved = [k for k, v in t.model.state_dict().items() if travels_as_half(v)]
    assert halved and all(state[k].dtype == torch.float16 for k in halved)
    assert state["gaussian_conditional.scale_table"].dtype == torch.float32  # tables keep their types
    model, loaded = load_model("mini-vbr-at", models)
    assert model.log_gain.shape == (len(points), 16) and loaded.operating_points == card.operating_points

    again = Trainer(_cfg(data_dir, tmp_path / "again"))
    again.init_weights_from(models / "mini-vbr-at.pt")
    assert torch.equal(again.model.log_gain, state["log_gain"][[1, 3, 4]].float())
    assert again.step == 0
    with pytest.raises(TrainError, match="increasing"):
        t.export("mini-vbr-down", models, use_best=False, lambdas=[0.2, 0.02])
    single = Trainer(TrainConfig(data=[str(data_dir)], out=str(tmp_path / "s"), architecture="mbt2018-mean",
                                 N=8, M=8))
    with pytest.raises(TrainError, match="variable-rate"):
        single.export("mini-s", models, use_best=False, lambdas=[0.01, 0.1])
