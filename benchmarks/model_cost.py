"""Multiply-adds per pixel of each part of a registered architecture (torch's flop counter, which
counts every convolution, GDN's included, as 2 flops per multiply-add), and optionally the
synthesis's measured speed on this CPU.

    python benchmarks/model_cost.py mbt2018-mean N=64 M=96
    python benchmarks/model_cost.py mbt2018-mean-gain N=128 M=320 N_s=64 H=192 K=8 --time
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from wsicodec.models.registry import ARCHITECTURES


def macs_per_pixel(module: torch.nn.Module, x: torch.Tensor, pixels: int) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() / 2 / pixels


def cost(architecture: str, params: dict, side: int = 256) -> dict:
    net = ARCHITECTURES[architecture].build_inference(**params).eval()
    s = ARCHITECTURES[architecture].stride
    x = torch.rand(1, 3, side, side)
    with torch.no_grad():
        y = net.g_a(x)
    px = side * side
    out = {"g_a": macs_per_pixel(net.g_a, x, px), "g_s": macs_per_pixel(net.g_s, y, px)}
    if hasattr(net, "h_s"):
        with torch.no_grad():
            z = net.h_a(y)
        out["h_a"] = macs_per_pixel(net.h_a, y, px)
        out["h_s"] = macs_per_pixel(net.h_s, z, px)
    out["latents_per_pixel"] = y.shape[1] / s**2
    return {k: round(v, 3 if k == "latents_per_pixel" else 1) for k, v in out.items()}


def synthesis_mpx_per_s(architecture: str, params: dict, side: int = 512, batch: int = 2, repeat: int = 3) -> float:
    """fp32 synthesis of ``batch`` windows of ``side`` px, channels-last, on this process's threads."""
    from wsicodec.engine import inference_transform

    net = ARCHITECTURES[architecture].build_inference(**params).eval()
    g_s = inference_transform(net.g_s).to(memory_format=torch.channels_last)
    s = ARCHITECTURES[architecture].stride
    y = torch.randn(batch, net.g_s[0].in_channels, side // s, side // s).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        g_s(y)
        t = time.perf_counter()
        for _ in range(repeat):
            g_s(y)
        dt = (time.perf_counter() - t) / repeat
    return batch * side * side / dt / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("architecture", choices=sorted(ARCHITECTURES))
    ap.add_argument("params", nargs="*", help="KEY=INT, e.g. N=64 M=96")
    ap.add_argument("--time", action="store_true", help="also time the fp32 synthesis on this CPU")
    args = ap.parse_args()
    params = {k: int(v) for k, v in (p.split("=", 1) for p in args.params)}
    out = {"architecture": args.architecture, "params": params, "macs_per_pixel": cost(args.architecture, params)}
    if args.time:
        out["synthesis_fp32_mpx_per_s"] = round(synthesis_mpx_per_s(args.architecture, params), 2)
        out["threads"] = torch.get_num_threads()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
