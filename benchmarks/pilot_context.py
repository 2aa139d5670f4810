"""Pilot: how many bits a context model saves on a shipped hyperprior's fixed transforms.

Two contexts, each adding to the hyper-decoder's mean and scale a correction computed from
latents already decoded (its last layer starts at zero, so training starts from exactly the
hyperprior's figures):

* ``checkerboard`` (He et al. 2021): the anchors (``(i + j)`` even) are coded first with the
  hyperprior's parameters; the others get ``e(h_s(ẑ), c(ŷ_anchor))``, ``c`` a k x k convolution
  over the anchors, ``e`` two 1x1 convolutions.
* ``channel`` (Minnen & Singh 2020): the latents in S slices of channels, coded in turn; slice
  ``s`` gets ``e_s(h_s(ẑ), ŷ_<s)``, a k x k convolution and a 1x1 one.

The context (and the model's own entropy parts: h_a, h_s, the side information's prior) trains
on the rate alone, the transforms frozen; the script prints the estimated bits per pixel (the
likelihoods of the rounded latents) on the validation crops against the unchanged model's. The
distortion is the same by construction: the decoded latents are ``round(y − μ) + μ`` either
way, and ``g_s`` does not change.

    python benchmarks/pilot_context.py TRAIN [TRAIN...] --val VAL --model hne-hp64-q4-v4 \
        --context checkerboard|channel --minutes 15
"""
from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import torch
from torch import nn

from wsicodec.models import load_model
from wsicodec.train.data import CropSampler, load_images
from wsicodec.train.loop import _val_images


def _zero_last(net: nn.Sequential) -> nn.Sequential:
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def anchor_mask(height: int, width: int) -> torch.Tensor:
    """``(1, 1, height, width)`` float mask, 1 at the anchors (``(i + j)`` even)."""
    i, j = torch.arange(height)[:, None], torch.arange(width)[None, :]
    return ((i + j) % 2 == 0).to(torch.float32)[None, None]


class CheckerboardContext(nn.Module):
    def __init__(self, M: int, hidden: int, kernel: int):
        super().__init__()
        self.context = nn.Conv2d(M, 2 * M, kernel, padding=kernel // 2)
        self.params = _zero_last(nn.Sequential(nn.Conv2d(4 * M, hidden, 1), nn.LeakyReLU(0.01),
                                               nn.Conv2d(hidden, 2 * M, 1)))

    def forward(self, hyper: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        mask = anchor_mask(hyper.shape[2], hyper.shape[3])
        corrected = hyper + self.params(torch.cat([hyper, self.context(y_hat * mask)], 1))
        return hyper * mask + corrected * (1 - mask)


class ChannelContext(nn.Module):
    def __init__(self, M: int, hidden: int, kernel: int, slices: int = 4):
        super().__init__()
        self.size = M // slices
        self.nets = nn.ModuleList(
            _zero_last(nn.Sequential(nn.Conv2d(2 * M + s * self.size, hidden, kernel, padding=kernel // 2),
                                     nn.LeakyReLU(0.01), nn.Conv2d(hidden, 2 * self.size, 1)))
            for s in range(1, slices))

    def forward(self, hyper: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        M, n = hyper.shape[1] // 2, self.size
        scales, means = list(hyper[:, :M].split(n, 1)), list(hyper[:, M:].split(n, 1))
        for s, net in enumerate(self.nets, start=1):
            ds, dm = net(torch.cat([hyper, y_hat[:, : s * n]], 1)).chunk(2, 1)
            scales[s], means[s] = scales[s] + ds, means[s] + dm
        return torch.cat(scales + means, 1)


def context_rate(model: nn.Module, context: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Likelihoods of ``y`` and ``z`` (noise in training, rounding in eval) with ``context``;
    the transforms run without gradients. The context sees the latents decoded before the ones
    it predicts, rounded around their hyperprior mean (exact for the checkerboard's anchors and
    the first slice; the later slices see theirs rounded around the hyperprior's mean too, a
    close stand-in in a pilot)."""
    with torch.no_grad():
        y = model.g_a(x)
    z_hat, z_likelihoods = model.entropy_bottleneck(model.h_a(y))
    hyper = model.h_s(z_hat)
    _, means = hyper.chunk(2, 1)
    y_hat = torch.round(y - means).detach() + means
    scales, means = context(hyper, y_hat).chunk(2, 1)
    _, y_likelihoods = model.gaussian_conditional(y, scales, means=means)
    return {"y": y_likelihoods, "z": z_likelihoods}


def bits(likelihoods: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(-torch.log2(v.clamp_min(1e-9)).sum() for v in likelihoods.values())


@torch.no_grad()
def val_bpp(model, context, images) -> tuple[float, float]:
    """Estimated bpp of y and of z over all validation crops."""
    model.eval()
    context.eval()
    by, bz, px = 0.0, 0.0, 0
    for x in images:
        lk = context_rate(model, context, x)
        by += float(bits({"y": lk["y"]}))
        bz += float(bits({"z": lk["z"]}))
        px += x.shape[2] * x.shape[3]
    model.train()
    context.train()
    return by / px, bz / px


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="+")
    ap.add_argument("--val", required=True)
    ap.add_argument("--model", default="hne-hp64-q4-v4")
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--val-every", type=int, default=500)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--val-crop", type=int, default=512)
    ap.add_argument("--context", choices=("checkerboard", "channel"), default="checkerboard")
    ap.add_argument("--slices", type=int, default=4, help="channel context: slices of the latents")
    ap.add_argument("--kernel", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--entropy-lr", type=float, default=1e-4, help="h_a, h_s and the prior of z (0: frozen)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model, card = load_model(args.model, trainable=True)
    M = int(model.g_a[-1].out_channels)
    context = (CheckerboardContext(M, args.hidden, args.kernel) if args.context == "checkerboard"
               else ChannelContext(M, args.hidden, args.kernel, args.slices))
    for p in list(model.g_a.parameters()) + list(model.g_s.parameters()):
        p.requires_grad_(False)
    groups = [{"params": list(context.parameters()), "lr": args.lr}]
    entropy = [p for n, p in model.named_parameters()
               if not n.startswith(("g_a.", "g_s.")) and not n.endswith(".quantiles")]
    if args.entropy_lr > 0:
        groups.append({"params": entropy, "lr": args.entropy_lr})
    else:
        for p in entropy:
            p.requires_grad_(False)
    opt = torch.optim.Adam(groups)
    aux_opt = torch.optim.Adam([p for n, p in model.named_parameters() if n.endswith(".quantiles")], lr=1e-3)

    sampler = CropSampler(load_images(args.data), args.patch, seed=0)
    images = _val_images([args.val], args.val_crop)
    base_y, base_z = val_bpp(model, context, images)
    print(f"{args.model}: {len(images)} validation crops of {args.val_crop} px; "
          f"hyperprior alone {base_y + base_z:.4f} bpp (y {base_y:.4f}, z {base_z:.4f})", flush=True)
    rows = [{"step": 0, "bpp": base_y + base_z, "y": base_y, "z": base_z, "saving_pct": 0.0}]
    start, step = time.process_time(), 0
    while True:
        x = sampler.batch_at(step, args.batch)
        lk = context_rate(model, context, x)
        loss = bits(lk) / (x.shape[0] * x.shape[2] * x.shape[3])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        aux_opt.zero_grad(set_to_none=True)
        model.aux_loss().backward()
        aux_opt.step()
        step += 1
        done = time.process_time() - start >= 60 * args.minutes
        if step % args.val_every == 0 or done:
            y, z = val_bpp(model, context, images)
            saving = 100 * (1 - (y + z) / (base_y + base_z))
            rows.append({"step": step, "bpp": y + z, "y": y, "z": z, "saving_pct": saving})
            per_step = (time.process_time() - start) / step
            print(f"step {step}: {y + z:.4f} bpp (y {y:.4f}, z {z:.4f}), {saving:+.2f} % saved; "
                  f"train loss {float(loss.detach()):.4f}; {per_step:.2f} s/step", flush=True)
        if done or not math.isfinite(float(loss.detach())):
            break
    if args.log:
        with args.log.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows({k: (f"{v:.5f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    best = max(rows, key=lambda r: r["saving_pct"])
    print(f"best: {best['saving_pct']:.2f} % saved at step {best['step']}")


if __name__ == "__main__":
    main()
