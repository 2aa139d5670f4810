"""Device selection and the batched analysis/synthesis pair."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from wsicodec.engine import EngineError, pick_device


def test_engine_devices():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="no CUDA device"):
            pick_device("cuda")
    with pytest.raises(EngineError):
        pick_device("tpu")


def test_batches_give_the_same_latents_as_single_tiles(tiny_models, he_crop):
    from wsicodec.engine import LatentCoder
    from wsicodec.models import load_model

    m, card = load_model("tiny", tiny_models)
    coder = LatentCoder(m, card, "cpu", batch_size=4)
    tiles = np.stack([he_crop[:128, :128], he_crop[128:256, :128], he_crop[:128, 128:256]])
    together = coder.analysis(tiles)
    alone = np.concatenate([coder.analysis(t[None]) for t in tiles])
    assert np.mean(together != alone) < 1e-4
    px = coder.synthesis(together)
    assert px.shape == (3, 128, 128, 3) and px.dtype == np.uint8
