"""An integer-exact hyper-decoder: the same numbers on every machine.

A hyperprior's decoder predicts, from the side information ``ẑ``, the mean and scale of every
latent; the entropy coder's tables are chosen from them. Encoder and decoder must agree on them
bit for bit, which float convolutions do not promise across devices, BLAS libraries or batch
sizes. :class:`IntegerHyperDecoder` is a fixed-point version of a float ``h_s`` that is a pure
function of the weights file (docs/format.md, "Integer hyper-decoder"):

* weights ``W = round(w · 2^WEIGHT_BITS)``, biases ``B = round(b · 2^(WEIGHT_BITS+ACT_BITS))``
  (scaling by a power of two is exact in IEEE floats, and round-half-to-even is defined);
* activations are integers in units of ``2^-ACT_BITS``, clamped to ``±ACT_LIMIT``;
* a convolution is ``floor((Σ W·a + B) / 2^WEIGHT_BITS)``; LeakyReLU(0.01) is ``floor(a / 100)``
  for negative ``a``.

The sums are computed as float64 matrix products of integers whose partial sums stay below 2^53
(checked when the decoder is built), so every BLAS and every summation order gives the exact
integer result. :class:`IntegerHyperDecoder` computes them with numpy (the CPU: the chunk codec);
:class:`DeviceHyperDecoder` the same arithmetic with torch on any device, in batches (a GPU
encoding a store), and checks itself against the numpy one before use.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_BITS = 16
ACT_BITS = 10
ACT_LIMIT = 1 << 26
_EXACT = float(1 << 53)


@dataclass(frozen=True)
class _Layer:
    kind: str                    # "conv" | "convT" | "leaky" | "relu"
    weight: np.ndarray | None = None   # float64 integer-valued (out, in*k*k) for conv, (in, out*k*k) for convT
    bias: np.ndarray | None = None     # int64 (out,)
    k: int = 0
    stride: int = 1
    pad: int = 0
    out_pad: int = 0
    c_out: int = 0


def _quantize(w: np.ndarray, bits: int) -> np.ndarray:
    return np.rint(np.asarray(w, np.float64) * float(1 << bits))


class IntegerHyperDecoder:
    """Fixed-point ``h_s``: integer ``ẑ`` (units of ``2^-ACT_BITS``) -> integer outputs (same units)."""

    def __init__(self, h_s: nn.Sequential):
        layers: list[_Layer] = []
        for m in h_s:
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                if m.groups != 1 or m.dilation != (1, 1) or m.kernel_size[0] != m.kernel_size[1]:
                    raise ValueError(f"integer hyper-decoder: unsupported layer {m}")
                k, s, p = m.kernel_size[0], m.stride[0], m.padding[0]
                w = _quantize(m.weight.detach().cpu().numpy(), WEIGHT_BITS)
                b = _quantize(m.bias.detach().cpu().numpy(), WEIGHT_BITS + ACT_BITS).astype(np.int64)
                if isinstance(m, nn.Conv2d):  # weight (out, in, k, k)
                    bound = np.abs(w).reshape(w.shape[0], -1).sum(1)
                    layers.append(_Layer("conv", w.reshape(w.shape[0], -1), b, k, s, p, 0, w.shape[0]))
                else:                          # weight (in, out, k, k)
                    # an output sums at most ceil(k/s)^2 taps of each input channel
                    taps = -(-k // s)
                    bound = np.abs(w).max(axis=(2, 3)).sum(0) * taps * taps
                    layers.append(_Layer("convT", w.reshape(w.shape[0], -1).T.copy(), b, k, s, p,
                                         m.output_padding[0], w.shape[1]))
                if float((bound * ACT_LIMIT + np.abs(b)).max()) >= _EXACT:
                    raise ValueError("integer hyper-decoder: weights too large for exact float64 sums")
            elif isinstance(m, nn.LeakyReLU):
                if m.negative_slope != 0.01:
                    raise ValueError(f"integer hyper-decoder: LeakyReLU slope {m.negative_slope} (0.01 only)")
                layers.append(_Layer("leaky"))
            elif isinstance(m, nn.ReLU):
                layers.append(_Layer("relu"))
            else:
                raise ValueError(f"integer hyper-decoder: unsupported layer {type(m).__name__}")
        self.layers = layers

    def __call__(self, z: np.ndarray) -> np.ndarray:
        """int64 (B, C, h, w) in units of 2^-ACT_BITS -> int64 (B, C_out, H, W) in the same units."""
        a = np.clip(np.asarray(z, np.int64), -ACT_LIMIT, ACT_LIMIT)
        for layer in self.layers:
            if layer.kind == "leaky":
                a = np.where(a < 0, np.floor_divide(a, 100), a)
            elif layer.kind == "relu":
                a = np.maximum(a, 0)
            else:
                acc = _conv(a, layer) if layer.kind == "conv" else _conv_transpose(a, layer)
                acc += layer.bias[None, :, None, None]
                a = np.clip(acc >> WEIGHT_BITS, -ACT_LIMIT, ACT_LIMIT)  # arithmetic shift: floor
        return a


def _conv(a: np.ndarray, layer: _Layer) -> np.ndarray:
    B, C, H, W = a.shape
    k, s, p = layer.k, layer.stride, layer.pad
    if k == 1 and s == 1 and p == 0:  # a 1x1 convolution is one matrix product, no columns to gather
        cols = a.reshape(B, C, H * W).astype(np.float64)
        return np.matmul(layer.weight, cols).astype(np.int64).reshape(B, layer.c_out, H, W)
    padded = np.pad(a, ((0, 0), (0, 0), (p, p), (p, p))).astype(np.float64)
    win = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    Ho, Wo = win.shape[2], win.shape[3]
    cols = win.transpose(0, 1, 4, 5, 2, 3).reshape(B, C * k * k, Ho * Wo)
    return np.matmul(layer.weight, cols).astype(np.int64).reshape(B, layer.c_out, Ho, Wo)


def _conv_transpose(a: np.ndarray, layer: _Layer) -> np.ndarray:
    B, C, H, W = a.shape
    # every input pixel spreads a k x k patch of each output channel, s pixels apart; numpy's
    # float64 product is the faster one on a CPU, the patches are then added as on any device
    patches = np.matmul(layer.weight, a.reshape(B, C, H * W).astype(np.float64))  # (B, out*k*k, H*W)
    return _fold_patches(torch.from_numpy(patches), layer, H, W).numpy()


def _fold_patches(patches: torch.Tensor, layer: _Layer, H: int, W: int) -> torch.Tensor:
    """A transposed convolution's output from its ``(B, out*k*k, H*W)`` float64 patches: col2im
    adds them up (every partial sum is an integer below 2^53, checked: exact in any order), then
    the padding is cropped; int64."""
    k, s, p = layer.k, layer.stride, layer.pad
    full = F.fold(patches, ((H - 1) * s + k, (W - 1) * s + k), k, stride=s).to(torch.int64)
    Ho = (H - 1) * s - 2 * p + k + layer.out_pad
    Wo = (W - 1) * s - 2 * p + k + layer.out_pad
    out = torch.zeros((patches.shape[0], layer.c_out, Ho, Wo), dtype=torch.int64, device=patches.device)
    h, w = min(Ho, full.shape[2] - p), min(Wo, full.shape[3] - p)
    out[:, :, :h, :w] = full[:, :, p : p + h, p : p + w]
    return out


class DeviceHyperDecoder:
    """:class:`IntegerHyperDecoder`'s arithmetic in torch on ``device`` (float64 matrix products of
    integers: unfold / fold and ``matmul``, never a convolution algorithm that could round, such
    as Winograd or FFT). Same input and output as the numpy decoder, as int64 tensors."""

    def __init__(self, reference: IntegerHyperDecoder, device: torch.device | str):
        self.device = torch.device(device)
        self.layers = reference.layers
        self.params = [(torch.from_numpy(layer.weight).to(self.device), torch.from_numpy(layer.bias).to(self.device))
                       if layer.weight is not None else None for layer in self.layers]

    @torch.inference_mode()
    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        a = z.to(self.device, torch.int64).clamp(-ACT_LIMIT, ACT_LIMIT)
        for layer, wb in zip(self.layers, self.params, strict=True):
            if layer.kind == "leaky":
                a = torch.where(a < 0, torch.div(a, 100, rounding_mode="floor"), a)
            elif layer.kind == "relu":
                a = a.clamp_min(0)
            else:
                weight, bias = wb
                acc = _conv_torch(a, layer, weight) if layer.kind == "conv" else _conv_transpose_torch(a, layer, weight)
                acc += bias[None, :, None, None]
                a = torch.div(acc, 1 << WEIGHT_BITS, rounding_mode="floor").clamp_(-ACT_LIMIT, ACT_LIMIT)
        return a

    def agrees(self, reference: IntegerHyperDecoder, channels: int, seed: int = 0) -> bool:
        """Whether this device's results equal the numpy decoder's on random ``ẑ`` from small to
        the clamp limit (exact float64 arithmetic on this device, checked before it is trusted)."""
        rng = np.random.default_rng(seed)
        for bound in (1 << 12, 1 << 16, 1 << 20, ACT_LIMIT):
            z = rng.integers(-bound, bound, (2, channels, 4, 4))
            if not np.array_equal(self(torch.from_numpy(z)).cpu().numpy(), reference(z)):
                return False
        return True


def _conv_torch(a: torch.Tensor, layer: _Layer, weight: torch.Tensor) -> torch.Tensor:
    B, C, H, W = a.shape
    k, s, p = layer.k, layer.stride, layer.pad
    cols = F.unfold(a.to(torch.float64), k, padding=p, stride=s)  # (B, C*k*k, L), as _conv's columns
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    return torch.matmul(weight, cols).to(torch.int64).reshape(B, layer.c_out, Ho, Wo)


def _conv_transpose_torch(a: torch.Tensor, layer: _Layer, weight: torch.Tensor) -> torch.Tensor:
    B, C, H, W = a.shape
    patches = torch.matmul(weight, a.reshape(B, C, H * W).to(torch.float64))  # (B, out*k*k, H*W)
    return _fold_patches(patches, layer, H, W)
