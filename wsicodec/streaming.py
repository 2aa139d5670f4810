"""Streaming helpers that overlap the stages of a tile pipeline (reading, the network, entropy
coding and writing): :func:`prefetch` runs a function over items ahead of their consumer, and
:class:`BackgroundSink` hands items to worker threads with bounded memory."""
from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

__all__ = ["BackgroundSink", "prefetch"]


def prefetch(items: Iterable, fn: Callable, depth: int, threads: int = 1) -> Iterator:
    """Map ``fn`` over ``items`` in the background, results in order, at most ``depth`` ahead;
    ``threads`` > 1 runs that many calls at once (for work that releases the GIL, such as reading
    a slide). Closing the generator early stops the threads."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def results() -> Iterator:
        if threads <= 1:
            for it in items:
                yield it, fn(it)
            return
        with ThreadPoolExecutor(threads, thread_name_prefix="wsicodec-prefetch-pool") as pool:
            running: deque = deque()
            try:
                for it in items:
                    running.append((it, pool.submit(fn, it)))
                    if len(running) >= threads:
                        it0, fut = running.popleft()
                        yield it0, fut.result()
                while running:
                    it0, fut = running.popleft()
                    yield it0, fut.result()
            finally:
                for _, fut in running:
                    fut.cancel()

    def work():
        try:
            for it, res in results():
                if stop.is_set() or not put((it, res, None)):
                    return
        except BaseException as e:  # handed to the consumer
            put((None, None, e))
        put(done)

    t = threading.Thread(target=work, daemon=True, name="wsicodec-prefetch")
    t.start()
    try:
        while True:
            got = q.get()
            if got is done:
                break
            it, res, err = got
            if err is not None:
                raise err
            yield it, res
    finally:
        stop.set()
        t.join()


class BackgroundSink:
    """Run ``fn(*item)`` for each :meth:`put` item on ``workers`` threads, at most ``depth`` items
    in flight (``put`` blocks beyond that, so memory stays bounded). The first error is raised
    from the next :meth:`put` or from :meth:`close`; once one item failed, the rest are skipped.

    The compressor uses it to entropy-code and write tiles while the network runs the next batch."""

    def __init__(self, fn: Callable, workers: int = 2, depth: int = 16):
        self._fn = fn
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="wsicodec-sink")
        self._slots = threading.BoundedSemaphore(max(1, depth))
        self._error: BaseException | None = None

    def _run(self, item: tuple) -> None:
        try:
            if self._error is None:
                self._fn(*item)
        except BaseException as e:
            if self._error is None:
                self._error = e
        finally:
            self._slots.release()

    def put(self, *item) -> None:
        if self._error is not None:
            raise self._error
        self._slots.acquire()
        self._pool.submit(self._run, item)

    def close(self) -> None:
        """Wait for every item; raise the first error."""
        self._pool.shutdown(wait=True)
        if self._error is not None:
            raise self._error

    def __enter__(self) -> BackgroundSink:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:  # already failing: drop what is queued, keep the original error
            self._error = self._error or exc[0]
            self._pool.shutdown(wait=True, cancel_futures=True)
