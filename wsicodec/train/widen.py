"""Warm-start a wider model from a narrower one of the same layout without changing what it computes.

A model trained at N = 64 / M = 96 holds many CPU-hours of training; a wider one (more latent
channels for the high rates, wider hidden layers) would otherwise start from noise. Each layer of
the narrow model is embedded in the leading channels of the wide one's layer of the same name, and
every weight from a *new* input channel into an *old* output channel is zeroed, so the old
channels compute exactly what they computed before, whatever the new channels hold (Net2Net's
function-preserving widening with zero fan-in from new units, Chen et al. 2016). The new channels
keep the wide model's random initialisation and start contributing as soon as training moves their
zeroed weights. Layers whose kernels differ (e.g. a 3x3 layer replaced by a 1x1 one) are left
to the wide model's initialisation.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["embed_narrower"]


def _zero_gamma_value(gdn: nn.Module) -> torch.Tensor:
    """The stored value of a GDN γ entry that the reparametrisation maps to 0."""
    return gdn.gamma_reparam.pedestal.sqrt()


def embed_narrower(model: nn.Module, narrow: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy ``narrow`` (a state dict) into ``model``'s convolutions, transposed convolutions and
    GDNs of the same names, each into its leading channels, zeroing the weights from new inputs
    into old outputs. Elsewhere (the entropy models' per-channel parameters) the narrow model's
    channels go into the leading rows. Returns the names of the tensors taken; raises
    ``ValueError`` when nothing fits."""
    taken: list[str] = []
    own = model.state_dict()
    with torch.no_grad():
        for name, module in model.named_modules():
            prefix = f"{name}." if name else ""
            w_key, b_key = prefix + "weight", prefix + "bias"
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and w_key in narrow:
                old = narrow[w_key]
                new = module.weight
                if old.dim() != 4 or old.shape[2:] != new.shape[2:] or any(
                        o > n for o, n in zip(old.shape[:2], new.shape[:2], strict=True)):
                    continue
                # Conv2d weight: (out, in, k, k); ConvTranspose2d: (in, out, k, k)
                out_dim = 1 if isinstance(module, nn.ConvTranspose2d) else 0
                in_dim = 1 - out_dim
                n_out, n_in = old.shape[out_dim], old.shape[in_dim]
                new[tuple(slice(0, s) for s in old.shape)] = old
                block = [slice(None)] * 4
                block[out_dim], block[in_dim] = slice(0, n_out), slice(n_in, None)
                new[tuple(block)] = 0
                taken.append(w_key)
                if module.bias is not None and b_key in narrow:
                    module.bias[:n_out] = narrow[b_key]
                    taken.append(b_key)
            elif hasattr(module, "gamma_reparam") and prefix + "gamma" in narrow:
                old_gamma, old_beta = narrow[prefix + "gamma"], narrow[prefix + "beta"]
                c = old_gamma.shape[0]
                if c > module.gamma.shape[0]:
                    continue
                module.gamma[:c, :c] = old_gamma
                module.gamma[:c, c:] = _zero_gamma_value(module)  # new channels do not normalise old ones
                module.beta[:c] = old_beta
                taken += [prefix + "gamma", prefix + "beta"]
        # the rest (entropy models' parameters, one row per channel): equal shapes copied, a
        # narrower model's channels into the leading rows
        rest = {k: v for k, v in narrow.items()
                if k not in taken and k in own and v.dim() == own[k].dim() and v.dim() > 0
                and v.shape[1:] == own[k].shape[1:] and v.shape[0] <= own[k].shape[0]
                and not k.endswith(("gamma", "beta")) and not k.endswith(("weight", "bias"))}
        for k, v in rest.items():
            own[k][: v.shape[0]].copy_(v)
        taken += list(rest)
    if not taken:
        raise ValueError("no layer of the narrow model fits the wide one")
    return taken
