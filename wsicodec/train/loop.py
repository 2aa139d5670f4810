"""The training loop of Fischer et al. 2023 (sections 2.3, 3.2):

    L = bpp + λ·255²·(MSE + ψ·‖C(x) − C(x̂)‖²)

(the paper's ``λ·r + d + ψ·ℓ2(C(x), C(x̂))`` with λ moved onto the image-similarity term, as in
CompressAI: ψ weighs the feature distance against the MSE of images in [0, 1])

with additive-noise quantization (compressai's training mode), the entropy bottleneck's auxiliary
loss on its own optimizer, Adam, learning rate reduced on plateau, gradient clipping, checkpoints
every few minutes and on Ctrl-C, exact ``--resume``, and validation on real entropy-coded bits.
On a GPU (``device``): mixed precision, batches made in worker processes, optional
``torch.compile`` (:mod:`wsicodec.train.device`, :mod:`wsicodec.train.loader`).
"""
from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wsicodec.errors import TrainError
from wsicodec.models import ModelCard, build_model, save_model
from wsicodec.models.gained import log_gains_for_ladder
from wsicodec.train import ladder as rate_ladder
from wsicodec.train.bundle import travels_as_half
from wsicodec.train.data import CropSampler, find_inputs, load_images, load_rgb
from wsicodec.train.device import Precision, compile_model, resolve_device, step_clock
from wsicodec.train.loader import BatchStream, default_workers
from wsicodec.train.widen import embed_narrower


@dataclass
class TrainConfig:
    data: list[str]
    out: str
    architecture: str = "bmshj2018-factorized"
    N: int = 64
    M: int = 96
    lmbda: float = 0.013
    psi: list[float] = field(default_factory=lambda: [0.5, 0.7])
    psi_switch: float = 0.5          # fraction of the steps after which ψ takes its second value
    feature_net: str = "none"        # none | stlpips | ciga:<checkpoint path>
    patch: int = 128
    batch: int = 8
    steps: int = 100_000
    lr: float = 1e-3
    transform_lr: float = 0.0        # learning rate of g_a / g_s when warm-started (0: lr)
    aux_lr: float = 1e-3
    clip: float = 1.0
    plateau_patience: int = 5        # validations without improvement before lr /= 2
    min_lr: float = 1e-5
    val: list[str] = field(default_factory=list)
    val_every: int = 2000
    val_crop: int = 256
    checkpoint_minutes: float = 5.0
    max_minutes: float = 0.0         # stop after this much time in training steps (0: no limit; see step_clock)
    wall_minutes: float = 0.0        # stop in time to validate and save within this wall time (0: no limit)
    seed: int = 0
    threads: int = 0
    init_from: str = ""              # fine-tune from another checkpoint's weights
    stain_jitter: float = 0.05
    colour_jitter: float = 0.05
    precision: str = "auto"          # auto | fp32 | bf16 | fp16: g_a / g_s under autocast (wsicodec.train.device)
    device: str = "auto"             # auto | cpu | cuda[:N]
    workers: int = -1                # batch-making processes (-1: none on the CPU, most cores on a GPU)
    compile: bool = False            # torch.compile the training forward
    lambdas: list[float] = field(default_factory=list)  # a variable-rate model's λ ladder (empty: ladder.py's)
    params: dict = field(default_factory=dict)           # architecture parameters beyond N and M (e.g. N_s)
    default_point: int = -1          # a variable-rate model's default operating point (-1: the ladder's middle)
    freeze_transforms: bool = False  # train the entropy model alone on fixed g_a / g_s (the rate only)
    distortion: str = "mse"          # mse | ms-ssim: what the loss's distortion term measures (DISTORTIONS)
    exclude: list[str] = field(default_factory=list)  # shell patterns of training files left out

    @property
    def ladder(self) -> list[float] | None:
        """The λ of each operating point of a variable-rate architecture (None: one λ, ``lmbda``)."""
        return rate_ladder.ladder_of(self.architecture, self.lambdas)

    @property
    def model_params(self) -> dict:
        return rate_ladder.model_params(self.N, self.M, self.params, self.ladder)

    def build(self, *, initial: bool = False) -> nn.Module:
        """This run's model (compressai's modules); ``initial``: a variable-rate model's gains
        start at its ladder's rates."""
        ladder = self.ladder
        start = {"lambdas": ladder} if initial and ladder else {}
        return build_model(self.architecture, **self.model_params, **start)

    def psi_at(self, step: int, start: int = 0) -> float:
        """ψ at ``step`` of a run that began at ``start`` (a fine-tune switches halfway through its own steps)."""
        if self.feature_net == "none" or not self.psi:
            return 0.0
        switch = start + self.psi_switch * (self.steps - start)
        return self.psi[0] if step < switch or len(self.psi) == 1 else self.psi[1]


def _bpp(likelihoods, x: torch.Tensor) -> torch.Tensor:
    """Bits per pixel of the batch ``x`` from its latents' likelihoods."""
    return sum(torch.log(lk).sum() for lk in likelihoods) / (-math.log(2) * x.shape[0] * x.shape[2] * x.shape[3])


#: the distortion terms a run can train for. ``mse``: λ·255²·MSE (+ ψ·feature term);
#: ``ms-ssim``: λ·(1 − MS-SSIM), CompressAI's convention, for models that serve an MS-SSIM policy
#: (``--target ms_ssim=…``) with fewer bits than an MSE model needs for the same MS-SSIM
DISTORTIONS = ("mse", "ms-ssim")


def _rd_loss(model: nn.Module, x: torch.Tensor, lmbda: float, psi: float,
             feature: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
             distortion: str = "mse") -> dict[str, torch.Tensor]:
    out = model(x)
    bpp = _bpp(out["likelihoods"].values(), x)
    x_hat = out["x_hat"]
    mse = torch.mean((x_hat.float() - x) ** 2)
    feat = torch.zeros((), device=x.device)
    if distortion == "ms-ssim":
        from pytorch_msssim import ms_ssim

        # on the unclamped output, as CompressAI trains its MS-SSIM models: clamping would stop the
        # gradient of every pixel outside [0, 1]
        feat = 1 - ms_ssim(x_hat.float(), x, data_range=1.0)
        loss = lmbda * feat + bpp
    else:
        if feature is not None and psi > 0:
            feat = feature(x, x_hat.clamp(0, 1))
        loss = lmbda * 255**2 * (mse + psi * feat) + bpp
    return {"loss": loss, "bpp": bpp, "mse": mse, "feat": feat}


def objective(distortion: str, lmbda: float, v: dict[str, float]) -> float:
    """A single-rate run's rate-distortion objective on real bits and 8-bit pixels (validation
    figures ``v``), in its training loss's units."""
    return rate_ladder.objective(lmbda, v, distortion)


def _rate_loss(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The bits alone of a mean-scale hyperprior on fixed transforms: what its entropy model
    (h_a, h_s, the priors) can change. g_s never runs: in training the latents are y plus uniform
    noise whatever the entropy model predicts, so the distortion does not depend on it."""
    with torch.no_grad():
        y = model.g_a(x)
    z_hat, z_likelihoods = model.entropy_bottleneck(model.h_a(y))
    scales, means = model.h_s(z_hat).chunk(2, 1)
    _, y_likelihoods = model.gaussian_conditional(y, scales, means=means)
    bpp = _bpp((y_likelihoods, z_likelihoods), x)
    zero = torch.zeros((), device=x.device)
    return {"loss": bpp, "bpp": bpp, "mse": zero, "feat": zero}


def _kernels_to_1x1(weights: dict, own: dict) -> dict:
    """Weights of the same architecture whose convolutions of some layer are k x k where this
    model's are 1x1 (``h_kernel``): each 1x1 kernel starts as the sum of the k x k taps, the same
    output on a locally constant input."""
    out = dict(weights)
    for k, v in weights.items():
        mine = own.get(k)
        if (mine is not None and mine.dim() == 4 and v.dim() == 4 and mine.shape != v.shape
                and mine.shape[:2] == v.shape[:2] and mine.shape[2:] == (1, 1)):
            out[k] = v.sum(dim=(2, 3), keepdim=True)
    return out


def _architecture_constants(state: dict) -> dict:
    """The tensors of a state dict that the architecture fixes rather than training learns:
    compressai's lower bounds (``…bound``: the likelihood bound 1e-9, GDN's β / γ bounds, the
    Gaussian scale bound) and GDN's pedestals. Loading weights keeps the model's own: a file
    whose floats were all stored as fp16 holds the likelihood bound and the pedestals flushed to
    zero, and a zero likelihood bound makes the first batch's rate infinite."""
    return {k: v for k, v in state.items() if k.endswith((".bound", ".pedestal", "scale_bound"))}


def _gains_carried(weights: dict, lambdas: Sequence[float], new_lambdas: Sequence[float]) -> dict:
    """A variable-rate model's weights with its gains and inverse gains carried from the ladder
    ``lambdas`` to ``new_lambdas`` (:func:`wsicodec.models.gained.log_gains_for_ladder`; the
    inverse gains at the opposite high-rate slope). Raises ``ValueError`` for a bad ladder."""
    return {**weights, "log_gain": log_gains_for_ladder(weights["log_gain"], lambdas, new_lambdas),
            "log_inverse_gain": log_gains_for_ladder(weights["log_inverse_gain"], lambdas, new_lambdas, slope=-0.5)}


def _card_source(path: Path) -> dict:
    """What a shipped model's card (``NAME.json`` beside ``NAME.pt``) tells a run starting from
    it: the architecture, λ ladder and distortion it was trained with (empty without a card;
    the step count starts at 0, as from any model file)."""
    try:
        card = ModelCard(**json.loads(path.with_suffix(".json").read_text()))
    except (OSError, TypeError, ValueError):
        return {}
    lambdas = [p["lambda"] for p in card.operating_points if "lambda" in p]
    return {"config": {"architecture": card.architecture, "distortion": card.distortion, "lambdas": lambdas}}


def _val_images(paths: list[str], crop: int) -> list[torch.Tensor]:
    out = []
    for p in find_inputs(paths):
        for im in load_rgb(p):
            h, w = im.shape[:2]
            c = min(crop, h, w) // 64 * 64
            y, x = (h - c) // 2, (w - c) // 2
            t = torch.from_numpy(np.ascontiguousarray(im[y : y + c, x : x + c])).float() / 255
            out.append(t.permute(2, 0, 1)[None])
    return out


@torch.no_grad()
def validate(model: nn.Module, images: list[torch.Tensor], point: int | None = None) -> dict[str, float]:
    """Real entropy-coded bits (model.compress) and PSNR / MS-SSIM of the decoded crops, on the
    model's device, in fp32 (a variable-rate model: at operating ``point``)."""
    from pytorch_msssim import ms_ssim

    was_training = model.training
    model.eval()
    model.update(force=True)
    device = next(model.parameters()).device
    bits = pixels = 0
    psnrs, ssims = [], []
    for x in images:
        x = x.to(device)
        at = () if point is None else (point,)
        enc = model.compress(x, *at)
        bits += 8 * sum(len(s[0]) for s in enc["strings"])
        pixels += x.shape[2] * x.shape[3]
        x_hat = model.decompress(enc["strings"], enc["shape"], *at)["x_hat"].clamp(0, 1)
        x8, y8 = (x * 255).round(), (x_hat * 255).round()
        psnrs.append(psnr8(x8, y8))
        ssims.append(ms_ssim(x8, y8, data_range=255).item() if min(x.shape[2:]) >= 161 else float("nan"))
    model.train(was_training)
    ssim = float(np.nanmean(ssims)) if not np.isnan(ssims).all() else float("nan")  # crops < 161 px: none
    return {"bpp": bits / max(pixels, 1), "psnr": float(np.mean(psnrs)), "ms_ssim": ssim}


def psnr8(x8: torch.Tensor, y8: torch.Tensor) -> float:
    """PSNR (dB) of two images already rounded to 8-bit levels (values 0–255)."""
    return 10 * math.log10(255**2 / max(torch.mean((x8 - y8) ** 2).item(), 1e-10))


@torch.no_grad()
def transform_ceiling(model: nn.Module, images: list[torch.Tensor],
                      points: Sequence[int | None] = (None,)) -> list[float]:
    """Mean PSNR of ``g_s(g_a(x))`` without quantization, one figure per entry of ``points``
    (None: no gains; a variable-rate model's point ``k``: through its gain and inverse gain): the
    most any rate can buy from these transforms. A model whose coded PSNR stalls just below it is
    limited by its transforms, not by its bits. The analysis runs once per image for all points."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    psnrs: list[list[float]] = [[] for _ in points]
    for x in images:
        x = x.to(device)
        y = model.g_a(x)
        x8 = (x * 255).round()
        for out, point in zip(psnrs, points, strict=True):
            if point is None:
                y_p = y
            else:
                gain, inverse = model.gains(point)
                y_p = y * gain * inverse
            out.append(psnr8(x8, (model.g_s(y_p).clamp(0, 1) * 255).round()))
    model.train(was_training)
    return [float(np.mean(p)) for p in psnrs]


def _check_distortion(cfg: TrainConfig) -> None:
    if cfg.distortion not in DISTORTIONS:
        raise TrainError(f"distortion {cfg.distortion!r}: one of {', '.join(DISTORTIONS)}")
    # with --freeze-transforms the loss is the rate alone whatever the distortion; the distortion
    # then only names the model's (for its card and the validation objective)
    if cfg.distortion != "mse" and cfg.feature_net != "none":
        raise TrainError(f"--distortion {cfg.distortion} trains on that term alone: no --feature-net")
    if cfg.distortion == "ms-ssim" and cfg.patch < 161:
        raise TrainError(f"--distortion ms-ssim needs crops of at least 161 px (MS-SSIM's five scales), "
                         f"not --patch {cfg.patch}")


def _set_label(folders: list[str], images: int) -> str:
    """A validation set as a model card names it: the folders' own names and the image count,
    not the paths they had on the machine that exported the model."""
    return f"{', '.join(Path(f).name for f in folders)} ({images} images)"


class Trainer:
    def __init__(self, cfg: TrainConfig, log: Callable[[str], None] = print):
        self.created = time.monotonic()  # --wall-minutes counts from here (data loading included)
        self.cfg = cfg
        self.log = log
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True          # fixed crop sizes: pick the fastest kernels once
            torch.backends.cuda.matmul.allow_tf32 = True   # training only; fp32 parts stay fp32 in range
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.ladder = cfg.ladder
        if self.ladder and cfg.feature_net != "none":
            raise ValueError("a variable-rate model's loss is MSE at each point; it takes no --feature-net")
        _check_distortion(cfg)
        self.model = cfg.build(initial=True)
        self.precision = Precision.on(cfg.precision, self.device, from_weights=bool(cfg.init_from))
        self.precision.apply(self.model)
        self.model.to(self.device)
        params = {n for n, p in self.model.named_parameters() if not n.endswith(".quantiles")}
        named = dict(self.model.named_parameters())
        transforms = sorted(n for n in params if n.startswith(("g_a.", "g_s.")))
        if cfg.freeze_transforms:
            if self.ladder or cfg.architecture != "mbt2018-mean":
                raise ValueError("--freeze-transforms trains a single-rate mbt2018-mean's entropy model")
            for n in transforms:
                named[n].requires_grad_(False)
            params -= set(transforms)
            transforms = []
        rest = sorted(params - set(transforms))
        if cfg.transform_lr > 0 and transforms and rest:  # slower transforms, faster entropy model
            self.opt = torch.optim.Adam([{"params": [named[n] for n in transforms], "lr": cfg.transform_lr},
                                         {"params": [named[n] for n in rest]}], lr=cfg.lr)
        else:
            self.opt = torch.optim.Adam([named[n] for n in sorted(params)], lr=cfg.lr)
        self.aux_opt = torch.optim.Adam([named[n] for n in named if n.endswith(".quantiles")], lr=cfg.aux_lr)
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, mode="min", factor=0.5, patience=cfg.plateau_patience, min_lr=cfg.min_lr
        )
        self.step = 0
        self.best = float("inf")
        self.train_seconds = 0.0         # time in training steps on step_clock (CPU: CPU time), validation excluded
        self.start_step = 0              # where this run's own steps began (> 0 when fine-tuning)
        self.sampler = CropSampler(load_images(cfg.data, cfg.exclude), cfg.patch, cfg.seed, cfg.stain_jitter,
                                   cfg.colour_jitter)
        self.workers = cfg.workers if cfg.workers >= 0 else default_workers(self.device)
        self._batches: BatchStream | None = None
        self.val = _val_images(cfg.val, cfg.val_crop) if cfg.val else []
        from wsicodec.train.features import feature_network

        self.feature = feature_network(cfg.feature_net)
        self._stop = False
        # seconds the end of a run needs: guesses until a validation and a checkpoint have been timed
        wall = cfg.wall_minutes * 60
        self._reserve = {"validate": min(15.0, 0.03 * wall), "save": min(2.0, 0.01 * wall)}
        if cfg.compile:
            compile_model(self.model, log)

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def state(self) -> dict:
        return {
            "config": asdict(self.cfg),
            "step": self.step,
            "best": self.best,
            "train_seconds": self.train_seconds,
            "start_step": self.start_step,
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "aux_opt": self.aux_opt.state_dict(),
            "sched": self.sched.state_dict(),
            "precision": self.precision.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }

    def save(self) -> None:
        t0 = time.monotonic()
        tmp = self.ckpt_path.with_suffix(".tmp")
        torch.save(self.state(), tmp)
        os.replace(tmp, self.ckpt_path)
        self._reserve["save"] = time.monotonic() - t0

    def resume(self, path: Path | None = None) -> None:
        st = torch.load(path or self.ckpt_path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["opt"])
        self.aux_opt.load_state_dict(st["aux_opt"])
        self.sched.load_state_dict(st["sched"])
        self.precision.load_state_dict(st.get("precision"))
        torch.set_rng_state(st["torch_rng"])
        if self.device.type == "cuda":  # the noise's generator; a run moved from the CPU seeds it by step
            cuda_rng = st.get("cuda_rng")
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, self.device)
            else:
                torch.cuda.manual_seed(self.cfg.seed * 1_000_003 + st["step"])
        self.step = st["step"]
        self.best = st["best"]
        self.train_seconds = st.get("train_seconds", 0.0)
        self.start_step = st.get("start_step", 0)

    @classmethod
    def from_checkpoint(cls, run_dir: Path, **overrides) -> Trainer:
        """The trainer of a run folder, restored from its checkpoint, or from its ``weights.pt``
        alone (a run carried across machines: weights, step and config, no optimiser state). The
        settings of the machine it ran on (device, workers, compile, wall-clock limit) are not
        inherited: they return to their defaults unless ``overrides`` name them."""
        run_dir = Path(run_dir)
        ckpt = run_dir / "checkpoint.pt"
        src = ckpt if ckpt.exists() else run_dir / "weights.pt"
        if not src.exists():
            raise TrainError(f"{run_dir}: no checkpoint.pt or weights.pt")
        st = torch.load(src, map_location="cpu", weights_only=False)
        machine = {"device": "auto", "workers": -1, "compile": False, "wall_minutes": 0.0}
        # "out": the folder may have moved
        t = cls(TrainConfig(**{**st["config"], **machine, "out": str(run_dir), **overrides}))
        if src == ckpt:
            t.resume(ckpt)
        else:
            t.init_weights_from(src)
            t.best = st.get("best", t.best)
        return t

    def init_weights_from(self, path: Path, continue_steps: bool = True) -> list[str]:
        """Start from another run's weights (a checkpoint, a ``weights.pt``, a shipped ``.pt`` or a
        bare state dict). From the same architecture every tensor is loaded and, with
        ``continue_steps``, the step count continues from a file that records it. From another
        architecture (a factorized model warm-starting a hyperprior's ``g_a`` / ``g_s``) only the
        tensors of the same name and shape are taken and the step count starts at 0; from a
        narrower model of the same layout (N = 64 / M = 96 into M = 320) every layer is embedded
        so that the wide model starts out computing what the narrow one did
        (:func:`wsicodec.train.widen.embed_narrower`). Returns the names of the tensors loaded."""
        st = torch.load(path, map_location="cpu", weights_only=False)
        weights = st["model"] if "model" in st else st
        if "config" not in st:  # a shipped model file: its card tells its ladder
            st = {"model": weights, **_card_source(Path(path))}
        own = self.model.state_dict()
        if set(weights) == set(own):
            if weights.get("log_gain") is not None and self._ladder_changes(st, weights, own):
                weights = self._regained(path, st, weights)
            weights = _kernels_to_1x1(weights, own) | _architecture_constants(own)
            self.model.load_state_dict(weights)
            if continue_steps and "step" in st:
                self.step = self.start_step = int(st["step"])
            return list(own)
        if any(k in own and own[k].shape != v.shape and v.dim() == own[k].dim()
               and all(a <= b for a, b in zip(v.shape, own[k].shape, strict=True)) for k, v in weights.items()):
            try:  # a narrower model of the same layout: embedded, computing what it computed
                names = embed_narrower(self.model, weights)
            except ValueError as exc:
                raise TrainError(f"{path}: {exc}") from None
            self.log(f"init from {path}: {len(names)} of {len(own)} tensors embedded (narrower model)")
            return names
        taken = {k: v for k, v in weights.items()
                 if k.startswith(("g_a.", "g_s.")) and k in own and own[k].shape == v.shape}
        if not taken:
            raise TrainError(f"{path}: no tensor matches the {self.cfg.architecture} model")
        nn.Module.load_state_dict(self.model, taken, strict=False)  # not compressai's buffer-resizing override
        self.log(f"init from {path}: {len(taken)} of {len(own)} tensors (same name and shape)")
        return list(taken)

    def _ladder_changes(self, st: dict, weights: dict, own: dict) -> bool:
        """Whether a variable-rate model's weights were trained at another λ ladder or for another
        distortion than this run's (a model file's from its card; without one only its point count shows)."""
        if weights["log_gain"].shape != own["log_gain"].shape:
            return True
        source = st.get("config") or {}
        if "architecture" not in source:
            return False
        return (rate_ladder.ladder_of(source["architecture"], source.get("lambdas") or []) != self.cfg.ladder
                or source.get("distortion", "mse") != self.cfg.distortion)

    def _regained(self, path: Path, st: dict, weights: dict) -> dict:
        """A variable-rate model's weights with its gains carried to this run's λ ladder
        (:func:`wsicodec.models.gained.log_gains_for_ladder`): a fine-tune at other rates, or for
        another distortion (its λ first put in the source's units, :data:`MS_SSIM_LAMBDA_PER_MSE`)."""
        source = st.get("config") or {}
        if "architecture" not in source:
            raise TrainError(f"{path}: its λ ladder is unknown (no model card beside it); start from a "
                             "run's checkpoint.pt or weights.pt, or a shipped model with its .json card")
        old = rate_ladder.ladder_of(source["architecture"], source.get("lambdas") or [])
        new = rate_ladder.in_units_of(self.cfg.ladder, self.cfg.distortion, source.get("distortion", "mse"))
        try:
            carried = _gains_carried(weights, old, new)
        except ValueError as exc:
            raise TrainError(f"{path}: {exc}") from None
        units = "" if new == self.cfg.ladder else f" ({source.get('distortion', 'mse')} λ {new})"
        self.log(f"init from {path}: gains carried from λ {old} to λ {self.cfg.ladder}{units}")
        return carried

    def save_weights(self, path: Path | None = None) -> Path:
        """A small file to carry a run across machines: weights, step and config, no optimiser
        state (``--init-from`` continues from it with fresh Adam moments)."""
        path = Path(path or self.out / "weights.pt")
        torch.save({"model": self.model.state_dict(), "step": self.step, "config": asdict(self.cfg),
                    "best": self.best}, path)
        return path

    # -- loop --------------------------------------------------------------------------------
    def _log_row(self, name: str, row: dict) -> None:
        path = self.out / name
        new = not path.exists()
        if new:
            fields = list(row)
        else:
            with open(path) as f:
                fields = f.readline().strip().split(",")
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

    def next_batch(self) -> torch.Tensor:
        """Batch number ``self.step`` on the training device (after a resume: the batch the run
        would have drawn next)."""
        if self._batches is None or self._batches.index != self.step:
            self.close_batches()
            self._batches = BatchStream(self.sampler, self.cfg.batch, self.step, self.device, self.workers)
        return self._batches.next()

    def close_batches(self) -> None:
        if self._batches is not None:
            self._batches.close()
            self._batches = None

    def train_step(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._train_step().items()}

    def _train_step(self) -> dict[str, torch.Tensor]:
        """One step; the loss terms stay on the device (reading them would wait for the GPU)."""
        cfg = self.cfg
        self.model.train()
        x = self.next_batch()
        self.opt.zero_grad(set_to_none=True)
        self.aux_opt.zero_grad(set_to_none=True)
        if self.ladder:  # a variable-rate model: each element at a point of the ladder
            terms = rate_ladder.ladder_loss(self.model, x, self.ladder, cfg.distortion)
        elif cfg.freeze_transforms:
            terms = _rate_loss(self.model, x)
        else:
            terms = _rd_loss(self.model, x, cfg.lmbda, cfg.psi_at(self.step, self.start_step), self.feature,
                             cfg.distortion)
        self.precision.backward_and_step(terms["loss"], self.opt,
                                         [p for g in self.opt.param_groups for p in g["params"]], cfg.clip)
        aux = self.model.aux_loss()
        aux.backward()
        self.aux_opt.step()
        self.step += 1
        return {k: v.detach() for k, v in terms.items()} | {"aux": aux.detach()}

    def time_left(self) -> float:
        """Wall seconds left under ``wall_minutes`` after the end of the run's final validation
        and checkpoint (inf without a wall-clock limit)."""
        if self.cfg.wall_minutes <= 0:
            return float("inf")
        end_work = 1.5 * ((self._reserve["validate"] if self.val else 0.0) + self._reserve["save"]) + 2.0
        return self.cfg.wall_minutes * 60 - (time.monotonic() - self.created) - end_work

    def run(self, max_steps: int | None = None) -> None:
        cfg = self.cfg
        target = min(cfg.steps, self.step + max_steps) if max_steps else cfg.steps
        old = signal.getsignal(signal.SIGINT)

        def stop(*_):
            self._stop = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        last_ckpt = t_log = time.time()
        acc: dict[str, torch.Tensor] = {}
        n = 0
        budget = cfg.max_minutes * 60 if cfg.max_minutes > 0 else float("inf")
        clock = step_clock(self.device)  # CPU time on the CPU: fair between runs on a shared machine
        out_of_time = False
        first = True
        try:
            while self.step < target and not self._stop:
                if self.train_seconds >= budget or self.time_left() <= 0:
                    out_of_time = True
                    break
                t0 = clock()
                terms = self._train_step()
                self.train_seconds += clock() - t0
                if first:  # batch workers' start, compilation: what a short GPU run pays once
                    self.log(f"first step: {time.time() - t_log:.1f} s")
                    first = False
                for k, v in terms.items():
                    acc[k] = acc[k] + v if k in acc else v
                n += 1
                if self.step % 100 == 0:
                    now = time.time()
                    row = {"step": self.step, **{k: round(float(v) / n, 6) for k, v in acc.items()},
                           "lr": self.opt.param_groups[-1]["lr"], "s_per_step": round((now - t_log) / n, 4),
                           "time": round(now)}
                    self._log_row("train_log.csv", row)
                    self.log(json.dumps(row))
                    acc, n, t_log = {}, 0, now
                if self.val and self.step % cfg.val_every == 0:
                    self.validate_and_schedule()
                if time.time() - last_ckpt > cfg.checkpoint_minutes * 60:
                    self.save()
                    last_ckpt = time.time()
            if out_of_time and self.val and self.step % cfg.val_every:
                self.validate_and_schedule()     # the pilot's figure: validation at the time budget
        finally:
            self.close_batches()
            self.save()
            signal.signal(signal.SIGINT, old)

    def validate_and_schedule(self) -> dict[str, float]:
        if self.ladder:
            return self._validate_ladder()
        t0 = time.monotonic()
        v = validate(self.model, self.val)
        self._reserve["validate"] = time.monotonic() - t0
        obj = objective(self.cfg.distortion, self.cfg.lmbda, v)
        self.sched.step(obj)
        if obj < self.best:
            self.best = obj
            torch.save({"model": self.model.state_dict(), "step": self.step}, self.out / "best_model.pt")
        row = {"step": self.step, **{k: round(x, 5) for k, x in v.items()}, "objective": round(obj, 5),
               "psnr_unquantized": round(transform_ceiling(self.model, self.val)[0], 5),
               "lr": self.opt.param_groups[-1]["lr"], "train_minutes": round(self.train_seconds / 60, 2),
               "time": round(time.time())}
        self._log_row("val_log.csv", row)
        self.log("val " + json.dumps(row))
        return v

    def _validate_ladder(self) -> dict[str, float]:
        """Every operating point validated (one ``val_log.csv`` row each); the schedule and the
        best checkpoint follow the mean of the points' objectives. Returns that mean's row."""
        t0 = time.monotonic()
        points, obj = rate_ladder.validate_ladder(self.model, self.val, self.ladder, validate, self.cfg.distortion)
        self._reserve["validate"] = time.monotonic() - t0
        self.sched.step(obj)
        if obj < self.best:
            self.best = obj
            torch.save({"model": self.model.state_dict(), "step": self.step}, self.out / "best_model.pt")
        common = {"lr": self.opt.param_groups[-1]["lr"], "train_minutes": round(self.train_seconds / 60, 2),
                  "time": round(time.time())}
        ceilings = transform_ceiling(self.model, self.val, range(len(self.ladder)))
        for k, (lmbda, v, ceiling) in enumerate(zip(self.ladder, points, ceilings, strict=True)):
            row = {"step": self.step, "point": k, "lambda": lmbda, **{key: round(x, 5) for key, x in v.items()},
                   "objective": round(rate_ladder.objective(lmbda, v, self.cfg.distortion), 5),
                   "psnr_unquantized": round(ceiling, 5), **common}
            self._log_row("val_log.csv", row)
            self.log("val " + json.dumps(row))
        return {"objective": obj}

    def export(self, name: str, directory: Path, data_desc: str = "", use_best: bool = True,
               notes: str = "", half: bool = False, lambdas: Sequence[float] | None = None) -> ModelCard:
        """Write the run's model (its best validation weights, or with ``use_best=False`` its
        last) as a shipped model; ``half``: its large weights rounded to fp16 first where fp16
        holds them (:func:`wsicodec.train.bundle.travels_as_half`), so that the file is about half
        the size and the card's figures are measured on the rounded weights. ``lambdas``: a
        variable-rate model's operating points at these λ instead of its trained ladder's, the
        gains carried as for a fine-tune (:func:`wsicodec.models.gained.log_gains_for_ladder`:
        interpolated between trained points, extrapolated beyond them); each point's card entry
        says whether it was trained."""
        cfg = self.cfg
        best = self.out / "best_model.pt"
        step = self.step
        if use_best and best.exists():
            st = torch.load(best, map_location="cpu", weights_only=False)
            weights = st["model"]
            step = int(st["step"])
        else:
            weights = self.model.state_dict()
        trained = self.ladder
        if lambdas is not None and list(lambdas) != trained:
            if not trained:
                raise TrainError(f"{cfg.architecture} has one rate: --lambdas is for a variable-rate model")
            try:
                lambdas = rate_ladder.ladder_of(cfg.architecture, [float(v) for v in lambdas])
                weights = _gains_carried(weights, trained, lambdas)
            except ValueError as exc:
                raise TrainError(f"--lambdas {','.join(f'{v:g}' for v in lambdas)}: {exc}") from None
            cfg = replace(cfg, lambdas=lambdas)
        if half:
            weights = {k: v.half().float() if travels_as_half(v) else v for k, v in weights.items()}
        model = cfg.build()
        model.load_state_dict(weights)
        where = {"set": _set_label(cfg.val, len(self.val)), "crop": cfg.val_crop}
        data = data_desc or ", ".join(Path(d).name for d in cfg.data)
        ladder = cfg.ladder
        if ladder:  # a variable-rate model: its points, each with its λ and figures
            figures = (rate_ladder.validate_ladder(model, self.val, ladder, validate)[0] if self.val
                       else [{}] * len(ladder))
            points = [{"index": k, "lambda": lmbda, "trained": lmbda in trained,
                       "validation": {**{key: round(x, 4) for key, x in v.items()}, **where}}
                      for k, (lmbda, v) in enumerate(zip(ladder, figures, strict=True))]
            default = cfg.default_point if cfg.default_point >= 0 else len(ladder) // 2
            if default >= len(ladder):
                raise TrainError(f"default operating point {default}: the model has {len(ladder)} points")
            card = ModelCard(name=name, architecture=cfg.architecture, params=cfg.model_params, lmbda=None, psi=0.0,
                             feature_net="none", steps=step, distortion=cfg.distortion,
                             data=data,
                             validation=dict(points[default]["validation"]), notes=notes,
                             operating_points=points, default_point=default)
            return save_model(model, card, directory)
        v = validate(model, self.val) if self.val else {}
        card = ModelCard(
            name=name, architecture=cfg.architecture, params=cfg.model_params,
            lmbda=cfg.lmbda, psi=cfg.psi_at(step, self.start_step), feature_net=cfg.feature_net, steps=step,
            distortion=cfg.distortion,
            data=data,
            validation={**{k: round(x, 4) for k, x in v.items()}, **where},
            notes=notes,
        )
        return save_model(model, card, directory)
