"""Fixtures every test can use: a tiny untrained model saved the way shipped models are, and real
H&E pixels from the example slide the package ships (CMU-1-Small-Region.svs, CC0), so that the
suite runs in any clone. A ``shared`` data folder beside the repository (or $WSICODEC_SHARED),
where present, adds extra cases through :func:`shared_cases`; no test needs it."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WSICODEC_SHARED", REPO.parent / "shared"))
EXAMPLE = REPO / "wsicodec" / "examples" / "CMU-1-Small-Region.svs"


#: A tissue region of the example slide's level 0 (x, y, width, height): epidermis, dermis and a
#: hair follicle, no glass.
EXAMPLE_TISSUE = (800, 1700, 1024, 1024)


def shared_cases(folder: str, *names: str) -> list:
    """``pytest.param(path, id=name)`` for each of ``names`` present in ``folder`` of the shared
    data folder: extra cases for a parametrized test, none where that folder is absent."""
    return [pytest.param(SHARED / folder / n, id=n) for n in names if (SHARED / folder / n).is_file()]


def read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


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


@pytest.fixture(scope="session")
def example_tissue() -> np.ndarray:
    """:data:`EXAMPLE_TISSUE` of the example slide as uint8 RGB (read once; do not modify)."""
    import openslide

    x, y, w, h = EXAMPLE_TISSUE
    with openslide.OpenSlide(str(EXAMPLE)) as slide:
        rgb = np.asarray(slide.read_region((x, y), 0, (w, h)).convert("RGB"))
    rgb.setflags(write=False)
    return rgb


@pytest.fixture()
def he_crop(example_tissue) -> np.ndarray:
    """400 x 368 pixels of H&E tissue."""
    return np.ascontiguousarray(example_tissue[:400, :368])


@pytest.fixture(scope="session")
def example_store(tmp_path_factory) -> Path:
    """The bundled example slide compressed once with the default shipped model (real tissue
    pixels, for the viewer's tests)."""
    from wsicodec.pipeline import compress

    out = tmp_path_factory.mktemp("example") / "CMU-1-Small-Region.zarr"
    compress(EXAMPLE, out, device="cpu", precision="fp32")
    return out


def one_line_error(result, *needles: str) -> None:
    """A CLI result (click's CliRunner) that failed with one line, ``wsicodec: error: ...``,
    holding every one of ``needles``, and no traceback."""
    assert result.exit_code != 0
    out = result.output.strip()
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    assert out.startswith("wsicodec: error:"), out
    for n in needles:
        assert n in out, out


def side_information_on_device(monkeypatch) -> list:
    """Make ``compress`` compute a hyperprior's side information in the engine's batches, as it
    does on CUDA, on any device; returns the list that records each engine's decoder."""
    import wsicodec.pipeline as pipeline
    from wsicodec.engine import Transforms

    made: list = []

    class OnDevice(Transforms):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs, hyper_on_device=True)
            made.append(self.hyper)

    monkeypatch.setattr(pipeline, "Transforms", OnDevice)
    return made


def differing_files(a, b) -> tuple[list, list]:
    """(every file of store ``a``, those whose bytes differ in store ``b``), relative paths."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files, [f for f in files if (a / f).read_bytes() != (b / f).read_bytes()]


def code_chunks_whole(store: Path) -> None:
    """Re-code every latent chunk of ``store`` through zarr, which codes each chunk whole, edge
    chunks included: the chunks of a store written before format version 5 (the same values for
    a factorized model; a hyperprior's edge chunks then see zeros beyond the array)."""
    import zarr
    from zarr.core.array import Array, AsyncArray

    a = zarr.open_array(str(Path(store) / "latents"), mode="r+")._async_array
    a = Array(AsyncArray(metadata=a.metadata, store_path=a.store_path, config={"write_empty_chunks": True}))
    _, c, _ = a.chunks
    for f in (Path(store) / "latents" / "c" / "0").glob("*/*"):
        ty, tx = int(f.parent.name), int(f.name)
        block = (slice(None), slice(ty * c, (ty + 1) * c), slice(tx * c, (tx + 1) * c))
        a[block] = np.asarray(a[block])


def disk_full_after(monkeypatch, n: int):
    """Chunk writes fail as on a full disk (ENOSPC) once ``n`` chunks are on disk; returns the
    call that frees the disk again."""
    import errno

    from wsicodec.store.chunks import LatentChunkFiles

    write, written = LatentChunkFiles.write, []

    def write_until_full(self, tx, ty, values):
        if len(written) >= n:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.root / "latents"))
        write(self, tx, ty, values)
        written.append((tx, ty))

    monkeypatch.setattr(LatentChunkFiles, "write", write_until_full)
    return lambda: monkeypatch.setattr(LatentChunkFiles, "write", write)


def rd_objective(store: Path, rgb: np.ndarray, lmbda: float, distortion: str = "mse",
                 model_dir: Path | None = None) -> float:
    """A store's training objective on ``rgb``: the real bits per pixel of its latent chunks plus
    λ times the distortion its model was trained for (255²·MSE, or 1 − MS-SSIM), decoded in fp32
    on the CPU."""
    from pytorch_msssim import ms_ssim

    from wsicodec.bench.codecs import wsicodec_bytes
    from wsicodec.store import WsiStore

    h, w = rgb.shape[:2]
    with WsiStore(store, model_dir=model_dir, device="cpu", precision="fp32") as s:
        decoded = s.read_level0(0, 0, w, h)
    x, y = (torch.from_numpy(np.asarray(a, np.float32) / 255).permute(2, 0, 1)[None] for a in (rgb, decoded))
    if distortion == "ms-ssim":
        loss = 1 - float(ms_ssim(y, x, data_range=1.0))
    else:
        loss = 255.0**2 * float(torch.mean((x - y) ** 2))
    return wsicodec_bytes(store) * 8 / (h * w) + lmbda * loss


def retire(folder: Path, name: str, by: str) -> None:
    """Move ``name`` to ``retired/``, its card naming ``by`` as its successor (as a release does)."""
    (folder / "retired").mkdir(exist_ok=True)
    card = json.loads((folder / f"{name}.json").read_text())
    (folder / "retired" / f"{name}.json").write_text(json.dumps({**card, "superseded_by": by}))
    (folder / f"{name}.json").unlink()
    (folder / f"{name}.pt").rename(folder / "retired" / f"{name}.pt")
