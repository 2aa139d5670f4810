"""``compress`` and ``decompress`` with fsspec URLs for inputs and outputs (:mod:`wsicodec.remote`):
an input URL is fetched to a temporary local copy; a store to write at a URL is written locally
and uploaded when complete (:mod:`wsicodec.store.upload`); a store at a URL is read in place; a
TIFF output is written locally and uploaded as one object."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wsicodec.errors import StoreError
from wsicodec.remote import RemotePath, check_file_url, is_url, local_input, resolve_options, upload_file, using
from wsicodec.store.upload import check_store_url, upload_store

__all__ = ["compress_urls", "decompress_urls"]


def compress_urls(fn: Callable) -> Callable:
    """Wrap ``compress(input_path, output, …)`` so that either may be a URL; adds the keyword
    ``storage_options``."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, storage_options: dict[str, Any] | None = None, **kwargs: Any):
        ba = sig.bind(*args, **kwargs)
        a = ba.arguments
        inp, out = a["input_path"], a["output"]
        if not (is_url(inp) or is_url(out)):
            return fn(*ba.args, **ba.kwargs)
        with using(resolve_options(storage_options, out if is_url(out) else inp)):
            overwrite = bool(a.get("overwrite", False))
            if is_url(out):
                if a.get("resume"):
                    raise StoreError(f"{out}: --resume needs a local OUTPUT (a remote store is written locally and "
                                 f"uploaded once complete)")
                check_store_url(out, overwrite)
            with local_input(inp) as local_in:
                a["input_path"] = local_in
                if not is_url(out):
                    return fn(*ba.args, **ba.kwargs)
                with tempfile.TemporaryDirectory(prefix="wsicodec-output-") as tmp:
                    a["output"] = Path(tmp) / (RemotePath(out).name or "store.zarr")
                    a["overwrite"] = False
                    r = fn(*ba.args, **ba.kwargs)
                    upload_store(r.output, out, overwrite)
                    return dataclasses.replace(r, output=RemotePath(out, storage_options))

    return wrapper


def decompress_urls(fn: Callable) -> Callable:
    """Wrap ``decompress(store_path, output, …)`` so that either may be a URL (the store is read in
    place, the TIFF written locally and uploaded); adds the keyword ``storage_options``."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, storage_options: dict[str, Any] | None = None, **kwargs: Any):
        ba = sig.bind(*args, **kwargs)
        a = ba.arguments
        store, out = a["store_path"], a["output"]
        if not (is_url(store) or is_url(out)):
            return fn(*ba.args, **ba.kwargs)
        with using(resolve_options(storage_options, out if is_url(out) else store)):
            if not is_url(out):
                return fn(*ba.args, **ba.kwargs)
            overwrite = bool(a.get("overwrite", False))
            check_file_url(out, overwrite)
            with tempfile.TemporaryDirectory(prefix="wsicodec-output-") as tmp:
                a["output"] = Path(tmp) / (RemotePath(out).name or "slide.tif")
                a["overwrite"] = False
                local = fn(*ba.args, **ba.kwargs)
                upload_file(Path(local), out, overwrite)
            return RemotePath(out, storage_options)

    return wrapper
