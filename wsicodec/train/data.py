"""Training data: random level-0 crops of H&E images and slides, with flips, rotations and
colour / H&E stain jitter."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wsicodec.errors import TrainError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp"}

# Ruifrok & Johnston H&E-DAB optical-density stain vectors (rows: H, E, DAB).
_HED_FROM_RGB = np.linalg.inv(
    np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
)
_RGB_FROM_HED = np.linalg.inv(_HED_FROM_RGB)


def find_inputs(paths: list[str | Path]) -> list[Path]:
    """Image files and slides named directly or found in folders (sorted, for reproducibility)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            suffixes = IMAGE_SUFFIXES | {".svs", ".ndpi", ".mrxs", ".scn", ".dcm"}
            found += sorted(q for q in p.rglob("*") if q.suffix.lower() in suffixes)
        elif p.exists():
            found.append(p)
        else:
            raise TrainError(f"{p}: no such file or folder")
    return found


def load_rgb(path: Path, max_pixels: int = 64_000_000, tiles_from_slide: int = 64, crop: int = 512,
             rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Pixels to train on: the whole image for an image file, tissue crops of level 0 for a slide."""
    from wsicodec.slide import open_input

    with open_input(path) as src:
        w, h = src.dimensions
        if src.is_image or w * h <= max_pixels:
            return [src.read_rgb(0, 0, w, h)]
        from wsicodec.tiling import TileGrid, tissue_mask

        rng = rng or np.random.default_rng(0)
        grid = TileGrid(w, h, crop)
        mask = tissue_mask(src, grid)
        cand = np.argwhere(mask)
        rng.shuffle(cand)
        out = []
        for ty, tx in cand[:tiles_from_slide]:
            x, y, tw, th = grid.tile_box(tx, ty)
            out.append(src.read_rgb(x, y, tw, th))
        return out


class CropSampler:
    """Draws batches of random crops (area-weighted over images) with augmentation."""

    def __init__(self, images: list[np.ndarray], patch: int, seed: int = 0,
                 stain_jitter: float = 0.05, colour_jitter: float = 0.05):
        self.images = [im for im in images if im.shape[0] >= patch and im.shape[1] >= patch]
        if not self.images:
            raise TrainError(f"no training image is at least {patch}x{patch} pixels")
        areas = np.array([im.shape[0] * im.shape[1] for im in self.images], dtype=np.float64)
        self.weights = areas / areas.sum()
        self.patch = patch
        self.rng = np.random.default_rng(seed)
        self.stain_jitter = stain_jitter
        self.colour_jitter = colour_jitter

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def crop(self) -> np.ndarray:
        im = self.images[self.rng.choice(len(self.images), p=self.weights)]
        y = self.rng.integers(0, im.shape[0] - self.patch + 1)
        x = self.rng.integers(0, im.shape[1] - self.patch + 1)
        c = im[y : y + self.patch, x : x + self.patch]
        c = np.rot90(c, self.rng.integers(4))
        if self.rng.random() < 0.5:
            c = c[:, ::-1]
        if self.rng.random() < 0.5:
            c = c[::-1]
        return self.jitter(np.ascontiguousarray(c).astype(np.float64) / 255.0)

    def jitter(self, rgb: np.ndarray) -> np.ndarray:
        if self.stain_jitter > 0:
            od = -np.log(np.clip(rgb, 1 / 255, 1.0))
            hed = od @ _HED_FROM_RGB
            alpha = 1 + self.rng.uniform(-self.stain_jitter, self.stain_jitter, 3)
            beta = self.rng.uniform(-self.stain_jitter, self.stain_jitter, 3)
            rgb = np.exp(-((hed * alpha + beta) @ _RGB_FROM_HED))
        if self.colour_jitter > 0:
            j = self.colour_jitter
            b = self.rng.uniform(-j, j)
            c = 1 + self.rng.uniform(-j, j)
            s = 1 + self.rng.uniform(-j, j)
            grey = rgb.mean(axis=2, keepdims=True)
            rgb = grey + (rgb - grey) * s
            rgb = (rgb - 0.5) * c + 0.5 + b
        return np.clip(rgb, 0.0, 1.0)

    def batch(self, n: int) -> torch.Tensor:
        arr = np.stack([self.crop() for _ in range(n)]).astype(np.float32)
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
