"""Remote inputs and outputs: any fsspec URL (``s3://bucket/slide.svs``, ``gs://…``, ``az://…``,
``memory://…``, ``file://…``) where a path is accepted.

* **Inputs** (slides) are fetched to a temporary local folder first (OpenSlide reads local files
  only), streamed file by file, and removed afterwards. A folder URL (a DICOM series) is fetched
  whole; for an ``.mrxs`` file its sibling data folder (same name without ``.mrxs``) comes along.
* **Stores** are read in place through zarr's ``FsspecStore`` (:func:`open_group`). A store to
  write is written locally and uploaded when complete (:mod:`wsicodec.store.upload`,
  :mod:`wsicodec.remote_jobs`).
* **Files** (TIFF outputs) are written locally and uploaded as one object (:func:`upload_file`).

Credentials and endpoints come from the usual fsspec / s3fs sources (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ``~/.aws``, ``FSSPEC_S3_*``
variables), from ``storage_options=`` of the library functions, or from ``--storage-option
KEY=VALUE`` on the command line.
"""
from __future__ import annotations

import contextvars
import json
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wsicodec.errors import StoreError, WsicodecError, first_line

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
#: storage options of the call in progress (set by the wrappers below and by the CLI option)
_current: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("wsicodec_storage_options",
                                                                                 default=None)


def is_url(path: Any) -> bool:
    """Whether ``path`` is an fsspec URL (``scheme://…``) rather than a local path."""
    return isinstance(path, RemotePath) or (isinstance(path, str) and bool(_URL.match(path)))


def resolve_options(storage_options: dict[str, Any] | None = None, path: Any = None) -> dict[str, Any]:
    """Storage options for ``path``: the explicit ones, else those carried by a :class:`RemotePath`,
    else those of the call in progress (``--storage-option``), else none (fsspec's defaults and
    environment)."""
    if storage_options is not None:
        return dict(storage_options)
    carried = getattr(path, "storage_options", None)
    if carried is not None:
        return dict(carried)
    return dict(_current.get() or {})


def url_to_fs(url: str, storage_options: dict[str, Any] | None = None):
    """``(filesystem, path inside it)`` for a URL; a missing backend is a one-line error."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(str(url), **resolve_options(storage_options, url))
    except (ImportError, ValueError) as e:
        hint = " (pip install 'wsicodec[remote]' for s3://)" if isinstance(e, ImportError) else ""
        raise StoreError(f"{url}: cannot use this URL ({first_line(e)}){hint}") from None


class RemotePath(str):
    """A URL that answers the few ``pathlib.Path`` questions the rest of wsicodec asks (``name``,
    ``/``, ``with_name``, ``exists``, ``is_dir``, ``is_file``, ``mkdir``). It may carry its storage
    options (kept when pickled, e.g. for dask workers)."""

    storage_options: dict[str, Any] | None = None

    def __new__(cls, url: str, storage_options: dict[str, Any] | None = None) -> RemotePath:
        if storage_options is None:
            storage_options = getattr(url, "storage_options", None)
        url = str(url)
        scheme, _, rest = url.partition("://")
        self = super().__new__(cls, f"{scheme}://{rest.rstrip('/')}" if rest.strip("/") else url)
        self.storage_options = storage_options
        return self

    @property
    def name(self) -> str:
        return self.split("://", 1)[1].rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> RemotePath:
        scheme, rest = self.split("://", 1)
        return RemotePath(f"{scheme}://{rest.rsplit('/', 1)[0]}" if "/" in rest else self, self.storage_options)

    def __truediv__(self, other: Any) -> RemotePath:
        return RemotePath(f"{self}/{str(other).strip('/')}", self.storage_options)

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    def fs(self):
        return url_to_fs(self, self.storage_options)

    def exists(self) -> bool:
        fs, p = self.fs()
        return bool(fs.exists(p))

    def is_dir(self) -> bool:
        fs, p = self.fs()
        return bool(fs.isdir(p))

    def is_file(self) -> bool:
        fs, p = self.fs()
        return bool(fs.isfile(p))

    def is_symlink(self) -> bool:
        return False

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Object stores have no folders: nothing to do."""

    def __reduce__(self):
        return (RemotePath, (str(self), self.storage_options))


def as_path(path: Any, storage_options: dict[str, Any] | None = None) -> Path | RemotePath:
    """A :class:`RemotePath` for a URL, a ``Path`` otherwise."""
    if is_url(path):
        return RemotePath(path, storage_options)
    return Path(path)


def parse_storage_options(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs to a dict; values are read as JSON when they parse (``true``, ``3``,
    ``{"region_name": "x"}``), else kept as strings; ``a.b=VALUE`` sets ``{"a": {"b": VALUE}}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise WsicodecError(f"--storage-option: {item!r} is not KEY=VALUE")
        try:
            v: Any = json.loads(value)
        except ValueError:
            v = value
        *outer, last = key.strip().split(".")
        d = out
        for k in outer:
            d = d.setdefault(k, {})
            if not isinstance(d, dict):
                raise WsicodecError(f"--storage-option: {key!r} conflicts with another option")
        d[last] = v
    return out


def set_options(storage_options: dict[str, Any] | None) -> Callable[[], None]:
    """Make ``storage_options`` those of every URL opened from now on (the command line's
    ``--storage-option``); returns the function that undoes it."""
    token = _current.set(storage_options)

    def reset() -> None:
        try:
            _current.reset(token)
        except ValueError:  # reset from another context: the options end with that context
            pass

    return reset


def current_options() -> dict[str, Any] | None:
    """The storage options of the call (or command) in progress, if any were given."""
    return _current.get()


# -- inputs --------------------------------------------------------------------------------------

def _fetch_tree(fs: Any, root: str, local: Path) -> None:
    """Copy every object under ``root`` into the folder ``local``, keeping relative paths."""
    root = root.rstrip("/")
    local.mkdir(parents=True, exist_ok=True)
    base = local.resolve()
    for f in sorted(fs.find(root)):
        if not f.startswith(root + "/"):
            continue
        rel = f[len(root) + 1 :]
        target = (local / rel).resolve()
        if not rel or not target.is_relative_to(base) or target == base:
            raise StoreError(f"{root}/{rel}: refusing an object name that leaves the folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f, str(target))


@contextmanager
def local_input(path: Any, storage_options: dict[str, Any] | None = None) -> Iterator[Path | None]:
    """A local path for an input: the path itself, or a temporary copy of a URL's file or folder
    (removed on exit). The copy keeps the URL's last name, so the store records the same
    ``source.file_name`` as for a local run. ``None`` gives ``None``."""
    if not is_url(path):
        yield None if path is None else Path(path)
        return
    from wsicodec.slide import SlideError

    url = RemotePath(path, storage_options)
    fs, rpath = url.fs()
    try:
        info = fs.info(rpath)
    except FileNotFoundError:
        raise SlideError(str(url), "no such file or folder") from None
    except Exception as e:
        raise SlideError(str(url), f"cannot read it ({first_line(e)})") from None
    tmp = Path(tempfile.mkdtemp(prefix="wsicodec-input-"))
    try:
        local = tmp / (url.name or "input")
        try:
            if info.get("type") == "directory":
                _fetch_tree(fs, rpath, local)
            else:
                fs.get_file(rpath, str(local))
                if local.suffix.lower() == ".mrxs":  # MIRAX: the slide's data folder sits beside it
                    data = rpath[: -len(".mrxs")]
                    if fs.isdir(data):
                        _fetch_tree(fs, data, local.with_suffix(""))
        except (OSError, ValueError) as e:
            if getattr(e, "errno", None) == 28:  # ENOSPC: say where the space ran out
                raise StoreError(f"{url}: no space left in {tmp.parent} to fetch it (set TMPDIR)") from None
            raise SlideError(str(url), f"cannot fetch it ({first_line(e)})") from None
        yield local
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- outputs -------------------------------------------------------------------------------------

def check_file_url(url: Any, overwrite: bool) -> None:
    url = RemotePath(url)
    fs, p = url.fs()
    fs.invalidate_cache()
    if fs.isdir(p):
        raise StoreError(f"{url}: is a folder; refusing to replace it")
    if fs.exists(p) and not overwrite:
        raise StoreError(f"{url}: already exists (use --overwrite to replace it)")


def upload_file(local: Path, url: Any, overwrite: bool) -> None:
    """Upload one finished file as one object (object stores make it visible only when whole)."""
    check_file_url(url, overwrite)
    fs, p = RemotePath(url).fs()
    fs.put_file(str(local), p)
    fs.invalidate_cache()


def file_size(path: Any) -> int:
    if is_url(path):
        fs, p = RemotePath(path).fs()
        return int(fs.size(p))
    return Path(path).stat().st_size


def store_size(url: Any) -> int:
    """Bytes of every object of a remote store."""
    fs, root = RemotePath(url).fs()
    root = root.rstrip("/")
    fs.invalidate_cache()
    return int(sum(info["size"] for name, info in fs.find(root, detail=True).items()
                   if name.startswith(root + "/") and info.get("type") != "directory"))


def open_group(path: Any, mode: str = "r", storage_options: dict[str, Any] | None = None):
    """``zarr.open_group`` for a local path or a URL (through zarr's ``FsspecStore``)."""
    import zarr

    if is_url(path):
        return zarr.open_group(str(path), mode=mode, storage_options=resolve_options(storage_options, path))
    return zarr.open_group(str(path), mode=mode)


@contextmanager
def using(storage_options: dict[str, Any] | None) -> Iterator[None]:
    """Make ``storage_options`` those of every URL opened inside the block."""
    token = _current.set(storage_options)
    try:
        yield
    finally:
        _current.reset(token)
