"""Where a store is written and what may be replaced: the partial name a store is written under
until it is complete, the temporary names of chunks, the checks on an output path, sizes."""
from __future__ import annotations

import re
from pathlib import Path

from wsicodec import remote
from wsicodec.errors import StoreError
from wsicodec.store.format import read_store_meta

__all__ = ["ZARR_TMP", "check_output_path", "is_partial_name", "partial_path", "store_size"]


def partial_path(final: Path) -> Path:
    """Where a store is written until it is complete."""
    return final.with_name(f".{final.name}.partial")


def is_partial_name(path: Path) -> bool:
    """Whether ``path`` is named like an unfinished store (``.<name>.partial``)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(".partial") and len(name) > len("..partial")


#: zarr's own temporary files (``<key>.<uuid hex>.partial``), left behind when a writer is killed
ZARR_TMP = re.compile(r"\.[0-9a-f]{32}\.partial$")


def check_output_path(final: Path, overwrite: bool) -> None:
    """Refuse output paths that would write through a symbolic link, or replace something that is
    not a wsicodec store."""
    final = Path(final)
    for p in (final, partial_path(final)):
        if p.is_symlink():
            raise StoreError(f"{p}: is a symbolic link; refusing to write through it (give the real path)")
    if final.exists():
        if not overwrite:
            raise StoreError(f"{final}: already exists (use --overwrite to replace it)")
        if read_store_meta(final) is None or not final.is_dir():
            raise StoreError(f"{final}: exists and is not a wsicodec store; refusing to replace it")
    part = partial_path(final)
    if part.exists() and (not part.is_dir() or (any(part.iterdir()) and not (part / "zarr.json").exists())):
        raise StoreError(f"{part}: exists and is not an unfinished wsicodec store; refusing to replace it")


def store_size(path: Path) -> int:
    """Bytes of every file of a store (a local path or an fsspec URL)."""
    if remote.is_url(path):
        return remote.store_size(path)
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())

