"""Shared fixtures: a tiny untrained model saved the way shipped models are, and paths to the
optional extra test data (the developer data set; tests needing it skip when it is absent)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WSICODEC_SHARED", REPO.parent / "shared"))
SLIDES = SHARED / "slides"
HISTOLOGY = SHARED / "data" / "histology"
EXAMPLE = REPO / "wsicodec" / "examples" / "CMU-1-Small-Region.svs"


def shared_file(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"extra test data {p} is not available (the developer data set is not checked out here)")
    return p


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """A folder with tiny untrained models ('tiny', 'tiny-other': factorized; 'tiny-hyper': a
    mean-scale hyperprior) and DEFAULT = tiny. The
    analysis output is scaled up so that latents spread over about ±10 (an untrained model's are
    all 0, which would make latent checks trivial) and some fall outside the tables (escapes)."""
    from wsicodec.models import ModelCard, build_model, save_model

    d = tmp_path_factory.mktemp("models")
    for i, name in enumerate(["tiny", "tiny-other"]):
        torch.manual_seed(i)
        m = build_model("bmshj2018-factorized", N=8, M=8)
        with torch.no_grad():
            m.g_a[-1].weight.mul_(30)
        save_model(m, ModelCard(name=name, architecture="bmshj2018-factorized", params={"N": 8, "M": 8}), d)
    torch.manual_seed(2)
    m = build_model("mbt2018-mean", N=8, M=8)
    with torch.no_grad():
        m.g_a[-1].weight.mul_(30)
        m.h_a[0].weight.mul_(0.2)
    save_model(m, ModelCard(name="tiny-hyper", architecture="mbt2018-mean", params={"N": 8, "M": 8}), d)
    (d / "DEFAULT").write_text("tiny\n")
    return d


@pytest.fixture()
def one_thread():
    """torch on one thread for the test: results that must be equal to the bit although computed
    in differently sized batches (two threads may round a pixel differently)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def he_crop() -> np.ndarray:
    from PIL import Image

    p = shared_file("data", "histology", "val", "monuseg-TCGA-49-4488-01Z-00-DX1.webp")
    return np.asarray(Image.open(p).convert("RGB"))[:400, :368]


@pytest.fixture(scope="session")
def example_store(tmp_path_factory) -> Path:
    """The bundled example slide compressed once with the default shipped model (real tissue
    pixels, for the viewer's tests)."""
    from wsicodec.pipeline import compress

    out = tmp_path_factory.mktemp("example") / "CMU-1-Small-Region.zarr"
    compress(EXAMPLE, out, device="cpu", precision="fp32")
    return out
