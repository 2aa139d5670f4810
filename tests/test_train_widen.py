"""Warm-starting a wider model from a narrower one keeps what the narrow one computes."""
from __future__ import annotations

import pytest
import torch

from wsicodec.models import build_model
from wsicodec.train.widen import embed_narrower


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere, GDN couplings included (a fresh GDN's γ is diagonal)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.add_(0.05 * torch.rand(p.shape, generator=g))
            elif name.startswith(("g_a", "g_s", "h_a", "h_s")):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


def test_wide_model_starts_computing_what_the_narrow_one_did():
    torch.manual_seed(0)
    narrow = _perturbed(build_model("mbt2018-mean", N=8, M=12)).eval()
    wide = build_model("mbt2018-mean-gain", N=10, M=20, N_s1=12, N_s=10, H=16, K=3).eval()
    taken = embed_narrower(wide, narrow.state_dict())
    assert "g_a.6.weight" in taken and "g_s.1.gamma" in taken and "h_a.0.weight" in taken
    assert "h_s.4.weight" not in taken  # 3x3 in the narrow model, 1x1 in the wide one: left alone
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        y_narrow, y_wide = narrow.g_a(x), wide.g_a(x)
        assert torch.allclose(y_wide[:, :12], y_narrow, atol=1e-5)
        assert y_wide[:, 12:].abs().sum() > 0  # the new latents carry something to learn from
        assert torch.allclose(wide.h_a(y_wide)[:, :8], narrow.h_a(y_narrow), atol=1e-5)
        y_hat = torch.round(y_wide)
        # the synthesis ignores the new latents until training opens their weights
        assert torch.allclose(wide.g_s(y_hat), narrow.g_s(y_hat[:, :12]), atol=1e-5)
        # the side information's prior: the narrow model's 8 channels in the leading rows
        assert torch.equal(wide.entropy_bottleneck.matrices[0][:8], narrow.entropy_bottleneck.matrices[0])
        assert torch.equal(wide.entropy_bottleneck.quantiles[:8], narrow.entropy_bottleneck.quantiles)


def test_nothing_to_embed_is_an_error():
    wide = build_model("mbt2018-mean-gain", N=8, M=20, N_s1=12, N_s=10, H=16, K=3)
    with pytest.raises(ValueError, match="no layer"):
        embed_narrower(wide, {"other.weight": torch.zeros(3, 3, 5, 5)})
