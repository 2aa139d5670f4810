"""The light inference networks (wsicodec.models.networks) against compressai's modules they
follow: the same numbers bit for bit, the same entropy tables, and no compressai import."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from wsicodec.models import ModelCard, ModelError, build_model, load_model, save_model


@pytest.fixture(scope="module")
def perturbed_models(tmp_path_factory):
    """One model of each architecture with every parameter randomised (GDN's β and γ included,
    which an untrained model keeps at their initial values), saved as shipped models are."""
    d = tmp_path_factory.mktemp("perturbed")
    for i, (arch, name, extra) in enumerate([("bmshj2018-factorized", "pf", {}), ("mbt2018-mean", "ph", {}),
                                             ("mbt2018-mean", "ph1", {"h_kernel": 1})]):
        torch.manual_seed(10 + i)
        m = build_model(arch, N=8, M=12, **extra)
        with torch.no_grad():
            for key, p in m.named_parameters():
                if key.startswith(("g_", "h_")):
                    p.mul_(1 + 0.3 * torch.rand_like(p)).add_(0.01 * torch.randn_like(p))
            m.g_a[-1].weight.mul_(20)
        save_model(m, ModelCard(name=name, architecture=arch, params={"N": 8, "M": 12, **extra}), d)
    return d


@pytest.mark.parametrize("name", ["pf", "ph", "ph1"])
def test_inference_networks_equal_compressai_bit_for_bit(perturbed_models, name):
    from wsicodec.codec import EntropyTables

    light, card = load_model(name, perturbed_models)
    full, _ = load_model(name, perturbed_models, trainable=True)
    assert type(light).__module__ == "wsicodec.models.networks"
    x = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = full.g_a(x)
        assert torch.equal(light.g_a(x), y)
        assert torch.equal(light.g_s(y), full.g_s(y))
        if card.spec.entropy_model != "factorized":
            z = full.h_a(y)
            assert torch.equal(light.h_a(y), z)
            assert torch.equal(light.h_s(z), full.h_s(z))
            assert EntropyTables.from_gaussian_conditional(light.gaussian_conditional) == \
                EntropyTables.from_gaussian_conditional(full.gaussian_conditional)
            assert torch.equal(light.gaussian_conditional.scale_table, full.gaussian_conditional.scale_table)
    assert torch.equal(light.entropy_bottleneck._get_medians(), full.entropy_bottleneck._get_medians())
    assert EntropyTables.from_entropy_bottleneck(light.entropy_bottleneck) == \
        EntropyTables.from_entropy_bottleneck(full.entropy_bottleneck)
    assert not any(p.requires_grad for p in light.parameters())


def test_weights_of_another_shape_are_a_model_error(perturbed_models, tmp_path):
    import json
    import shutil

    for f in perturbed_models.glob("pf.*"):
        shutil.copy(f, tmp_path / f.name)
    card = json.loads((tmp_path / "pf.json").read_text())
    card["params"] = {"N": 8, "M": 16}  # the card no longer describes the weights
    (tmp_path / "pf.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="do not fit"):
        load_model("pf", tmp_path)



def test_an_unknown_hyper_decoder_kernel_is_a_model_error():
    with pytest.raises(ModelError, match="h_kernel 1 or 3"):
        build_model("mbt2018-mean", N=8, M=12, h_kernel=5)

def test_running_a_model_does_not_import_compressai(tiny_models):
    """Loading a model, encoding, decoding and the hyperprior's chunk codec in a fresh process:
    compressai (and what its package imports: torch_geometric, torch._dynamo) stays out."""
    code = f"""
import sys
import numpy as np
from wsicodec.models import load_model
from wsicodec.engine import Transforms
from wsicodec.codec import HyperEntropyModel, decode_hyper_chunk, encode_hyper_chunk
m, card = load_model("tiny-hyper", {str(tiny_models)!r})
coder = Transforms(m, card, "cpu", precision="fp32")
tiles = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
q = coder.analysis(tiles)
assert coder.synthesis(q).shape == tiles.shape
hm = HyperEntropyModel(m)
d = decode_hyper_chunk(encode_hyper_chunk(q[0], hm), hm)  # quantized: coded again, unchanged
assert d.shape == q[0].shape and np.array_equal(decode_hyper_chunk(encode_hyper_chunk(d, hm), hm), d)
heavy = sorted(k for k in sys.modules if k.split(".")[0] in ("compressai", "torch_geometric", "scipy", "matplotlib"))
assert not heavy, heavy
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
