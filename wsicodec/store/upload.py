"""A store at an fsspec URL: what may be replaced there, and the upload of a finished store
(every chunk and array metadata file first, the group ``zarr.json`` last, so that nothing
half-written looks like a store at the URL; ``docs/format.md``, "Remote stores")."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wsicodec import remote
from wsicodec.errors import StoreError
from wsicodec.store.format import FORMAT_NAME

__all__ = ["check_store_url", "upload_store"]

#: first path components of the objects a store holds besides the group ``zarr.json``
_STORE_PARTS = ("latents", "tiles", "associated")


def _read_group_meta(fs: Any, root: str) -> dict[str, Any] | None:
    try:
        meta = json.loads(fs.cat_file(f"{root}/zarr.json"))["attributes"][FORMAT_NAME]
        return meta if isinstance(meta, dict) else None
    except Exception:
        return None


def _listing(fs: Any, root: str) -> list[str]:
    """Every object under ``root/`` (not ``root`` itself, not siblings sharing its prefix)."""
    fs.invalidate_cache()
    try:
        return [f for f in fs.find(root) if f.startswith(root + "/")]
    except FileNotFoundError:
        return []


def check_store_url(url: Any, overwrite: bool) -> list[str]:
    """Refuse a store URL that holds something else, or a store when ``overwrite`` is off; an
    unfinished upload (store objects without the group ``zarr.json``) is replaced. Returns the
    objects now under the URL (to be removed before the upload)."""
    url = remote.RemotePath(url)
    fs, root = url.fs()
    root = root.rstrip("/")
    if fs.isfile(root):
        raise StoreError(f"{url}: exists and is not a wsicodec store; refusing to replace it")
    objects = _listing(fs, root)
    if f"{root}/zarr.json" in objects:
        if not overwrite:
            raise StoreError(f"{url}: already exists (use --overwrite to replace it)")
        if _read_group_meta(fs, root) is None:
            raise StoreError(f"{url}: exists and is not a wsicodec store; refusing to replace it")
    elif any(f[len(root) + 1 :].split("/", 1)[0] not in _STORE_PARTS for f in objects):
        raise StoreError(f"{url}: exists and is not a wsicodec store; refusing to replace it")
    return objects


def upload_store(local: Path, url: Any, overwrite: bool) -> None:
    """Upload the complete store folder ``local`` to ``url``: remove what is there (the group
    ``zarr.json`` first, so an old store stops being one before any of it changes), put every
    other file (chunks before their array's ``zarr.json``), then the group ``zarr.json`` last."""
    url = remote.RemotePath(url)
    fs, root = url.fs()
    root = root.rstrip("/")
    old = check_store_url(url, overwrite)
    if f"{root}/zarr.json" in old:
        fs.rm_file(f"{root}/zarr.json")
        old.remove(f"{root}/zarr.json")
    if old:
        fs.rm(old)
    files = [f for f in Path(local).rglob("*") if f.is_file()]
    group_json = Path(local) / "zarr.json"
    if group_json not in files:
        raise StoreError(f"{local}: not a store (no zarr.json); nothing uploaded")
    chunks = [f for f in files if f.name != "zarr.json"]
    arrays = [f for f in files if f.name == "zarr.json" and f != group_json]
    for batch in (chunks, sorted(arrays, key=lambda f: -len(f.parts))):
        if batch:  # one call per batch: concurrent puts, all finished when it returns
            fs.put([str(f) for f in batch], [f"{root}/{f.relative_to(local).as_posix()}" for f in batch])
    fs.put_file(str(group_json), f"{root}/zarr.json")
    fs.invalidate_cache()
