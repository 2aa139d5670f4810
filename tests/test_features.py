"""Feature networks for the perceptual term: the Ciga-layout loader and the offline ST-LPIPS."""
from __future__ import annotations

import pytest
import torch

from wsicodec.train.features import FeatureNetError, ciga_resnet18, ciga_state_dict, feature_network


def _ciga_like_checkpoint(path):
    """A checkpoint laid out like Ciga et al.'s release: Lightning 'state_dict', keys prefixed
    'model.resnet.', a projection head and fc that the loader must drop."""
    from torchvision.models import resnet18

    torch.manual_seed(3)
    net = resnet18(weights=None)
    state = {f"model.resnet.{k}": v for k, v in net.state_dict().items()}
    state["model.resnet.fc.1.weight"] = torch.zeros(128, 512)
    torch.save({"epoch": 7, "global_step": 1, "state_dict": state}, path)
    return net


def test_ciga_loader_maps_a_synthetic_checkpoint(tmp_path):
    ref = _ciga_like_checkpoint(tmp_path / "tenpercent_resnet18.ckpt")
    net = ciga_resnet18(tmp_path / "tenpercent_resnet18.ckpt")
    for k, v in ref.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(net.state_dict()[k], v), k
    x = torch.rand(2, 3, 64, 64)
    assert net(x).shape == (2, 512)
    assert not any(p.requires_grad for p in net.parameters())
    d = feature_network(f"ciga:{tmp_path / 'tenpercent_resnet18.ckpt'}")
    assert float(d(x, x)) == 0.0 and float(d(x, x.flip(-1))) > 0


def test_ciga_loader_refuses_missing_or_wrong_files(tmp_path):
    with pytest.raises(FeatureNetError, match="download"):
        feature_network(f"ciga:{tmp_path / 'absent.ckpt'}")
    torch.save({"state_dict": {"model.other.weight": torch.zeros(1)}}, tmp_path / "x.ckpt")
    with pytest.raises(FeatureNetError, match="not a Ciga"):
        feature_network(f"ciga:{tmp_path / 'x.ckpt'}")
    assert ciga_state_dict({"state_dict": {"model.resnet.conv1.weight": torch.zeros(1)}}) == {
        "conv1.weight": torch.zeros(1)}


def test_stlpips_works_offline_and_is_differentiable():
    d = feature_network("stlpips")
    x = torch.rand(1, 3, 64, 64)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    v = d(x, y)
    v.backward()
    assert float(d(x, x).detach()) == pytest.approx(0.0, abs=1e-6) and float(v.detach()) > 0 and y.grad is not None
    with pytest.raises(FeatureNetError):
        feature_network("nope")
