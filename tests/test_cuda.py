"""CUDA paths; skipped on machines without a CUDA device (the development and CI machines)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def test_cuda_latents_match_cpu_and_decode_anywhere(tiny_models, he_crop, tmp_path):
    from PIL import Image

    from wsicodec.pipeline import compress
    from wsicodec.store import WsiStore

    Image.fromarray(he_crop).save(tmp_path / "he.png")
    # fp32 on both sides (auto picks fp16 on CUDA and bf16 on a CPU with native bf16)
    cpu = compress(tmp_path / "he.png", tmp_path / "cpu.zarr", model_dir=tiny_models, tile=128, device="cpu",
                   precision="fp32")
    gpu = compress(tmp_path / "he.png", tmp_path / "gpu.zarr", model_dir=tiny_models, tile=128, device="cuda",
                   batch_size=8, precision="fp32")
    with WsiStore(cpu.output, model_dir=tiny_models, device="cpu") as a, \
            WsiStore(gpu.output, model_dir=tiny_models, device="cpu", precision="fp32") as b:
        qa, qb = np.asarray(a.latents[...]), np.asarray(b.latents[...])
        assert np.mean(qa != qb) < 1e-3 and np.abs(qa.astype(int) - qb).max() <= 1
        pa = b.read_level0(0, 0, *b.dimensions)  # GPU-written store decoded on the CPU
    with WsiStore(gpu.output, model_dir=tiny_models, device="cuda") as g:
        pg = g.read_level0(0, 0, *g.dimensions)
    assert np.abs(pa.astype(int) - pg).max() <= 2




def test_cuda_hyperprior_store_decodes_identically_on_cpu(tiny_models, he_crop, tmp_path):
    """A hyperprior store written on the GPU: its latents (integer hyper-decoder) are the same
    numbers whether read back where the model runs on the GPU or on the CPU."""
    from PIL import Image

    from wsicodec.pipeline import compress
    from wsicodec.store import WsiStore

    Image.fromarray(he_crop).save(tmp_path / "he.png")
    gpu = compress(tmp_path / "he.png", tmp_path / "gpu.zarr", model="tiny-hyper", model_dir=tiny_models,
                   tile=128, device="cuda", batch_size=8)
    with WsiStore(gpu.output, model_dir=tiny_models, device="cuda") as g:
        qg = np.asarray(g.fetch_latents(0, 0, *g.grid.latent_shape[::-1]))
        pg = g.read_level0(0, 0, *g.dimensions)
    with WsiStore(gpu.output, model_dir=tiny_models, device="cpu", precision="fp32") as c:
        qc = np.asarray(c.fetch_latents(0, 0, *c.grid.latent_shape[::-1]))
        pc = c.read_level0(0, 0, *c.dimensions)
    assert np.array_equal(qg, qc)
    assert np.abs(pg.astype(int) - pc).max() <= 2


def test_cuda_fp16_analysis_store_decodes_on_cpu(tiny_models, he_crop, tmp_path):
    """fp16 (the default on CUDA): other latents than fp32 for a few values, the same decodable store."""
    from PIL import Image

    from wsicodec.pipeline import compress
    from wsicodec.store import WsiStore

    Image.fromarray(he_crop).save(tmp_path / "he.png")
    f32 = compress(tmp_path / "he.png", tmp_path / "f32.zarr", model_dir=tiny_models, tile=128, device="cuda",
                   precision="fp32")
    f16 = compress(tmp_path / "he.png", tmp_path / "f16.zarr", model_dir=tiny_models, tile=128, device="cuda",
                   writer_processes=2)  # precision "auto": fp16 on CUDA
    with WsiStore(f32.output, model_dir=tiny_models, device="cpu") as a, \
            WsiStore(f16.output, model_dir=tiny_models, device="cpu") as b:
        qa, qb = np.asarray(a.latents[...]).astype(int), np.asarray(b.latents[...]).astype(int)
        assert np.mean(qa != qb) < 0.05 and np.abs(qa - qb).max() <= 2
        pa, pb = a.read_level0(0, 0, *a.dimensions), b.read_level0(0, 0, *b.dimensions)
    assert np.abs(pa.astype(int) - pb).mean() < 1.0


def test_cuda_hyper_symbols_are_the_cpu_codecs(tiny_models):
    """The side information made on the GPU (the default there): float64 products that passed the
    exactness check, tables and symbols equal to the CPU codec's for the GPU's z, chunks that
    decode on the CPU to within half a step of the latents."""
    from wsicodec.codec import HyperEntropyModel, HyperSymbols, code_hyper_symbols, decode_hyper_chunk
    from wsicodec.engine import Transforms
    from wsicodec.models import load_model
    from wsicodec.models.integer import ACT_BITS

    model, card = load_model("tiny-hyper", tiny_models)
    hm = HyperEntropyModel(model)
    coder = Transforms(model, card, "cuda")
    assert coder.hyper is not None
    rng = np.random.default_rng(4)
    y_fp = np.rint(rng.normal(0, 6, (6, 8, 16, 16)) * 2**ACT_BITS).astype(np.int32)
    z, sym, index = (t.cpu().numpy() for t in coder.hyper(torch.from_numpy(y_fp).cuda()))
    for i in range(len(y_fp)):
        ref_index, mean = hm.parameters(z[i])
        assert np.array_equal(index[i], ref_index)
        assert np.array_equal(sym[i], (y_fp[i].astype(np.int64) - mean + 2 ** (ACT_BITS - 1)) >> ACT_BITS)
        out = decode_hyper_chunk(code_hyper_symbols(HyperSymbols(z[i], sym[i], index[i]), hm), hm)
        assert np.abs(out - y_fp[i]).max() <= 2 ** (ACT_BITS - 1)


@pytest.fixture()
def he_folder(tmp_path):
    """Two H&E images cut from the bundled example slide."""
    from pathlib import Path

    from PIL import Image

    from wsicodec.slide import open_input

    slide = Path(__file__).resolve().parents[1] / "wsicodec" / "examples" / "CMU-1-Small-Region.svs"
    d = tmp_path / "he"
    d.mkdir()
    with open_input(slide) as src:
        Image.fromarray(src.read_rgb(900, 1400, 300, 260)).save(d / "a.png")
        Image.fromarray(src.read_rgb(1100, 900, 200, 200)).save(d / "b.png")
    return d


def test_cuda_training_bf16_workers_compile_and_resume_on_the_cpu(he_folder, tmp_path):
    """Training on the GPU as a window runs it (auto precision = bf16, batch workers, compiled
    forward, wall-clock limit), its checkpoint continued on the CPU."""
    from wsicodec.train import TrainConfig, Trainer

    cfg = TrainConfig(data=[str(he_folder)], val=[str(he_folder)], out=str(tmp_path / "run"), N=8, M=8, patch=64,
                      batch=8, lr=3e-3, steps=10**6, val_every=20, val_crop=128, device="cuda", workers=2,
                      compile=True, wall_minutes=10.0)
    t = Trainer(cfg)
    assert t.device.type == "cuda" and t.precision.name == "bf16" and t.precision.scaler is None
    losses = [t.train_step()["loss"] for _ in range(40)]
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < np.mean(losses[:5])
    v = t.validate_and_schedule()  # real bits, on the GPU
    assert v["bpp"] > 0 and v["psnr"] > 5
    t.run(max_steps=10)
    assert t.step == 50
    st = torch.load(t.ckpt_path, weights_only=False)
    assert st["cuda_rng"] is not None
    cpu = Trainer.from_checkpoint(tmp_path / "run", val=[])
    assert cpu.device.type == "cpu" and cpu.step == 50 and not cpu.cfg.compile
    for k, w in t.model.state_dict().items():
        assert torch.equal(w.cpu(), cpu.model.state_dict()[k])
    assert np.isfinite(cpu.train_step()["loss"])


def test_cuda_fp16_training_uses_a_gradient_scaler(he_folder, tmp_path):
    from wsicodec.train import TrainConfig, Trainer

    cfg = TrainConfig(data=[str(he_folder)], out=str(tmp_path / "run"), N=8, M=8, patch=64, batch=8, lr=3e-3,
                      steps=10**6, device="cuda", precision="fp16", workers=0)
    t = Trainer(cfg)
    assert t.precision.scaler is not None
    losses = [t.train_step()["loss"] for _ in range(30)]
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < np.mean(losses[:5])
    assert all(p.dtype == torch.float32 for p in t.model.parameters())


def test_cuda_high_effort_store_decodes_on_cpu(he_crop, tmp_path):
    """Encoder effort high on CUDA (side information on the device, writer processes): a store
    the CPU verifies and decodes, with fewer bits plus λ·distortion than the standard effort's."""
    from conftest import rd_objective
    from PIL import Image

    from wsicodec.models import load_model
    from wsicodec.pipeline import compress
    from wsicodec.verify import verify_store

    Image.fromarray(he_crop).save(tmp_path / "he.png")
    _, card = load_model("hne-hp64-q3-v4")
    objective = {}
    for effort in ("standard", "high"):
        out = tmp_path / f"{effort}.zarr"
        compress(tmp_path / "he.png", out, model=card.name, tile=128, device="cuda", precision="fp32",
                 effort=effort, writer_processes=2, skip_glass=False)
        assert verify_store(out).ok
        objective[effort] = rd_objective(out, he_crop, card.lmbda)
    assert objective["high"] < objective["standard"], objective
