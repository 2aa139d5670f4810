"""Pilot: how much an encoder that optimises each image's latents saves on a shipped hyperprior.

The analysis transform predicts the latents in one pass; the decoder only ever sees the rounded
latents, so any latents that lower ``bpp + λ·255²·MSE`` for *this* image are as valid. The
script starts from ``g_a(x)`` and runs Adam on the latents ``y`` for a number of steps (the
side information follows, ``z = h_a(y)``, as the chunk codec computes it), then prints the
estimated bits (likelihoods of the rounded latents) and PSNR along the way. Rounding has no
gradient; ``--mode`` picks its stand-in: ``ste`` (straight-through), ``noise`` (uniform noise for
the rates, straight-through for the image, as in training) or ``sga`` (stochastic Gumbel
annealing, Yang et al. 2020). Nothing in the decoder changes.

    python benchmarks/pilot_refine.py TRAIN --offset 19 --every 25 --count 8 --model hne-hp64-q4-v4 \
        --mode noise|ste|sga --steps 100 --lr 0.001 --crop 256 --report 0,50,100
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from wsicodec.models import load_model
from wsicodec.train.data import find_inputs
from wsicodec.train.loop import _val_images


def ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def noisy(x: torch.Tensor) -> torch.Tensor:
    return x + torch.empty_like(x).uniform_(-0.5, 0.5)


class Annealed:
    """Stochastic Gumbel annealing (Yang et al. 2020): each value a random soft choice between
    its floor and its ceiling, the nearer one likelier, hardening as the temperature falls."""

    def __init__(self, steps: int, rate: float = 0.5):
        self.step, self.steps, self.rate = 0, steps, rate

    def tau(self) -> float:
        return min(0.5, 0.5 * math.exp(-self.rate * 10 * self.step / max(1, self.steps)))

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        lo = torch.floor(v).detach()
        frac = (v - lo).clamp(1e-4, 1 - 1e-4)
        tau = self.tau()
        logits = torch.stack([-torch.atanh(frac) / tau, -torch.atanh(1 - frac) / tau], 0)
        w = torch.nn.functional.gumbel_softmax(logits, tau=tau, hard=False, dim=0)
        return lo + w[1]


def coded(model, y: torch.Tensor, mode="exact") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bits of ẑ, bits of ŷ and the decoded image for latents ``y``: ``exact`` rounds as the codec
    does; ``ste`` rounds with a straight-through gradient; ``noise`` measures the rates with
    uniform noise for rounding (training's proxy) and decodes the straight-through rounding."""
    rnd = mode if callable(mode) else {"exact": torch.round, "ste": ste_round, "noise": noisy}[mode]
    eb, gc = model.entropy_bottleneck, model.gaussian_conditional
    z = model.h_a(y)
    med = eb._get_medians()
    z_hat = rnd(z - med) + med
    C = z_hat.shape[1]
    values = z_hat.permute(1, 0, 2, 3).reshape(C, 1, -1)  # the layout the prior's density takes
    z_lik = eb.likelihood_lower_bound(eb._likelihood(values)[0])
    z_bits = -torch.log2(z_lik).sum()
    scales, means = model.h_s(z_hat).chunk(2, 1)
    y_hat = rnd(y - means) + means
    y_lik = gc._likelihood(y_hat, scales, means)
    if mode == "noise":
        y_hat = ste_round(y - means) + means
    y_lik = gc.likelihood_lower_bound(y_lik)
    y_bits = -torch.log2(y_lik).sum()
    return z_bits, y_bits, model.g_s(y_hat)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("images", nargs="+", help="image files or folders")
    ap.add_argument("--every", type=int, default=1, help="of the sorted files, every N-th ...")
    ap.add_argument("--offset", type=int, default=0, help="... starting at this one ...")
    ap.add_argument("--count", type=int, default=None, help="... and this many")
    ap.add_argument("--model", default="hne-hp64-q4-v4")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--mode", default="ste", choices=("ste", "noise", "sga"))
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--lmbda", type=float, default=None, help="default: the model's")
    ap.add_argument("--report", default="0,25,50,100,200,400")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, card = load_model(args.model, trainable=True)
    model.requires_grad_(False)
    eb = model.entropy_bottleneck
    eb.update(force=True)
    lmbda = args.lmbda if args.lmbda is not None else card.lmbda
    report = {int(s) for s in args.report.split(",")}
    totals: dict[int, list[float]] = {}
    pixels = 0
    t0 = time.time()
    files = [str(p) for p in find_inputs(args.images)][args.offset :: args.every][: args.count]
    for x in _val_images(files, args.crop):
        n = x.shape[2] * x.shape[3]
        pixels += n
        with torch.no_grad():
            y0 = model.g_a(x)
        y = y0.clone().requires_grad_(True)
        opt = torch.optim.Adam([y], lr=args.lr)
        mode = Annealed(args.steps) if args.mode == "sga" else args.mode
        for step in range(args.steps + 1):
            if step in report:
                with torch.no_grad():
                    zb, yb, xh = coded(model, y)
                    mse = torch.mean(((xh.clamp(0, 1) * 255).round() - x * 255) ** 2).item()
                t = totals.setdefault(step, [0.0, 0.0])
                t[0] += float(zb + yb)
                t[1] += mse * n
            if step == args.steps:
                break
            zb, yb, xh = coded(model, y, mode)
            if args.mode == "sga":
                mode.step += 1
            loss = (zb + yb) / n + lmbda * 255**2 * torch.mean((xh - x) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for step in sorted(totals):
        bits, se = totals[step]
        mse = se / pixels
        print(f"{args.model} step {step:4d}: {bits / pixels:.4f} bpp  {10 * math.log10(255**2 / mse):.3f} dB  "
              f"objective {bits / pixels + lmbda * mse:.4f}")
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
