"""Latent chunk files: where each tile's chunk lives, its CRC-32C, and writing chunks straight into
their files."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from wsicodec.codec import HyperSymbols
from wsicodec.errors import StoreError, first_line
from wsicodec.store.format import FORMAT_VERSION, read_store_meta, stored_chunk_shape

__all__ = ["LatentChunkFiles", "array_chunk_file", "chunk_crc_ok", "chunk_file"]


def chunk_file(root: Path, tx: int, ty: int) -> Path:
    """The file of tile ``(tx, ty)``'s latent chunk (zarr v3 default chunk keys, ``/``)."""
    return Path(root) / "latents" / "c" / "0" / str(ty) / str(tx)


def array_chunk_file(root: Path, latents: Any, tx: int, ty: int) -> Path:
    """The file of tile ``(tx, ty)``'s latent chunk under the chunk key encoding the ``latents``
    array (a zarr array) records: a store that zarr rewrote may use another than wsicodec's."""
    return Path(root) / "latents" / latents.metadata.encode_chunk_key((0, ty, tx))


def chunk_crc_ok(data: bytes) -> bool:
    """Whether a stored chunk ends with the CRC-32C of the rest (zarr's ``crc32c`` codec)."""
    import google_crc32c

    return len(data) > 4 and int(google_crc32c.value(data[:-4])).to_bytes(4, "little") == data[-4:]


class LatentChunkFiles:
    """Writes the latent chunks of the (partial) store at ``path`` straight into their files, each at
    the shape its layout codes (:func:`~wsicodec.store.format.stored_chunk_shape`):
    the array's own codec, then the CRC-32C (little-endian), the bytes zarr writes for the same
    chunk (docs/format.md), atomically (a temporary file named like zarr's, then a rename).
    Written here rather than through zarr because zarr's per-chunk write goes through its async
    machinery and an event loop thread, a cost per chunk that coding in worker processes would
    pay on every tile (``benchmarks/host_ceiling.py --parts`` measures both)."""

    def __init__(self, path: Path):
        import zarr
        from zarr.codecs import Crc32cCodec

        self.root = Path(path)
        try:
            a = zarr.open_array(str(self.root / "latents"), mode="r")
            codecs = a.metadata.codecs
        except Exception as e:
            raise StoreError(f"{self.root}: cannot open the store's latents ({first_line(e)})") from None
        if len(codecs) != 2 or not isinstance(codecs[1], Crc32cCodec) or not hasattr(codecs[0], "_numcodec"):
            raise StoreError(f"{self.root}: the latent array's codecs are not a wsicodec codec + crc32c")
        self.chunk_shape = tuple(int(c) for c in a.chunks)
        self.array_shape = tuple(int(n) for n in a.shape)
        meta = read_store_meta(self.root) or {}
        self.version = meta.get("format_version", FORMAT_VERSION)
        self.dtype = np.dtype(a.dtype)
        self.codec = codecs[0]._numcodec(self.chunk_shape, self.dtype)
        self._dirs: set[Path] = set()

    def encode(self, tx: int, ty: int, values: np.ndarray | HyperSymbols) -> bytes:
        """Tile ``(tx, ty)``'s stored chunk bytes (``values``: any integer dtype, range-checked; or
        a hyperprior chunk's :class:`~wsicodec.codec.HyperSymbols`)."""
        import google_crc32c

        if isinstance(values, HyperSymbols):
            if not hasattr(self.codec, "encode_symbols"):
                raise StoreError(f"{self.root}: hyperprior symbols for a store of another entropy model")
            data = self.codec.encode_symbols(values)
        else:
            values = np.asarray(values)
            shape = stored_chunk_shape(self.array_shape, self.chunk_shape[1], tx, ty, self.version)
            if values.shape != shape:
                raise StoreError(f"{self.root}: latent chunk of shape {values.shape} for tile ({tx}, {ty}), "
                                 f"the layout's is {shape}")
            if values.dtype != self.dtype:
                info = np.iinfo(self.dtype)
                if values.size and (values.max() > info.max or values.min() < info.min):
                    raise StoreError(f"{self.root}: latent values overflow {self.dtype} at tile ({tx}, {ty})")
                values = values.astype(self.dtype)
            data = self.codec.encode(np.ascontiguousarray(values))
        return data + int(google_crc32c.value(data)).to_bytes(4, "little")

    def write(self, tx: int, ty: int, values: np.ndarray | HyperSymbols) -> None:
        """Code and write tile ``(tx, ty)``'s chunk; the file appears whole or not at all."""
        data = self.encode(tx, ty, values)
        f = chunk_file(self.root, tx, ty)
        if f.parent not in self._dirs:
            f.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(f.parent)
        tmp = f.with_name(f"{f.name}.{uuid.uuid4().hex}.partial")  # cleared by a resume (paths.ZARR_TMP)
        try:
            with open(tmp, "wb") as out:
                out.write(data)
            os.replace(tmp, f)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

