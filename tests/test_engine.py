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
    from wsicodec.engine import Transforms
    from wsicodec.models import load_model

    m, card = load_model("tiny", tiny_models)
    coder = Transforms(m, card, "cpu", batch_size=4)
    tiles = np.stack([he_crop[:128, :128], he_crop[128:256, :128], he_crop[:128, 128:256]])
    together = coder.analysis(tiles)
    alone = np.concatenate([coder.analysis(t[None]) for t in tiles])
    assert np.mean(together != alone) < 1e-4
    px = coder.synthesis(together)
    assert px.shape == (3, 128, 128, 3) and px.dtype == np.uint8


def test_analysis_stream_gives_the_batches_latents_in_order(tiny_models, he_crop):
    from wsicodec.engine import Transforms
    from wsicodec.models import load_model

    m, card = load_model("tiny", tiny_models)
    coder = Transforms(m, card, "cpu", batch_size=2)
    batches = [he_crop[None, :128, :128], np.stack([he_crop[128:256, :128], he_crop[:128, 128:256]])]
    got = list(coder.analysis_stream(enumerate(batches)))
    assert [k for k, _ in got] == [0, 1]
    for (_, q), px in zip(got, batches, strict=True):
        assert np.array_equal(q, coder.analysis(px))


def test_precision_fp16_needs_cuda(tiny_models):
    from wsicodec.engine import Transforms, native_bf16
    from wsicodec.models import load_model

    m, card = load_model("tiny", tiny_models)
    with pytest.raises(EngineError, match="needs a CUDA device"):
        Transforms(m, card, "cpu", precision="fp16")
    with pytest.raises(EngineError, match="unknown precision"):
        Transforms(m, card, "cpu", precision="int8")
    cpu = Transforms(m, card, "cpu")
    assert cpu.batch_size == 8  # auto: bf16 on a CPU with native bf16, else fp32 (fp16 on CUDA)
    assert cpu.precision == ("bf16" if native_bf16() else "fp32")


def _coder(tiny_models, **kw):
    """A fresh model per coder: channels_last converts the model's parameters in place."""
    from wsicodec.engine import Transforms
    from wsicodec.models import load_model

    m, card = load_model("tiny", tiny_models)
    kw.setdefault("precision", "fp32")  # the tuned fp32 path (auto may pick bf16 on this CPU)
    return Transforms(m, card, "cpu", batch_size=2, **kw)


def _plain_fp32_latents(tiny_models, pixels: np.ndarray) -> np.ndarray:
    """The reference: the model's own g_a on contiguous NCHW fp32, no engine tuning."""
    from wsicodec.models import load_model

    m, _ = load_model("tiny", tiny_models)
    with torch.inference_mode():
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().float() / 255.0
        y = m.g_a(x)
        med = m.entropy_bottleneck._get_medians().reshape(1, -1, 1, 1)
        return torch.round(y - med).to(torch.int32).numpy()


@pytest.fixture()
def he_tiles(he_crop) -> np.ndarray:
    return np.stack([he_crop[:192, :192], he_crop[192:384, :192], he_crop[:192, 176:368]])


def test_tuned_path_gives_the_plain_fp32_latents(tiny_models, he_tiles):
    ref = _plain_fp32_latents(tiny_models, he_tiles)
    for channels_last in (True, False):
        q = _coder(tiny_models, channels_last=channels_last).analysis(he_tiles)
        assert q.shape == ref.shape and q.dtype == np.int32
        assert np.mean(q != ref) < 1e-4, channels_last
        assert np.abs(q - ref).max() <= 1


def test_channels_last_synthesis_matches_plain(tiny_models, he_tiles):
    plain = _coder(tiny_models, channels_last=False)
    tuned = _coder(tiny_models, channels_last=True)
    assert tuned.channels_last and not plain.channels_last
    q = plain.analysis(he_tiles)
    a, b = plain.synthesis(q), tuned.synthesis(q)
    assert a.shape == b.shape == he_tiles.shape and a.flags.c_contiguous and b.flags.c_contiguous
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_the_chunk_codec_gets_one_blas_thread(tiny_models):
    from threadpoolctl import threadpool_info, threadpool_limits

    from wsicodec.engine import Transforms
    from wsicodec.models import load_model

    def blas_threads() -> list[int]:
        return [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]

    m, card = load_model("tiny", tiny_models)
    assert blas_threads(), "numpy's BLAS library is loaded"
    with threadpool_limits(limits=2, user_api="blas"):  # the process's own setting comes back on exit
        before = blas_threads()
        Transforms(m, card, "cpu", blas_threads=None)
        assert blas_threads() == before
        Transforms(m, card, "cpu")
        assert set(blas_threads()) == {1}
        with pytest.raises(EngineError, match="blas_threads=0"):
            Transforms(m, card, "cpu", blas_threads=0)


def test_thread_count_does_not_change_latents(tiny_models, he_tiles):
    before = torch.get_num_threads()
    try:
        one = _coder(tiny_models, threads=1)
        assert torch.get_num_threads() == 1
        q1 = one.analysis(he_tiles)
        two = _coder(tiny_models, threads=2)
        assert torch.get_num_threads() == 2
        q2 = two.analysis(he_tiles)
    finally:
        torch.set_num_threads(before)
    assert np.mean(q1 != q2) < 1e-4
    assert np.mean(q1 != _plain_fp32_latents(tiny_models, he_tiles)) < 1e-4


def test_half_synthesis_follows_the_cpu_and_leaves_latents_alone(tiny_models, he_tiles):
    from wsicodec.engine import native_bf16

    assert _coder(tiny_models).half_synthesis is native_bf16()  # on where the CPU has bf16
    half = _coder(tiny_models, half_synthesis=True)
    q = half.analysis(he_tiles)
    assert np.mean(q != _plain_fp32_latents(tiny_models, he_tiles)) < 1e-4  # analysis stays fp32
    px = half.synthesis(q)
    assert px.shape == he_tiles.shape and px.dtype == np.uint8


def test_bf16_analysis_is_close_to_fp32_and_falls_back_when_not_finite(tiny_models, he_tiles):
    """bf16 (auto's choice on a CPU with native bf16): a few latents differ by 1; a batch whose
    bf16 output is not finite is analysed again in fp32."""
    ref = _plain_fp32_latents(tiny_models, he_tiles)
    bf = _coder(tiny_models, precision="bf16")
    q = bf.analysis(he_tiles)
    assert q.dtype == np.int32 and np.mean(q != ref) < 0.05 and np.abs(q - ref).max() <= 2
    forward, calls = bf.g_a.forward, []

    def overflowing(x):
        calls.append(torch.is_autocast_enabled("cpu"))
        return forward(x) * float("inf") if calls[-1] else forward(x)

    bf.g_a.forward = overflowing
    assert np.array_equal(bf.analysis(he_tiles), _coder(tiny_models).analysis(he_tiles))
    assert calls == [True, False]


def test_half_synthesis_falls_back_to_fp32_when_not_finite(tiny_models, he_tiles):
    half = _coder(tiny_models, half_synthesis=True)
    full = _coder(tiny_models, half_synthesis=False)
    g_s = half.g_s
    forward = g_s.forward
    calls = []

    def overflowing(x):
        out = forward(x)
        calls.append(torch.is_autocast_enabled("cpu"))
        return out * float("inf") if torch.is_autocast_enabled("cpu") else out

    g_s.forward = overflowing
    q = full.analysis(he_tiles)
    assert np.array_equal(half.synthesis(q), full.synthesis(q))
    assert calls == [True, False]


def test_no_tf32_restores_the_backend_flags():
    from wsicodec.engine import _no_tf32

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True
        with _no_tf32(torch.device("cuda")):  # only flips flags: no GPU needed
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        with _no_tf32(torch.device("cpu")):
            assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_tuned_path_matches_cpu_latents(tiny_models, he_tiles):
    from wsicodec.engine import Transforms
    from wsicodec.models import load_model

    m, card = load_model("tiny", tiny_models)
    gpu = Transforms(m, card, "cuda", batch_size=2, precision="fp32")  # auto would be fp16
    assert gpu.half_synthesis and gpu.channels_last
    q = gpu.analysis(he_tiles)
    assert np.mean(q != _plain_fp32_latents(tiny_models, he_tiles)) < 1e-4
    px = gpu.synthesis(q)
    assert px.shape == he_tiles.shape and px.dtype == np.uint8


def test_kept_heap_and_fused_gdn_give_the_plain_latents(tiny_models, he_tiles):
    from wsicodec.engine import InferenceGDN, keep_freed_memory

    coder = _coder(tiny_models, keep_heap=True)
    assert isinstance(keep_freed_memory(), bool)
    assert any(isinstance(m, InferenceGDN) for m in coder.g_a) and any(isinstance(m, InferenceGDN) for m in coder.g_s)
    x = torch.from_numpy(he_tiles).permute(0, 3, 1, 2).float().div(255).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():  # InferenceGDN: bit for bit the model's GDN / IGDN (compressai's: test_networks.py)
        y = coder.model.g_a(x)
        assert torch.equal(coder.g_a(x), y)
        assert torch.equal(coder.g_s(y), coder.model.g_s(y))
    ref = _plain_fp32_latents(tiny_models, he_tiles)
    assert np.mean(coder.analysis(he_tiles) != ref) < 1e-4


def test_kept_heap_is_handed_back_over_the_memory_budget(tiny_models, he_tiles, monkeypatch):
    import sys

    from wsicodec import engine

    coder = _coder(tiny_models, keep_heap=True)
    assert engine.resident_mb() > 10 or not sys.platform.startswith("linux")
    if not engine.keep_freed_memory():
        pytest.skip("no glibc mallopt here: the heap is the system's, nothing to bound")
    monkeypatch.setattr(engine, "_NEED_MB", None)
    monkeypatch.setattr(engine, "_JUST_TRIMMED", False)
    monkeypatch.setenv("WSICODEC_MAX_RSS_MB", "1")  # always over the budget
    trims = []
    real = engine.bound_heap
    monkeypatch.setattr(engine, "bound_heap", lambda: trims.append(real()) or trims[-1])
    q = coder.analysis(he_tiles)
    coder.synthesis(q)
    # the first batch over the budget trims; the next one measures what a batch needs, and as long
    # as memory stays within 10 % of that need, trimming again would only fault the same pages in
    assert trims == [True, False]
    need = engine._NEED_MB
    assert need is not None and need > 1
    monkeypatch.setattr(engine, "resident_mb", lambda: need * 1.2)  # grown past the need: trimmed
    assert real() is True
    monkeypatch.setattr(engine, "resident_mb", lambda: 5.0)  # the need measured again after the trim
    assert real() is False and engine._NEED_MB == 5.0
    monkeypatch.setattr(engine, "resident_mb", lambda: 6.0)  # over the budget and 10 % over the need
    assert real() is True
    monkeypatch.setenv("WSICODEC_MAX_RSS_MB", "1000000")  # never over
    assert real() is False
