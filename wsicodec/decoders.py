"""Range decoding of hyperprior chunks in worker processes, for a reader whose GPU runs the
synthesis and the integer hyper-decoder faster than one host core range-decodes (the range
decoder holds the GIL: threads cannot decode side by side; figures in ``docs/performance.md``).

:class:`ChunkDecoderProcesses` runs ``n`` workers (``python -m wsicodec.decoders MODEL_JSON
[MODEL_DIR]``, :mod:`wsicodec._pipes`), each with the store's model's entropy tables, and splits
each call's chunks between them. The parent has already read each chunk's side information
(:func:`wsicodec.codec.read_hyper_chunk`) and derived every latent's table and mean from it; a
worker range-decodes with them (:func:`wsicodec.codec.decode_hyper_latents`) and sends the
latents back.

Messages (each length-prefixed, :func:`wsicodec._pipes.send`), parent to worker: ``<II`` (length
of the pickled description, number of chunks), the pickled ``[(shape, escapes, words), ...]``,
then the tables ``(n, M, h, w)`` uint8 and the means int32, C order. Worker to parent: ``b"\\0"``
and the latents ``(n, M, h, w)`` int32, or ``b"\\1"``, the failing chunk's place in the message,
a tab and the error's text."""
from __future__ import annotations

import json
import os
import pickle
import struct
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from wsicodec._pipes import WorkerProcesses, receive, send, send_parts, serve_stdio
from wsicodec.codec import CodecError, HyperChunk, decode_hyper_latents, hyper_entropy_model
from wsicodec.errors import first_line

__all__ = ["ChunkDecoderProcesses", "default_decoder_processes"]

_HEAD = struct.Struct("<II")
_NO_Z = np.zeros((0, 0, 0), np.int32)  # a worker gets the tables and means, not the side information


def default_decoder_processes(cuda: bool, cores: int | None = None) -> int:
    """Worker processes a reader range-decodes in: on CUDA half the host's cores (a reader has no
    slide to read beside them, where ``compress`` gives three quarters to reading), else none (on
    the CPU the synthesis is far slower than one core's range decoding: it decodes in the
    reader's own thread)."""
    return max(1, (cores or os.cpu_count() or 1) // 2) if cuda else 0


class ChunkDecoderProcesses(WorkerProcesses):
    """``n`` worker processes that range-decode the latents of the hyperprior model
    ``model_ref`` (``{"name", "sha256"}``, found in ``model_dir`` or the zoo)."""

    #: chunks per message: small enough that a worker starts soon, large enough that a message's
    #: fixed costs (a pickle, two system calls each way) stay small beside decoding it
    chunks_per_message = 4

    def __init__(self, model_ref: dict[str, Any], n: int, model_dir: Path | None = None):
        args = [json.dumps({"name": str(model_ref["name"]), "sha256": str(model_ref["sha256"])})]
        args += [str(Path(model_dir).resolve())] if model_dir else []
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        try:
            super().__init__("wsicodec.decoders", args, n)
        except OSError as e:
            raise CodecError(f"cannot start a chunk-decoder process ({e})") from None

    def decode(self, chunks: list[HyperChunk], index: np.ndarray, mean: np.ndarray) -> list[np.ndarray]:
        """The int32 latents of ``chunks`` (all of one shape) given their tables ``index``
        ``(n, M, h, w)`` and fixed-point means ``mean``; raises :class:`CodecError`, whose
        ``chunk`` names the damaged chunk's place in ``chunks`` where one is to blame. The chunks
        go out in messages of a few, each worker's on a thread of its own, one message in flight
        per worker: a worker decodes while the next message is made, and no pipe ever holds more
        than one message each way (no deadlock whatever size the system gives a pipe)."""
        with self._lock:  # one call at a time: the workers' pipes carry one conversation each
            return self._decode(chunks, index, mean)

    def _decode(self, chunks: list[HyperChunk], index: np.ndarray, mean: np.ndarray) -> list[np.ndarray]:
        per = max(1, min(self.chunks_per_message, -(-len(chunks) // len(self._procs))))
        messages = [np.arange(i, min(i + per, len(chunks))) for i in range(0, len(chunks), per)]
        out: list[Any] = [None] * len(chunks)
        failures: list[CodecError] = []

        def serve(p: Any, mine: list[np.ndarray]) -> None:
            for part in mine:
                if failures:
                    return
                desc = pickle.dumps([(chunks[i].shape, chunks[i].escapes, chunks[i].words) for i in part],
                                    protocol=5)
                arrays = [np.ascontiguousarray(index[part], np.uint8), np.ascontiguousarray(mean[part], np.int32)]
                try:
                    send_parts(p.stdin.fileno(), [_HEAD.pack(len(desc), len(part)), desc, *arrays])
                    answer = receive(p.stdout)
                except (BrokenPipeError, OSError, ValueError):
                    answer = None
                if answer is None:
                    failures.append(CodecError(f"a chunk-decoder process ended unexpectedly (exit status {p.poll()})"))
                    return
                if answer[:1] != b"\0":
                    where, _, text = bytes(answer[1:]).decode("utf-8", "replace").partition("\t")
                    e = CodecError(text)
                    e.chunk = int(part[int(where)]) if where.isdigit() and int(where) < len(part) else None
                    failures.append(e)
                    return
                shape = (len(part), *chunks[part[0]].shape)
                for i, lat in zip(part, np.frombuffer(answer, np.int32, int(np.prod(shape)), 1).reshape(shape),
                                  strict=True):
                    out[i] = lat

        if self._pool is None:
            self._pool = ThreadPoolExecutor(len(self._procs), thread_name_prefix="wsicodec-decoder")
        jobs = [self._pool.submit(serve, p, messages[k :: len(self._procs)]) for k, p in enumerate(self._procs)]
        for job in jobs:
            job.result()
        if failures:
            raise failures[0]
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        super().close()


def _serve(model_json: str, model_dir: str | None) -> int:
    """The worker: range-decode each message's chunks with the tables and means it carries."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and closes the pipes
    if model_dir:
        os.environ["WSICODEC_MODELS"] = model_dir
    stdin, stdout = serve_stdio()
    hm: Any = None
    failed = ""
    try:
        hm = hyper_entropy_model(json.loads(model_json))
    except Exception as e:  # answered to every message: the parent raises it as a one-line error
        failed = first_line(e)
    while True:
        message = receive(stdin)
        if message is None:
            return 0
        if failed:
            send(stdout, b"\1" + failed.encode())
            continue
        try:
            n_desc, n = _HEAD.unpack_from(message)
            items = pickle.loads(message[_HEAD.size : _HEAD.size + n_desc])
            shape = (n, *items[0][0])
            at = _HEAD.size + n_desc
            index = np.frombuffer(message, np.uint8, int(np.prod(shape)), at).reshape(shape)
            mean = np.frombuffer(message, np.int32, index.size, at + index.size).reshape(shape)
        except Exception as e:  # a message this worker cannot read: reported, the parent raises it
            send(stdout, b"\1" + f"0\tchunk-decoder: {first_line(e)}".encode())
            continue
        latents = []
        for i, (s, esc, words) in enumerate(items):
            try:
                latents.append(decode_hyper_latents(HyperChunk(tuple(s), _NO_Z, esc, words), index[i], mean[i], hm))
            except Exception as e:  # reported with the chunk's place in the message
                send(stdout, b"\1" + f"{i}\t{first_line(e)}".encode())
                break
        else:
            stacked = np.ascontiguousarray(np.stack(latents), np.int32)
            send_parts(stdout.fileno(), [b"\0", stacked])


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
