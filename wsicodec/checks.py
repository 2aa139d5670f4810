"""Measurements of the pipeline's own correctness, shared by tests and ``benchmarks/``."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from wsicodec.pipeline import compress
from wsicodec.store import WsiStore


def seam_check(image: str | Path, model: str | None = None, tile: int = 256,
               model_dir: Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """Tiled pipeline vs coding the whole image in one piece.

    For a hyperprior, whose side information is per chunk by design, the latents are compared
    up to half a quantization step, and the pixels with the store's latents decoded in one piece.

    Returns the share of latents that differ, PSNR / max abs difference / share of pixels off by
    more than 1 between the two reconstructions, and the same for pixels within 8 px of a tile
    border (where seams would show)."""
    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(tmp) / "seam.zarr"
        compress(image, store_path, model=model, tile=tile, skip_glass=False, model_dir=model_dir, device=device)
        with WsiStore(store_path, model_dir=model_dir, device=device) as s:
            W, H = s.dimensions
            from wsicodec.slide import open_input

            with open_input(image) as src:
                rgb = src.read_rgb(0, 0, W, H)
            cw, ch = s.grid.canvas
            canvas = np.empty((ch, cw, 3), np.uint8)
            canvas[:] = s.glass
            canvas[:H, :W] = rgb
            transforms = s.transforms
            q_whole = transforms.analysis(canvas[None])[0]
            rows, cols = s.grid.latent_shape  # a hyperprior store's array holds whole chunks
            q_tiled = np.asarray(s.latents[:, :rows, :cols]).astype(np.int32)
            if transforms.offset is None:
                # a hyperprior store holds ŷ = μ + round(y − μ) (fixed point), μ from each chunk's
                # side information: within half a step of the whole image's y where the tiled
                # analysis equals it; the whole reference decodes those latents in one piece
                differing = float(np.mean(np.abs(q_tiled - q_whole) > transforms.unit / 2))
                whole = transforms.synthesis(q_tiled[None])[0][:H, :W]
            else:
                differing = float(np.mean(q_whole != q_tiled))
                whole = transforms.synthesis(q_whole[None])[0][:H, :W]
            tiled = s.read_level0(0, 0, W, H)
            rx, ry, rw, rh = W // 5 + 3, H // 7 + 5, W // 2, H // 2
            region = s.read_level0(rx, ry, rw, rh)
    d = np.abs(whole.astype(np.int16) - tiled.astype(np.int16))
    border = np.zeros((H, W), bool)
    for k in range(tile, W, tile):
        border[:, max(k - 8, 0) : k + 8] = True
    for k in range(tile, H, tile):
        border[max(k - 8, 0) : k + 8, :] = True
    mse = float(np.mean(d.astype(np.float64) ** 2))
    mse_b = float(np.mean(d[border].astype(np.float64) ** 2)) if border.any() else 0.0
    psnr = lambda m: float("inf") if m == 0 else 10 * np.log10(255**2 / m)  # noqa: E731
    return {
        "image": str(image), "size": [W, H], "tile": tile,
        "latents_differing": differing,
        "psnr_db": psnr(mse), "max_abs_diff": int(d.max()), "share_off_by_more_than_1": float(np.mean(d > 1)),
        "border_psnr_db": psnr(mse_b), "border_max_abs_diff": int(d[border].max()) if border.any() else 0,
        "region_vs_full_max_abs_diff": int(np.abs(region.astype(np.int16) - tiled[ry : ry + rh, rx : rx + rw]).max()),
    }
