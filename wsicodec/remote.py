"""Remote inputs and outputs: any fsspec URL (``s3://bucket/slide.svs``, ``gs://…``, ``az://…``,
``memory://…``, ``file://…``) where a path is accepted.

* **Inputs** (slides) are fetched to a temporary local folder first (OpenSlide reads local files
  only), streamed file by file, and removed afterwards. A folder URL (a DICOM series) is fetched
  whole; for an ``.mrxs`` file its sibling data folder (same name without ``.mrxs``) comes along.
* **Stores** are read in place through zarr's ``FsspecStore`` (:class:`wsicodec.store.WsiStore`,
  ``wsicodec.open_slide("s3://…")``). A store to write is written locally (in a temporary folder,
  under its partial name as always) and uploaded when complete: every chunk and array metadata
  file first, the group ``zarr.json`` (the one holding ``complete: true``) last, so nothing
  half-written looks like a store at the URL (see "Remote stores" in ``docs/format.md``).
* **TIFF outputs** are written locally and uploaded as one object.

Credentials and endpoints come from the usual fsspec / s3fs sources (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ``~/.aws``, ``FSSPEC_S3_*``
variables), from ``storage_options=`` of the library functions, or from ``--storage-option
KEY=VALUE`` on the command line.
"""
from __future__ import annotations

import contextvars
import functools
import inspect
import json
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from wsicodec.errors import first_line as _first_line

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
#: storage options of the call in progress (set by the wrappers below and by the CLI option)
_current: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("wsicodec_storage_options",
                                                                                 default=None)
#: first path components of the objects a store holds besides the group ``zarr.json``
_STORE_PARTS = ("latents", "tiles", "associated")


def is_url(path: Any) -> bool:
    """Whether ``path`` is an fsspec URL (``scheme://…``) rather than a local path."""
    return isinstance(path, RemotePath) or (isinstance(path, str) and bool(_URL.match(path)))


def _error(msg: str) -> Exception:
    from wsicodec.store import StoreError

    return StoreError(msg)


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
        raise _error(f"{url}: cannot use this URL ({_first_line(e)}){hint}") from None


class RemotePath(str):
    """A URL that answers the few ``pathlib.Path`` questions the rest of wsicodec asks (``name``,
    ``/``, ``with_name``, ``exists``, ``is_dir``, ``is_file``, ``mkdir``). It may carry its storage
    options (kept when pickled, e.g. for dask workers)."""

    storage_options: dict[str, Any] | None = None

    def __new__(cls, url: str, storage_options: dict[str, Any] | None = None) -> "RemotePath":
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
    def parent(self) -> "RemotePath":
        scheme, rest = self.split("://", 1)
        return RemotePath(f"{scheme}://{rest.rsplit('/', 1)[0]}" if "/" in rest else self, self.storage_options)

    def __truediv__(self, other: Any) -> "RemotePath":
        return RemotePath(f"{self}/{str(other).strip('/')}", self.storage_options)

    def with_name(self, name: str) -> "RemotePath":
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
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--storage-option")
        try:
            v: Any = json.loads(value)
        except ValueError:
            v = value
        *outer, last = key.strip().split(".")
        d = out
        for k in outer:
            d = d.setdefault(k, {})
            if not isinstance(d, dict):
                raise click.BadParameter(f"{key!r} conflicts with another option", param_hint="--storage-option")
        d[last] = v
    return out


def _cli_callback(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> None:
    token = _current.set(parse_storage_options(value) or None)

    def reset() -> None:  # the options hold for this command only
        try:
            _current.reset(token)
        except ValueError:
            pass

    ctx.call_on_close(reset)


def storage_option_flag(f: Callable) -> Callable:
    """The CLI's ``--storage-option KEY=VALUE`` (repeatable): options for every URL of the command."""
    return click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
                        expose_value=False, callback=_cli_callback, is_eager=True,
                        help="fsspec storage option for URL inputs/outputs (repeatable), e.g. "
                             "endpoint_url=http://127.0.0.1:9000 or anon=true.")(f)


class PathOrURL(click.ParamType):
    """A CLI argument that is a local path (``pathlib.Path``) or an fsspec URL (:class:`RemotePath`)."""

    name = "path_or_url"

    def convert(self, value: Any, param: Any, ctx: Any) -> Path | RemotePath:
        if isinstance(value, (Path, RemotePath)):
            return value
        return as_path(value)


PATH_OR_URL = PathOrURL()


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
            raise _error(f"{root}/{rel}: refusing an object name that leaves the folder")
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
        raise SlideError(str(url), f"cannot read it ({_first_line(e)})") from None
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
                raise _error(f"{url}: no space left in {tmp.parent} to fetch it (set TMPDIR)") from None
            raise SlideError(str(url), f"cannot fetch it ({_first_line(e)})") from None
        yield local
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- outputs -------------------------------------------------------------------------------------

def _read_group_meta(fs: Any, root: str) -> dict[str, Any] | None:
    from wsicodec.store import FORMAT_NAME

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
    url = RemotePath(url)
    fs, root = url.fs()
    root = root.rstrip("/")
    if fs.isfile(root):
        raise _error(f"{url}: exists and is not a wsicodec store; refusing to replace it")
    objects = _listing(fs, root)
    if f"{root}/zarr.json" in objects:
        if not overwrite:
            raise _error(f"{url}: already exists (use --overwrite to replace it)")
        if _read_group_meta(fs, root) is None:
            raise _error(f"{url}: exists and is not a wsicodec store; refusing to replace it")
    elif any(f[len(root) + 1 :].split("/", 1)[0] not in _STORE_PARTS for f in objects):
        raise _error(f"{url}: exists and is not a wsicodec store; refusing to replace it")
    return objects


def upload_store(local: Path, url: Any, overwrite: bool) -> None:
    """Upload the complete store folder ``local`` to ``url``: remove what is there (the group
    ``zarr.json`` first, so an old store stops being one before any of it changes), put every
    other file (chunks before their array's ``zarr.json``), then the group ``zarr.json`` last."""
    url = RemotePath(url)
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
        raise _error(f"{local}: not a store (no zarr.json); nothing uploaded")
    chunks = [f for f in files if f.name != "zarr.json"]
    arrays = [f for f in files if f.name == "zarr.json" and f != group_json]
    for batch in (chunks, sorted(arrays, key=lambda f: -len(f.parts))):
        if batch:  # one call per batch: concurrent puts, all finished when it returns
            fs.put([str(f) for f in batch], [f"{root}/{f.relative_to(local).as_posix()}" for f in batch])
    fs.put_file(str(group_json), f"{root}/zarr.json")
    fs.invalidate_cache()


def check_file_url(url: Any, overwrite: bool) -> None:
    url = RemotePath(url)
    fs, p = url.fs()
    fs.invalidate_cache()
    if fs.isdir(p):
        raise _error(f"{url}: is a folder; refusing to replace it")
    if fs.exists(p) and not overwrite:
        raise _error(f"{url}: already exists (use --overwrite to replace it)")


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


# -- the hooks around pipeline.compress / pipeline.decompress ----------------------------------

@contextmanager
def using(storage_options: dict[str, Any] | None) -> Iterator[None]:
    """Make ``storage_options`` those of every URL opened inside the block."""
    token = _current.set(storage_options)
    try:
        yield
    finally:
        _current.reset(token)


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
        import dataclasses

        with using(resolve_options(storage_options, out if is_url(out) else inp)):
            overwrite = bool(a.get("overwrite", False))
            if is_url(out):
                if a.get("resume"):
                    raise _error(f"{out}: --resume needs a local OUTPUT (a remote store is written locally and "
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

