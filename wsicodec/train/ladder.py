"""Training a variable-rate model (architecture ``mbt2018-mean-gain``): its λ ladder, the loss of
a batch whose elements each train one operating point, and validation at every point.

Each batch element ``b`` draws a point ``k_b`` (uniformly, from torch's generator, so that
``--resume`` stays exact) and contributes its own rate-distortion loss

    L_b = bpp_b + λ_{k_b}·255²·MSE_b,      L = mean_b L_b

(a model trained for MS-SSIM: ``bpp_b + λ_{k_b}·(1 − MS-SSIM_b)``), so one step trains several
rates at once, and every GPU minute serves the whole ladder.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["DEFAULT_LADDER", "MS_SSIM_LAMBDA_PER_MSE", "default_widths", "in_units_of", "ladder_loss", "ladder_of",
           "model_params", "validate_ladder"]

#: The default λ ladder: today's single-rate zoo's λ (0.0008 … 0.032, so each point has a
#: single-rate model of the same λ to be compared with) continued geometrically (×2.5) to 0.5,
#: beyond the λ ≈ 0.2 that a high-rate estimate gives for 38 dB on H&E (MSE ≈ 3 / (2·ln 2·λ·255²)).
DEFAULT_LADDER = (0.0008, 0.002, 0.005, 0.013, 0.032, 0.08, 0.2, 0.5)


def ladder_of(architecture: str, lambdas: list[float] | tuple[float, ...]) -> list[float] | None:
    """The λ ladder a run trains: ``lambdas`` (or :data:`DEFAULT_LADDER`) for a variable-rate
    architecture, None for a single-rate one (which refuses a ladder)."""
    from wsicodec.models.registry import architecture_spec

    if not architecture_spec(architecture).variable_rate:
        if lambdas:
            raise ValueError(f"architecture {architecture} trains one λ (--lambda); "
                             f"--lambdas is for a variable-rate one")
        return None
    ladder = [float(v) for v in (lambdas or DEFAULT_LADDER)]
    if len(ladder) < 2 or any(not (v > 0 and math.isfinite(v)) for v in ladder) or ladder != sorted(set(ladder)):
        raise ValueError(f"λ ladder {ladder}: at least two positive values, increasing")
    return ladder


#: An MS-SSIM model's λ (loss ``bpp + λ·(1 − MS-SSIM)``) per MSE model's λ (``bpp + λ·255²·MSE``)
#: that spends about the same bits on H&E: the zoo's single-rate models at MS-SSIM λ 160 / 400 and
#: MSE λ 0.08 / 0.2 spend 1.1–1.4 bpp on the validation crops of their cards. It carries a
#: variable-rate model's gains to a ladder of the other distortion: a fine-tune's start, which
#: training then moves.
MS_SSIM_LAMBDA_PER_MSE = 2000.0


def in_units_of(ladder: list[float], distortion: str, target: str) -> list[float]:
    """``ladder`` (λ of a ``distortion`` loss) as the λ of a ``target`` loss that spend about the
    same bits (:data:`MS_SSIM_LAMBDA_PER_MSE`)."""
    if distortion == target:
        return list(ladder)
    factor = MS_SSIM_LAMBDA_PER_MSE if target == "ms-ssim" else 1 / MS_SSIM_LAMBDA_PER_MSE
    return [v * factor for v in ladder]


def default_widths(architecture: str) -> tuple[int, int]:
    """``(N, M)`` when none are given: the variable-rate architecture's own defaults (wide, for
    the high rates), 64 / 96 for the single-rate ones (the zoo's, chosen for CPU training)."""
    import inspect

    from wsicodec.models.registry import architecture_spec

    spec = architecture_spec(architecture)
    if not spec.variable_rate:
        return 64, 96
    defaults = inspect.signature(spec.build_inference).parameters
    return int(defaults["N"].default), int(defaults["M"].default)


def model_params(N: int, M: int, extra: dict[str, Any], ladder: list[float] | None) -> dict[str, Any]:
    """The architecture parameters a model card records (a variable-rate model's K: its ladder's length)."""
    params = {"N": N, "M": M, **extra}
    if ladder is not None:
        params["K"] = len(ladder)
    return params


def ladder_loss(model: nn.Module, x: torch.Tensor, ladder: list[float],
                distortion: str = "mse") -> dict[str, torch.Tensor]:
    """The batch's loss, each element at a random point of ``ladder``; ``bpp`` / ``mse`` (and
    ``feat``: 1 − MS-SSIM for a ``distortion="ms-ssim"`` model) are batch means (as for a
    single-rate model's log)."""
    B = x.shape[0]
    index = torch.randint(0, len(ladder), (B,))
    out = model(x, index.to(x.device))
    pixels = x.shape[2] * x.shape[3]
    bits = sum(torch.log(lk).reshape(B, -1).sum(1) for lk in out["likelihoods"].values()) / -math.log(2)
    bpp = bits / pixels
    mse = torch.mean((out["x_hat"] - x) ** 2, dim=(1, 2, 3))
    lmbda = torch.tensor(ladder, dtype=x.dtype, device=x.device)[index.to(x.device)]
    if distortion == "ms-ssim":
        from pytorch_msssim import ms_ssim

        # per element, on the unclamped output (as the single-rate MS-SSIM loss)
        feat = 1 - ms_ssim(out["x_hat"].float(), x, data_range=1.0, size_average=False)
        loss = torch.mean(bpp + lmbda * feat)
        return {"loss": loss, "bpp": bpp.mean(), "mse": mse.mean(), "feat": feat.mean()}
    loss = torch.mean(bpp + lmbda * 255**2 * mse)
    return {"loss": loss, "bpp": bpp.mean(), "mse": mse.mean(), "feat": torch.zeros((), device=x.device)}


def objective(lmbda: float, v: dict[str, float], distortion: str = "mse") -> float:
    """A point's rate-distortion objective on real bits and 8-bit pixels (validation figures
    ``v``), in the training loss's units."""
    if distortion == "ms-ssim":
        return lmbda * (1 - v["ms_ssim"]) + v["bpp"]
    return lmbda * 255**2 * (10 ** (-v["psnr"] / 10)) + v["bpp"]


def validate_ladder(model: nn.Module, images: list[torch.Tensor], ladder: list[float],
                    validate: Callable[..., dict[str, float]],
                    distortion: str = "mse") -> tuple[list[dict[str, float]], float]:
    """Every point's real bits, PSNR and MS-SSIM on ``images`` (``validate(model, images,
    point=k)``: the training loop's validation), and the mean of the points' objectives (what
    the learning-rate schedule and the best checkpoint follow)."""
    points = [validate(model, images, point=k) for k in range(len(ladder))]
    objectives = [objective(lmbda, v, distortion) for lmbda, v in zip(ladder, points, strict=True)]
    return points, sum(objectives) / len(ladder)
