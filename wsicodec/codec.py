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

The hyperprior codec (``wsicodec.hyperlatents``) follows the factorized one. Both bitstreams and
their zarr adapters stay in this one module, about 670 lines, on purpose: the installed
numcodecs / zarr entry points name ``wsicodec.codec:<class>``, and every store ever written
decodes through them, so this file is the bitstream's single, stable home.
"""
from __future__ import annotations

import copy
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numcodecs.abc import Codec

from wsicodec.errors import WsicodecError

CODEC_ID = "wsicodec.latents"
MAGIC = b"WSLC"
CHUNK_VERSION = 1
PRECISION = 16
_HEADER = struct.Struct("<4sBBHHHII")  # magic, version, flags, C, h, w, n_escapes, n_words
#: Largest chunk this decoder accepts, in latent elements (checked before allocating).
MAX_CHUNK_ELEMENTS = 1 << 24


class CodecError(WsicodecError, ValueError):
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
    def from_entropy_bottleneck(cls, eb: Any) -> EntropyTables:
        """From a compressai ``EntropyBottleneck`` whose ``update()`` has been done."""
        cdf = eb._quantized_cdf.cpu().numpy().astype(np.int64)
        lengths = eb._cdf_length.cpu().numpy().astype(np.int64)
        offsets = eb._offset.cpu().numpy().astype(np.int64)
        if cdf.size == 0:
            raise CodecError("entropy model has no frozen CDF tables (call update() first)")
        freqs = tuple(tuple(int(v) for v in np.diff(cdf[c, : lengths[c]])) for c in range(len(lengths)))
        return cls(tuple(int(o) for o in offsets), freqs)

    @classmethod
    def from_gaussian_conditional(cls, gc: Any) -> EntropyTables:
        """From a compressai ``GaussianConditional`` whose ``update()`` has been done: one table per
        entry of its scale table (symbols relative to the predicted mean)."""
        return cls.from_entropy_bottleneck(gc)

    def to_config(self) -> dict[str, Any]:
        return {"precision": PRECISION, "offsets": list(self.offsets), "freqs": [list(f) for f in self.freqs]}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> EntropyTables:
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
        for f in tables.freqs:
            p = np.asarray(f, dtype=np.float64) / float(1 << PRECISION)
            self.models.append(Categorical(p, perfect=False))
        self.offsets = np.asarray(tables.offsets, np.int64)
        self.escape = np.asarray([len(f) - 1 for f in tables.freqs], np.int64)  # each table's escape symbol


def _run_tables(models: _Models, tables: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each coded value's offset and escape symbol, for runs of ``counts[i]`` values coded with
    table ``tables[i]``."""
    return np.repeat(models.offsets[tables], counts), np.repeat(models.escape[tables], counts)


def _encode_runs(enc: Any, values: np.ndarray, models: _Models, tables: np.ndarray, counts: np.ndarray,
                 escapes: list[np.ndarray]) -> None:
    """Code ``values`` (int, 1-D) in consecutive runs, ``counts[i]`` values with table
    ``tables[i]``; values outside their table are coded as the escape symbol and kept, in order,
    in ``escapes``. The offsets and escapes are worked out for all values at once; only the
    coder's calls go run by run (one per channel or table: the bitstream's order)."""
    offset, limit = _run_tables(models, tables, counts)
    sym = values.astype(np.int64) - offset
    esc = (sym < 0) | (sym >= limit)
    if esc.any():
        escapes.append(values[esc].astype("<i4"))
        sym[esc] = limit[esc]
    sym = sym.astype(np.int32)
    start = 0
    for k, n in zip(tables.tolist(), counts.tolist(), strict=True):
        enc.encode(sym[start : start + n], models.models[k])
        start += n


def _decode_runs(dec: Any, models: _Models, tables: np.ndarray, counts: np.ndarray, esc: np.ndarray
                 ) -> tuple[np.ndarray, int]:
    """Decode the runs of :func:`_encode_runs`: the values (int64, 1-D) with the escaped ones
    taken from ``esc`` in order, and how many of ``esc`` they used."""
    offset, limit = _run_tables(models, tables, counts)
    raw = np.empty(offset.size, np.int64)
    start = 0
    for k, n in zip(tables.tolist(), counts.tolist(), strict=True):
        raw[start : start + n] = dec.decode(models.models[k], n)
        start += n
    is_esc = raw == limit
    vals = raw + offset
    used = int(is_esc.sum())
    if used > esc.size:
        raise CodecError("latent chunk has fewer escaped values than escape symbols")
    if used:
        vals[is_esc] = esc[:used]
    return vals, used


def _pack_stream(enc: Any, escapes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    words = enc.get_compressed().astype("<u4")
    esc_arr = np.concatenate(escapes) if escapes else np.zeros(0, "<i4")
    return esc_arr, words


def encode_chunk(q: np.ndarray, models: _Models) -> bytes:
    """Entropy-code one ``(C, h, w)`` integer chunk."""
    import constriction

    q = np.asarray(q)
    if q.ndim != 3 or q.shape[0] != models.tables.channels:
        raise CodecError(f"chunk shape {q.shape} does not match {models.tables.channels} channels")
    C, h, w = q.shape
    enc = constriction.stream.queue.RangeEncoder()
    escapes: list[np.ndarray] = []
    _encode_runs(enc, q.reshape(-1), models, np.arange(C), np.full(C, h * w), escapes)
    esc_arr, words = _pack_stream(enc, escapes)
    head = _HEADER.pack(MAGIC, CHUNK_VERSION, 0, C, h, w, esc_arr.size, words.size)
    return head + esc_arr.tobytes() + words.tobytes()


def _check_chunk_shape(shape: tuple[int, int, int], expect: Sequence[int] | None, within: bool) -> None:
    """A chunk stream's ``(C, h, w)`` against the array's chunk shape: equal, or with ``within``
    at most as large (an edge chunk coded only as far as the array reaches, format version 5)."""
    if expect is None:
        return
    expect = tuple(expect)
    if shape == expect or (within and shape[0] == expect[0] and shape[1] <= expect[1] and shape[2] <= expect[2]):
        return
    raise CodecError(f"chunk shape {shape} differs from the array's {expect}")


def decode_chunk(data: bytes | memoryview, models: _Models,
                 expect_shape: Sequence[int] | None = None, within: bool = False) -> np.ndarray:
    """Decode one chunk to ``int32 (C, h, w)``; raises :class:`CodecError` on any inconsistency.
    ``expect_shape``: the shape it must have (``within``: at most)."""
    import constriction

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
    _check_chunk_shape((C, h, w), expect_shape, within)
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
    try:
        dec = constriction.stream.queue.RangeDecoder(words)
        out, used = _decode_runs(dec, models, np.arange(C), np.full(C, h * w), esc)
    except CodecError:
        raise
    except Exception as e:  # constriction raises on malformed streams
        raise CodecError(f"corrupt latent chunk ({e})") from None
    if used != n_esc:
        raise CodecError("latent chunk has unused escaped values")
    return out.astype(np.int32).reshape(C, h, w)


def chunk_stream_shape(data: bytes | memoryview) -> tuple[int, int, int]:
    """The ``(C, h, w)`` a latent chunk's stream holds (either entropy model), read from its
    header; raises :class:`CodecError` when it is not a chunk stream."""
    buf = bytes(data[: _HYPER_HEADER.size])
    if buf[:4] == MAGIC and len(buf) >= _HEADER.size:
        return tuple(int(v) for v in _HEADER.unpack_from(buf)[3:6])  # type: ignore[return-value]
    if buf[:4] == HYPER_MAGIC and len(buf) >= _HYPER_HEADER.size:
        return tuple(int(v) for v in _HYPER_HEADER.unpack_from(buf)[3:6])  # type: ignore[return-value]
    raise CodecError("not a wsicodec latent chunk (bad magic or truncated header)")


class _ChunkCodec(Codec):
    """A numcodecs codec of ``(C, h, w)`` latent chunks: ``shape`` / ``dtype`` handling shared by
    the two entropy models; subclasses code one array (``_encode``) and one chunk (``_decode``)."""

    def __init__(self, shape: Sequence[int] | None, dtype: str):
        self.shape = tuple(int(s) for s in shape) if shape is not None else None
        self.dtype = np.dtype(dtype)

    def _config(self) -> dict[str, Any]:
        raise NotImplementedError

    def _encode(self, arr: np.ndarray) -> bytes:
        raise NotImplementedError

    def _decode(self, buf: bytes | memoryview) -> np.ndarray:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"id": self.codec_id, **self._config(), "dtype": self.dtype.str}
        if self.shape is not None:
            cfg["shape"] = list(self.shape)
        return cfg

    def encode(self, buf: Any) -> bytes:
        """Code one chunk: ``shape``'s values (any array of as many), or an edge chunk's leading
        ``(C, h, w)`` block (format version 5)."""
        arr = np.asarray(buf)
        if self.shape is not None:
            if arr.ndim == 3 and arr.shape != self.shape:
                _check_chunk_shape(arr.shape, self.shape, within=True)
            else:
                arr = arr.reshape(self.shape)
        return self._encode(arr)

    def decode(self, buf: Any, out: Any = None) -> np.ndarray:
        """The chunk's values; a stream smaller than ``shape`` (an edge chunk coded only as far as
        the array reaches) is completed with zeros, the array's fill value, which lie beyond the
        array and are never read."""
        arr = self._decode(buf if isinstance(buf, bytes) else memoryview(buf).cast("B"))
        info = np.iinfo(self.dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise CodecError(f"decoded latents overflow {self.dtype}")
        if self.shape is not None and arr.shape != self.shape:
            whole = np.zeros(self.shape, self.dtype)
            whole[:, : arr.shape[1], : arr.shape[2]] = arr
            arr = whole
        arr = arr.astype(self.dtype)
        if out is not None:
            np.copyto(np.asarray(out).reshape(arr.shape), arr)
            return out
        return arr


class LatentCodec(_ChunkCodec):
    """numcodecs codec for ``(C, h, w)`` integer latent chunks (see module docstring)."""

    codec_id = CODEC_ID

    def __init__(self, tables: dict[str, Any], shape: Sequence[int] | None = None, dtype: str = "int16"):
        super().__init__(shape, dtype)
        self.tables = EntropyTables.from_config(tables)
        self._models: _Models | None = None

    @property
    def models(self) -> _Models:
        if self._models is None:
            self._models = _Models(self.tables)
        return self._models

    def _config(self) -> dict[str, Any]:
        return {"tables": self.tables.to_config()}

    def _encode(self, arr: np.ndarray) -> bytes:
        return encode_chunk(arr, self.models)

    def _decode(self, buf: bytes | memoryview) -> np.ndarray:
        return decode_chunk(buf, self.models, self.shape, within=True)

    def __repr__(self) -> str:
        return f"LatentCodec(channels={self.tables.channels}, shape={self.shape})"


# -- hyperprior latents (entropy model "gaussian-mean-scale") ---------------------------------
HYPER_CODEC_ID = "wsicodec.hyperlatents"
HYPER_MAGIC = b"WSLH"
_HYPER_HEADER = struct.Struct("<4sBBHHHHII")  # magic, version, flags, M, h, w, N, z length, n_escapes
_HYPER_TAIL = struct.Struct("<I")             # n_words of the latent part
_MAX_INDEX_LUT = 1 << 22                      # table-index lookup entries at most (else a binary search)
#: latents per side-information position: a hyperprior chunk's sides are multiples of it
HYPER_BLOCK = 4


class HyperEntropyModel:
    """What coding a hyperprior model's latents needs, derived from its weights alone: the side
    information's factorized tables (``z``), the Gaussian tables (one per scale, ``y``), the scale
    thresholds and ``ẑ`` medians in fixed point, the integer hyper-decoder, and (to encode) the
    float hyper-encoder ``h_a``. Latents travel in fixed point: ``ŷ · 2^ACT_BITS`` (int32)."""

    def __init__(self, model: Any):
        import torch

        from wsicodec.models.integer import ACT_BITS, IntegerHyperDecoder

        self.act_bits = ACT_BITS
        self.z = _Models(EntropyTables.from_entropy_bottleneck(model.entropy_bottleneck))
        gc = model.gaussian_conditional
        self.y = _Models(EntropyTables.from_gaussian_conditional(gc))
        if self.y.tables.channels > 256:  # table indexes travel as uint8 (HyperSymbols)
            raise CodecError(f"{self.y.tables.channels} Gaussian tables; this codec handles at most 256")
        table = gc.scale_table.detach().cpu().numpy().astype(np.float64)
        # scale <= table[i]  <=>  scale_fp <= floor(table[i] · 2^A): index = #thresholds below scale_fp
        self.thresholds = np.floor(table[:-1] * float(1 << ACT_BITS)).astype(np.int64)
        # the same indexes by lookup, several times as fast as a binary search per latent: every
        # scale between the lowest and the highest threshold has its entry (a few hundred KB)
        lo, hi = (int(self.thresholds[0]), int(self.thresholds[-1]) + 1) if self.thresholds.size else (0, 0)
        self._lut_range = (lo, hi)
        self._index_lut = (np.searchsorted(self.thresholds, np.arange(lo, hi + 1), side="left").astype(np.uint8)
                           if 0 < hi - lo <= _MAX_INDEX_LUT else None)
        med = model.entropy_bottleneck._get_medians().detach().cpu().numpy().reshape(-1).astype(np.float64)
        self.z_medians = np.rint(med * float(1 << ACT_BITS)).astype(np.int64)
        self.z_medians_float = torch.from_numpy(med.astype(np.float32)).reshape(1, -1, 1, 1)
        self.h_s = IntegerHyperDecoder(model.h_s)
        # a copy on the CPU in plain NCHW whatever the caller did to the model (moved it to a GPU,
        # made it channels_last): the same arithmetic in this process and in a fresh one
        self.h_a = copy.deepcopy(model.h_a).to("cpu", memory_format=torch.contiguous_format).eval()
        self.M = int(model.g_a[-1].out_channels)
        self.N = self.z.tables.channels

    def side_information(self, y_fp: np.ndarray) -> np.ndarray:
        """Integer ``ẑ`` symbols (relative to the medians) of one ``(M, h, w)`` fixed-point chunk."""
        import torch

        y = torch.from_numpy(np.asarray(y_fp, np.float32) / float(1 << self.act_bits))[None]
        with torch.inference_mode():
            z = self.h_a(y)
        return torch.round(z - self.z_medians_float)[0].to(torch.int32).numpy()

    def parameters(self, z_sym: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Table index and fixed-point mean of every latent, from the ``ẑ`` symbols (exact)."""
        z_fp = (z_sym.astype(np.int64) << self.act_bits) + self.z_medians[:, None, None]
        out = self.h_s(z_fp[None])[0]
        M = out.shape[0] // 2
        return self.table_index(out[:M]), out[M:]

    def table_index(self, scale_fp: np.ndarray) -> np.ndarray:
        """Gaussian table of each fixed-point scale: the number of thresholds below it (uint8)."""
        if self._index_lut is None:
            return np.searchsorted(self.thresholds, scale_fp, side="left").astype(np.uint8)
        lo, hi = self._lut_range
        # a scale at or below the lowest threshold takes table 0, one above the highest the last
        offset = np.clip(scale_fp, lo, hi)
        offset -= lo
        return self._index_lut[offset]

    def symbols(self, y_fp: np.ndarray) -> HyperSymbols:
        """What coding one ``(M, h, w)`` chunk of fixed-point latents ``round(y · 2^A)`` writes."""
        y_fp = np.asarray(y_fp).astype(np.int64)
        if y_fp.ndim != 3 or y_fp.shape[1] % HYPER_BLOCK or y_fp.shape[2] % HYPER_BLOCK:
            raise CodecError(f"hyperprior chunk shape {y_fp.shape}: sides must be multiples of {HYPER_BLOCK}")
        z_sym = self.side_information(y_fp)
        index, mean = self.parameters(z_sym)
        if index.shape != y_fp.shape:
            raise CodecError(f"chunk has {y_fp.shape[0]} channels, the model predicts {index.shape[0]}")
        half = 1 << (self.act_bits - 1)
        return HyperSymbols(z_sym, ((y_fp - mean + half) >> self.act_bits), index)


@dataclass(frozen=True)
class HyperSymbols:
    """One hyperprior chunk's coding decisions, all that :func:`code_hyper_symbols` needs:
    ``z`` the side information's symbols ``(N, h/4, w/4)`` (relative to the medians), ``y`` every
    latent's symbol ``round((y − μ) / 2^A)`` ``(M, h, w)``, ``index`` its Gaussian table
    ``(M, h, w)``, uint8. :meth:`HyperEntropyModel.symbols` makes them on the CPU;
    :class:`wsicodec.engine.DeviceHyperSymbols` makes them in batches on the analysis's device."""

    z: np.ndarray
    y: np.ndarray
    index: np.ndarray


def _by_table(index: np.ndarray, tables: int) -> tuple[np.ndarray, np.ndarray]:
    """The coding order of a chunk's latents (grouped by table, raster order within a table) and
    how many use each table (``index`` uint8: numpy's stable sort is then a radix sort)."""
    flat = index.ravel().astype(np.uint8, copy=False)
    return np.argsort(flat, kind="stable"), np.bincount(flat, minlength=tables)


def encode_hyper_chunk(y_fp: np.ndarray, hm: HyperEntropyModel) -> bytes:
    """Entropy-code one ``(M, h, w)`` chunk of fixed-point latents ``round(y · 2^A)``: side
    information first, then every latent as ``round((y − μ) / 2^A)`` with its scale's table."""
    return code_hyper_symbols(hm.symbols(y_fp), hm)


def code_hyper_symbols(s: HyperSymbols, hm: HyperEntropyModel) -> bytes:
    """The chunk bytes of :class:`HyperSymbols` (docs/format.md, "Hyperprior chunks")."""
    import constriction

    M, h, w = s.y.shape
    b = HYPER_BLOCK
    if s.index.shape != s.y.shape or s.z.shape != (hm.N, h // b, w // b) or M != hm.M or h % b or w % b:
        raise CodecError(f"hyperprior symbols of shapes {s.y.shape} / {s.index.shape} / {s.z.shape} "
                         f"do not fit the model ({hm.M}+{hm.N} channels)")
    z_part = encode_chunk(s.z, hm.z)
    order, counts = _by_table(s.index, hm.y.tables.channels)
    flat = s.y.ravel()[order]
    enc = constriction.stream.queue.RangeEncoder()
    escapes: list[np.ndarray] = []
    tables = np.flatnonzero(counts)
    _encode_runs(enc, flat, hm.y, tables, counts[tables], escapes)
    esc_arr, words = _pack_stream(enc, escapes)
    head = _HYPER_HEADER.pack(HYPER_MAGIC, CHUNK_VERSION, 0, M, h, w, hm.N, len(z_part), esc_arr.size)
    return head + z_part + _HYPER_TAIL.pack(words.size) + esc_arr.tobytes() + words.tobytes()


@dataclass(frozen=True)
class HyperChunk:
    """A hyperprior chunk read as far as its side information: ``shape`` ``(M, h, w)`` of its
    latents, ``z`` the side-information symbols ``(N, h/4, w/4)`` (int32, relative to the medians),
    and the latents' range-coded stream (``escapes``, ``words``). What is left to decode the
    latents is each one's table and mean (:meth:`HyperEntropyModel.parameters` on the CPU, or
    :meth:`wsicodec.engine.DeviceHyperSymbols.parameters` in batches on a GPU), then
    :func:`decode_hyper_latents`."""

    shape: tuple[int, int, int]
    z: np.ndarray
    escapes: np.ndarray
    words: np.ndarray


def read_hyper_chunk(data: bytes | memoryview, hm: HyperEntropyModel,
                     expect_shape: Sequence[int] | None = None, within: bool = False) -> HyperChunk:
    """Check one hyperprior chunk's header and decode its side information; raises
    :class:`CodecError`. ``expect_shape``: the shape it must have (``within``: at most)."""
    buf = bytes(data)
    if len(buf) < _HYPER_HEADER.size + _HYPER_TAIL.size:
        raise CodecError(f"latent chunk truncated ({len(buf)} bytes)")
    magic, version, flags, M, h, w, N, z_len, n_esc = _HYPER_HEADER.unpack_from(buf)
    if magic != HYPER_MAGIC:
        raise CodecError("not a wsicodec hyperprior latent chunk (bad magic)")
    if version != CHUNK_VERSION or flags != 0:
        raise CodecError(f"unsupported latent chunk version {version} / flags {flags}")
    if N != hm.N or M != hm.M:
        raise CodecError(f"chunk has {M}+{N} channels, the model {hm.M}+{hm.N}")
    _check_chunk_shape((M, h, w), expect_shape, within)
    n = M * h * w
    if n > MAX_CHUNK_ELEMENTS or n_esc > n or h % HYPER_BLOCK or w % HYPER_BLOCK:
        raise CodecError(f"chunk size fields out of range ({M}x{h}x{w}, {n_esc} escapes)")
    z_end = _HYPER_HEADER.size + z_len
    if z_end + _HYPER_TAIL.size > len(buf):
        raise CodecError("latent chunk truncated (side information)")
    z_sym = decode_chunk(buf[_HYPER_HEADER.size : z_end], hm.z, (N, h // HYPER_BLOCK, w // HYPER_BLOCK))
    (n_words,) = _HYPER_TAIL.unpack_from(buf, z_end)
    body = z_end + _HYPER_TAIL.size
    if len(buf) != body + 4 * n_esc + 4 * n_words:
        raise CodecError(f"latent chunk length {len(buf)} does not match its header")
    esc = np.frombuffer(buf, "<i4", n_esc, body)
    words = np.frombuffer(buf, "<u4", n_words, body + 4 * n_esc).astype(np.uint32)
    return HyperChunk((M, h, w), z_sym, esc, words)


def decode_hyper_latents(chunk: HyperChunk, index: np.ndarray, mean: np.ndarray,
                         hm: HyperEntropyModel) -> np.ndarray:
    """The latents of a :class:`HyperChunk` as ``int32 (M, h, w)`` = ``ŷ · 2^A``, given every
    latent's table ``index`` and fixed-point ``mean`` (both ``(M, h, w)``, derived exactly from
    ``chunk.z``); raises :class:`CodecError`."""
    import constriction

    M, h, w = chunk.shape
    if index.shape != chunk.shape or mean.shape != chunk.shape:
        raise CodecError(f"tables of shape {index.shape} / {mean.shape} for a chunk of shape {chunk.shape}")
    order, counts = _by_table(index, hm.y.tables.channels)
    try:
        dec = constriction.stream.queue.RangeDecoder(chunk.words)
        tables = np.flatnonzero(counts)
        flat, used = _decode_runs(dec, hm.y, tables, counts[tables], chunk.escapes)
    except CodecError:
        raise
    except Exception as e:
        raise CodecError(f"corrupt latent chunk ({e})") from None
    if used != chunk.escapes.size:
        raise CodecError("latent chunk has unused escaped values")
    sym = np.empty(M * h * w, np.int64)
    sym[order] = flat
    out = (sym.reshape(M, h, w) << hm.act_bits) + mean
    if np.abs(out).max(initial=0) >= 1 << 31:
        raise CodecError("decoded latents overflow int32")
    return out.astype(np.int32)


def decode_hyper_chunk(data: bytes | memoryview, hm: HyperEntropyModel,
                       expect_shape: Sequence[int] | None = None, within: bool = False) -> np.ndarray:
    """Decode one hyperprior chunk to ``int32 (M, h, w)`` = ``ŷ · 2^A``; raises :class:`CodecError`.
    ``expect_shape``: the shape it must have (``within``: at most)."""
    chunk = read_hyper_chunk(data, hm, expect_shape, within)
    index, mean = hm.parameters(chunk.z)
    return decode_hyper_latents(chunk, index, mean, hm)


_HYPER_MODELS: dict[str, HyperEntropyModel] = {}


def hyper_entropy_model(model_ref: dict[str, Any], model: Any = None) -> HyperEntropyModel:
    """The entropy model of the shipped model ``{"name", "sha256"}`` (cached per sha256); built
    from ``model`` when given (the caller verified it), else loaded and verified by name + sha256."""
    sha = str(model_ref.get("sha256", ""))
    hm = _HYPER_MODELS.get(sha)
    if hm is None:
        if model is None:
            from wsicodec.models import ModelError, load_model

            try:
                model, _ = load_model(str(model_ref.get("name")), expect_sha256=sha)
            except ModelError as e:
                raise CodecError(f"cannot decode hyperprior latents: {e}") from None
        hm = _HYPER_MODELS.setdefault(sha, HyperEntropyModel(model))
    return hm


class HyperLatentCodec(_ChunkCodec):
    """numcodecs codec for ``(M, h, w)`` fixed-point latent chunks of a hyperprior model. Lossy by
    design: encoding ``round(y · 2^A)`` stores the quantized ``ŷ`` that decoding returns."""

    codec_id = HYPER_CODEC_ID

    def __init__(self, model: dict[str, Any], act_bits: int = 10, shape: Sequence[int] | None = None,
                 dtype: str = "int32"):
        from wsicodec.models.integer import ACT_BITS

        if int(act_bits) != ACT_BITS:
            raise CodecError(f"hyperprior latents in units of 2^-{act_bits}; this wsicodec reads 2^-{ACT_BITS}")
        super().__init__(shape, dtype)
        self.model = {"name": str(model["name"]), "sha256": str(model["sha256"])}
        self.act_bits = int(act_bits)

    @property
    def entropy_model(self) -> HyperEntropyModel:
        return hyper_entropy_model(self.model)

    def _config(self) -> dict[str, Any]:
        return {"model": self.model, "act_bits": self.act_bits}

    def _encode(self, arr: np.ndarray) -> bytes:
        return encode_hyper_chunk(arr, self.entropy_model)

    def encode_symbols(self, symbols: HyperSymbols) -> bytes:
        """The bytes of a chunk whose :class:`HyperSymbols` were made elsewhere (on a GPU)."""
        _check_chunk_shape(symbols.y.shape, self.shape, within=True)
        return code_hyper_symbols(symbols, self.entropy_model)

    def _decode(self, buf: bytes | memoryview) -> np.ndarray:
        return decode_hyper_chunk(buf, self.entropy_model, self.shape, within=True)


# -- zarr v3 adapter ---------------------------------------------------------------------------
from zarr.abc.codec import ArrayBytesCodec  # noqa: E402


class _ZarrChunkCodec(ArrayBytesCodec):
    """zarr v3 array->bytes codec delegating each chunk to a numcodecs codec (one per chunk shape)."""

    is_fixed_size = False
    codec_name = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        if data.get("name") != cls.codec_name:
            raise CodecError(f"expected codec {cls.codec_name!r}, got {data.get('name')!r}")
        return cls(**data.get("configuration", {}))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.codec_name, "configuration": self.configuration()}

    def configuration(self) -> dict[str, Any]:
        raise NotImplementedError

    def _make(self, shape: tuple[int, ...], dtype: np.dtype) -> Codec:
        raise NotImplementedError

    def _numcodec(self, shape: Sequence[int], dtype: np.dtype) -> Codec:
        cache = self.__dict__.setdefault("_cache", {})
        key = (tuple(shape), np.dtype(dtype).str)
        if key not in cache:
            cache[key] = self._make(tuple(shape), np.dtype(dtype))
        return cache[key]

    async def _decode_single(self, chunk_bytes, chunk_spec):
        import asyncio

        codec = self._numcodec(chunk_spec.shape, chunk_spec.dtype.to_native_dtype())
        arr = await asyncio.to_thread(codec.decode, chunk_bytes.to_bytes())
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(arr)

    async def _encode_single(self, chunk_array, chunk_spec):
        import asyncio

        codec = self._numcodec(chunk_spec.shape, chunk_spec.dtype.to_native_dtype())
        data = await asyncio.to_thread(codec.encode, chunk_array.as_ndarray_like())
        return chunk_spec.prototype.buffer.from_bytes(data)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec) -> int:
        raise NotImplementedError


@dataclass(frozen=True)
class ZarrLatentCodec(_ZarrChunkCodec):
    """zarr v3 codec ``wsicodec.latents`` (factorized entropy model), see :class:`LatentCodec`."""

    codec_name = CODEC_ID
    tables: dict = None  # type: ignore[assignment]

    def __init__(self, *, tables: dict[str, Any]) -> None:
        object.__setattr__(self, "tables", tables)
        EntropyTables.from_config(tables)  # validate early

    def configuration(self) -> dict[str, Any]:
        return {"tables": self.tables}

    def _make(self, shape, dtype) -> Codec:
        codec = LatentCodec(self.tables, shape, dtype.str)
        cache = self.__dict__.get("_cache")
        if cache:  # share the constriction models between shapes
            codec._models = next(iter(cache.values())).models
        return codec


@dataclass(frozen=True)
class ZarrHyperLatentCodec(_ZarrChunkCodec):
    """zarr v3 codec ``wsicodec.hyperlatents`` (mean-scale hyperprior), see :class:`HyperLatentCodec`."""

    codec_name = HYPER_CODEC_ID
    model: dict = None  # type: ignore[assignment]
    act_bits: int = 10

    def __init__(self, *, model: dict[str, Any], act_bits: int = 10) -> None:
        object.__setattr__(self, "model", {"name": str(model["name"]), "sha256": str(model["sha256"])})
        object.__setattr__(self, "act_bits", int(act_bits))

    def configuration(self) -> dict[str, Any]:
        return {"model": self.model, "act_bits": self.act_bits}

    def _make(self, shape, dtype) -> Codec:
        return HyperLatentCodec(self.model, self.act_bits, shape, dtype.str)


#: the stored latent dtype of each entropy model kind (docs/format.md)
LATENT_DTYPE = {"factorized": "int16", "gaussian-mean-scale": "int32"}


def store_codec(model: Any, card: Any) -> _ZarrChunkCodec:
    """The zarr codec that entropy-codes ``model``'s latents in a store (``card``: its model card,
    sha256 verified): the factorized tables themselves, or a reference to the hyperprior model."""
    if card.spec.entropy_model == "factorized":
        return ZarrLatentCodec(tables=EntropyTables.from_entropy_bottleneck(model.entropy_bottleneck).to_config())
    ref = {"name": card.name, "sha256": card.sha256}
    hyper_entropy_model(ref, model)  # this process's verified model serves the codec
    return ZarrHyperLatentCodec(model=ref)


def register() -> None:
    """Make both codecs known in this process (entry points do the same for fresh processes)."""
    import numcodecs
    from zarr.registry import register_codec

    numcodecs.register_codec(LatentCodec)
    numcodecs.register_codec(HyperLatentCodec)
    register_codec(CODEC_ID, ZarrLatentCodec)
    register_codec(HYPER_CODEC_ID, ZarrHyperLatentCodec)


register()
