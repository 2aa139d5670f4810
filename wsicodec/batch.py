"""Many slides: one store per input, in-process or on a dask.distributed cluster (local workers
or an existing scheduler), failures retried and reported, complete outputs skipped on re-runs."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsicodec.errors import StoreError
from wsicodec.errors import first_line as _one_line
from wsicodec.remote import as_path, current_options


@dataclass
class JobResult:
    input: str
    output: str
    status: str            # done | skipped | failed
    seconds: float = 0.0
    bytes: int = 0
    bpp: float = 0.0
    error: str = ""


def read_manifest(path: str | Path) -> list[str]:
    """One input per line; blank lines and lines starting with ``#`` are ignored."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such manifest")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    inputs = [ln for ln in lines if ln and not ln.startswith("#")]
    if not inputs:
        raise StoreError(f"{path}: the manifest lists no inputs")
    return inputs


def plan_outputs(inputs: list[str], out_dir: str | Path) -> list[tuple[str, Path]]:
    """Output store for each input: ``OUT_DIR/<input name without suffix>.zarr``; refuses two
    inputs that would share an output. ``out_dir`` may be an fsspec URL."""
    out_dir = as_path(out_dir)
    plan, seen = [], {}
    for inp in inputs:
        name = Path(inp).name
        stem = name.rsplit(".", 1)[0] if "." in name else name
        out = out_dir / f"{stem}.zarr"
        if out in seen:
            raise StoreError(f"{inp}: its output {out} would overwrite that of {seen[out]}")
        seen[out] = inp
        plan.append((inp, out))
    return plan


def is_complete(output: Path, model: str | None, model_dir: Path | None = None, quality: int | None = None,
                target: str | None = None) -> bool:
    """True when ``output`` is a complete store written as it would be now: with the model that
    ``model`` / ``quality`` / the default gives now, or (``target``) for the same target."""
    from wsicodec.quality import choose
    from wsicodec.store import WsiStore

    if not output.exists():
        return False
    try:
        with WsiStore(output, model_dir=model_dir) as s:
            if target is not None:
                from wsicodec.target import parse_target

                t = parse_target(target)
                rec = s.meta.get("quality") or {}
                return rec.get("target") == {"metric": t.metric, "value": t.value}
            return s.meta["model"]["name"] == choose(model, quality, model_dir).point.model
    except StoreError:
        return False


def compress_one(inp: str, out: str, kwargs: dict[str, Any], threads: int = 0) -> JobResult:
    """One slide; raises on failure (so a scheduler can retry it)."""
    import torch

    from wsicodec.models import ModelError
    from wsicodec.pipeline import compress
    from wsicodec.quality import QualityError
    from wsicodec.slide import SlideError

    if threads:
        torch.set_num_threads(threads)
    t0 = time.time()
    try:
        r = compress(inp, out, **kwargs)
    except (SlideError, ModelError, StoreError, QualityError) as e:  # the input's fault: retrying will not help
        return JobResult(inp, out, "failed", round(time.time() - t0, 2), error=_one_line(e))
    return JobResult(inp, out, "done", round(time.time() - t0, 2), r.bytes, round(r.bpp, 4))


def compress_many(inputs: list[str], out_dir: str | Path, workers: int = 0, scheduler: str | None = None,
                  retries: int = 2, threads_per_worker: int = 1,
                  on_result: Callable[[JobResult], None] = lambda r: None, **kwargs: Any) -> list[JobResult]:
    """Compress each input into ``out_dir``. ``workers=0`` and no ``scheduler``: in this process,
    one after the other; otherwise one task per slide on dask.distributed. Inputs and ``out_dir``
    may be fsspec URLs (``storage_options``, default: those of ``--storage-option``)."""
    if kwargs.get("storage_options") is None and current_options() is not None:
        kwargs["storage_options"] = current_options()  # also for dask workers
    out_dir = as_path(out_dir, kwargs.get("storage_options"))
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[JobResult] = []
    todo = []
    for inp, out in plan_outputs(inputs, out_dir):
        if not kwargs.get("overwrite") and is_complete(out, kwargs.get("model"), kwargs.get("model_dir"),
                                                       kwargs.get("quality"), kwargs.get("target")):
            results.append(JobResult(inp, str(out), "skipped"))
            on_result(results[-1])
        else:
            todo.append((inp, out))
    kwargs = {**kwargs, "overwrite": True}  # incomplete or stale outputs are redone
    if not todo:
        return results
    if workers <= 0 and not scheduler:
        for inp, out in todo:
            r = _attempts(lambda inp=inp, out=out: compress_one(inp, str(out), kwargs), retries, inp, out)
            results.append(r)
            on_result(r)
        return results
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    try:
        futures = {
            client.submit(compress_one, inp, str(out), kwargs, threads_per_worker, key=f"wsicodec-{i}-{Path(inp).name}",
                          retries=retries, pure=False): (inp, out)
            for i, (inp, out) in enumerate(todo)
        }
        for fut in as_completed(futures):
            inp, out = futures[fut]
            try:
                r = fut.result()
            except Exception as e:
                r = JobResult(inp, str(out), "failed", error=_one_line(e))
            results.append(r)
            on_result(r)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    order = {inp: i for i, inp in enumerate(inputs)}
    return sorted(results, key=lambda r: order.get(r.input, 0))


def _attempts(fn: Callable[[], JobResult], retries: int, inp: str, out: Path) -> JobResult:
    err = ""
    for _ in range(retries + 1):
        try:
            return fn()
        except KeyboardInterrupt:
            raise
        except Exception as e:
            err = _one_line(e)
    return JobResult(inp, str(out), "failed", error=err)

