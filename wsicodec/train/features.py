"""Feature networks C for the perceptual term ψ·‖C(x) − C(x̂)‖² of Fischer et al. 2023.

* ``none`` — the paper's "Baseline" (MSE only).
* ``stlpips`` — the shift-tolerant LPIPS AlexNet bundled (with its trained trunk and linear
  layers) in the ``stlpips-pytorch`` package; works offline. The term is the ST-LPIPS distance.
* ``ciga:PATH`` — the self-supervised histopathology ResNet-18 of Ciga et al. 2022, from the
  checkpoint file its authors publish (``tenpercent_resnet18.ckpt``; download it yourself). The
  term is the mean squared difference of its 512-d pooled embeddings.

Each returns ``distance(x, x_hat) -> scalar tensor`` for images in [0, 1]; the network is frozen.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from wsicodec.errors import WsicodecError

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureNetError(WsicodecError, ValueError):
    """Feature-network weights that cannot be used."""


def _frozen(net: nn.Module) -> nn.Module:
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def stlpips_distance() -> Distance:
    from wsicodec.bench.metrics import load_stlpips_network

    try:
        net = _frozen(load_stlpips_network())
    except ImportError as e:
        raise FeatureNetError(f"--feature-net stlpips needs `pip install wsicodec[metrics]` ({e})") from None

    def distance(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        return net.to(x.device)(x, x_hat, normalize=True).mean()

    return distance


def ciga_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """Map the keys of Ciga et al.'s Lightning checkpoint (``state_dict`` with ``model.resnet.``
    prefixes) to torchvision's ResNet-18 names; projection-head and fc keys are dropped."""
    state = checkpoint.get("state_dict", checkpoint)
    out = {}
    for key, value in state.items():
        k = key
        for prefix in ("model.", "resnet."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        if k.startswith("fc.") or not isinstance(value, torch.Tensor):
            continue
        out[k] = value
    return out


def ciga_resnet18(path: str | Path) -> nn.Module:
    """The Ciga et al. 2022 ResNet-18 trunk (fc removed) from its published checkpoint."""
    from torchvision.models import resnet18

    path = Path(path)
    if not path.is_file():
        raise FeatureNetError(
            f"{path}: Ciga et al. checkpoint not found; download tenpercent_resnet18.ckpt from the "
            "authors' release (github.com/ozanciga/self-supervised-histopathology) and pass ciga:PATH"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise FeatureNetError(f"{path}: cannot read the checkpoint ({e})") from None
    net = resnet18(weights=None)
    state = ciga_state_dict(ckpt)
    expected = {k for k in net.state_dict() if not k.startswith("fc.")}
    missing = expected - set(state)
    if missing:
        raise FeatureNetError(f"{path}: not a Ciga ResNet-18 checkpoint ({len(missing)} trunk weights missing, "
                              f"e.g. {sorted(missing)[0]})")
    net.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    net.fc = nn.Identity()
    return _frozen(net)


def ciga_distance(path: str | Path) -> Distance:
    net = ciga_resnet18(path)
    mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)

    def distance(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        n = net.to(x.device)
        m, s = mean.to(x.device), std.to(x.device)
        return torch.mean((n((x - m) / s) - n((x_hat - m) / s)) ** 2)

    return distance


def feature_network(spec: str) -> Distance | None:
    """``none`` | ``stlpips`` | ``ciga:PATH`` -> the perceptual distance (None for none)."""
    if spec in ("", "none"):
        return None
    if spec == "stlpips":
        return stlpips_distance()
    if spec.startswith("ciga:"):
        return ciga_distance(spec[len("ciga:"):])
    raise FeatureNetError(f"unknown feature network {spec!r} (none, stlpips or ciga:PATH)")
