"""Worker processes fed over pipes: starting them, length-prefixed messages, writing arrays
without copying them first. Shared by the chunk writers (:mod:`wsicodec.writers`) and the chunk
decoders (:mod:`wsicodec.decoders`).

The workers are plain child processes (``python -m wsicodec.MODULE ARGS``, started in
wsicodec's own folder so that they import this wsicodec) rather than ``multiprocessing``'s:
that would re-run the caller's main script in each child, which fails in any script without an
``if __name__ == "__main__"`` guard."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

_LEN = struct.Struct("<I")


def start_worker(module: str, args: Sequence[str]) -> subprocess.Popen:
    """``python -m module args`` with pipes on stdin and stdout; raises ``OSError``."""
    pkg_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([pkg_root, *filter(None, [os.environ.get("PYTHONPATH")])]),
               # one thread each: n workers side by side, and the BLAS / OpenMP pools of a
               # hyperprior's hyper-networks would otherwise start one thread per core each
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # absolute paths in args: the workers run in wsicodec's folder (``-m`` puts the working folder
    # first on sys.path, so a ``wsicodec`` folder where the caller stands is never imported)
    p = subprocess.Popen([sys.executable, "-m", module, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         env=env, bufsize=0, cwd=pkg_root)
    _widen_pipe(p.stdin)
    return p


def stop_workers(procs: Sequence[subprocess.Popen]) -> None:
    """Close the workers' input (their signal to finish) and wait for them (30 s, then kill)."""
    for p in procs:
        try:
            if p.stdin:
                p.stdin.close()
        except OSError:
            pass
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.stdout:
            p.stdout.close()


class WorkerProcesses:
    """``n`` worker processes ``python -m module args`` (at least one, :func:`start_worker`); a
    context manager that ends them (:meth:`close`). Raises ``OSError`` when one does not start."""

    def __init__(self, module: str, args: Sequence[str], n: int):
        self._procs: list[subprocess.Popen] = []
        try:
            for _ in range(max(1, int(n))):
                self._procs.append(start_worker(module, args))
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        stop_workers(self._procs)
        self._procs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_stdio() -> tuple[IO[bytes], IO[bytes]]:
    """In a worker: ``(input, output)`` for the messages; anything a library prints goes to
    stderr instead of into the pipe to the parent."""
    stdout = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    return sys.stdin.buffer, stdout


def send(f: IO[bytes], payload: bytes) -> None:
    f.write(_LEN.pack(len(payload)) + payload)
    f.flush()


def send_parts(fd: int, parts: list) -> None:
    """One message made of ``parts`` (bytes-like, arrays among them), written without joining
    them first (:func:`write_all`); the reader gets it from :func:`receive` as one."""
    write_all(fd, [_LEN.pack(sum(memoryview(x).nbytes for x in parts)), *parts])


def receive(f: IO[bytes]) -> bytes | bytearray | None:
    """One message of :func:`send` or :func:`send_parts`; None at the end of the stream."""
    head = f.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    (n,) = _LEN.unpack(head)
    data = bytearray(n)
    got = f.readinto(data) if n else 0
    while got < n:  # a pipe may hand a large message over in several reads
        more = f.readinto(memoryview(data)[got:])
        if not more:
            return None
        got += more
    return data


def write_all(fd: int, parts: list) -> None:
    """Write ``parts`` (bytes-like) to ``fd`` in as few system calls as the pipe allows, without
    joining them first (arrays are the bulk: no copy of them here)."""
    views = [memoryview(x).cast("B") for x in parts]
    while views:
        n = os.writev(fd, views) if hasattr(os, "writev") else os.write(fd, views[0])  # no writev: Windows
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


def _widen_pipe(f: IO[bytes]) -> None:
    """Best effort (Linux): a 4 MiB pipe buffer holds a whole message of several tiles, so a write
    does not wait for the reader in several rounds (unprivileged users may get at most 1 MiB,
    ``/proc/sys/fs/pipe-max-size``)."""
    try:
        import fcntl
    except ImportError:
        return
    for size in (4 << 20, 1 << 20):
        try:
            fcntl.fcntl(f.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
            return
        except (OSError, ValueError):
            continue
