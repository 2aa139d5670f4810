"""Reading a training pack (the layout is described in :mod:`wsicodec.train.pack`, which writes
them): kept apart from the writer so that the training data reader, which the writer uses, can read
packs without an import cycle. Needs Pillow and numpy only."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from wsicodec._hashing import sha256_file
from wsicodec.errors import TrainError

__all__ = ["PACK_FORMAT", "PACK_VERSION", "is_pack", "load_pack_crops", "sha256_file"]

PACK_FORMAT = "wsicodec-training-pack"
PACK_VERSION = 1


def is_pack(path: str | os.PathLike) -> bool:
    return (Path(path) / "pack.json").is_file()


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_pack_crops(path: str | os.PathLike, verify: bool = True) -> list[np.ndarray]:
    """The training crops of the pack at ``path`` (each sheet checked against its sha256)."""
    path = Path(path)
    try:
        manifest = json.loads((path / "pack.json").read_text())
    except (OSError, ValueError) as e:
        raise TrainError(f"{path}: not a readable training pack ({e})") from None
    if manifest.get("format") != PACK_FORMAT or manifest.get("version", 0) > PACK_VERSION:
        raise TrainError(f"{path}: not a training pack of a version this wsicodec reads")
    crop = int(manifest["crop"])
    crops: list[np.ndarray] = []
    for sheet in manifest["sheets"]:
        f = path / sheet["file"]
        if not f.is_file():
            raise TrainError(f"{f}: missing from the training pack")
        if verify and sha256_file(f) != sheet["sha256"]:
            raise TrainError(f"{f}: sha256 differs from pack.json (a damaged copy)")
        rgb = _read_rgb(f)
        cols = int(sheet["columns"])
        for i in range(int(sheet["crops"])):
            r, q = divmod(i, cols)
            crops.append(rgb[r * crop : (r + 1) * crop, q * crop : (q + 1) * crop])
    return crops
