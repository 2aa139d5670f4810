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
    and scale for every latent, the factorized prior now on the side information z."""

    def __init__(self, N: int = 64, M: int = 96):
        super().__init__(N, M)
        lrelu = nn.LeakyReLU  # inplace as in training: the same values
        self.h_a = nn.Sequential(conv(M, N, 3, 1), lrelu(inplace=True), conv(N, N), lrelu(inplace=True), conv(N, N))
        self.h_s = nn.Sequential(deconv(N, M), lrelu(inplace=True), deconv(M, M * 3 // 2), lrelu(inplace=True),
                                 conv(M * 3 // 2, M * 2, 3, 1))
        self.gaussian_conditional = FrozenEntropyModel(GAUSSIAN_TABLES)


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
