"""Operating points of a variable-rate model (the gained hyperprior, :mod:`wsicodec.models.gained`).

A point is a position ``p`` on the model's ladder of ``K`` trained points, ``0 ≤ p ≤ K − 1``:
an integer is a trained point (its λ is on the model card); ``k + t`` (``0 < t < 1``) lies
between points ``k`` and ``k + 1``, with the gains interpolated geometrically,
``g = g_k^(1−t) · g_{k+1}^t`` (linearly in the stored log gains), for rates between theirs.

A model is named with its point as ``NAME@P`` (``hne-vbr-v1@5``, ``hne-vbr-v1@4.5``); a name
alone means the model card's default point.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsicodec.models.registry import ModelError

__all__ = ["RateError", "RatePoint", "point_from_meta", "rate_point", "resolve", "split_model_ref"]


class RateError(ModelError, ValueError):
    """An operating point that a model does not have, or a malformed one."""


@dataclass(frozen=True)
class RatePoint:
    """One operating point: its position, the trained point below it and the interpolation
    weight ``t`` towards the next one, and the float64 gain and inverse gain (M,) it applies."""

    position: float
    index: int
    t: float
    gain: np.ndarray
    inverse_gain: np.ndarray

    @property
    def label(self) -> str:
        """``5`` for a trained point, ``4.5`` between two."""
        return f"{self.position:g}"

    def to_meta(self) -> dict[str, Any]:
        """The store metadata of this point (docs/format.md, version 4): index and t; an
        interpolated point adds its gain vectors (float64, as JSON numbers: exact round trip),
        so that decoding never recomputes them."""
        meta: dict[str, Any] = {"index": self.index, "t": self.t}
        if self.t:
            meta["gain"] = [float(v) for v in self.gain]
            meta["inverse_gain"] = [float(v) for v in self.inverse_gain]
        return meta


def _logs(model_or_state: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(model_or_state, Mapping):
        lg, lig = model_or_state["log_gain"], model_or_state["log_inverse_gain"]
    else:
        lg, lig = model_or_state.log_gain, model_or_state.log_inverse_gain
    return _float64(lg), _float64(lig)


def _float64(v: Any) -> np.ndarray:
    """A tensor's or array's values as float64 numpy (exact: float32 widens without rounding)."""
    return np.asarray(v.detach().cpu().double().numpy() if hasattr(v, "detach") else v, np.float64)


def rate_point(model_or_state: Any, position: float) -> RatePoint:
    """The point at ``position`` of a variable-rate model (its module or state dict)."""
    log_gain, log_inverse = _logs(model_or_state)
    K = log_gain.shape[0]
    p = float(position)
    if not (math.isfinite(p) and 0 <= p <= K - 1):
        raise RateError(f"operating point {position!r} is outside this model's 0 … {K - 1}")
    index = min(int(math.floor(p)), K - 1)
    t = p - index
    if t == 0.0:
        return RatePoint(p, index, 0.0, np.exp(log_gain[index]), np.exp(log_inverse[index]))
    lg = (1 - t) * log_gain[index] + t * log_gain[index + 1]
    li = (1 - t) * log_inverse[index] + t * log_inverse[index + 1]
    return RatePoint(p, index, t, np.exp(lg), np.exp(li))


def point_from_meta(model_or_state: Any, meta: Any) -> RatePoint:
    """The point a store's metadata records (checked: index in range, t in [0, 1), vectors of
    the model's width). Trained points take their gains from the model, interpolated ones from
    the recorded vectors."""
    log_gain, _ = _logs(model_or_state)
    K, M = log_gain.shape
    if not isinstance(meta, dict):
        raise RateError("operating_point is not an object")
    index, t = meta.get("index"), meta.get("t", 0.0)
    if not (isinstance(index, int) and not isinstance(index, bool) and 0 <= index < K):
        raise RateError(f"operating_point index {index!r} is not one of this model's 0 … {K - 1}")
    if not (isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t < 1 and (t == 0 or index < K - 1)):
        raise RateError(f"operating_point t {t!r} is not in [0, 1)")
    if not t:
        return rate_point(model_or_state, index)
    vectors = []
    for key in ("gain", "inverse_gain"):
        v = meta.get(key)
        if not (isinstance(v, list) and len(v) == M and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                              and math.isfinite(x) and x > 0 for x in v)):
            raise RateError(f"operating_point {key} is not {M} positive numbers")
        vectors.append(np.asarray(v, np.float64))
    return RatePoint(index + float(t), index, float(t), vectors[0], vectors[1])


def split_model_ref(ref: str) -> tuple[str, float | None]:
    """``"NAME@P"`` -> ``("NAME", P)``; ``"NAME"`` -> ``("NAME", None)``."""
    name, sep, point = str(ref).partition("@")
    if not sep:
        return name, None
    try:
        value = float(point)
    except ValueError:
        raise RateError(f"{ref!r}: the operating point after '@' must be a number (e.g. {name}@3)") from None
    if not math.isfinite(value) or value < 0:
        raise RateError(f"{ref!r}: the operating point must be a number ≥ 0")
    return name, value


def resolve(model: Any, card: Any, position: float | None) -> RatePoint | None:
    """The operating point to code with: ``position`` on a variable-rate model (None: its card's
    default point), None for a model of one rate (which refuses a position)."""
    if not card.spec.variable_rate:
        if position is not None:
            raise RateError(f"model {card.name} has a single rate; it takes no operating point (@{position:g})")
        return None
    if position is None:
        if card.default_point is None:
            raise RateError(f"model {card.name} has no default operating point; name one (e.g. {card.name}@0)")
        position = card.default_point
    return rate_point(model, position)
