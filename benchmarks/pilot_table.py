"""The high-rate pilot's table (benchmarks/pilot_highrate.sh): each run's last validation, one
row per operating point (a variable-rate run: every point; rows of equal λ side by side)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path


def last_validation(run: Path) -> list[dict]:
    """The rows of the last step in ``run/val_log.csv`` (one per point of a variable-rate run)."""
    with open(run / "val_log.csv") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]["step"]
    return [r for r in rows if r["step"] == last]


def main(runs: list[str]) -> None:
    import json

    print("| run | architecture | λ | steps | train min | bpp | PSNR (dB) | MS-SSIM | RD objective ↓ |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in map(Path, runs):
        if not (run / "val_log.csv").exists():
            print(f"| {run.name} | (no validation) | | | | | | | |")
            continue
        arch = "?"
        for f in ("weights.pt", "checkpoint.pt"):
            if (run / f).exists():
                import torch

                cfg = torch.load(run / f, map_location="cpu", weights_only=False)["config"]
                arch = f"{cfg['architecture']} {json.dumps({'N': cfg['N'], 'M': cfg['M'], **cfg.get('params', {})})}"
                lmbda = cfg["lmbda"]
                break
        for r in last_validation(run):
            lam = r.get("lambda") or lmbda
            label = run.name + ("@" + r["point"] if r.get("point") else "")
            print(f"| {label} | {arch} | {float(lam):g} | {r['step']} | {r['train_minutes']} | "
                  f"{float(r['bpp']):.3f} | {float(r['psnr']):.2f} | {float(r['ms_ssim']):.4f} | "
                  f"{float(r['objective']):.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
