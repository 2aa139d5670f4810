"""The variable-rate gained mean-scale hyperprior, as trained (compressai's layers and entropy
models). Its inference twin is :class:`wsicodec.models.networks.GainedMeanScale` (same parameter
names, the same numbers bit for bit, tested).

One model, ``K`` operating points (Cui et al. 2021, "Asymmetric Gained Deep Image Compression With
Continuous Rate Adaptation"): point ``k`` multiplies the analysis's latents by a learned
per-channel gain ``g_k = exp(log_gain[k])`` before quantization and the quantized latents by a
learned inverse gain ``g'_k = exp(log_inverse_gain[k])`` before the synthesis:

    y_g = g_a(x) · g_k,   z = h_a(y_g),   (σ, μ) = h_s(ẑ),   x̂ = g_s(ŷ_g · g'_k)

``h_s`` predicts the distribution of the gained latents themselves, so decoding the entropy-coded
latents needs no gain at all: the integer hyper-decoder of a single-rate hyperprior applies as it
is, and gains stay outside the part that must be exact across devices. Rates between two
neighbouring points come from geometric interpolation of their gains (:mod:`wsicodec.models.rates`).
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import GDN
from compressai.models import MeanScaleHyperprior
from compressai.models.utils import conv, deconv
from torch import nn

__all__ = ["GainedMeanScaleHyperprior", "initial_log_gains", "log_gains_for_ladder"]


def initial_log_gains(lambdas: Sequence[float]) -> torch.Tensor:
    """Log gains (K,) that start the points at their rates: at high rate a uniform quantizer's
    MSE is Δ²/12, and the rate-distortion optimum of ``bpp + λ·MSE`` has Δ² ∝ 1/λ, so point k's
    gain (1/Δ) starts at ``sqrt(λ_k / λ_ref)``, ``λ_ref`` the ladder's geometric middle."""
    logs = torch.tensor([math.log(v) for v in lambdas], dtype=torch.float64)
    return (0.5 * (logs - logs.mean())).float()


def log_gains_for_ladder(log_gains: torch.Tensor, lambdas: Sequence[float], new_lambdas: Sequence[float],
                         slope: float = 0.5) -> torch.Tensor:
    """A trained model's per-channel log gains (K, M) at ``lambdas`` carried to another λ ladder
    (K', M): piecewise linear in log λ between trained points; beyond the ends, the nearest end's
    gains moved by ``slope`` · Δ log λ (the high-rate slope of :func:`initial_log_gains`; ``-0.5``
    for the inverse gains), not the learned slope, which need not hold outside the trained range."""
    if len(lambdas) != log_gains.shape[0]:
        raise ValueError(f"{len(lambdas)} λ values for {log_gains.shape[0]} operating points")
    xs = [math.log(v) for v in lambdas]
    if any(b <= a for a, b in zip(xs[:-1], xs[1:], strict=True)):
        raise ValueError(f"λ ladder not increasing: {list(lambdas)}")
    rows = []
    for lam in new_lambdas:
        x = math.log(lam)
        if x <= xs[0] or x >= xs[-1]:
            end = 0 if x <= xs[0] else len(xs) - 1
            rows.append(log_gains[end] + slope * (x - xs[end]))
        else:
            k = bisect.bisect_right(xs, x) - 1
            t = (x - xs[k]) / (xs[k + 1] - xs[k])
            rows.append(log_gains[k] * (1 - t) + log_gains[k + 1] * t)
    return torch.stack(rows)


class GainedMeanScaleHyperprior(MeanScaleHyperprior):
    """compressai's mean-scale hyperprior with gain units; widths as in
    :class:`wsicodec.models.networks.GainedMeanScale`. ``forward(x, index)`` takes one operating
    point per batch element (``index``: int64 (B,)); ``compress`` / ``decompress`` one point."""

    def __init__(self, N: int = 128, M: int = 320, N_s1: int = 96, N_s: int = 48, H: int = 192, K: int = 8,
                 lambdas: Sequence[float] | None = None):
        super().__init__(N=N, M=M)
        self.g_a = nn.Sequential(conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M))
        self.g_s = nn.Sequential(deconv(M, N_s1), GDN(N_s1, inverse=True), deconv(N_s1, N_s), GDN(N_s, inverse=True),
                                 deconv(N_s, N_s), GDN(N_s, inverse=True), deconv(N_s, 3))
        self.h_s = nn.Sequential(deconv(N, H), nn.LeakyReLU(inplace=True), deconv(H, H), nn.LeakyReLU(inplace=True),
                                 conv(H, 2 * M, kernel_size=1, stride=1))
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None)
        start = initial_log_gains(lambdas) if lambdas else torch.zeros(K)
        if start.numel() != K:
            raise ValueError(f"{len(start)} λ values for {K} operating points")
        self.log_gain = nn.Parameter(start[:, None].repeat(1, M))
        self.log_inverse_gain = nn.Parameter(-start[:, None].repeat(1, M))
        self.K = K

    def gains(self, index: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """Gain and inverse gain of each element's point, shaped (B, M, 1, 1) (or (1, M, 1, 1))."""
        index = torch.as_tensor(index, device=self.log_gain.device).reshape(-1)
        return (torch.exp(self.log_gain[index])[:, :, None, None],
                torch.exp(self.log_inverse_gain[index])[:, :, None, None])

    def forward(self, x: torch.Tensor, index: torch.Tensor | int = 0) -> dict:
        gain, inverse = self.gains(index)
        y = self.g_a(x) * gain
        z = self.h_a(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        scales_hat, means_hat = self.h_s(z_hat).chunk(2, 1)
        y_hat, y_likelihoods = self.gaussian_conditional(y, scales_hat, means=means_hat)
        x_hat = self.g_s(y_hat * inverse)
        return {"x_hat": x_hat, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    def compress(self, x: torch.Tensor, index: int = 0) -> dict:
        gain, _ = self.gains(index)
        y = self.g_a(x) * gain
        z = self.h_a(y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        scales_hat, means_hat = self.h_s(z_hat).chunk(2, 1)
        indexes = self.gaussian_conditional.build_indexes(scales_hat)
        y_strings = self.gaussian_conditional.compress(y, indexes, means=means_hat)
        return {"strings": [y_strings, z_strings], "shape": z.size()[-2:]}

    def decompress(self, strings: list, shape, index: int = 0) -> dict:
        _, inverse = self.gains(index)
        z_hat = self.entropy_bottleneck.decompress(strings[1], shape)
        scales_hat, means_hat = self.h_s(z_hat).chunk(2, 1)
        indexes = self.gaussian_conditional.build_indexes(scales_hat)
        y_hat = self.gaussian_conditional.decompress(strings[0], indexes, means=means_hat)
        return {"x_hat": self.g_s(y_hat * inverse).clamp_(0, 1)}
