"""A run folder as a few files of bounded size, and back: to carry a run home from a machine that
can only hand back a limited number of files (a rented GPU, a batch job's output slot).

``bundle_run`` packs the run's logs and weights into one tar stream, split into parts of at most
``max_part_mib`` MiB, with ``bundle.json`` (sha256 of every part, of the whole stream and of each
member). What travels, by priority: the logs and ``pack.json``-style notes (small) always; then the
full checkpoint (weights, optimiser and scheduler state: exact continuation) and the best
validated weights if they fit; else the last weights without optimiser state (``weights.pt``:
continuation with fresh Adam moments) and the best weights; else the last weights alone.
``merge_bundle`` checks every sha256, reassembles the stream and puts its files into a run folder.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wsicodec._hashing import sha256_file
from wsicodec.errors import TrainError

__all__ = ["BUNDLE_FORMAT", "BundleError", "bundle_run", "merge_bundle", "travels_as_half"]

BUNDLE_FORMAT = "wsicodec-run-bundle"
BUNDLE_VERSION = 1
MANIFEST = "bundle.json"
_LOGS = ("train_log.csv", "val_log.csv")


class BundleError(TrainError):
    """A bundle cannot be written within its limits, or one that was handed back is incomplete or damaged."""


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: fp32 tensors with fewer elements stay fp32 in half-precision weights: the architecture's
#: constants (likelihood bounds of 1e-9, GDN pedestals near 1e-11: zero in fp16), scale tables,
#: quantiles and biases, a few KB in all
HALF_MIN_ELEMENTS = 256


def travels_as_half(v) -> bool:
    """Whether an fp32 tensor may travel as fp16: large enough to matter, and no value that fp16
    flushes to zero or overflows."""
    import torch

    if v.dtype != torch.float32 or v.numel() < HALF_MIN_ELEMENTS:
        return False
    h = v.half()
    return bool(torch.isfinite(h).all()) and not bool(((h == 0) & (v != 0)).any())


def _weights_only(checkpoint: Path, half: bool = False) -> bytes:
    """``weights.pt`` of a checkpoint or weights file: the last weights, step, config and best
    objective; ``half``: the large fp32 tensors stored as fp16 (:func:`travels_as_half`; half the bytes;
    they load into the fp32 model as they are, within fp16's 2^-11 relative rounding: far below
    what one training step changes)."""
    import torch

    st = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = st["model"]
    if half:
        model = {k: v.half() if travels_as_half(v) else v for k, v in model.items()}
    buf = io.BytesIO()
    torch.save({"model": model, "step": st["step"], "config": st["config"], "best": st.get("best")}, buf)
    return buf.getvalue()


def _best_from_last(weights: Path, best: Path) -> None:
    import torch

    st = torch.load(weights, map_location="cpu", weights_only=False)
    torch.save({"model": st["model"], "step": st["step"]}, best)


def _step_of(path: Path) -> int | None:
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=False).get("step"))
    except Exception:
        return None


@dataclass
class _Member:
    name: str
    data: bytes


def _choose_members(run_dir: Path, capacity: int, log: Callable[[str], None]) -> tuple[list[_Member], str, bool]:
    small = [_Member(p.name, p.read_bytes()) for p in sorted(run_dir.iterdir())
             if p.is_file() and (p.name in _LOGS or p.suffix in (".log", ".txt", ".json"))]
    ckpt, best, weights = run_dir / "checkpoint.pt", run_dir / "best_model.pt", run_dir / "weights.pt"
    if ckpt.exists():
        last = [_Member("checkpoint.pt", ckpt.read_bytes())]
        last_weights = lambda: [_Member("weights.pt", _weights_only(ckpt))]  # noqa: E731
        last_step = _step_of(ckpt)
    elif weights.exists():
        last = [_Member("weights.pt", weights.read_bytes())]
        last_weights = lambda: last  # noqa: E731
        last_step = _step_of(weights)
    else:
        raise BundleError(f"{run_dir}: no checkpoint.pt or weights.pt to hand back")
    # the best weights, unless they are the last ones
    best_is_last = best.exists() and _step_of(best) == last_step
    best_m = [_Member("best_model.pt", best.read_bytes())] if best.exists() and not best_is_last else []
    size = lambda ms: sum(len(m.data) for m in ms) + 1024 * (len(ms) + 2)  # noqa: E731  (tar headers)
    for kind, members in (("checkpoint", small + last + best_m), ("weights", None), ("last weights only", None)):
        if members is None:
            members = small + last_weights() + (best_m if kind == "weights" else [])
        if size(members) <= capacity:
            if kind != "checkpoint":
                log(f"bundle: the full checkpoint does not fit in {capacity / 2**20:.0f} MiB; handing back {kind}")
            return members, kind, best_is_last
    raise BundleError(f"{run_dir}: even the last weights ({size(small + last_weights()) / 2**20:.1f} MiB) "
                      f"exceed {capacity / 2**20:.0f} MiB")


def bundle_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, max_files: int = 8,
               max_part_mib: float = 16.0, log: Callable[[str], None] = print,
               max_total_mib: float | None = None) -> dict:
    """Write ``run_dir`` into ``out_dir`` as ``bundle.json`` plus at most ``max_files - 1`` parts
    ``bundle.tar.NNN`` of at most ``max_part_mib`` MiB, all of them together at most
    ``max_total_mib`` MiB when given; returns the manifest."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if max_files < 2:
        raise BundleError("a bundle needs at least 2 files (the manifest and one part)")
    part_bytes = int(max_part_mib * 2**20)
    capacity = (max_files - 1) * part_bytes
    if max_total_mib is not None:  # the manifest (a few KiB per member) and the tar headers fit in 1 MiB
        capacity = min(capacity, int((max_total_mib - 1) * 2**20))
    members, kind, best_is_last = _choose_members(run_dir, capacity, log)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.size = len(m.data)
            info.mode = 0o644
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(m.data))
    stream = buf.getvalue()
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in range(0, len(stream), part_bytes):
        piece = stream[i : i + part_bytes]
        name = f"bundle.tar.{i // part_bytes:03d}"
        (out_dir / name).write_bytes(piece)
        parts.append({"file": name, "bytes": len(piece), "sha256": _sha256_bytes(piece)})
    manifest = {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "run": run_dir.name, "contents": kind,
        "best_is_last": best_is_last,
        "tar": {"bytes": len(stream), "sha256": _sha256_bytes(stream)}, "parts": parts,
        "members": [{"name": m.name, "bytes": len(m.data), "sha256": _sha256_bytes(m.data)} for m in members],
    }
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, out_dir / MANIFEST)  # the manifest last: its presence means the parts are complete
    log(f"bundle: {len(members)} files ({kind}), {len(stream) / 2**20:.1f} MiB in {len(parts)} part(s) -> {out_dir}")
    return manifest


def merge_bundle(bundle_dir: str | os.PathLike, run_dir: str | os.PathLike,
                 log: Callable[[str], None] = print, half_weights: bool = False) -> dict:
    """Check and unpack the bundle in ``bundle_dir`` into ``run_dir`` (created if needed). Every
    file is verified before anything in ``run_dir`` changes; the bundle's files then replace the
    run's. A handed-back ``checkpoint.pt`` also gives a fresh ``weights.pt`` (the small file a
    repository keeps); handed-back weights without a checkpoint retire an older local
    ``checkpoint.pt`` (it would otherwise be resumed in their place). ``half_weights``: that
    ``weights.pt`` holds fp16 tensors (half the bytes, for a wide model's run that must travel;
    ``checkpoint.pt`` and ``best_model.pt`` stay fp32). Returns the manifest."""
    bundle_dir, run_dir = Path(bundle_dir), Path(run_dir)
    try:
        manifest = json.loads((bundle_dir / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"{bundle_dir / MANIFEST}: no readable bundle manifest ({e})") from None
    if manifest.get("format") != BUNDLE_FORMAT or manifest.get("version", 0) > BUNDLE_VERSION:
        raise BundleError(f"{bundle_dir / MANIFEST}: not a run bundle of a version this wsicodec reads")
    h = hashlib.sha256()
    chunks = []
    for part in manifest["parts"]:
        p = bundle_dir / part["file"]
        if not p.is_file():
            raise BundleError(f"{p}: part missing from the bundle")
        data = p.read_bytes()
        if len(data) != part["bytes"] or _sha256_bytes(data) != part["sha256"]:
            raise BundleError(f"{p}: size or sha256 differs from {MANIFEST} (a damaged or partial copy)")
        h.update(data)
        chunks.append(data)
    if h.hexdigest() != manifest["tar"]["sha256"]:
        raise BundleError(f"{bundle_dir}: the reassembled stream's sha256 differs from {MANIFEST}")
    expected = {m["name"]: m for m in manifest["members"]}
    run_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".merge.", dir=run_dir))
    try:
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r:") as tar:
            names = tar.getnames()
            if sorted(names) != sorted(expected) or any("/" in n or n.startswith(".") for n in names):
                raise BundleError(f"{bundle_dir}: the stream's files differ from {MANIFEST}")
            tar.extractall(staging, filter="data")
        for name, m in expected.items():
            if sha256_file(staging / name) != m["sha256"]:
                raise BundleError(f"{bundle_dir}: {name} differs from its sha256 in {MANIFEST}")
        last = staging / ("checkpoint.pt" if "checkpoint.pt" in expected else "weights.pt")
        if manifest.get("best_is_last"):  # not sent twice: the best weights are the last ones
            _best_from_last(last, staging / "best_model.pt")
        if "checkpoint.pt" in expected or half_weights:
            (staging / "weights.pt").write_bytes(_weights_only(last, half=half_weights))
        elif "checkpoint.pt" not in expected and (run_dir / "checkpoint.pt").exists():
            (run_dir / "checkpoint.pt").unlink()
            log(f"merge: {run_dir / 'checkpoint.pt'} removed (older than the handed-back weights)")
        for f in sorted(staging.iterdir()):
            os.replace(f, run_dir / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"merge: {len(expected)} files ({manifest.get('contents')}) -> {run_dir}")
    return manifest
