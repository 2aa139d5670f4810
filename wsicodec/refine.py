"""Encoder effort: better latents for the same decoder.

The analysis transform proposes latents in one pass; the best latents for a tile are those that
minimise the model's own training objective (bits + λ · distortion) *after* quantization, and the
analysis only approximates them. At ``effort="high"`` the encoder searches for them, tile by
tile: it keeps the tile's side information (``ẑ``, hence every latent's Gaussian mean and scale,
exactly as the decoder derives them) and optimises the latents themselves by gradient descent
through the synthesis transform, with stochastic Gumbel annealing towards integer symbols
(Yang, Bamler & Mandt 2020, "Improving inference for neural image compression").

Nothing about decoding changes: the store holds the same kind of symbols, coded the same way,
and every reader decodes them as before. Only encoding is slower (``docs/performance.md``);
the gain in bytes at equal quality is in ``docs/benchmarks.md``.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from wsicodec.effort import Effort, EffortError

__all__ = ["LatentRefiner"]


#: the annealing of the rounding's temperature
_TAU_START, _TAU_END = 0.5, 0.03
#: a latent's probability is bounded below as in training (compressai's likelihood bound)
_LIKELIHOOD_BOUND = 1e-9
#: MS-SSIM's five scales with a 3-px window need sides above this (an 11-px window: above 160)
_MS_SSIM_MIN_SIDE = 32


def _lambda(card: Any, rate: Any) -> float:
    """The training λ of the operating point: the card's, or for a variable-rate model the
    trained points' λ interpolated geometrically like their gains."""
    if rate is None:
        if not card.lmbda:
            raise EffortError(f"model {card.name}: its card records no training lambda, which effort needs")
        return float(card.lmbda)
    lambdas = {int(p["index"]): p.get("lambda") for p in card.operating_points}
    low, high = lambdas.get(rate.index), lambdas.get(rate.index + 1, lambdas.get(rate.index))
    if not low or not high:
        raise EffortError(f"model {card.name}: operating point {rate.label} has no training lambda")
    return float(math.exp((1 - rate.t) * math.log(low) + rate.t * math.log(high)))


class LatentRefiner:
    """Optimises a hyperprior model's latents tile by tile (see the module's text).

    ``transforms``: the :class:`~wsicodec.engine.Transforms` that made the latents (model, device,
    operating point); ``effort``: the search's steps per tile and step size; ``background``: the store's background
    latents (M,), fixed point, which complete an edge tile's chunk beyond the canvas;
    ``chunk_shape(tx, ty)``: the latent rows and columns of tile (tx, ty)'s stored chunk.
    :meth:`refine` takes a batch of analysis windows and returns each tile's
    :class:`~wsicodec.codec.HyperSymbols`."""

    def __init__(self, transforms: Any, effort: Effort, background: np.ndarray,
                 chunk_shape: Callable[[int, int], tuple[int, int]]):
        from wsicodec.codec import hyper_entropy_model
        from wsicodec.engine import DeviceHyperSymbols

        card = transforms.card
        if card.spec.entropy_model != "gaussian-mean-scale":
            raise EffortError(f"model {card.name}: a higher effort needs a hyperprior model "
                              f"(this one is {card.spec.entropy_model}); use --effort standard")
        self.steps, self.learning_rate = int(effort.steps), float(effort.learning_rate)
        self.device = transforms.device
        self.stride = card.stride
        self.lmbda = _lambda(card, transforms.rate)
        self.distortion = card.distortion
        model = transforms.model
        self.g_s = transforms.g_s
        # ẑ, the means and the tables exactly as the chunk codec derives them: on the device when
        # its float64 products reproduce the integer hyper-decoder, else on the CPU
        self.hyper = transforms.hyper or DeviceHyperSymbols.checked(model, card, self.device)
        self.entropy_model = None if self.hyper is not None else hyper_entropy_model(
            {"name": card.name, "sha256": card.sha256}, model)
        self.unit = float(transforms.unit)
        table = model.gaussian_conditional.scale_table.detach().float()
        self.scale_table = table.to(self.device)  # the coder's σ of each table
        self.inverse_gain = transforms.inverse_gain
        self.background = torch.from_numpy(np.asarray(background, np.int32).reshape(1, -1, 1, 1))
        self.chunk_shape = chunk_shape

    def _distortion(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per tile ``(B,)``: λ-weighted as in training (255²·MSE, or 1 − MS-SSIM)."""
        if self.distortion == "ms-ssim":
            from pytorch_msssim import ms_ssim

            # MS-SSIM's five scales need sides above 160 px with its 11-px window
            win = 11 if min(x.shape[-2:]) > 160 else 3
            return 1 - ms_ssim(x_hat, x, data_range=1.0, size_average=False, win_size=win)
        return 255.0 ** 2 * torch.mean((x_hat - x) ** 2, dim=(1, 2, 3))

    def _side_information(self, y_fp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``ẑ`` symbols, Gaussian table and fixed-point mean of a batch of whole chunks, as the
        chunk codec computes them (on the device when its integer hyper-decoder is exact there)."""
        if self.hyper is not None:
            with torch.inference_mode():
                z_sym, _, index = self.hyper(y_fp)
                _, mean_fp = self.hyper.parameters(z_sym)
            return z_sym, index.long(), mean_fp
        parts = [self.entropy_model.symbols(t) for t in y_fp.cpu().numpy()]
        means = [self.entropy_model.parameters(p.z)[1] for p in parts]
        return tuple(torch.from_numpy(np.stack(a)).to(self.device) for a in (
            [p.z for p in parts], [p.index.astype(np.int64) for p in parts], means))

    def refine(self, pixels: Sequence[np.ndarray], latents: np.ndarray,
               boxes: Sequence[tuple[int, int, int, int]], tiles: Sequence[tuple[int, int]]) -> list[Any]:
        """``pixels``: analysis windows (uint8 ``(H, W, 3)``, one shape); ``latents``: their
        fixed-point latents ``(B, M, h, w)``; ``boxes[i]``: ``(oy, ox, h, w)``, where tile
        ``tiles[i]`` = ``(tx, ty)``'s latents sit in window ``i``'s. Returns each tile's
        :class:`~wsicodec.codec.HyperSymbols` (None for a tile left to the analysis's latents:
        one too small for MS-SSIM)."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, (box, tile) in enumerate(zip(boxes, tiles, strict=True)):
            groups[(tuple(box), tuple(self.chunk_shape(*tile)))].append(i)
        out: list[Any] = [None] * len(tiles)
        for (box, shape), members in groups.items():
            if self.distortion == "ms-ssim" and min(box[2:]) * self.stride <= _MS_SSIM_MIN_SIDE:
                continue
            x = np.stack([pixels[i] for i in members])
            refined = self._refine(x, np.asarray(latents)[members], box, shape, [tiles[i] for i in members])
            for i, symbols in zip(members, refined, strict=True):
                out[i] = symbols
        return out

    def _refine(self, pixels: np.ndarray, latents: np.ndarray, box: tuple[int, int, int, int],
                shape: tuple[int, int], tiles: Sequence[tuple[int, int]]) -> list[Any]:
        """Tiles with the same window box and chunk shape, as one batch (see :meth:`refine`).

        The chunk is what the store codes: the tile's latents, completed beyond the canvas with
        the background latents (an edge tile). Every latent of the chunk is optimised; those
        beyond the canvas are never decoded into pixels, so only their bits count."""
        from wsicodec.codec import HyperSymbols

        oy, ox, h, w = box
        s, dev, unit = self.stride, self.device, self.unit
        q = torch.from_numpy(np.ascontiguousarray(latents)).to(dev)
        B, M = q.shape[:2]
        chunk = self.background.to(dev).expand(B, M, *shape).clone()
        chunk[:, :, :h, :w] = q[:, :, oy:oy + h, ox:ox + w]
        z_sym, index, mean_fp = self._side_information(chunk)
        mean = mean_fp.double().div(unit).float()
        sigma = self.scale_table[index]
        window = q.float().div_(unit)  # the halo keeps the analysis's latents
        x = torch.from_numpy(pixels).to(dev).permute(0, 3, 1, 2).float().div_(255.0)
        target = x[:, :, oy * s:(oy + h) * s, ox * s:(ox + w) * s]
        pixels_per_tile = float(target[0, 0].numel())

        def objective(y: torch.Tensor, offsets: torch.Tensor, clamp: bool) -> torch.Tensor:
            """Per tile: bits of the chunk's latents ``y`` (``offsets``: ``y`` − mean) + λ · the
            distortion of the tile's pixels decoded from them inside the window's halo."""
            full = window.clone()
            full[:, :, oy:oy + h, ox:ox + w] = y[:, :, :h, :w]
            if self.inverse_gain is not None:
                full = full * self.inverse_gain
            x_hat = self.g_s(full)[:, :, oy * s:(oy + h) * s, ox * s:(ox + w) * s]
            bits = _bits(offsets, sigma).sum(dim=(1, 2, 3)) / pixels_per_tile
            return bits + self.lmbda * self._distortion(x_hat.clamp(0, 1) if clamp else x_hat, target)

        u = chunk.float().div(unit).requires_grad_(True)
        generators = [torch.Generator(device=dev).manual_seed((ty << 24) + tx) for tx, ty in tiles]
        optimiser = torch.optim.Adam([u], lr=self.learning_rate)
        with torch.enable_grad():
            for step in range(self.steps):
                tau = max(_TAU_START * math.exp(-4.0 * step / self.steps), _TAU_END)
                y_soft = mean + _annealed_round(u - mean, tau, generators)
                (u.grad,) = torch.autograd.grad(objective(y_soft, y_soft - mean, clamp=False).sum(), u)
                optimiser.step()
        with torch.inference_mode():
            def symbols_of(y: torch.Tensor) -> torch.Tensor:  # the chunk codec's rounding
                return torch.div(y - mean_fp + int(unit) // 2, int(unit), rounding_mode="floor")

            def cost(symbols: torch.Tensor) -> torch.Tensor:  # the objective of hard symbols
                y_hat = ((symbols * int(unit) + mean_fp).double() / unit).float()
                return objective(y_hat, symbols.float(), clamp=True)

            found = symbols_of(torch.round(u.detach() * unit).to(torch.int64))
            analysis = symbols_of(chunk.to(torch.int64))
            # a tile whose search ended worse than where it started keeps the analysis's symbols
            better = (cost(found) <= cost(analysis)).reshape(-1, 1, 1, 1)
            symbols = torch.where(better, found, analysis)
        z_np = z_sym.to(torch.int32).cpu().numpy()
        y_np = symbols.to(torch.int32).cpu().numpy()
        index_np = index.to(torch.uint8).cpu().numpy()
        return [HyperSymbols(z_np[j], y_np[j], index_np[j]) for j in range(B)]


def _annealed_round(v: torch.Tensor, tau: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Stochastic Gumbel annealing: ``v`` moved to ``floor(v)`` or ``floor(v) + 1`` by a
    Gumbel-softmax draw whose odds favour the nearer integer more as ``tau`` falls."""
    floor = torch.floor(v)
    r = (v - floor).clamp(1e-4, 1 - 1e-4)
    logits = torch.stack([-torch.atanh(r), -torch.atanh(1 - r)], dim=-1) / tau
    noise = torch.stack([torch.rand(logits.shape[1:], generator=g, device=v.device) for g in generators])
    gumbel = -torch.log(-torch.log(noise.clamp(1e-9, 1 - 1e-9)))
    return floor + torch.softmax(logits + gumbel, dim=-1)[..., 1]


def _bits(v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Bits of each latent ``v`` (relative to its mean) under a Gaussian of scale ``sigma``
    integrated over the quantization bin, as the range coder's tables model it."""
    v = v.abs()
    upper = torch.special.ndtr((0.5 - v) / sigma)
    lower = torch.special.ndtr((-0.5 - v) / sigma)
    return -torch.log2((upper - lower).clamp_min(_LIKELIHOOD_BOUND))
