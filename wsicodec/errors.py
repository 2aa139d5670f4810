"""The product's errors: every error a user can cause (a bad input, a damaged store, a missing
model, a wrong option) is a :class:`WsicodecError`, whose message is one line naming the file and
the problem. The command line shows these as one-line errors; any other exception is a bug and
keeps its traceback."""
from __future__ import annotations

__all__ = ["BenchError", "QualityError", "StoreError", "TrainError", "WsicodecError", "first_line"]


class WsicodecError(Exception):
    """Base class of every error a user can cause; the message names the file and the problem."""


class StoreError(WsicodecError):
    """A store that cannot be read or written, or an output that cannot be written."""


class BenchError(WsicodecError, ValueError):
    """A benchmark that cannot run as asked (unknown codec or metric, no inputs, bad options)."""


class TrainError(WsicodecError, ValueError):
    """A training run that cannot start or continue (no usable images, no checkpoint, bad options)."""


class QualityError(WsicodecError, ValueError):
    """A quality, target or calibration table that cannot be used (``compress --quality``, ``--target``)."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
