"""The chunk bitstreams are frozen (docs/format.md): fixed inputs must keep coding to the same
bytes, whatever the implementation does to go faster. The digests were taken from the codec as
first released for each entropy model (before its coder was vectorised; the 1x1 hyper-decoder's
when its first model shipped), and decoding
gives the inputs back."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from wsicodec import codec
from wsicodec.models import load_model

FACTORIZED_SHA256 = "31bc10faca059205e942a50bb446f9b5f9eea82e3cb025e840552f81495cce20"
HYPER_SHA256 = {  # a 3x3 and a 1x1 last hyper-decoder layer
    "hne-hp64-q4-v3": "05b7d84ae2917bef528e4601cd0f4fd2ff3dcb159e8d143ccd11792ca3de9252",
    "hne-hp64-q6-v2": "e30c68055b0dc34bc58e1120b7858e198d20a34f5b64f3e4f700f1aa27033b5f",
}


def factorized_case() -> tuple[codec.EntropyTables, np.ndarray]:
    """8 channels of tables and a (8, 16, 16) chunk, escapes included (int16 extremes). Built here,
    not by test_codec's helper, so that nothing else can change the frozen inputs."""
    rng = np.random.default_rng(20261126)
    freqs, offsets = [], []
    for _ in range(8):
        n = int(rng.integers(3, 60))
        f = rng.integers(1, 1000, n).astype(np.float64)
        f = np.maximum(1, np.floor(f / f.sum() * (1 << 16) * 0.99)).astype(np.int64)
        f[np.argmax(f)] += (1 << 16) - f.sum()
        freqs.append(tuple(int(v) for v in f))
        offsets.append(int(rng.integers(-30, 0)))
    q = rng.integers(-35, 35, (8, 16, 16)).astype(np.int16)
    q[0, 0, 0], q[5, 3, 3], q[7, 15, 15] = 3000, -32768, 32767
    return codec.EntropyTables(tuple(offsets), tuple(freqs)), q


def test_factorized_chunk_bytes_are_frozen():
    tables, q = factorized_case()
    models = codec._Models(tables)
    data = codec.encode_chunk(q, models)
    assert hashlib.sha256(data).hexdigest() == FACTORIZED_SHA256
    assert np.array_equal(codec.decode_chunk(data, models, q.shape), q)


@pytest.mark.parametrize("name", sorted(HYPER_SHA256))
def test_hyperprior_chunk_bytes_are_frozen(name):
    """With a shipped model's tables and integer hyper-decoder (exact on any machine)."""
    net, _ = load_model(name)
    hm = codec.HyperEntropyModel(net)
    rng = np.random.default_rng(11)
    z = rng.integers(-3, 4, (hm.N, 8, 8)).astype(np.int32)
    index, mean = hm.parameters(z)
    y = rng.integers(-6, 7, (hm.M, 32, 32)).astype(np.int32)
    y[0, 0, 0], y[40, 9, 17], y[95, 31, 31] = 5000, -70000, 123456  # escapes
    data = codec.code_hyper_symbols(codec.HyperSymbols(z, y, index.astype(np.uint8)), hm)
    assert hashlib.sha256(data).hexdigest() == HYPER_SHA256[name]
    assert np.array_equal(codec.decode_hyper_chunk(data, hm), (y.astype(np.int64) << hm.act_bits) + mean)
