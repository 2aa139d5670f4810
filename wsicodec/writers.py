"""Entropy coding and chunk writing in worker processes.

The range coder holds the GIL, so threads cannot run it side by side, and one process codes
less than a GPU analyses, above all for a hyperprior, whose chunk codec also runs the
hyper-encoder and the integer hyper-decoder unless the GPU made those symbols
(:class:`wsicodec.engine.DeviceHyperSymbols`); figures in ``docs/performance.md``
(``benchmarks/throughput.py``).
:class:`ChunkWriterProcesses` runs ``n`` worker processes, each with the store's latent chunk
files open for writing (:class:`wsicodec.store.chunks.LatentChunkFiles`), and hands each one a group of
tiles' latents at a time: the parent only stacks them and writes them into a pipe (one frame per
group: few wake-ups and GIL hand-offs per tile); range checks, casting, coding and the file
writes all happen in the workers.

The workers are plain child processes (``python -m wsicodec.writers PATH [MODEL_DIR]``,
:mod:`wsicodec._pipes`) fed over their stdin / stdout pipes.

Frames, parent to child: a header ``<III`` (length of the pickled description, number of tiles,
length of the array data), the pickled ``(tiles, kind, [(dtype, shape), ...])``, then the raw
C-order arrays one after the other: for kind ``"latents"`` the latents ``(n, C, c, c)``, for
``"hyper"`` the :class:`~wsicodec.codec.HyperSymbols` of ``n`` chunks made on a GPU (``z``, ``y``,
``index``, each stacked). Child to parent: a 4-byte little-endian length, then that many bytes:
empty for done, else the error's text."""
from __future__ import annotations

import os
import pickle
import queue
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from wsicodec._pipes import WorkerProcesses, receive, send, serve_stdio, write_all
from wsicodec.errors import StoreError, first_line
from wsicodec.store.chunks import LatentChunkFiles

_FRAME = struct.Struct("<III")


class WriterError(StoreError):
    """A chunk-writer process failed (a one-line error naming the store)."""


def _receive_tiles(f: IO[bytes]) -> tuple[list, Sequence] | None:
    """One frame of tiles from the parent, as ``(tiles, values)`` (each value a latent array or
    a :class:`~wsicodec.codec.HyperSymbols`); None at the end of the stream."""
    head = f.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    n_desc, n_tiles, n_data = _FRAME.unpack(head)
    desc = f.read(n_desc)
    data = bytearray(n_data)
    if len(desc) < n_desc or f.readinto(data) < n_data:
        return None
    tiles, kind, layout = pickle.loads(desc)
    arrays, at = [], 0
    for dtype, shape in layout:
        a = np.frombuffer(data, dtype, int(np.prod(shape)), at).reshape(shape)
        arrays.append(a)
        at += a.nbytes
    if len(tiles) != n_tiles or at != n_data or any(len(a) != n_tiles for a in arrays):
        raise ValueError("malformed frame")
    if kind == "latents" and len(arrays) == 1:
        return tiles, arrays[0]
    if kind == "hyper" and len(arrays) == 3:
        from wsicodec.codec import HyperSymbols

        return tiles, [HyperSymbols(*parts) for parts in zip(*arrays, strict=True)]
    raise ValueError(f"malformed frame (kind {kind!r})")


class ChunkWriterProcesses(WorkerProcesses):
    """``n`` worker processes that entropy-code and write latent chunks of the store at ``path``.
    :meth:`write` blocks until the chunks are on disk (call it from ``n`` threads to keep every
    worker busy); the bytes are those this process would write (the codec is deterministic)."""

    def __init__(self, path: Path, n: int, model_dir: Path | None = None):
        self.path = Path(path)
        args = [str(self.path.resolve())] + ([str(Path(model_dir).resolve())] if model_dir else [])
        try:
            super().__init__("wsicodec.writers", args, n)
        except OSError as e:
            raise WriterError(f"{self.path}: cannot start a chunk-writer process ({e})") from None
        self._free: queue.Queue = queue.Queue()
        for p in self._procs:
            self._free.put(p)

    def write(self, tiles: Sequence[tuple[int, int]], chunks: np.ndarray | Sequence[Any]) -> None:
        """Code and write chunks of one shape: ``chunks[i]`` (any integer dtype; values outside the
        store's are an error) is tile ``tiles[i]``'s at the shape the layout codes it (see
        :class:`wsicodec.store.chunks.LatentChunkFiles`); or ``chunks`` is a list of the tiles'
        :class:`~wsicodec.codec.HyperSymbols`."""
        tiles = [(int(tx), int(ty)) for tx, ty in tiles]
        if isinstance(chunks, np.ndarray):
            kind, arrays = "latents", [np.ascontiguousarray(chunks)]
            if chunks.ndim != 4:
                raise ValueError(f"{len(tiles)} tiles but latents of shape {chunks.shape}")
        else:
            kind, arrays = "hyper", [np.ascontiguousarray(np.stack([getattr(c, part) for c in chunks]))
                                     for part in ("z", "y", "index")]
        if any(len(a) != len(tiles) for a in arrays):
            raise ValueError(f"{len(tiles)} tiles but {len(arrays[0])} chunks")
        desc = pickle.dumps((tiles, kind, [(a.dtype.str, a.shape) for a in arrays]), protocol=5)
        p = self._free.get()
        try:
            write_all(p.stdin.fileno(), [_FRAME.pack(len(desc), len(tiles), sum(a.nbytes for a in arrays)), desc,
                                          *arrays])
            answer = receive(p.stdout)
        except (BrokenPipeError, OSError, ValueError):
            answer = None
        finally:  # back in the pool even when dead: its next write fails at once instead of
            self._free.put(p)  # other threads waiting forever for a free worker
        if answer is None:
            raise WriterError(f"{self.path}: a chunk-writer process ended unexpectedly (exit status {p.poll()})")
        if answer:
            raise WriterError(f"{self.path}: {answer.decode('utf-8', 'replace')}")


def _serve(path: str, model_dir: str | None) -> int:
    """The worker: code and write each ``(tx, ty, latents)`` chunk it is sent."""
    import signal

    # Ctrl-C reaches the whole process group: the parent handles it (keeping the work done for
    # --resume) and ends the workers by closing their pipes, so a worker ignores it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if model_dir:  # where a hyperprior codec finds its model (name + sha256 in the codec config)
        os.environ["WSICODEC_MODELS"] = model_dir
    # no torch here unless the codec needs it (a hyperprior's hyper-encoder, one thread: the
    # parent set OMP_NUM_THREADS=1): a factorized model's worker starts in a fraction of a second
    stdin, stdout = serve_stdio()
    chunks: Any = None
    failed = ""
    try:
        chunks = LatentChunkFiles(Path(path))
    except Exception as e:  # answered to every frame: the parent raises it as a one-line error
        failed = first_line(e).removeprefix(f"{path}: ")  # the parent names the store
    while True:
        try:
            frame = _receive_tiles(stdin)
        except Exception as e:  # a frame this worker cannot read: the stream is lost
            send(stdout, f"chunk-writer: {first_line(e)}".encode())
            return 1
        if frame is None:
            return 0
        if failed:
            send(stdout, failed.encode())
            continue
        try:
            for (tx, ty), values in zip(*frame, strict=True):
                chunks.write(tx, ty, values)  # range-checked, cast, coded; atomic: temp file + rename
            send(stdout, b"")
        except Exception as e:  # reported to the parent, which raises it
            send(stdout, first_line(e).removeprefix(f"{path}: ").encode())


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
