"""The codecs a benchmark compares, behind one interface: ``codec.run(rgb, setting)`` encodes and
decodes an 8-bit RGB image and returns the byte count, the decoded pixels and both timings.

Classical codecs go through ``imagecodecs``; their byte count is the complete encoded stream
(headers included), everything the decoder needs. ``wsicodec`` runs the real
:func:`wsicodec.pipeline.compress` on the image (written as a lossless PNG) and decodes with
:class:`wsicodec.store.WsiStore`; its byte count is the entropy-coded latent chunks (see
:func:`wsicodec_bytes`).
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsicodec.errors import BenchError

#: what a benchmark curve's name carries for models trained for MS-SSIM (``wsicodec-hyperprior-ms-ssim``,
#: ``wsicodec-<model>-ms-ssim``), before any encoder-effort suffix
MS_SSIM_SUFFIX = "-ms-ssim"

CLASSICAL = ("jpeg", "webp", "jxl", "avif", "j2k")
ALL_CODECS = CLASSICAL + ("wsicodec",)
#: The reference point marked on every plot (the paper's Fig. 2).
REFERENCE_POINT = ("jpeg", "80")


@dataclass
class Coded:
    bytes: int
    decoded: np.ndarray
    encode_s: float
    decode_s: float


class Codec:
    """A codec with an ordered sweep of settings, from lowest to highest rate."""

    name = ""
    setting_label = "setting"

    def __init__(self, settings: Sequence[Any] | None = None):
        self.settings: list[Any] = list(settings) if settings is not None else list(self.default_settings())

    def default_settings(self) -> list[Any]:
        raise NotImplementedError

    def run(self, rgb: np.ndarray, setting: Any) -> Coded:
        raise NotImplementedError

    def curve(self, setting: Any) -> str:
        """The rate-distortion curve a setting belongs to (the ``codec`` column of results)."""
        return self.name

    def close(self) -> None:
        pass


class ImagecodecsCodec(Codec):
    """A classical codec from ``imagecodecs``; ``setting`` is its quality parameter."""

    def __init__(self, name: str, encode: Callable[[np.ndarray, Any], bytes], decode: Callable[[bytes], np.ndarray],
                 defaults: Sequence[Any], setting_label: str, check: Callable[[], bool],
                 settings: Sequence[Any] | None = None):
        self.name = name
        self._encode, self._decode, self._defaults = encode, decode, list(defaults)
        self.setting_label = setting_label
        if not check():
            raise BenchError(f"codec {name!r} is not available in this imagecodecs build")
        super().__init__(settings)

    def default_settings(self) -> list[Any]:
        return self._defaults

    def run(self, rgb: np.ndarray, setting: Any) -> Coded:
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        t0 = time.perf_counter()
        data = bytes(self._encode(rgb, setting))
        t1 = time.perf_counter()
        out = np.asarray(self._decode(data))
        t2 = time.perf_counter()
        if out.ndim == 2:
            out = np.repeat(out[:, :, None], 3, axis=2)
        out = out[:, :, :3]
        if out.shape != rgb.shape:
            raise ValueError(f"codec {self.name} decoded shape {out.shape} for an input of {rgb.shape}")
        return Coded(len(data), np.ascontiguousarray(out, dtype=np.uint8), t1 - t0, t2 - t1)


_QUALITIES = (10, 20, 30, 40, 50, 60, 70, 80, 90, 95)


def classical_codec(name: str, settings: Sequence[Any] | None = None) -> ImagecodecsCodec:
    """``jpeg`` (libjpeg quality, 4:2:0), ``webp`` (lossy quality), ``jxl`` (quality, effort 7),
    ``avif`` (quality, speed 6 as avifenc), ``j2k`` (OpenJPEG, target PSNR in dB of its single quality layer)."""
    import imagecodecs as ic

    table: dict[str, tuple] = {
        "jpeg": (lambda a, q: ic.jpeg8_encode(a, level=int(q)), ic.jpeg8_decode, _QUALITIES, "quality",
                 lambda: ic.JPEG8.available),
        "webp": (lambda a, q: ic.webp_encode(a, level=float(q), lossless=False), ic.webp_decode, _QUALITIES,
                 "quality", lambda: ic.WEBP.available),
        "jxl": (lambda a, q: ic.jpegxl_encode(a, level=float(q), effort=7), ic.jpegxl_decode, _QUALITIES,
                "quality", lambda: ic.JPEGXL.available),
        "avif": (lambda a, q: ic.avif_encode(a, level=int(q), speed=6), ic.avif_decode, _QUALITIES, "quality",
                 lambda: ic.AVIF.available),
        "j2k": (lambda a, q: ic.jpeg2k_encode(a, level=float(q), codecformat="j2k"), ic.jpeg2k_decode,
                (24, 27, 30, 33, 36, 39, 42, 45, 48), "target PSNR (dB)", lambda: ic.JPEG2K.available),
    }
    if name not in table:
        raise BenchError(f"unknown classical codec {name!r} (known: {', '.join(CLASSICAL)})")
    enc, dec, defaults, label, check = table[name]
    return ImagecodecsCodec(name, enc, dec, defaults, label, check, settings)


def wsicodec_bytes(store: Path) -> int:
    """Bytes of a store's entropy-coded latent chunks: every file under ``latents/c/`` (each
    chunk with its 20-byte header and 4-byte crc32c). The store's JSON metadata (frozen model
    tables, slide properties) is constant per slide and part of the model, so it is not counted."""
    root = Path(store) / "latents" / "c"
    if not root.is_dir():
        return 0
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


class WsicodecCodec(Codec):
    """Every current shipped model (``setting`` = model name), measured on the real entropy-coded bytes
    through :func:`wsicodec.pipeline.compress` and decoded with :class:`wsicodec.store.WsiStore`.

    Timings are wall-clock of those two calls: they include loading the model and writing /
    reading the Zarr store, as a user of ``wsicodec compress`` experiences them."""

    name = "wsicodec"
    setting_label = "model"

    def __init__(self, settings: Sequence[str] | None = None, model_dir: Path | None = None,
                 device: str = "cpu", batch_size: int = 4, tile: int | None = None, precision: str = "auto",
                 effort: str = "standard"):
        self.model_dir = Path(model_dir) if model_dir else None
        self.effort = effort  # wsicodec compress --effort
        self.device, self.batch_size, self.tile = device, batch_size, tile
        self.precision = precision  # "auto" or "fp32", for compress and decompress alike
        self._tmp = tempfile.TemporaryDirectory(prefix="wsicodec-bench-")
        super().__init__(settings)
        if not self.settings:
            from wsicodec.models import model_dir as default_dir

            raise BenchError(f"codec 'wsicodec': no shipped models in {self.model_dir or default_dir()}")

    def default_settings(self) -> list[str]:
        """The current zoo: every listed model except those whose card names a successor
        (``superseded_by``); retired models are not listed at all."""
        from wsicodec.models import list_models

        cards = [c for c in list_models(self.model_dir) if not c.superseded_by]
        # a variable-rate model contributes each trained operating point (NAME@K, its λ)
        points = [(f"{c.name}@{p['index']}", p.get("lambda")) for c in cards for p in c.operating_points] + \
                 [(c.name, c.lmbda) for c in cards if not c.operating_points]
        # lowest rate first: larger lambda means higher rate; unknown lambdas keep name order
        points.sort(key=lambda p: (p[1] is None, p[1] if p[1] is not None else 0.0, p[0]))
        return [name for name, _ in points]

    def curve(self, setting: str) -> str:
        """``wsicodec`` for factorized models, ``wsicodec-hyperprior`` for mean-scale hyperprior
        ones, ``wsicodec-<model>`` for each variable-rate model (its points ``NAME@K``), and
        ``-ms-ssim`` appended for models trained for MS-SSIM, then ``-high`` / ``-max`` at a higher
        encoder effort: one curve per family and effort, each compared with the classical codecs."""
        from wsicodec.models import list_models

        if not hasattr(self, "_kinds"):
            self._kinds = {c.name: ("variable-rate" if c.spec.variable_rate else c.spec.entropy_model,
                                    MS_SSIM_SUFFIX if c.distortion == "ms-ssim" else "")
                           for c in list_models(self.model_dir)}
        name = setting.partition("@")[0]
        kind, trained_for = self._kinds.get(name, ("factorized", ""))
        effort = "" if self.effort == "standard" else f"-{self.effort}"  # effort_suffix reads it back
        if kind == "variable-rate":
            return f"{self.name}-{name}{trained_for}{effort}"
        return (self.name if kind == "factorized" else f"{self.name}-hyperprior") + trained_for + effort

    def run(self, rgb: np.ndarray, setting: str) -> Coded:
        from PIL import Image

        from wsicodec.pipeline import compress
        from wsicodec.store import WsiStore

        tmp = Path(self._tmp.name)
        src, store = tmp / "input.png", tmp / "bench.zarr"
        Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(src, compress_level=1)
        h, w = rgb.shape[:2]
        t0 = time.perf_counter()
        compress(src, store, model=setting, device=self.device, batch_size=self.batch_size, tile=self.tile,
                 overwrite=True, skip_glass=False, progress=False, model_dir=self.model_dir, precision=self.precision,
                 effort=self.effort)
        t1 = time.perf_counter()
        with WsiStore(store, device=self.device, batch_size=self.batch_size, model_dir=self.model_dir,
                      precision=self.precision) as s:
            out = s.read_level0(0, 0, w, h)
        t2 = time.perf_counter()
        return Coded(wsicodec_bytes(store), out, t1 - t0, t2 - t1)

    def close(self) -> None:
        self._tmp.cleanup()


def make_codec(name: str, settings: Sequence[Any] | None = None, model_dir: Path | None = None,
               device: str = "cpu", precision: str = "auto", effort: str = "standard") -> Codec:
    if name == "wsicodec":
        return WsicodecCodec(settings, model_dir=model_dir, device=device, precision=precision, effort=effort)
    if name in CLASSICAL:
        return classical_codec(name, settings)
    raise BenchError(f"unknown codec {name!r} (known: {', '.join(ALL_CODECS)})")
