"""Feature networks C for the perceptual term ψ·‖C(x) − C(x̂)‖²."""
from __future__ import annotations

from typing import Callable

import torch

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def feature_network(spec: str) -> FeatureFn | None:
    if spec in ("", "none"):
        return None
    raise ValueError(f"unknown feature network {spec!r}")
