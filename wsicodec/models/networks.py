"""The registered architectures in the form that runs a trained model (compress, decompress, the
store's codec): plain torch layers under compressai's parameter names, so a shipped state dict
loads into them as it is, and the frozen entropy tables as buffers.

Why not compressai's own modules: importing the ``compressai`` package imports torch_geometric,
torch._dynamo, scipy.stats and matplotlib, ~270 MiB of resident memory and 2-4 s in every process
that does it (the main process, each entropy-coder process, any fresh process that opens a store
through zarr) for nothing a trained model runs. Training builds compressai's modules
(:func:`wsicodec.models.build_model`), whose layers, names and arithmetic these follow;
``tests/test_networks.py`` checks both give the same numbers bit for bit.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def conv(cin: int, cout: int, kernel: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)


def deconv(cin: int, cout: int, kernel: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, kernel, stride=stride, output_padding=stride - 1, padding=kernel // 2)


class _LowerBound(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("bound", torch.zeros(1))


class NonNegative(nn.Module):
    """GDN's reparametrisation of β and γ: ``max(x, bound)² − pedestal`` (stored values → used)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("pedestal", torch.zeros(1))
        self.lower_bound = _LowerBound()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.max(x, self.lower_bound.bound) ** 2 - self.pedestal


class GDN(nn.Module):
    """Generalized divisive normalization (Ballé et al. 2016) and its inverse:
    ``y = x / sqrt(β + γ·x²)`` (inverse: ``x · sqrt(β + γ·x²)``), β and γ stored reparametrised."""

    def __init__(self, channels: int, inverse: bool = False):
        super().__init__()
        self.inverse = bool(inverse)
        self.beta = nn.Parameter(torch.ones(channels))
        self.gamma = nn.Parameter(torch.zeros(channels, channels))
        self.beta_reparam = NonNegative()
        self.gamma_reparam = NonNegative()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C = x.shape[1]
        gamma = self.gamma_reparam(self.gamma).reshape(C, C, 1, 1)
        return divisive_normalization(x, self.beta_reparam(self.beta), gamma, self.inverse)


def divisive_normalization(x: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor, inverse: bool) -> torch.Tensor:
    """GDN's arithmetic with the used β (C,) and γ (C, C, 1, 1): the same operations as
    compressai's, with fewer full-size temporaries (the same numbers bit for bit, tested)."""
    norm = nn.functional.conv2d(x * x, gamma, beta)
    if torch.is_grad_enabled() and norm.requires_grad:  # autograd keeps the intermediates: no in-place
        return (norm.sqrt() if inverse else norm.rsqrt()) * x
    norm = norm.sqrt_() if inverse else norm.rsqrt_()
    return norm.mul_(x)


class FrozenEntropyModel(nn.Module):
    """A frozen entropy model: the quantized CDFs, their lengths and offsets (and, for the
    factorized prior, the learned quantiles whose middle one is each channel's median)."""

    def __init__(self, names: tuple[str, ...]):
        super().__init__()
        for n in names:
            self.register_buffer(n, torch.zeros(0))

    def _get_medians(self) -> torch.Tensor:
        return self.quantiles[:, :, 1:2]


FACTORIZED_TABLES = ("_offset", "_quantized_cdf", "_cdf_length", "quantiles")
GAUSSIAN_TABLES = ("_offset", "_quantized_cdf", "_cdf_length", "scale_table")


def _g_a(N: int, M: int) -> nn.Sequential:
    return nn.Sequential(conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M))


def _g_s(N: int, M: int) -> nn.Sequential:
    return nn.Sequential(deconv(M, N), GDN(N, inverse=True), deconv(N, N), GDN(N, inverse=True),
                         deconv(N, N), GDN(N, inverse=True), deconv(N, 3))


class Factorized(nn.Module):
    """bmshj2018-factorized (Ballé et al. 2018): g_a, g_s and a factorized prior."""

    def __init__(self, N: int = 128, M: int = 192):
        super().__init__()
        self.g_a, self.g_s = _g_a(N, M), _g_s(N, M)
        self.entropy_bottleneck = FrozenEntropyModel(FACTORIZED_TABLES)


class MeanScale(Factorized):
    """mbt2018-mean (Minnen et al. 2018): the same g_a / g_s, h_a / h_s predicting a Gaussian mean
    and scale for every latent, the factorized prior now on the side information z. ``h_kernel``:
    the kernel of ``h_s``'s last layer (3 as published; 1 for a cheaper integer hyper-decoder,
    whose float64 sums of that layer are most of its work at 3x3)."""

    def __init__(self, N: int = 64, M: int = 96, h_kernel: int = 3):
        super().__init__(N, M)
        lrelu = nn.LeakyReLU  # inplace as in training: the same values
        self.h_a = nn.Sequential(conv(M, N, 3, 1), lrelu(inplace=True), conv(N, N), lrelu(inplace=True), conv(N, N))
        self.h_s = nn.Sequential(deconv(N, M), lrelu(inplace=True), deconv(M, M * 3 // 2), lrelu(inplace=True),
                                 conv(M * 3 // 2, M * 2, h_kernel, 1))
        self.gaussian_conditional = FrozenEntropyModel(GAUSSIAN_TABLES)


class GainedMeanScale(nn.Module):
    """A variable-rate mean-scale hyperprior with gain units (Cui et al. 2021): ``K`` operating
    points, each a learned per-channel gain ``exp(log_gain[k])`` applied to the analysis's latents
    before quantization and an inverse gain ``exp(log_inverse_gain[k])`` applied to the quantized
    latents before the synthesis. ``h_s`` predicts the mean and scale of the gained latents, so
    the integer hyper-decoder and the chunk codec are those of :class:`MeanScale`.

    Widths: ``N`` for the analysis and the hyper-encoder, ``M`` latents, ``H`` for the
    hyper-decoder's hidden layers (its last layer a 1x1 convolution: the integer hyper-decoder
    runs on every decode, in float64), ``N_s1`` for the synthesis's first layer (at 1/8 scale:
    4·N_s1 values per 16x16 block, at least the M latents) and ``N_s`` for its finer layers,
    where most of its multiply-adds are. The gains themselves are not applied here but by the
    caller (:class:`wsicodec.engine.Transforms`), from a :class:`wsicodec.models.rates.RatePoint`."""

    def __init__(self, N: int = 128, M: int = 320, N_s1: int = 96, N_s: int = 48, H: int = 192, K: int = 8):
        super().__init__()
        self.g_a, self.g_s = _g_a(N, M), tapered_g_s(M, N_s1, N_s)
        lrelu = nn.LeakyReLU
        self.h_a = nn.Sequential(conv(M, N, 3, 1), lrelu(inplace=True), conv(N, N), lrelu(inplace=True), conv(N, N))
        self.h_s = _gained_h_s(N, M, H)
        self.log_gain = nn.Parameter(torch.zeros(K, M))
        self.log_inverse_gain = nn.Parameter(torch.zeros(K, M))
        self.entropy_bottleneck = FrozenEntropyModel(FACTORIZED_TABLES)
        self.gaussian_conditional = FrozenEntropyModel(GAUSSIAN_TABLES)


def tapered_g_s(M: int, N1: int, N: int) -> nn.Sequential:
    """bmshj2018's synthesis with its first layer ``N1`` wide and the others ``N`` wide."""
    return nn.Sequential(deconv(M, N1), GDN(N1, inverse=True), deconv(N1, N), GDN(N, inverse=True),
                         deconv(N, N), GDN(N, inverse=True), deconv(N, 3))


def _gained_h_s(N: int, M: int, H: int) -> nn.Sequential:
    lrelu = nn.LeakyReLU
    return nn.Sequential(deconv(N, H), lrelu(inplace=True), deconv(H, H), lrelu(inplace=True), conv(H, 2 * M, 1, 1))


def load_weights(net: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a trained (``update()``'d) state dict into ``net``: every parameter and table ``net``
    has must be in it with its shape (tables take the state's shapes); keys ``net`` does not run
    (the training-only parts of the entropy models) are left out. Raises ``ValueError`` when one
    is missing or of another shape."""
    own = net.state_dict()
    for key in own:
        if key not in state:
            raise ValueError(f"weights lack {key!r}")
    tables = {n for n, m in net.named_modules() if isinstance(m, FrozenEntropyModel)}
    for key, value in own.items():
        owner, _, attr = key.rpartition(".")
        if owner in tables:  # a table's size comes from training
            getattr(net, owner).register_buffer(attr, torch.empty_like(state[key]))
        elif tuple(value.shape) != tuple(state[key].shape):
            raise ValueError(f"weights' {key!r} is {tuple(state[key].shape)}, the architecture's {tuple(value.shape)}")
    net.load_state_dict({k: state[k] for k in own}, strict=True)
    return net.eval().requires_grad_(False)
