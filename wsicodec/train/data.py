"""Training data: random level-0 crops of H&E images and slides, with flips, rotations and
colour / H&E stain jitter. Plain images (PNG, JPEG, WebP, BMP, JPEG XL) are decoded without
OpenSlide; a training pack (:mod:`wsicodec.train.pack`) given as a folder contributes its crops."""
from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from wsicodec.errors import TrainError, first_line

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".jxl"}
_PLAIN_IMAGES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}  # never slides: no OpenSlide needed

# Ruifrok & Johnston H&E-DAB optical-density stain vectors (rows: H, E, DAB).
_HED_FROM_RGB = np.linalg.inv(
    np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
)
_RGB_FROM_HED = np.linalg.inv(_HED_FROM_RGB)


def find_inputs(paths: list[str | Path], exclude: Sequence[str] = ()) -> list[Path]:
    """Image files and slides named directly or found in folders (sorted, for reproducibility),
    less those whose path matches one of the shell patterns ``exclude`` (``fnmatch``)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            suffixes = IMAGE_SUFFIXES | {".svs", ".ndpi", ".mrxs", ".scn", ".dcm"}
            found += sorted(q for q in p.rglob("*") if q.suffix.lower() in suffixes)
        elif p.exists():
            found.append(p)
        else:
            raise TrainError(f"{p}: no such file or folder")
    return [f for f in found if not any(fnmatch.fnmatch(f.as_posix(), pattern) for pattern in exclude)]


def _read_jxl(path: Path) -> np.ndarray:
    import imagecodecs

    try:
        rgb = imagecodecs.jpegxl_decode(Path(path).read_bytes())
    except Exception as e:
        raise TrainError(f"{path}: not a JPEG XL image that can be read ({first_line(e)})") from None
    if rgb.dtype != np.uint8:
        raise TrainError(f"{path}: {rgb.dtype} JPEG XL image, 8-bit RGB expected")
    if rgb.ndim == 2:
        rgb = rgb[..., None]
    if rgb.shape[2] in (1, 2):  # grey (+ alpha)
        rgb = np.repeat(rgb[..., :1], 3, axis=2)
    return np.ascontiguousarray(rgb[..., :3])


def load_rgb(path: Path, max_pixels: int = 64_000_000, tiles_from_slide: int = 64, crop: int = 512,
             rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Pixels to train on: the whole image for an image file, tissue crops of level 0 for a slide."""
    from wsicodec.slide import ImageSource, open_input

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jxl":
        return [_read_jxl(path)]
    if suffix in _PLAIN_IMAGES:
        src = ImageSource(path)
        w, h = src.dimensions
        return [src.read_rgb(0, 0, w, h)]
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


def load_images(paths: list[str | Path], exclude: Sequence[str] = ()) -> list[np.ndarray]:
    """The training images of ``paths``: image files, slides, folders of them, and training packs
    (a folder with ``pack.json``: its crops); files matching ``exclude`` (:func:`find_inputs`) left out."""
    from wsicodec.train.pack_reader import is_pack, load_pack_crops

    images: list[np.ndarray] = []
    for p in map(Path, paths):
        if is_pack(p):
            images += load_pack_crops(p)
        else:
            images += [im for f in find_inputs([p], exclude) for im in load_rgb(f)]
    return images


def mirrorable(image: np.ndarray, size: int) -> bool:
    """Whether ``image`` trains at ``size``-px crops: each side at least half of it (a shorter side
    is mirrored out, :func:`mirror_to`; below half, a crop would hold more mirror than image)."""
    return min(image.shape[:2]) >= (size + 1) // 2


def mirror_to(image: np.ndarray, size: int) -> tuple[np.ndarray, int, int]:
    """``image`` with each side shorter than ``size`` px mirrored out to ``size`` (centred), and
    the rows and columns added before it (top, left). Some public H&E sets are made of small
    images (EBHI: 224 x 224 px) whose stain and magnification are seen nowhere else; left out of
    256-px crops, the models never learnt them (docs/training.md, "Small training images")."""
    h, w = image.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if not ph and not pw:
        return image, 0, 0
    top, left = ph // 2, pw // 2
    return np.pad(image, ((top, ph - top), (left, pw - left), (0, 0)), mode="symmetric"), top, left


class CropSampler:
    """Draws batches of random crops (weighted by each image's own area) with augmentation. An
    image smaller than the patch but at least half of it on each side is mirrored out to the
    patch (:func:`mirror_to`), weighted by its own pixels, not the mirrored ones; smaller ones
    are left out."""

    def __init__(self, images: list[np.ndarray], patch: int, seed: int = 0,
                 stain_jitter: float = 0.05, colour_jitter: float = 0.05):
        kept = [im for im in images if mirrorable(im, patch)]
        self.images = [mirror_to(im, patch)[0] for im in kept]
        if not self.images:
            raise TrainError(f"no training image is at least {(patch + 1) // 2}x{(patch + 1) // 2} pixels "
                             f"(half the {patch}-px patch)")
        areas = np.array([im.shape[0] * im.shape[1] for im in kept], dtype=np.float64)
        self.weights = areas / areas.sum()
        self.patch = patch
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.stain_jitter = stain_jitter
        self.colour_jitter = colour_jitter

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def crop(self, rng: np.random.Generator | None = None) -> np.ndarray:
        rng = self.rng if rng is None else rng
        im = self.images[rng.choice(len(self.images), p=self.weights)]
        y = rng.integers(0, im.shape[0] - self.patch + 1)
        x = rng.integers(0, im.shape[1] - self.patch + 1)
        c = im[y : y + self.patch, x : x + self.patch]
        c = np.rot90(c, rng.integers(4))
        if rng.random() < 0.5:
            c = c[:, ::-1]
        if rng.random() < 0.5:
            c = c[::-1]
        return self.jitter(np.ascontiguousarray(c).astype(np.float64) / 255.0, rng)

    def jitter(self, rgb: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        rng = self.rng if rng is None else rng
        if self.stain_jitter > 0:
            od = -np.log(np.clip(rgb, 1 / 255, 1.0))
            hed = od @ _HED_FROM_RGB
            alpha = 1 + rng.uniform(-self.stain_jitter, self.stain_jitter, 3)
            beta = rng.uniform(-self.stain_jitter, self.stain_jitter, 3)
            rgb = np.exp(-((hed * alpha + beta) @ _RGB_FROM_HED))
        if self.colour_jitter > 0:
            j = self.colour_jitter
            b = rng.uniform(-j, j)
            c = 1 + rng.uniform(-j, j)
            s = 1 + rng.uniform(-j, j)
            grey = rgb.mean(axis=2, keepdims=True)
            rgb = grey + (rgb - grey) * s
            rgb = (rgb - 0.5) * c + 0.5 + b
        return np.clip(rgb, 0.0, 1.0)

    def batch(self, n: int, rng: np.random.Generator | None = None) -> torch.Tensor:
        arr = np.stack([self.crop(rng) for _ in range(n)]).astype(np.float32)
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()

    def batch_at(self, index: int, n: int) -> torch.Tensor:
        """Batch number ``index`` of the run: drawn from its own generator, seeded by (seed,
        index), so it is the same whichever process makes it and whenever."""
        return self.batch(n, np.random.default_rng([self.seed, index]))
