"""Architectures registered by name; weight files addressed by name and verified by sha256.

A shipped model is two files in the weights folder:

* ``<name>.pt``   – a ``torch.save``'d state dict with the frozen CDF tables (``update()`` done);
* ``<name>.json`` – its model card: architecture, hyper-parameters, sha256 of the ``.pt`` file,
  training data and validation figures.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsicodec._hashing import sha256_file
from wsicodec.errors import WsicodecError

if TYPE_CHECKING:
    from torch import nn

warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)


class ModelError(WsicodecError):
    """A model cannot be found, built or verified."""


def _factorized(N: int = 128, M: int = 192) -> nn.Module:
    from compressai.models import FactorizedPrior

    return FactorizedPrior(N=N, M=M)


def _mean_scale(N: int = 64, M: int = 96, h_kernel: int = 3) -> nn.Module:
    from compressai.models import MeanScaleHyperprior
    from compressai.models.utils import conv

    model = MeanScaleHyperprior(N=N, M=M)
    if h_kernel != 3:  # h_s's last layer 1x1: the integer hyper-decoder does a third of the 3x3's work
        model.h_s[4] = conv(M * 3 // 2, M * 2, kernel_size=_check_h_kernel(h_kernel), stride=1)
    return model


def _check_h_kernel(k: int) -> int:
    if k not in (1, 3):
        raise ModelError(f"h_kernel={k}: the hyper-decoder's last layer is 1x1 or 3x3 (h_kernel 1 or 3)")
    return k


def _gained(N: int = 128, M: int = 320, N_s1: int = 96, N_s: int = 48, H: int = 192, K: int = 8,
            lambdas: list[float] | None = None) -> nn.Module:
    from wsicodec.models.gained import GainedMeanScaleHyperprior

    return GainedMeanScaleHyperprior(N=N, M=M, N_s1=N_s1, N_s=N_s, H=H, K=K, lambdas=lambdas)


def _factorized_net(N: int = 128, M: int = 192) -> nn.Module:
    from wsicodec.models.networks import Factorized

    return Factorized(N=N, M=M)


def _mean_scale_net(N: int = 64, M: int = 96, h_kernel: int = 3) -> nn.Module:
    from wsicodec.models.networks import MeanScale

    return MeanScale(N=N, M=M, h_kernel=_check_h_kernel(h_kernel))


def _gained_net(N: int = 128, M: int = 320, N_s1: int = 96, N_s: int = 48, H: int = 192, K: int = 8) -> nn.Module:
    from wsicodec.models.networks import GainedMeanScale

    return GainedMeanScale(N=N, M=M, N_s1=N_s1, N_s=N_s, H=H, K=K)


@dataclass(frozen=True)
class Architecture:
    """How to build a model (to train: compressai's modules; to run: :mod:`networks`' light
    ones, same parameter names) and how far its transforms see, for seam-free tiling."""

    build: Callable[..., nn.Module]
    build_inference: Callable[..., nn.Module]
    stride: int          # pixels per latent
    encode_halo: int     # pixels of context each side so tiled latents equal whole-image latents
    decode_halo: int     # latents of context each side so tiled pixels equal whole-image pixels
    entropy_model: str   # "factorized" | "gaussian-mean-scale" (a hyperprior: side information z per tile)
    chunk_multiple: int = 1  # latent chunk sides must be multiples of this (a hyperprior: its z stride, 4)
    variable_rate: bool = False  # operating points chosen by gains (wsicodec.models.rates)


#: Architecture name -> its spec. g_a of bmshj2018 is 4 conv(5x5, stride 2): a latent sees
#: ±30 px, so 32 px (2 latents) of halo make tiled and whole-image latents equal; g_s is
#: 4 transposed conv(5x5, stride 2): a pixel sees ±2 latents; 4 latents of halo are kept.
ARCHITECTURES: dict[str, Architecture] = {
    "bmshj2018-factorized": Architecture(_factorized, _factorized_net, 16, 32, 4, "factorized"),
    # Minnen 2018 mean-scale hyperprior: the same g_a / g_s (so a factorized model's transforms
    # warm-start it), plus h_a / h_s predicting a Gaussian mean and scale for every latent.
    "mbt2018-mean": Architecture(_mean_scale, _mean_scale_net, 16, 32, 4, "gaussian-mean-scale", 4),
    # the same with gain units (Cui et al. 2021): one model, K operating points, the chunk codec
    # of mbt2018-mean over the gained latents; g_a / g_s have the same strides and kernels
    "mbt2018-mean-gain": Architecture(_gained, _gained_net, 16, 32, 4, "gaussian-mean-scale", 4, variable_rate=True),
}


@dataclass
class ModelCard:
    name: str
    architecture: str
    params: dict[str, Any]
    sha256: str = ""
    lmbda: float | None = None
    psi: float | None = None
    feature_net: str = "none"
    steps: int = 0
    data: str = ""
    validation: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    #: a variable-rate model's trained points: ``{"index", "lambda", "validation"}`` each
    operating_points: list[dict[str, Any]] = field(default_factory=list)
    #: the point used when a variable-rate model is named without one (``NAME@P`` names one)
    default_point: float | None = None
    #: the model that replaces this one at about the same rate, if any: kept so that stores written
    #: with it still decode, left out of the benchmark's default zoo
    superseded_by: str = ""
    #: what the training loss's distortion term measured: ``mse`` (λ weighs 255²·MSE) or
    #: ``ms-ssim`` (λ weighs 1 − MS-SSIM)
    distortion: str = "mse"

    @property
    def stride(self) -> int:
        return ARCHITECTURES[self.architecture].stride

    @property
    def spec(self) -> Architecture:
        return ARCHITECTURES[self.architecture]

    @property
    def latent_channels(self) -> int:
        return int(self.params.get("M", 192))

    @property
    def kind(self) -> str:
        """What ``wsicodec models`` calls it: variable-rate, hyperprior or factorized, and what
        its loss measured when that was MS-SSIM."""
        spec = self.spec
        kind = ("variable-rate" if spec.variable_rate
                else "hyperprior" if spec.entropy_model != "factorized" else "factorized")
        return kind + (", MS-SSIM" if self.distortion == "ms-ssim" else "")


def architecture_spec(name: str) -> Architecture:
    """A registered architecture's spec; :class:`ModelError` for an unknown name."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ModelError(f"unknown architecture {name!r} (known: {', '.join(ARCHITECTURES)})") from None


def build_model(architecture: str, **params: Any) -> nn.Module:
    """Build an untrained model of a registered architecture (compressai's modules, to train)."""
    return architecture_spec(architecture).build(**params)


def model_dir() -> Path:
    """The folder of shipped weights: $WSICODEC_MODELS, the installed package data, or ./weights."""
    env = os.environ.get("WSICODEC_MODELS")
    if env:
        return Path(env)
    try:
        installed = Path(str(resources.files("wsicodec.weights")))
        if installed.is_dir():
            return installed
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "weights"


#: the quality calibration table (:mod:`wsicodec.quality`) beside the weights: not a model card
CALIBRATION_FILE = "quality.json"


def list_models(directory: Path | None = None) -> list[ModelCard]:
    directory = Path(directory) if directory else model_dir()
    cards = []
    for card_path in sorted(directory.glob("*.json")):
        if card_path.name == CALIBRATION_FILE:
            continue
        try:
            cards.append(ModelCard(**json.loads(card_path.read_text())))
        except (TypeError, ValueError):
            continue
    return cards


#: subfolder of retired models: replaced by a better one of the same rate, still loaded by name
#: (stores written with them name them) but left out of :func:`list_models` (``wsicodec models``,
#: the benchmark's default zoo)
RETIRED = "retired"


def list_retired(directory: Path | None = None) -> list[tuple[ModelCard, str]]:
    """The superseded models (those in ``retired/`` and any card naming ``superseded_by``), each
    with the listed model that replaces it today: the end of its ``superseded_by`` chain, or
    ``""`` where the chain breaks off (a card that names no successor, or one not shipped)."""
    directory = Path(directory) if directory else model_dir()
    shipped = list_models(directory)
    cards = {c.name: c for c in list_models(directory / RETIRED) + shipped}
    live = {c.name for c in shipped if not c.superseded_by}
    retired = []
    for card in cards.values():
        if card.name in live:
            continue
        name, seen = card.superseded_by, {card.name}
        while name and name not in live and name not in seen and name in cards:
            seen.add(name)
            name = cards[name].superseded_by
        retired.append((card, name if name in live else ""))
    return sorted(retired, key=lambda r: r[0].name)


def _model_folder(name: str, directory: Path) -> Path:
    """The folder holding ``name``'s card and weights: the model folder or its ``retired/``."""
    for folder in (directory, directory / RETIRED):
        if (folder / f"{name}.json").is_file():
            return folder
    return directory


def _read_card(name: str, directory: Path) -> ModelCard:
    card_path = _model_folder(name, directory) / f"{name}.json"
    if not card_path.is_file():
        known = ", ".join(c.name for c in list_models(directory)) or "none"
        raise ModelError(f"unknown model {name!r} (shipped models: {known})")
    return ModelCard(**json.loads(card_path.read_text()))


def load_model(
    name: str, directory: Path | None = None, expect_sha256: str | None = None, *, trainable: bool = False
) -> tuple[nn.Module, ModelCard]:
    """Load a shipped model by name, verifying its sha256 (and ``expect_sha256`` if given): to run
    it (:mod:`networks`, without importing compressai), or with ``trainable`` as compressai's
    model (:func:`build_model`) with every training part."""
    directory = Path(directory) if directory else model_dir()
    folder = _model_folder(name, directory)
    card = _read_card(name, folder)
    weights = folder / f"{name}.pt"
    if not weights.is_file():
        raise ModelError(f"model {name!r}: weights file {weights} is missing")
    digest = sha256_file(weights)
    if digest != card.sha256:
        raise ModelError(
            f"model {name!r}: weights file {weights.name} has sha256 {digest[:12]}…, "
            f"its card says {card.sha256[:12]}…; refusing a modified model"
        )
    if expect_sha256 and digest != expect_sha256:
        raise ModelError(
            f"model {name!r} here has sha256 {digest[:12]}…, but the store was written with "
            f"{expect_sha256[:12]}…: a different model"
        )
    import torch

    from wsicodec.models import networks

    state = torch.load(weights, map_location="cpu", weights_only=True)
    if trainable:
        model = build_model(card.architecture, **card.params)
        model.load_state_dict(state)
        return model.eval(), card
    arch = architecture_spec(card.architecture)
    try:
        model = networks.load_weights(arch.build_inference(**card.params), state)
    except (ValueError, TypeError, RuntimeError) as e:
        raise ModelError(f"model {name!r}: weights do not fit its card's {card.architecture} {card.params}: "
                         f"{e}") from None
    return model, card


def save_model(model: nn.Module, card: ModelCard, directory: Path) -> ModelCard:
    """Freeze CDF tables and write ``<name>.pt`` + ``<name>.json``; returns the card with sha256.
    A float32 parameter whose every value fp16 holds exactly is stored as fp16 (half the bytes, the
    same numbers: loading puts it back into the float32 model unchanged); buffers (the entropy
    models' tables) keep their types."""
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").eval()
    model.update(force=True)
    weights = directory / f"{card.name}.pt"
    tmp = weights.with_suffix(".pt.tmp")
    parameters = {name for name, _ in model.named_parameters()}
    torch.save({k: _exact_half(v.detach().clone()) if k in parameters else v.detach().clone()
                for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, weights)
    card.sha256 = sha256_file(weights)
    (directory / f"{card.name}.json").write_text(json.dumps(asdict(card), indent=2) + "\n")
    return card


def _exact_half(v):
    import torch

    if v.dtype == torch.float32 and v.numel() and torch.equal(v.half().float(), v):
        return v.half()
    return v


def default_model_name(directory: Path | None = None) -> str:
    """The model named in ``DEFAULT`` beside the weights, else the first one: the default of a
    weights folder without a quality calibration (:func:`wsicodec.quality.default_point`)."""
    directory = Path(directory) if directory else model_dir()
    f = directory / "DEFAULT"
    if f.is_file():
        return f.read_text().strip()
    cards = list_models(directory)
    if not cards:
        raise ModelError(f"no models in {directory}")
    return cards[0].name
