"""Training on a chosen device: device and precision choice, mixed precision on any transform
class, the batch loader (same batches with or without worker processes), resume across a change
of device or worker count, the wall-clock limit, and the torch.compile switch."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from wsicodec.train import TrainConfig, Trainer
from wsicodec.train.device import (
    Precision,
    compile_model,
    resolve_device,
    resolve_precision,
    set_transform_precision,
    step_clock,
)

EXAMPLE = __import__("pathlib").Path(__file__).resolve().parents[1] / "wsicodec" / "examples" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Two H&E images cut from the bundled example slide."""
    from PIL import Image

    from wsicodec.slide import open_input

    d = tmp_path_factory.mktemp("he")
    with open_input(EXAMPLE) as src:
        Image.fromarray(src.read_rgb(600, 700, 200, 200)).save(d / "a.png")
        Image.fromarray(src.read_rgb(1200, 1400, 160, 192)).save(d / "b.png")
    return d


def _cfg(data, out, **kw):
    kw = {"steps": 10**6, "N": 8, "M": 8, "patch": 64, "batch": 2, "lr": 3e-3, "val_every": 10**6,
          "device": "cpu", **kw}
    return TrainConfig(data=[str(data)], out=str(out), **kw)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def test_device_choice(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")
    for bad in ("gpu", "mps", ""):
        if bad:
            with pytest.raises(ValueError, match="device"):
                resolve_device(bad)
    assert resolve_device("") == torch.device("cpu")  # empty: auto


def test_precision_choice(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    from wsicodec import engine

    for native in (True, False):  # bf16 on the CPU only from trained weights, and only where native
        monkeypatch.setattr(engine, "native_bf16", lambda native=native: native)
        assert resolve_precision("auto", cpu, from_weights=True) == ("bf16" if native else "fp32")
        assert resolve_precision("auto", cpu, from_weights=False) == "fp32"
        assert resolve_precision("fp32", cpu, from_weights=True) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", cuda) == "fp16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", cpu)
    assert Precision.on("fp16", cpu).scaler is not None and Precision.on("bf16", cpu).scaler is None
    assert step_clock(cpu) is time.process_time and step_clock(cuda) is time.perf_counter


class _Block(nn.Module):  # a transform that is not an nn.Sequential
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


def test_autocast_on_any_transform_class_keeps_weights_and_keys():
    model = nn.Module()
    model.g_a, model.g_s, model.h_a = _Block(), nn.Sequential(nn.Conv2d(4, 3, 1)), nn.Conv2d(4, 4, 1)
    keys = list(model.state_dict())
    x = torch.rand(1, 3, 8, 8)
    seen = []
    model.g_a.conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    set_transform_precision(model, "bf16")
    assert isinstance(model.g_a, _Block) and list(model.state_dict()) == keys
    model.train()
    y = model.g_a(x)
    assert y.dtype == torch.float32 and seen[-1] == torch.bfloat16  # computed in bf16, handed on in fp32
    assert type(model.h_a) is nn.Conv2d                               # entropy-side networks untouched
    model.eval()
    model.g_a(x)
    assert seen[-1] == torch.float32                                  # evaluation: fp32
    set_transform_precision(model, "fp16")
    assert model.g_a.autocast_dtype == torch.float16
    set_transform_precision(model, "fp32")
    assert type(model.g_a) is _Block and type(model.g_s) is nn.Sequential
    with pytest.raises(ValueError, match="precision"):
        set_transform_precision(model, "auto")  # resolved before it gets here


def test_batches_are_the_same_with_and_without_worker_processes(image_dir):
    from wsicodec.train.data import CropSampler, load_images
    from wsicodec.train.loader import BatchStream

    sampler = CropSampler(load_images([image_dir]), 64, seed=3)
    cpu = torch.device("cpu")
    inline = BatchStream(sampler, 2, 5, cpu, workers=0)
    workers = BatchStream(sampler, 2, 5, cpu, workers=2, prefetch=2)
    a = [inline.next() for _ in range(5)]
    b = [workers.next() for _ in range(5)]
    workers.close()
    assert inline.index == workers.index == 10
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert torch.equal(a[0], sampler.batch_at(5, 2)) and not torch.equal(a[0], a[1])


def test_resume_with_other_workers_and_a_checkpoint_from_another_device(image_dir, tmp_path):
    a = Trainer(_cfg(image_dir, tmp_path / "a"))
    a.run(max_steps=3)
    st = torch.load(a.ckpt_path, weights_only=False)
    assert st["cuda_rng"] is None and st["precision"]["name"] == "fp32"
    st["config"]["device"] = "cuda"                  # as written by a run on a GPU ...
    st["config"]["workers"] = -1
    st["cuda_rng"] = torch.zeros(16, dtype=torch.uint8)
    moved = tmp_path / "moved"
    moved.mkdir()
    torch.save(st, moved / "checkpoint.pt")
    b = Trainer.from_checkpoint(moved, device="cpu", workers=2)  # ... continued on the CPU with 2 workers
    assert b.step == 3 and b.device.type == "cpu" and b.workers == 2 and _same_weights(a.model, b.model)
    rng = torch.get_rng_state()
    ra = [a.train_step() for _ in range(2)]
    torch.set_rng_state(rng)
    rb = [b.train_step() for _ in range(2)]
    b.close_batches()
    assert ra == rb and _same_weights(a.model, b.model)


def test_fp16_trains_with_a_gradient_scaler_and_resumes_it(image_dir, tmp_path):
    torch.manual_seed(0)
    t = Trainer(_cfg(image_dir, tmp_path / "fp16", precision="fp16"))
    assert t.precision.name == "fp16" and t.precision.scaler is not None
    losses = [t.train_step()["loss"] for _ in range(16)]  # fp16 on a CPU without it: emulated, slow
    assert np.isfinite(losses).all() and np.mean(losses[-4:]) < np.mean(losses[:4])
    assert all(p.dtype == torch.float32 for p in t.model.parameters())
    t.save()
    scale = t.precision.scaler.get_scale()
    b = Trainer.from_checkpoint(tmp_path / "fp16")
    assert b.precision.scaler.get_scale() == scale and b.step == 16


def test_wall_clock_limit_leaves_time_for_the_end_of_the_run(image_dir, tmp_path):
    t = Trainer(_cfg(image_dir, tmp_path / "run", wall_minutes=0.15))  # 9 s, no validation set
    t.run()
    spent = time.monotonic() - t.created
    assert t.step > 0 and spent < 9 + 1.0, (t.step, spent)
    assert t.ckpt_path.exists()


def test_compile_switch(image_dir, tmp_path, monkeypatch):
    import wsicodec.train.loop as loop

    called = []
    monkeypatch.setattr(loop, "compile_model", lambda model, log: called.append(model))
    t = Trainer(_cfg(image_dir, tmp_path / "c", compile=True))
    assert called == [t.model]
    # the compiled forward (the eager backend here: inductor's C++ build is a GPU-run matter)
    u = Trainer(_cfg(image_dir, tmp_path / "u"))
    keys = list(u.model.state_dict())
    compile_model(u.model, log=lambda s: None, backend="eager")
    assert u.model._compiled_call_impl is not None and list(u.model.state_dict()) == keys
    losses = [u.train_step()["loss"] for _ in range(3)]
    assert np.isfinite(losses).all()
