"""The store: a Zarr v3 group of entropy-coded latents plus everything needed to give the slide
back (``docs/format.md``), its writer, and :class:`WsiStore`, an OpenSlide-like reader.

One module per job: :mod:`~wsicodec.store.format` (format constants, metadata and array checks),
:mod:`~wsicodec.store.paths` (partial names, output-path checks, sizes),
:mod:`~wsicodec.store.chunks` (latent chunk files and their CRC-32C),
:mod:`~wsicodec.store.writer` (writing and resuming), :mod:`~wsicodec.store.reader` (reading),
:mod:`~wsicodec.store.upload` (a finished store to an fsspec URL).

Layout::

    <name>.zarr/
      zarr.json            group; attributes["wsicodec"] holds the metadata
      latents/             one chunk (M, tile/16, tile/16) per tile, codecs: wsicodec.latents or
                           wsicodec.hyperlatents (entropy coder + frozen tables), crc32c
      tiles/               uint8 (tiles_y, tiles_x): 0 = not written, 1 = coded, 2 = glass
      associated/<name>/   label / macro: the source's JPEG bytes (as a TIFF) or lossless WebP,
                           a one-chunk uint8 array + crc32c (version 3; before: raw pixels)
"""
from wsicodec.errors import StoreError
from wsicodec.pyramid import box_reduce, pyramid_downsamples
from wsicodec.store.chunks import LatentChunkFiles, array_chunk_file, chunk_crc_ok, chunk_file
from wsicodec.store.format import (
    ENCODED_ASSOCIATED,
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_ASSOCIATED_PIXELS,
    MAX_SIDE,
    READ_VERSIONS,
    TILE_CODED,
    TILE_GLASS,
    TILE_MISSING,
    check_arrays,
    check_meta,
    entropy_model,
    format_version,
    json_roundtrip,
    latent_array_shape,
    now_iso,
    read_store_meta,
    stored_chunk_shape,
)
from wsicodec.store.paths import check_output_path, is_partial_name, partial_path, store_size
from wsicodec.store.reader import WsiStore, associated_pixels, open_store
from wsicodec.store.writer import ChunkWriters, StoreWriter

__all__ = [
    "ENCODED_ASSOCIATED", "FORMAT_NAME", "FORMAT_VERSION", "MAX_ASSOCIATED_PIXELS", "MAX_SIDE", "READ_VERSIONS",
    "TILE_CODED", "TILE_GLASS", "TILE_MISSING", "ChunkWriters", "LatentChunkFiles", "StoreError", "StoreWriter",
    "WsiStore", "array_chunk_file", "associated_pixels", "box_reduce", "check_arrays", "check_meta",
    "check_output_path", "chunk_crc_ok", "chunk_file", "entropy_model", "format_version", "is_partial_name",
    "json_roundtrip", "latent_array_shape", "now_iso", "open_store", "partial_path", "pyramid_downsamples",
    "read_store_meta", "store_size", "stored_chunk_shape",
]
