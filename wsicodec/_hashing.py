"""The sha256 of a file, read in 1 MiB blocks: how weights, training packs and bundles are named
and checked. Standard library only, so that every part of the package can use it (a training
pack is read on machines that have little more than torch, numpy and Pillow)."""
from __future__ import annotations

import hashlib
import os

__all__ = ["sha256_file"]


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
