"""The latent entropy codec: a numcodecs codec (``wsicodec.latents``) and its zarr v3 adapter.

One chunk is a ``(C, h, w)`` block of integer latents (symbols relative to the entropy model's
medians). Each channel ``c`` has a frozen integer frequency table ``freqs[c]`` (sum 2**16) over the
symbols ``offset[c] .. offset[c] + len(freqs[c]) - 2``; its last entry is the escape symbol, whose
actual value is stored verbatim. Symbols are range-coded with ``constriction``'s queue
``RangeEncoder`` (a memory-safe Rust implementation) in channel-major order, channel ``c``'s model
being ``Categorical(freqs[c] / 2**16, perfect=False)``. The exact chunk layout is in
``docs/format.md``.

The tables travel in the codec's JSON configuration, so a store's latents decode in any process
that has wsicodec installed, without the model file and without recomputing anything.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from numcodecs.abc import Codec

CODEC_ID = "wsicodec.latents"
MAGIC = b"WSLC"
CHUNK_VERSION = 1
PRECISION = 16
_HEADER = struct.Struct("<4sBBHHHII")  # magic, version, flags, C, h, w, n_escapes, n_words
#: Largest chunk this decoder accepts, in latent elements (checked before allocating).
MAX_CHUNK_ELEMENTS = 1 << 24


class CodecError(ValueError):
    """A latent chunk that cannot be decoded (corrupt, truncated or of the wrong shape)."""


@dataclass(frozen=True)
class EntropyTables:
    """Frozen per-channel integer frequency tables of a factorized entropy model."""

    offsets: tuple[int, ...]
    freqs: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.offsets) != len(self.freqs) or not self.freqs:
            raise CodecError("entropy tables: offsets and freqs differ in length")
        for c, f in enumerate(self.freqs):
            if len(f) < 2 or sum(f) != 1 << PRECISION or min(f) < 1:
                raise CodecError(f"entropy tables: channel {c} is not a valid frequency table")

    @property
    def channels(self) -> int:
        return len(self.freqs)

    @classmethod
    def from_entropy_bottleneck(cls, eb: Any) -> "EntropyTables":
        """From a compressai ``EntropyBottleneck`` whose ``update()`` has been done."""
        cdf = eb._quantized_cdf.cpu().numpy().astype(np.int64)
        lengths = eb._cdf_length.cpu().numpy().astype(np.int64)
        offsets = eb._offset.cpu().numpy().astype(np.int64)
        if cdf.size == 0:
            raise CodecError("entropy model has no frozen CDF tables (call update() first)")
        freqs = tuple(tuple(int(v) for v in np.diff(cdf[c, : lengths[c]])) for c in range(len(lengths)))
        return cls(tuple(int(o) for o in offsets), freqs)

    def to_config(self) -> dict[str, Any]:
        return {"precision": PRECISION, "offsets": list(self.offsets), "freqs": [list(f) for f in self.freqs]}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "EntropyTables":
        try:
            if int(cfg.get("precision", PRECISION)) != PRECISION:
                raise CodecError(f"unsupported table precision {cfg.get('precision')}")
            return cls(tuple(int(o) for o in cfg["offsets"]), tuple(tuple(int(v) for v in f) for f in cfg["freqs"]))
        except (KeyError, TypeError) as e:
            raise CodecError(f"malformed entropy tables ({e})") from None


class _Models:
    """constriction models for each channel, built once per table set."""

    def __init__(self, tables: EntropyTables):
        import constriction

        Categorical = constriction.stream.model.Categorical

        self.tables = tables
        self.models = []
        self.escape = []
        for f in tables.freqs:
            p = np.asarray(f, dtype=np.float64) / float(1 << PRECISION)
            self.models.append(Categorical(p, perfect=False))
            self.escape.append(len(f) - 1)


def encode_chunk(q: np.ndarray, models: _Models) -> bytes:
    """Entropy-code one ``(C, h, w)`` integer chunk."""
    import constriction

    RangeEncoder = constriction.stream.queue.RangeEncoder

    q = np.asarray(q)
    if q.ndim != 3 or q.shape[0] != models.tables.channels:
        raise CodecError(f"chunk shape {q.shape} does not match {models.tables.channels} channels")
    C, h, w = q.shape
    enc = RangeEncoder()
    escapes: list[np.ndarray] = []
    for c in range(C):
        sym = q[c].astype(np.int64).ravel() - models.tables.offsets[c]
        esc = (sym < 0) | (sym >= models.escape[c])
        if esc.any():
            escapes.append(q[c].ravel()[esc].astype("<i4"))
            sym[esc] = models.escape[c]
        enc.encode(sym.astype(np.int32), models.models[c])
    words = enc.get_compressed().astype("<u4")
    esc_arr = np.concatenate(escapes) if escapes else np.zeros(0, "<i4")
    head = _HEADER.pack(MAGIC, CHUNK_VERSION, 0, C, h, w, esc_arr.size, words.size)
    return head + esc_arr.tobytes() + words.tobytes()


def decode_chunk(data: bytes | memoryview, models: _Models,
                 expect_shape: Sequence[int] | None = None) -> np.ndarray:
    """Decode one chunk to ``int32 (C, h, w)``; raises :class:`CodecError` on any inconsistency."""
    import constriction

    RangeDecoder = constriction.stream.queue.RangeDecoder

    buf = bytes(data)
    if len(buf) < _HEADER.size:
        raise CodecError(f"latent chunk truncated ({len(buf)} bytes, header needs {_HEADER.size})")
    magic, version, flags, C, h, w, n_esc, n_words = _HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise CodecError("not a wsicodec latent chunk (bad magic)")
    if version != CHUNK_VERSION or flags != 0:
        raise CodecError(f"unsupported latent chunk version {version} / flags {flags}")
    if C != models.tables.channels:
        raise CodecError(f"chunk has {C} channels, the entropy model {models.tables.channels}")
    if expect_shape is not None and tuple(expect_shape) != (C, h, w):
        raise CodecError(f"chunk shape {(C, h, w)} differs from the array's {tuple(expect_shape)}")
    n = C * h * w
    if n > MAX_CHUNK_ELEMENTS or n_esc > n:
        raise CodecError(f"chunk size fields out of range ({C}x{h}x{w}, {n_esc} escapes)")
    if len(buf) != _HEADER.size + 4 * n_esc + 4 * n_words:
        raise CodecError(
            f"latent chunk length {len(buf)} does not match its header "
            f"({_HEADER.size} + 4*{n_esc} + 4*{n_words})"
        )
    esc = np.frombuffer(buf, "<i4", n_esc, _HEADER.size)
    words = np.frombuffer(buf, "<u4", n_words, _HEADER.size + 4 * n_esc).astype(np.uint32)
    out = np.empty((C, h * w), np.int32)
    used = 0
    try:
        dec = RangeDecoder(words)
        for c in range(C):
            sym = np.asarray(dec.decode(models.models[c], h * w), dtype=np.int64)
            is_esc = sym == models.escape[c]
            k = int(is_esc.sum())
            vals = sym + models.tables.offsets[c]
            if k:
                if used + k > n_esc:
                    raise CodecError("latent chunk has fewer escaped values than escape symbols")
                vals[is_esc] = esc[used : used + k]
                used += k
            out[c] = vals
    except CodecError:
        raise
    except Exception as e:  # constriction raises on malformed streams
        raise CodecError(f"corrupt latent chunk ({e})") from None
    if used != n_esc:
        raise CodecError("latent chunk has unused escaped values")
    return out.reshape(C, h, w)


class LatentCodec(Codec):
    """numcodecs codec for ``(C, h, w)`` integer latent chunks (see module docstring)."""

    codec_id = CODEC_ID

    def __init__(self, tables: dict[str, Any], shape: Sequence[int] | None = None, dtype: str = "int16"):
        self.tables = EntropyTables.from_config(tables)
        self.shape = tuple(int(s) for s in shape) if shape is not None else None
        self.dtype = np.dtype(dtype)
        self._models: _Models | None = None

    @property
    def models(self) -> _Models:
        if self._models is None:
            self._models = _Models(self.tables)
        return self._models

    def get_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"id": self.codec_id, "tables": self.tables.to_config(), "dtype": self.dtype.str}
        if self.shape is not None:
            cfg["shape"] = list(self.shape)
        return cfg

    def encode(self, buf: Any) -> bytes:
        arr = np.asarray(buf)
        if self.shape is not None:
            arr = arr.reshape(self.shape)
        return encode_chunk(arr, self.models)

    def decode(self, buf: Any, out: Any = None) -> np.ndarray:
        arr = decode_chunk(memoryview(buf).cast("B") if not isinstance(buf, bytes) else buf,
                           self.models, self.shape)
        if np.any(arr < np.iinfo(self.dtype).min) or np.any(arr > np.iinfo(self.dtype).max):
            raise CodecError(f"decoded latents overflow {self.dtype}")
        arr = arr.astype(self.dtype)
        if out is not None:
            np.copyto(np.asarray(out).reshape(arr.shape), arr)
            return out
        return arr

    def __repr__(self) -> str:
        return f"LatentCodec(channels={self.tables.channels}, shape={self.shape})"


# -- zarr v3 adapter ---------------------------------------------------------------------------
from zarr.abc.codec import ArrayBytesCodec  # noqa: E402


@dataclass(frozen=True)
class ZarrLatentCodec(ArrayBytesCodec):
    """zarr v3 array->bytes codec named ``wsicodec.latents``, delegating to :class:`LatentCodec`."""

    is_fixed_size = False
    tables: dict = None  # type: ignore[assignment]

    def __init__(self, *, tables: dict[str, Any]) -> None:
        object.__setattr__(self, "tables", tables)
        EntropyTables.from_config(tables)  # validate early

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ZarrLatentCodec":
        if data.get("name") != CODEC_ID:
            raise CodecError(f"expected codec {CODEC_ID!r}, got {data.get('name')!r}")
        return cls(**data.get("configuration", {}))

    def to_dict(self) -> dict[str, Any]:
        return {"name": CODEC_ID, "configuration": {"tables": self.tables}}

    def _numcodec(self, shape: Sequence[int], dtype: np.dtype) -> LatentCodec:
        cache = self.__dict__.setdefault("_cache", {})
        key = (tuple(shape), np.dtype(dtype).str)
        if key not in cache:
            codec = LatentCodec(self.tables, shape, np.dtype(dtype).str)
            if cache:  # share the constriction models between shapes
                codec._models = next(iter(cache.values())).models
            cache[key] = codec
        return cache[key]

    async def _decode_single(self, chunk_bytes, chunk_spec):
        import asyncio

        dtype = chunk_spec.dtype.to_native_dtype()
        codec = self._numcodec(chunk_spec.shape, dtype)
        arr = await asyncio.to_thread(codec.decode, chunk_bytes.to_bytes())
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(arr)

    async def _encode_single(self, chunk_array, chunk_spec):
        import asyncio

        dtype = chunk_spec.dtype.to_native_dtype()
        codec = self._numcodec(chunk_spec.shape, dtype)
        data = await asyncio.to_thread(codec.encode, chunk_array.as_ndarray_like())
        return chunk_spec.prototype.buffer.from_bytes(data)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec) -> int:
        raise NotImplementedError


def register() -> None:
    """Make both codecs known in this process (entry points do the same for fresh processes)."""
    import numcodecs
    from zarr.registry import register_codec

    numcodecs.register_codec(LatentCodec)
    register_codec(CODEC_ID, ZarrLatentCodec)


register()
