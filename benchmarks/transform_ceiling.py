"""What limits a model at high rate: the PSNR its transforms reach without quantization, with
rounding only (no entropy coding), and with every latent channel from ``--keep`` on set to zero
(how much a widened model's new latents carry), on the centre crops of the validation images.

    python benchmarks/transform_ceiling.py --val $HNE/val weights/hne-hp64-q6-v2.pt runs/vbr128_top [--keep 96]

A shipped ``.pt`` is read with its model card; a run folder from its checkpoint (or weights.pt).
A variable-rate model is measured at its top operating point. Prints one JSON line per model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from wsicodec.models import build_model, list_models
from wsicodec.train.loop import Trainer, _val_images, psnr8, transform_ceiling


def load(path: Path, val: list[str]) -> tuple[torch.nn.Module, int | None]:
    if path.is_dir():
        t = Trainer.from_checkpoint(path, data=val, val=[], device="cpu")
        return t.model.eval(), t.step
    card = next(c for c in list_models(path.parent) if c.name == path.stem)
    model = build_model(card.architecture, **card.params)
    state = torch.load(path, map_location="cpu", weights_only=False)
    torch.nn.Module.load_state_dict(model, {k: v for k, v in state.items() if k.startswith(("g_a.", "g_s.", "log_"))},
                                    strict=False)
    return model.eval(), None


@torch.no_grad()
def measure(model: torch.nn.Module, images: list[torch.Tensor], keep: int | None) -> dict[str, float]:
    point = model.K - 1 if hasattr(model, "gains") else None
    gain, inverse = model.gains(point) if point is not None else (1.0, 1.0)
    rounded, kept = [], []
    for x in images:
        y = model.g_a(x) * gain
        x8 = (x * 255).round()
        rounded.append(psnr8(x8, (model.g_s(torch.round(y) * inverse).clamp(0, 1) * 255).round()))
        if keep is not None:
            y = y.clone()
            y[:, keep:] = 0
            kept.append(psnr8(x8, (model.g_s(y * inverse).clamp(0, 1) * 255).round()))
    out = {"point": point, "psnr_unquantized": transform_ceiling(model, images, [point])[0],
           "psnr_rounded": sum(rounded) / len(rounded)}
    if kept:
        out[f"psnr_unquantized_first_{keep}_latents"] = sum(kept) / len(kept)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path, help="shipped .pt files or run folders")
    ap.add_argument("--val", required=True)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--keep", type=int, default=None, help="zero the latent channels from this one on")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    images = _val_images([args.val], args.crop)
    for path in args.models:
        model, step = load(path, [args.val])
        row = {"model": str(path), "step": step, **measure(model, images, args.keep)}
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))


if __name__ == "__main__":
    main()
