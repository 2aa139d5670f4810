"""Training batches, made in the training process or in worker processes.

Batch ``k`` of a run is a function of the run's seed and ``k`` alone (its own random generator,
:meth:`CropSampler.batch_at`), so the data order is the same with 0 or 12 workers, on any device,
and a resumed run at step ``s`` continues with batch ``s``. Workers (torch ``DataLoader`` over an
``IterableDataset``) each make every ``W``-th batch; the loader hands them back in order, in pinned
memory when the batches go to a GPU.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from wsicodec.train.data import CropSampler

__all__ = ["BatchStream", "default_workers"]


def default_workers(device: torch.device) -> int:
    """Worker processes for ``--workers -1``: none on the CPU (the step itself needs the cores, and
    a CPU-time budget counts the training process only), on a GPU all cores but two (the training
    process and the compiler), at most 12."""
    if device.type == "cpu":
        return 0
    return max(1, min(12, (os.cpu_count() or 4) - 2))


class _Batches(IterableDataset):
    def __init__(self, sampler: CropSampler, batch: int, start: int):
        super().__init__()
        self.sampler, self.batch, self.start = sampler, batch, start

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        k, stride = (self.start + info.id, info.num_workers) if info else (self.start, 1)
        while True:
            yield self.sampler.batch_at(k, self.batch)
            k += stride


class BatchStream:
    """Batches ``start``, ``start + 1``, ... of ``sampler`` on ``device``; ``index`` is the number
    of the batch the next :meth:`next` returns."""

    def __init__(self, sampler: CropSampler, batch: int, start: int, device: torch.device,
                 workers: int = 0, prefetch: int = 4):
        self.device = device
        self.index = start
        self.workers = workers
        pin = device.type == "cuda"
        data = _Batches(sampler, batch, start)
        if workers > 0:
            # its own generator: the workers' base seed is not drawn from the global one, whose
            # state the quantization noise of the steps follows (and a checkpoint records)
            self._loader = DataLoader(data, batch_size=None, num_workers=workers, pin_memory=pin,
                                      prefetch_factor=prefetch, persistent_workers=False,
                                      generator=torch.Generator().manual_seed(sampler.seed))
        else:
            self._loader = data
        self._it = iter(self._loader)
        self._pin = pin and workers == 0

    def next(self) -> torch.Tensor:
        x = next(self._it)
        if self._pin:
            x = x.pin_memory()
        self.index += 1
        return x.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop the worker processes (the DataLoader's iterator does it when it is released)."""
        self._it = None
