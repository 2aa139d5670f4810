"""Image-quality metrics on uint8 RGB arrays: PSNR, MS-SSIM, LPIPS-AlexNet and shift-tolerant LPIPS.

* ``psnr``: 8-bit RGB PSNR over all three channels. Identical images have MSE 0; the value is then
  capped at :data:`PSNR_CAP` (100 dB) so that averages and plots stay finite.
* ``ms_ssim``: ``pytorch_msssim.ms_ssim`` (5 scales, data range 255). It needs a smaller side
  above 160 px with its 11-px window; for smaller images the window shrinks to the largest odd
  size that fits (``ms_ssim_window``), and images under 33 px get NaN.
* ``lpips``: LPIPS v0.1 with the AlexNet trunk from the ``lpips`` package. The trunk is
  torchvision's ImageNet AlexNet, which torchvision downloads once into the torch hub cache; this
  module never downloads: it uses the weights only if that file is already in the cache, and
  otherwise the metric is unavailable (its column is left empty) with a one-line reason.
* ``st_lpips``: shift-tolerant LPIPS (AlexNet variant) from ``stlpips-pytorch``, whose trunk and
  linear weights are bundled with the package (``weights/vST0.0/alex_shift_tolerant.pth``), so it
  works offline.
* ``st_lpips_vgg``: the same with the VGG-16 trunk (``vgg_shift_tolerant.pth``, also bundled).
  Not in the default set (about 10x the AlexNet's cost); it is the LPIPS-type metric that stays
  independent of a model trained with the AlexNet ST-LPIPS as its feature network.

Lower is better for the LPIPS metrics; higher is better for PSNR and MS-SSIM.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsicodec.errors import BenchError, first_line

PSNR_CAP = 100.0
#: metric name -> True when higher is better
HIGHER_IS_BETTER = {"psnr": True, "ms_ssim": True, "lpips": False, "st_lpips": False, "st_lpips_vgg": False,
                    "mse": False}
ALL_METRICS = ("psnr", "ms_ssim", "lpips", "st_lpips", "st_lpips_vgg")
DEFAULT_METRICS = ("psnr", "ms_ssim", "lpips", "st_lpips")
LABELS = {"psnr": "PSNR (dB)", "ms_ssim": "MS-SSIM", "lpips": "LPIPS-AlexNet", "st_lpips": "ST-LPIPS (AlexNet)",
          "st_lpips_vgg": "ST-LPIPS (VGG-16)", "mse": "MSE"}
#: torchvision's AlexNet ImageNet weights, the trunk of LPIPS-AlexNet
ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected HxWx3 RGB images, got shape {a.shape}")


def mse(a: np.ndarray, b: np.ndarray) -> float:
    _check_pair(a, b)
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(np.mean(d * d))


def psnr(a: np.ndarray, b: np.ndarray, cap: float = PSNR_CAP) -> float:
    """PSNR in dB of 8-bit RGB images, capped at ``cap`` (identical images give ``cap``)."""
    m = mse(a, b)
    if m == 0:
        return float(cap)
    return float(min(cap, 10 * math.log10(255.0 ** 2 / m)))


def ms_ssim_window(h: int, w: int) -> int | None:
    """Largest odd Gaussian window (at most 11) that pytorch-msssim accepts for this size."""
    side = min(h, w)
    win = 11
    while win >= 3 and not side > (win - 1) * 16:
        win -= 2
    return win if win >= 3 else None


def _to_tensor(a: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float()


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM of 8-bit RGB images (1.0 for identical images; NaN below 33 px)."""
    _check_pair(a, b)
    win = ms_ssim_window(*a.shape[:2])
    if win is None:
        return float("nan")
    if np.array_equal(a, b):
        return 1.0
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    with torch.no_grad():
        return float(_ms_ssim(_to_tensor(a), _to_tensor(b), data_range=255, win_size=win))


class _Perceptual:
    """A lazily loaded LPIPS-type network; ``available`` is False (with ``reason``) if it cannot be."""

    name = ""

    def __init__(self) -> None:
        self._net = None
        self.reason: str | None = None
        self._tried = False

    def _load(self):  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def available(self) -> bool:
        if not self._tried:
            self._tried = True
            try:
                self._net = self._load()
            except Exception as e:  # missing package, missing weights, no network
                self._net = None
                detail = first_line(e) if str(e).strip() else ''
                self.reason = self.reason or f"{type(e).__name__}: {detail}"
        return self._net is not None

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        _check_pair(a, b)
        if not self.available:
            return float("nan")
        import torch

        x = _to_tensor(a) / 127.5 - 1
        y = _to_tensor(b) / 127.5 - 1
        with torch.no_grad():
            return float(self._net(x, y).mean())


def hub_checkpoint(filename: str) -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / filename


class LPIPS(_Perceptual):
    """LPIPS v0.1, AlexNet trunk (``lpips`` package); never downloads anything."""

    name = "lpips"

    def _load(self):
        weights = hub_checkpoint(ALEXNET_WEIGHTS)
        if not weights.is_file():
            self.reason = (f"LPIPS-AlexNet needs torchvision's AlexNet weights {weights}, which are not "
                           "cached here (no download is attempted); the lpips column is left empty")
            raise FileNotFoundError(self.reason)
        import warnings

        import lpips
        import torch

        with warnings.catch_warnings():  # torchvision's deprecation notice for ``pretrained=``
            warnings.simplefilter("ignore", UserWarning)
            net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
        # pnet_rand=True builds the trunk without torchvision fetching it; load the cached weights.
        state = torch.load(weights, map_location="cpu", weights_only=True)
        feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        slices = [net.net.slice1, net.net.slice2, net.net.slice3, net.net.slice4, net.net.slice5]
        loaded = 0
        for sl in slices:
            for idx, layer in sl.named_children():
                for pname, p in layer.named_parameters(recurse=False):
                    p.data.copy_(feats[f"{idx}.{pname}"])
                    loaded += 1
        if loaded != 10:
            raise RuntimeError(f"AlexNet weights {weights}: loaded {loaded} of 10 tensors")
        return net.eval()


def load_stlpips_network(net: str = "alex"):
    """The shift-tolerant LPIPS network (``alex`` or ``vgg``) with the weights bundled in
    ``stlpips-pytorch``, checked to fit the network (no random weights left), in eval mode."""
    import contextlib
    import io

    import torch

    with contextlib.redirect_stdout(io.StringIO()):
        from stlpips_pytorch import stlpips

    path = Path(stlpips.__file__).parent / "weights" / "vST0.0" / f"{net}_shift_tolerant.pth"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: bundled ST-LPIPS weights are missing")
    model = stlpips.LPIPS(net=net, variant="shift_tolerant", pretrained=False, verbose=False)
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # ``lins.k`` are aliases of ``link``; anything else missing would leave random weights.
    missing = [k for k in missing if not k.startswith("lins.")]
    if missing or unexpected:
        raise RuntimeError(f"{path}: weights do not fit the network (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    return model.eval()


class STLPIPS(_Perceptual):
    """Shift-tolerant LPIPS, AlexNet variant (``stlpips-pytorch``), weights bundled with the package."""

    name = "st_lpips"
    trunk = "alex"

    def _load(self):
        return load_stlpips_network(self.trunk)


class STLPIPSVGG(STLPIPS):
    """Shift-tolerant LPIPS, VGG-16 variant, weights bundled with the package."""

    name = "st_lpips_vgg"
    trunk = "vgg"


@dataclass
class MetricSet:
    """The metrics to compute, with the perceptual networks loaded once."""

    names: tuple[str, ...] = DEFAULT_METRICS
    _nets: dict[str, _Perceptual] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [n for n in self.names if n not in ALL_METRICS + ("mse",)]
        if unknown:
            raise BenchError(f"unknown metric {unknown[0]!r} (known: {', '.join(ALL_METRICS)})")
        if "lpips" in self.names:
            self._nets["lpips"] = LPIPS()
        if "st_lpips" in self.names:
            self._nets["st_lpips"] = STLPIPS()
        if "st_lpips_vgg" in self.names:
            self._nets["st_lpips_vgg"] = STLPIPSVGG()

    def unavailable(self) -> dict[str, str]:
        """Requested metrics that cannot be computed here, with the reason."""
        return {k: (n.reason or "unavailable") for k, n in self._nets.items() if not n.available}

    def __call__(self, ref: np.ndarray, test: np.ndarray) -> dict[str, float]:
        funcs: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
            "psnr": psnr, "ms_ssim": ms_ssim, "mse": mse, **self._nets}
        return {n: funcs[n](ref, test) for n in self.names}

