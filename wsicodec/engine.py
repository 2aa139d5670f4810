"""Batched device inference: pixels -> integer latents (analysis) and latents -> pixels
(synthesis), on CUDA when present and on the CPU otherwise (:class:`Transforms`), and
:func:`encode_tiles`, the tile pipeline that feeds the analysis (its threading helpers are in
:mod:`wsicodec.streaming`)."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from wsicodec.errors import WsicodecError
from wsicodec.models import ModelCard
from wsicodec.models.networks import GDN, divisive_normalization
from wsicodec.streaming import prefetch
from wsicodec.tiling import TileGrid, is_background


class EngineError(WsicodecError):
    """A device that cannot be used as asked."""


PRECISIONS = ("auto", "fp32", "fp16", "bf16")


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether this CPU computes bf16 itself (AVX512-BF16 or AMX): there oneDNN's bf16
    convolutions run the analysis several times as fast as fp32 (docs/performance.md); elsewhere
    bf16 is emulated, and slower."""
    try:
        cpu = torch.cpu
        return bool(cpu._is_avx512_bf16_supported() or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    except (AttributeError, RuntimeError):  # a torch without these probes: assume not
        return False


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EngineError("--device cuda was asked for, but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise EngineError(f"unknown device {name!r} (auto, cpu or cuda)")
    return torch.device(name)


_HEAP_KEPT: bool | None = None
_TRIM: Callable[[], None] | None = None
#: resident memory above which a kept heap is handed back to the system (``WSICODEC_MAX_RSS_MB``)
HEAP_BUDGET_MB = 1536
#: when a batch alone needs more than the budget, the heap is trimmed only this far above that need
HEAP_MARGIN = 1.1
_NEED_MB: float | None = None   # resident memory at the first batch after the last trim
_JUST_TRIMMED = False


def keep_freed_memory() -> bool:
    """On Linux with glibc: serve large blocks from the heap and keep freed memory for reuse
    (``mallopt`` M_MMAP_THRESHOLD and M_TRIM_THRESHOLD at 1 GiB). Without it every CPU layer's
    output (~100 MB for a batch of 4 encode windows) is fresh ``mmap``'d memory whose pages the
    kernel faults in and zeroes, then unmaps again, which costs a good part of the encode
    throughput (docs/performance.md). Process-wide and once per process. A kept heap fragments as batches of
    different shapes come and go, so :func:`bound_heap` hands free memory back (``malloc_trim``)
    whenever the process's resident memory passes ``WSICODEC_MAX_RSS_MB`` (default 1536), or 10 %
    above what one batch needs where that is more. ``WSICODEC_MALLOC=system`` turns all of it off. True when applied."""
    global _HEAP_KEPT, _TRIM
    if _HEAP_KEPT is None:
        _HEAP_KEPT = False
        if sys.platform.startswith("linux") and os.environ.get("WSICODEC_MALLOC", "").lower() != "system":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt  # glibc; musl has none
                mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
                _HEAP_KEPT = bool(mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))
                trim = libc.malloc_trim
                trim.argtypes = [ctypes.c_size_t]
                _TRIM = lambda: trim(0)  # noqa: E731
            except (OSError, AttributeError):
                pass
    return _HEAP_KEPT


def resident_mb() -> float:
    """This process's resident memory in MiB (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def bound_heap() -> bool:
    """With a kept heap: give free memory back to the system when resident memory is over the
    budget. Called before each batch; True when it trimmed.

    The resident memory seen at the first call after a trim is what a batch really needs (the
    process's base plus one batch's working set, unfragmented). When that alone is over the
    budget, trimming before every batch cannot lower the peak: the next batch faults the same
    pages in again (docs/performance.md, "The kept heap and its budget"). So the limit is the budget
    or 10 % above that need, whichever is higher: a heap that grows past it by fragmentation is
    still trimmed, and the need is measured again after every trim."""
    global _NEED_MB, _JUST_TRIMMED
    if _TRIM is None or not _HEAP_KEPT:
        return False
    budget = float(os.environ.get("WSICODEC_MAX_RSS_MB", "") or HEAP_BUDGET_MB)
    resident = resident_mb()
    if _JUST_TRIMMED:
        _NEED_MB, _JUST_TRIMMED = resident, False
    if resident <= max(budget, HEAP_MARGIN * (_NEED_MB or 0.0)):
        return False
    _TRIM()
    _JUST_TRIMMED = True
    return True


@contextlib.contextmanager
def _no_tf32(device: torch.device):
    """fp32 convolutions and matmuls without TF32 on CUDA (TF32 keeps 10 mantissa bits, enough
    to flip many rounded latents between GPUs and the CPU); a no-op elsewhere."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class InferenceGDN(nn.Module):
    """A GDN / inverse GDN (ours or compressai's) for inference: β and γ reparametrised once instead of at
    every call, and the square, (r)sqrt and product done with fewer full-size temporaries. The
    same operations on the same values, so the same numbers bit for bit."""

    def __init__(self, gdn: nn.Module):
        super().__init__()
        C = gdn.beta.numel()
        with torch.no_grad():
            self.register_buffer("beta", gdn.beta_reparam(gdn.beta).detach().clone())
            self.register_buffer("gamma", gdn.gamma_reparam(gdn.gamma).detach().reshape(C, C, 1, 1).clone())
        self.inverse = bool(gdn.inverse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return divisive_normalization(x, self.beta, self.gamma, self.inverse)


def _gdn_types() -> tuple[type, ...]:
    """GDN classes: ours (:mod:`wsicodec.models.networks`) and compressai's if it is imported
    (a model being trained); compressai is not imported for this."""
    layers = sys.modules.get("compressai.layers")
    return (GDN, layers.GDN) if layers is not None and hasattr(layers, "GDN") else (GDN,)


def inference_transform(transform: nn.Module) -> nn.Module:
    """A Sequential transform with its GDN layers replaced by :class:`InferenceGDN` (the other
    layers shared, not copied); any other module is returned as it is."""
    gdn = _gdn_types()
    if not isinstance(transform, nn.Sequential) or not any(isinstance(m, gdn) for m in transform):
        return transform
    return nn.Sequential(*[InferenceGDN(m) if isinstance(m, gdn) else m for m in transform]).eval()


class DeviceHyperSymbols:
    """The first half of a hyperprior's chunk codec (:meth:`wsicodec.codec.HyperEntropyModel.symbols`)
    on the analysis's device, for a batch of whole chunks at once: the hyper-encoder ``h_a`` in
    fp32 (TF32 off), ``ẑ``, the integer hyper-decoder (:class:`~wsicodec.models.integer.DeviceHyperDecoder`,
    exact), each latent's table and symbol. What is left for the chunk writers is the range coder.

    ``z`` comes from float arithmetic and may differ from the CPU codec's in rare rounding cases,
    like the latents themselves; the store records whatever ``z`` the encoder chose, and every
    decoder derives the means and scales from it exactly, so a store decodes the same everywhere."""

    def __init__(self, model: nn.Module, card: ModelCard, device: torch.device):
        from wsicodec.codec import hyper_entropy_model
        from wsicodec.models.integer import DeviceHyperDecoder

        hm = hyper_entropy_model({"name": card.name, "sha256": card.sha256}, model)
        self.reference = hm.h_s
        self.h_a = model.h_a
        self.device = device
        self.unit = float(1 << hm.act_bits)
        self.M, self.N = hm.M, hm.N
        self.z_medians_float = hm.z_medians_float.to(device)
        self.z_medians = torch.from_numpy(hm.z_medians).reshape(1, -1, 1, 1).to(device)
        self.thresholds = torch.from_numpy(hm.thresholds).to(device)
        self.h_s = DeviceHyperDecoder(hm.h_s, device)

    @classmethod
    def checked(cls, model: nn.Module, card: ModelCard, device: torch.device) -> DeviceHyperSymbols | None:
        """An instance whose integer hyper-decoder matched the CPU's on this device, else None
        (with a warning: the chunk writers then compute the side information themselves)."""
        hyper = cls(model, card, device)
        if hyper.h_s.agrees(hyper.reference, hyper.N):
            return hyper
        import warnings

        warnings.warn(f"{device}: float64 products differ from the integer hyper-decoder's; "
                      "the hyperprior side information is computed on the CPU instead", RuntimeWarning, stacklevel=3)
        return None

    @torch.inference_mode()
    def __call__(self, y_fp: torch.Tensor) -> list[torch.Tensor]:
        """int32 ``(B, M, c, c)`` fixed-point latents on the device -> ``[z, y, index]``: int32
        ``(B, N, c/4, c/4)`` side-information symbols, int32 ``(B, M, c, c)`` latent symbols,
        uint8 ``(B, M, c, c)`` table indexes."""
        with _no_tf32(self.device):
            z = self.h_a(y_fp.float().div_(self.unit).contiguous())
        z_sym = torch.round(z.float() - self.z_medians_float)
        index, mean = self.parameters(z_sym)
        sym = torch.div(y_fp.to(torch.int64) - mean + int(self.unit) // 2, int(self.unit), rounding_mode="floor")
        parts = ((z_sym, torch.int32), (sym, torch.int32), (index, torch.uint8))
        return [t.to(dtype).contiguous() for t, dtype in parts]

    @torch.inference_mode()
    def parameters(self, z_sym: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Side-information symbols ``(B, N, h/4, w/4)`` (integers, any dtype) -> each latent's
        Gaussian table (uint8-valued int64) and fixed-point mean (int64), ``(B, M, h, w)`` on the
        device: :meth:`wsicodec.codec.HyperEntropyModel.parameters` for a batch, exactly."""
        z_fp = z_sym.to(self.device, torch.int64) * int(self.unit) + self.z_medians
        out = self.h_s(z_fp)
        return torch.searchsorted(self.thresholds, out[:, : self.M].contiguous()), out[:, self.M :]


def limit_blas_threads(threads: int = 1) -> bool:
    """Limit the BLAS libraries this process has loaded (numpy's OpenBLAS) to ``threads`` threads
    each, process-wide, for the rest of the process (threadpoolctl). The chunk codec's integer
    hyper-decoder does its float64 products with numpy on the coder threads, beside the network's
    own threads; a second BLAS thread per product then only waits for a core held by the network
    (docs/performance.md, "One BLAS thread for the chunk codec"). The network is unaffected:
    torch's convolutions use oneDNN and OpenMP, not these libraries. True when a BLAS library
    was found and limited."""
    from threadpoolctl import threadpool_limits

    if threads < 1:
        raise EngineError(f"blas_threads={threads}: at least 1 (or None to leave the BLAS threads alone)")
    return bool(threadpool_limits(limits=int(threads), user_api="blas").get_original_num_threads().get("blas"))


class Transforms:
    """A model's transforms on one device: ``analysis`` gives the integer latents the store keeps
    (factorized: symbols relative to the entropy model's medians; hyperprior: ``round(y·2^A)``,
    which the hyperprior codec quantizes); ``synthesis`` turns stored latents back into pixels.

    The analysis transform always runs in fp32 (TF32 off on CUDA), so stored latents are the same
    on every device up to rare ±1 flips of values that sit on a rounding boundary.

    * ``batch_size``: tiles per network call (None: 32 on CUDA, 8 on the CPU).
    * ``channels_last``: NHWC memory format for the model and its inputs (faster convolutions
      with oneDNN on the CPU and with cuDNN on CUDA); same numbers up to float rounding.
    * ``threads``: ``torch.set_num_threads(threads)`` (process-wide) when given; None keeps the
      process setting (torch's default: one thread per core; ``OMP_NUM_THREADS`` is respected).
    * ``half_synthesis``: run the synthesis transform under fp16 (CUDA) / bf16 (CPU) autocast
      (pixels only; the latents are not affected). None: on for CUDA and for a CPU with native
      bf16 (:func:`native_bf16`; several times as fast there, decoded pixels within 2 levels of
      fp32's, docs/performance.md), off elsewhere. A batch whose half-precision output is not finite is run again
      in fp32.
    * ``keep_heap``: :func:`keep_freed_memory` (None: on for the CPU).
    * ``blas_threads``: :func:`limit_blas_threads` (process-wide; default 1, for the chunk codec
      running beside the network); None leaves the BLAS libraries' threads alone.
    * ``precision``: ``"auto"`` (default: fp16 on CUDA; bf16 on a CPU that computes bf16 itself,
      :func:`native_bf16`; else fp32), ``"fp32"``, ``"fp16"`` (CUDA only) or ``"bf16"``: the
      analysis under fp16 / bf16 autocast, faster on a GPU and on an AVX512-BF16 CPU
      (docs/performance.md). The store stays decodable everywhere (it holds integers, and
      decoding never reruns the analysis); what changes is which latents a tile gets: a small
      share of them differ by ±1 from fp32's. A
      batch whose half-precision latents are not finite is run again in fp32.

    * ``hyper_on_device``: a hyperprior model's side information (hyper-encoder, integer
      hyper-decoder, table choice: :class:`DeviceHyperSymbols`) computed on this device for the
      windows of :meth:`analysis_stream` given a chunk size, so the chunk writers only range-code.
      None: on for CUDA (there the writers' CPU bounded the loop), off elsewhere (the same work,
      on the same cores). Skipped, with a warning, when this device's float64 products do not
      reproduce the integer hyper-decoder exactly.

    * ``rate``: the operating point of a variable-rate model (:class:`~wsicodec.models.rates.RatePoint`,
      required for one): the analysis's latents are multiplied by its gain before they are
      rounded, the stored latents by its inverse gain before the synthesis (fp32 multiplies
      outside the integer entropy coding, which never sees a gain).

    The GDN layers run as :class:`InferenceGDN` (same numbers, fewer temporaries).
    """

    def __init__(self, model: nn.Module, card: ModelCard, device: str | torch.device = "auto",
                 batch_size: int | None = None, *, channels_last: bool = True, threads: int | None = None,
                 half_synthesis: bool | None = None, keep_heap: bool | None = None, precision: str = "auto",
                 hyper_on_device: bool | None = None, rate: Any = None, blas_threads: int | None = 1):
        self.device = pick_device(device) if isinstance(device, str) else device
        self.cuda = self.device.type == "cuda"
        if precision not in PRECISIONS:
            raise EngineError(f"unknown precision {precision!r} ({' or '.join(PRECISIONS)})")
        if precision == "fp16" and not self.cuda:
            raise EngineError("--precision fp16 needs a CUDA device (on the CPU: bf16 or fp32)")
        if precision == "auto":
            precision = "fp16" if self.cuda else ("bf16" if native_bf16() else "fp32")
        self.precision = precision
        if (not self.cuda) if keep_heap is None else keep_heap:
            keep_freed_memory()
        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))
        if blas_threads is not None:
            limit_blas_threads(blas_threads)
        self.channels_last = bool(channels_last)
        self.model = model.to(self.device).eval()
        self.g_a = inference_transform(self.model.g_a)
        self.g_s = inference_transform(self.model.g_s)
        if self.channels_last:
            for m in (self.model, self.g_a, self.g_s):
                m.to(memory_format=torch.channels_last)
        self.card = card
        self.spec = card.spec
        self.batch_size = max(1, int(batch_size)) if batch_size else (32 if self.cuda else 8)
        self.half_synthesis = (self.cuda or native_bf16()) if half_synthesis is None else bool(half_synthesis)
        if self.spec.entropy_model == "factorized":  # stored: integer symbols relative to the medians
            self.offset = model.entropy_bottleneck._get_medians().detach().reshape(1, -1, 1, 1).to(self.device)
            self.unit = 1.0
        else:  # a hyperprior's latents: fixed point, ŷ·2^ACT_BITS (the codec quantizes them)
            from wsicodec.models.integer import ACT_BITS

            self.offset = None
            self.unit = float(1 << ACT_BITS)
        if self.spec.variable_rate and rate is None:
            raise EngineError(f"model {card.name} has several operating points; name one (e.g. {card.name}@0)")
        if rate is not None and not self.spec.variable_rate:
            raise EngineError(f"model {card.name} has a single rate; it takes no operating point")
        self.rate = rate
        self.gain = self.inverse_gain = None
        if rate is not None:  # (1, M, 1, 1) float32 on the device
            self.gain, self.inverse_gain = (
                torch.from_numpy(np.asarray(g, np.float32)).reshape(1, -1, 1, 1).to(self.device)
                for g in (rate.gain, rate.inverse_gain))
        self.hyper: DeviceHyperSymbols | None = None
        if self.offset is None and (self.cuda if hyper_on_device is None else hyper_on_device):
            self.hyper = DeviceHyperSymbols.checked(self.model, card, self.device)

    def _upload(self, array: np.ndarray | list[np.ndarray]) -> torch.Tensor:
        """An array, or a list of same-shape arrays to stack, on the device."""
        if not self.cuda:
            return torch.from_numpy(np.ascontiguousarray(array) if isinstance(array, np.ndarray) else np.stack(array))
        # pinned host memory (stacked straight into it): an asynchronous copy that overlaps the host work
        first = np.asarray(array[0])
        dtype = torch.from_numpy(np.empty(0, first.dtype)).dtype
        host = torch.empty((len(array), *first.shape), dtype=dtype, pin_memory=True)
        if isinstance(array, np.ndarray):
            host.numpy()[...] = array
        else:
            np.stack(array, out=host.numpy())
        return host.to(self.device, non_blocking=True)

    def _format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    def analysis(self, pixels: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """uint8 (N, H, W, 3) (or a list of N (H, W, 3)) -> int32 (N, M, H/stride, W/stride)."""
        return self._collect(pixels, self._launch(pixels))[0]

    def analysis_stream(self, batches: Iterable[tuple], depth: int = 2, chunk: int | None = None) -> Iterator[tuple]:
        """:meth:`analysis` of each ``(key, pixels)`` batch, yielded as ``(key, latents)`` in order.
        On CUDA up to ``depth`` batches are in flight: the next batch is uploaded and queued on the
        GPU before the latents of the previous one are waited for, so the GPU works while the
        caller's threads code and write what came back. Elsewhere one batch at a time.

        ``chunk`` (a hyperprior with :attr:`hyper`): batches are ``(key, pixels, offsets)``, where
        ``offsets[i]`` is the ``(y, x)`` of window ``i``'s whole ``chunk`` x ``chunk`` tile in its
        latents (None: not a whole tile), and ``(key, latents, symbols)`` come back, ``symbols[i]``
        the tile's :class:`~wsicodec.codec.HyperSymbols` (None where no offset was given)."""
        pending: deque = deque()

        def done() -> tuple:
            key, px, crops, launched = pending.popleft()
            q, symbols = self._collect(px, launched, crops)
            return (key, q) if chunk is None else (key, q, symbols)

        for item in batches:
            key, pixels = item[0], item[1]
            crops = (chunk, item[2]) if chunk is not None and self.hyper is not None else None
            pending.append((key, pixels, crops, self._launch(pixels, crops=crops)))
            if len(pending) > (depth if self.cuda else 0):
                yield done()
        while pending:
            yield done()

    @torch.inference_mode()
    def _launch(self, pixels: np.ndarray | list[np.ndarray], precision: str | None = None,
                crops: tuple[int, list] | None = None) -> tuple:
        """Queue the analysis of one batch (and, given ``crops``, its tiles' hyperprior symbols);
        on CUDA the results come back asynchronously into pinned host memory (see :meth:`_collect`)."""
        bound_heap()
        x = self._upload(pixels)  # uint8 NHWC: 4x fewer bytes to the device than float
        x = self._format(x.permute(0, 3, 1, 2).float().div_(255.0))
        finite = None
        half = precision or self.precision
        if half in ("fp16", "bf16"):
            with torch.autocast(self.device.type, dtype=torch.float16 if half == "fp16" else torch.bfloat16):
                y = self.g_a(x)
            y = y.float()
            finite = torch.isfinite(y).all()
        else:
            with _no_tf32(self.device):
                y = self.g_a(x)
        if self.gain is not None:  # a variable-rate model's operating point
            y = y.mul_(self.gain)
        y = y.mul_(self.unit) if self.offset is None else y - self.offset
        q = torch.round(y).to(torch.int32).contiguous()
        out = [q]
        if crops is not None:
            c, offsets = crops
            tiles = [q[i, :, o[0] : o[0] + c, o[1] : o[1] + c] for i, o in enumerate(offsets) if o is not None]
            out += self.hyper(torch.stack(tiles)) if tiles else []
        if not self.cuda:
            return out, finite, None
        host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in out]
        for h, t in zip(host, out, strict=True):
            h.copy_(t, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, finite, event

    def _collect(self, pixels: np.ndarray, launched: tuple, crops: tuple[int, list] | None = None
                 ) -> tuple[np.ndarray, list | None]:
        """The latents of a launched batch and, when ``crops`` were given, each window's
        :class:`~wsicodec.codec.HyperSymbols` (None for a window without an offset)."""
        out, finite, event = launched
        if event is not None:
            event.synchronize()
        if finite is not None and not bool(finite):  # fp16 overflow: this batch again in fp32
            out, _, event = self._launch(pixels, "fp32", crops)
            if event is not None:
                event.synchronize()
        arrays = [t.numpy() for t in out]
        if crops is None:
            return arrays[0], None
        from wsicodec.codec import HyperSymbols

        symbols: list = [None] * len(crops[1])
        if len(arrays) > 1:
            z, y, index = arrays[1:]
            slots = [i for i, o in enumerate(crops[1]) if o is not None]
            for j, i in enumerate(slots):
                symbols[i] = HyperSymbols(z[j], y[j], index[j])
        return arrays[0], symbols

    @torch.inference_mode()
    def synthesis(self, latents: np.ndarray) -> np.ndarray:
        """int (N, M, h, w) -> uint8 (N, h*stride, w*stride, 3)."""
        bound_heap()
        q = self._upload(np.asarray(latents, dtype=np.float32))
        q = q.div_(self.unit) if self.offset is None else q + self.offset
        if self.inverse_gain is not None:
            q = q.mul_(self.inverse_gain)
        q = self._format(q)
        x = None
        if self.half_synthesis:
            with torch.autocast(self.device.type, dtype=torch.float16 if self.cuda else torch.bfloat16):
                x = self.g_s(q)
            x = x.float()
            if not bool(torch.isfinite(x).all()):  # fp16 overflow: do this batch in fp32
                x = None
        if x is None:
            x = self.g_s(q)
        x = x.clamp_(0, 1)
        return x.mul_(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()

    def background_latents(self, glass: tuple[int, int, int]) -> np.ndarray:
        """The latent vector (M,) of an infinite field of glass colour."""
        size = 8 * self.spec.stride + 2 * self.spec.encode_halo
        field = np.empty((1, size, size, 3), np.uint8)
        field[:] = glass
        q = self.analysis(field)[0]
        mid = q.shape[1] // 2
        return q[:, mid, mid].copy()


#: the former name of :class:`Transforms` ("coder" now means only the entropy coder), kept so that
#: code written against it runs unchanged
LatentCoder = Transforms


def encode_tiles(read_rgb: Callable[[int, int, int, int], np.ndarray], grid: TileGrid,
                 transforms: Transforms, glass: tuple[int, int, int] | None,
                 tiles: Iterable[tuple[int, int]] | None = None,
                 read_ahead: int = 8, read_threads: int = 1, refiner: Any = None) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(tx, ty, latents)`` for each tile (``latents`` None for empty glass; a whole
    tile's :class:`~wsicodec.codec.HyperSymbols` when the transforms make them, see
    ``Transforms.hyper_on_device``), reading ahead
    on ``read_threads`` threads and running the network in batches of windows of the same shape
    (on CUDA with the next batch queued while the last one's latents are handed on).

    ``read_rgb(x0, y0, w, h)`` returns canvas pixels (background colour beyond level 0).
    ``refiner``: a :class:`wsicodec.refine.LatentRefiner` that replaces each tile's latents (edge
    tiles' too) by searched symbols: a higher encoder effort."""
    halo = transforms.spec.encode_halo
    s = transforms.spec.stride
    glass_tiles: list[tuple[int, int]] = []

    def read(t):
        tx, ty = t
        x0, y0, x1, y1 = grid.encode_window(tx, ty, halo)
        win = read_rgb(x0, y0, x1 - x0, y1 - y0)
        x, y, w, h = grid.tile_box(tx, ty)
        bg = glass is not None and is_background(win[y - y0 : y - y0 + h, x - x0 : x - x0 + w], glass)
        return (x0, y0), win, bg

    c = grid.chunk

    def tile_in_window(tx: int, ty: int, origin: tuple[int, int]) -> tuple[int, int, int, int]:
        """``(oy, ox, h, w)``: where tile (tx, ty)'s latents sit in those of its window."""
        lx0, ly0, lx1, ly1 = grid.tile_latents(tx, ty)
        return ly0 - origin[1] // s, lx0 - origin[0] // s, ly1 - ly0, lx1 - lx0

    def whole_tile(tx: int, ty: int, origin: tuple[int, int]) -> tuple[int, int] | None:
        """Where tile (tx, ty)'s whole chunk sits in its window's latents (None: a tile cut by
        the canvas's edge, which the writer completes and codes itself)."""
        oy, ox, h, w = tile_in_window(tx, ty, origin)
        return (oy, ox) if (h, w) == (c, c) else None

    def batches() -> Iterator[tuple[list, list[np.ndarray], list]]:
        pending: dict[tuple[int, int], list[tuple[int, int, tuple, np.ndarray]]] = defaultdict(list)
        ahead = max(read_ahead, 2 * read_threads)
        for (tx, ty), (origin, win, bg) in prefetch(tiles if tiles is not None else iter(grid), read,
                                                   ahead, read_threads):
            if bg:
                glass_tiles.append((tx, ty))
                continue
            group = pending[win.shape[:2]]
            group.append((tx, ty, origin, win))
            if len(group) >= transforms.batch_size:
                yield list(group), [b[3] for b in group], [whole_tile(*b[:3]) for b in group]
                group.clear()
        for group in pending.values():
            if group:
                yield group, [b[3] for b in group], [whole_tile(*b[:3]) for b in group]

    # a search makes each tile's symbols itself: the analysis then leaves the side information out
    for batch, q, *made in transforms.analysis_stream(batches(), chunk=None if refiner else c):
        if refiner is not None:
            symbols = refiner.refine([b[3] for b in batch], q, [tile_in_window(*b[:3]) for b in batch],
                                     [b[:2] for b in batch])
        else:
            symbols = made[0]
        while glass_tiles:
            yield (*glass_tiles.pop(), None)
        for i, ((tx, ty, origin, _), lat) in enumerate(zip(batch, q, strict=True)):
            if symbols is not None and symbols[i] is not None:
                yield tx, ty, symbols[i]  # coded on the device up to the range coder
                continue
            oy, ox, h, w = tile_in_window(tx, ty, origin)
            yield tx, ty, lat[:, oy : oy + h, ox : ox + w]
    while glass_tiles:
        yield (*glass_tiles.pop(), None)
