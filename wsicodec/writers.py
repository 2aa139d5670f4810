"""Entropy coding and chunk writing in worker processes.

The range coder holds the GIL, so threads cannot run it side by side: one process codes about
300 Mpx/s of a factorized model's latents and about 18 Mpx/s of a hyperprior's (its chunk codec
also runs the hyper-encoder and the integer hyper-decoder), less than a GPU analyses.
:class:`ChunkWriterProcesses` runs ``n`` worker processes, each with the store's latent array
open, and hands each one a tile's latents to code and write.

The workers are plain child processes (``python -m wsicodec.writers PATH [MODEL_DIR]``) fed over
their stdin / stdout pipes, not ``multiprocessing``: that would re-run the caller's main script
in each child, which fails in any script without an ``if __name__ == "__main__"`` guard.

Frames, both ways: a 4-byte little-endian length, then that many bytes. Parent to child: the
pickled ``(block, latents)``; child to parent: empty for done, else the error's text."""
from __future__ import annotations

import os
import pickle
import queue
import struct
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np

from wsicodec.store import StoreError

_LEN = struct.Struct("<I")


class WriterError(StoreError):
    """A chunk-writer process failed (a one-line error naming the store)."""


def _send(f: IO[bytes], payload: bytes) -> None:
    f.write(_LEN.pack(len(payload)) + payload)  # one write: the GIL is given up and taken back once
    f.flush()


def _widen_pipe(f: IO[bytes]) -> None:
    """Best effort (Linux): a 1 MiB pipe buffer holds a whole frame, so a write does not wait for
    the reader in several rounds."""
    try:
        import fcntl

        fcntl.fcntl(f.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError, ValueError):
        pass


def _receive(f: IO[bytes]) -> bytes | None:
    head = f.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    (n,) = _LEN.unpack(head)
    data = f.read(n)
    return data if len(data) == n else None


class ChunkWriterProcesses:
    """``n`` worker processes that entropy-code and write latent chunks of the store at ``path``.
    :meth:`write` blocks until the chunk is on disk (call it from ``n`` threads to keep every
    worker busy); the bytes are those this process would write (the codec is deterministic)."""

    def __init__(self, path: Path, n: int, model_dir: Path | None = None):
        self.path = Path(path)
        pkg_root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([pkg_root, *filter(None, [os.environ.get("PYTHONPATH")])]),
                   # one thread each: n workers side by side, and the BLAS / OpenMP pools of a
                   # hyperprior's hyper-networks would otherwise start one thread per core each
                   OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "wsicodec.writers", str(path)] + ([str(model_dir)] if model_dir else [])
        self._free: queue.Queue = queue.Queue()
        self._procs: list[subprocess.Popen] = []
        try:
            for _ in range(max(1, int(n))):
                p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0)
                _widen_pipe(p.stdin)
                self._procs.append(p)
                self._free.put(p)
        except OSError as e:
            self.close()
            raise WriterError(f"{self.path}: cannot start a chunk-writer process ({e})") from None

    def write(self, block: tuple, latents: np.ndarray) -> None:
        p = self._free.get()
        try:
            _send(p.stdin, pickle.dumps((block, np.ascontiguousarray(latents)), protocol=5))
            answer = _receive(p.stdout)
        except (BrokenPipeError, OSError, ValueError):
            answer = None
        finally:  # back in the pool even when dead: its next write fails at once instead of
            self._free.put(p)  # other threads waiting forever for a free worker
        if answer is None:
            raise WriterError(f"{self.path}: a chunk-writer process ended unexpectedly (exit status {p.poll()})")
        if answer:
            raise WriterError(f"{self.path}: {answer.decode('utf-8', 'replace')}")

    def close(self) -> None:
        for p in self._procs:
            try:
                if p.stdin:
                    p.stdin.close()
            except OSError:
                pass
        for p in self._procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout:
                p.stdout.close()
        self._procs = []

    def __enter__(self) -> "ChunkWriterProcesses":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(path: str, model_dir: str | None) -> int:
    """The worker: write each ``(block, latents)`` it is sent into the store's latent array."""
    import signal

    # Ctrl-C reaches the whole process group: the parent handles it (keeping the work done for
    # --resume) and ends the workers by closing their pipes, so a worker ignores it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if model_dir:  # where a hyperprior codec finds its model (name + sha256 in the codec config)
        os.environ["WSICODEC_MODELS"] = model_dir
    # no torch here unless the codec needs it (a hyperprior's hyper-encoder, one thread: the
    # parent set OMP_NUM_THREADS=1): a factorized model's worker starts in a fraction of a second
    from wsicodec.errors import first_line
    from wsicodec.store import writable_latents

    stdin = sys.stdin.buffer
    stdout = os.fdopen(os.dup(1), "wb")  # the pipe to the parent, kept for the frames alone:
    os.dup2(2, 1)  # anything a library prints goes to stderr instead
    latents: Any = None
    failed = ""
    try:
        latents = writable_latents(Path(path))
    except Exception as e:  # answered to every frame: the parent raises it as a one-line error
        failed = f"cannot open the store's latents for writing ({first_line(e)})"
    while (frame := _receive(stdin)) is not None:
        if failed:
            _send(stdout, failed.encode())
            continue
        try:
            block, values = pickle.loads(frame)
            latents[block] = values  # atomic: temp file + rename
            _send(stdout, b"")
        except Exception as e:  # reported to the parent, which raises it
            _send(stdout, first_line(e).encode())
    return 0


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
