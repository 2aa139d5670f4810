"""Where and in what precision training runs: the device (``auto`` | ``cpu`` | ``cuda[:N]``), mixed
precision for the transforms, the clock a time budget counts on, and ``torch.compile``.

Mixed precision covers the analysis and synthesis transforms (``g_a``, ``g_s``: most of a step's
arithmetic) and nothing else: their weights stay fp32 and their outputs are cast back to fp32, so
the entropy models, hyper-networks, likelihoods and the loss are computed in fp32 (the rate term's
logarithms of small probabilities are what half precision gets wrong). Evaluation (validation,
export) is plain fp32. fp16 runs with a gradient scaler; bf16 has fp32's range and needs none.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from wsicodec.errors import TrainError

__all__ = ["PRECISIONS", "Precision", "resolve_device", "resolve_precision", "set_transform_precision",
           "step_clock", "compile_model"]

#: ``auto``: bf16 on a CUDA device that supports it (else fp16); on the CPU bf16 for a run from
#: trained weights where the CPU computes bf16 itself, else fp32.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_TRANSFORMS = ("g_a", "g_s")


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA device when torch sees one, else the CPU. Asking for CUDA where
    there is none is an error (not a silent fall back onto a CPU run many times slower)."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainError(f"unknown device {name!r} (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainError(f"device {name!r}: this torch build sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TrainError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise TrainError(f"unknown device {name!r} (auto, cpu, cuda or cuda:N)")
    return device


def resolve_precision(precision: str, device: torch.device, from_weights: bool = False) -> str:
    """The concrete precision (fp32, bf16 or fp16) of ``precision`` on ``device``; ``from_weights``:
    the run starts from trained weights (``--init-from``)."""
    if precision not in PRECISIONS:
        raise TrainError(f"unknown training precision {precision!r} ({', '.join(PRECISIONS)})")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    # CPU: bf16 where the CPU computes it itself, for a run continuing trained weights: there it
    # validated as fp32 did in 1.3-1.9x the steps; from scratch at a high learning rate it trailed,
    # and where bf16 is emulated it is slower (docs/training.md, "bf16 training")
    from wsicodec.engine import native_bf16

    return "bf16" if from_weights and native_bf16() else "fp32"


class _AutocastForward:
    """Mixed into a transform's own class: its training forward (and so its backward) runs under
    autocast at ``autocast_dtype`` and returns fp32; evaluation runs as the plain module. The
    module keeps its parameters, buffers and state-dict keys, so checkpoints interchange."""

    autocast_dtype: torch.dtype | None = None

    def forward(self, *args, **kwargs):
        if not self.training or self.autocast_dtype is None or not args or not torch.is_tensor(args[0]):
            return super().forward(*args, **kwargs)
        with torch.autocast(args[0].device.type, dtype=self.autocast_dtype):
            out = super().forward(*args, **kwargs)
        return out.float() if torch.is_tensor(out) else out


_AUTOCAST_CLASSES: dict[type, type] = {}


def _autocast_class(base: type) -> type:
    if issubclass(base, _AutocastForward):
        return base
    if base not in _AUTOCAST_CLASSES:
        _AUTOCAST_CLASSES[base] = type(f"Autocast{base.__name__}", (_AutocastForward, base),
                                       {"__module__": __name__, "_plain_class": base})
    return _AUTOCAST_CLASSES[base]


def set_transform_precision(model: nn.Module, precision: str) -> None:
    """Train ``model``'s transforms (``g_a``, ``g_s``, whatever their module class) in
    ``precision`` (fp32, bf16 or fp16; resolve ``auto`` first) under autocast."""
    if precision not in _DTYPES:
        raise TrainError(f"unknown training precision {precision!r} ({', '.join(_DTYPES)})")
    dtype = _DTYPES[precision]
    for name in _TRANSFORMS:
        t = getattr(model, name, None)
        if not isinstance(t, nn.Module):
            continue
        plain = getattr(type(t), "_plain_class", type(t))
        if dtype is None:
            t.__class__ = plain
            t.__dict__.pop("autocast_dtype", None)
        else:
            t.__class__ = _autocast_class(plain)
            t.autocast_dtype = dtype


@dataclass
class Precision:
    """The training precision on a device, and the optimiser step that goes with it (a gradient
    scaler for fp16)."""

    name: str                                  # fp32 | bf16 | fp16
    device: torch.device
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def on(cls, precision: str, device: torch.device, from_weights: bool = False) -> Precision:
        name = resolve_precision(precision, device, from_weights)
        scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
        return cls(name, device, scaler)

    def apply(self, model: nn.Module) -> None:
        set_transform_precision(model, self.name)

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                          params: Iterable[torch.Tensor], clip: float) -> None:
        """``loss.backward()``, gradient-norm clipping at ``clip`` (0: none) and the optimiser
        step; with fp16, on the scaled loss, clipping the unscaled gradients, and skipping a step
        whose gradients overflowed."""
        if self.scaler is None:
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(list(params), clip)
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(list(params), clip)
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return {"name": self.name, "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def step_clock(device: torch.device) -> Callable[[], float]:
    """The clock a training-time budget (``--minutes``) counts on: the process's CPU time on the
    CPU (all threads; fair between runs that share a machine), wall time on a GPU (the host's CPU
    time says nothing of the device's work)."""
    return time.process_time if device.type == "cpu" else time.perf_counter


def compile_model(model: nn.Module, log: Callable[[str], None] = print, backend: str = "inductor") -> None:
    """``torch.compile`` the model's training forward in place (``nn.Module.compile``: parameter
    names and the state dict stay as they are; ``compress`` / ``decompress`` / ``update`` and
    the submodules called by them run eagerly). A graph the compiler cannot handle runs eagerly
    instead of stopping the run."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    model.compile(dynamic=False, backend=backend)
    log("torch.compile: the training forward is compiled at its first step")
