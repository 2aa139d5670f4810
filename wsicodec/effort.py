"""Encoder efforts: how hard ``compress`` searches each tile's latents (the search itself is
:mod:`wsicodec.refine`). The names are what ``--effort`` takes, what a store records and what
a benchmark curve at that effort is suffixed with (``wsicodec-hyperprior-high``)."""
from __future__ import annotations

from typing import NamedTuple

from wsicodec.errors import WsicodecError

__all__ = ["EFFORTS", "Effort", "EffortError", "effort_setting", "effort_suffix"]


class Effort(NamedTuple):
    """How hard the encoder searches a tile's latents."""

    steps: int  # gradient steps per tile (0: the analysis's latents as they are)
    learning_rate: float  # Adam's step on the latents, in quantization steps


#: effort name -> its search; "max" takes larger steps as well as more of them, since at the
#: same step size the search is still moving when "high"'s twenty steps end
EFFORTS: dict[str, Effort] = {"standard": Effort(0, 0.0), "high": Effort(20, 0.01), "max": Effort(60, 0.02)}


class EffortError(WsicodecError, ValueError):
    """An encoder effort this model or input cannot use."""


def effort_setting(effort: str) -> Effort:
    """The latent search of an effort name."""
    try:
        return EFFORTS[effort]
    except KeyError:
        raise EffortError(f"unknown effort {effort!r} (one of {', '.join(EFFORTS)})") from None


def effort_suffix(curve: str) -> str:
    """``"-high"`` / ``"-max"`` for a benchmark curve at a higher encoder effort, else ``""``."""
    return next((f"-{e}" for e in EFFORTS if e != "standard" and curve.endswith(f"-{e}")), "")
