"""The two daily jobs, as library functions the CLI wraps: ``compress`` (slide -> store) and
``decompress`` (store -> pyramidal TIFF)."""
from __future__ import annotations

import errno
import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsicodec import __version__
from wsicodec.associated import EncodedImage, encode, original_bytes
from wsicodec.codec import store_codec
from wsicodec.effort import Effort, effort_setting
from wsicodec.engine import Transforms, encode_tiles
from wsicodec.errors import QualityError, StoreError, first_line
from wsicodec.models import load_model
from wsicodec.models.rates import resolve, split_model_ref
from wsicodec.quality import Choice, choose
from wsicodec.refine import LatentRefiner
from wsicodec.remote_jobs import compress_urls, decompress_urls
from wsicodec.slide import SlideError, SlideSource, open_input
from wsicodec.store import (
    FORMAT_NAME,
    StoreWriter,
    WsiStore,
    check_output_path,
    format_version,
    latent_array_shape,
    now_iso,
    partial_path,
    read_store_meta,
    store_size,
    stored_chunk_shape,
)
from wsicodec.streaming import BackgroundSink
from wsicodec.tiling import TileGrid, default_tile, measure_glass
from wsicodec.writers import ChunkWriterProcesses


@dataclass
class CompressResult:
    output: Path
    tiles: int
    glass_tiles: int
    seconds: float          # from opening the input to the finished store (model loading excluded)
    bytes: int
    pixels: int
    resumed_tiles: int = 0
    latent_bytes: int = 0   # the coded image alone: the store less metadata and associated images
    content: dict[str, Any] | None = None  # what the input holds (wsicodec.content), as in the store
    choice: Choice | None = None  # the operating point and how it was chosen (default, quality, target, model)
    search_seconds: float = 0.0   # a target's search on the slide (not in ``seconds``)

    @property
    def bpp(self) -> float:
        return 8 * self.bytes / max(self.pixels, 1)

    @property
    def latent_bpp(self) -> float:
        return 8 * self.latent_bytes / max(self.pixels, 1)


@contextmanager
def _progress(enabled: bool, label: str, total: int) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    class Rate(TextColumn):
        def render(self, task):  # tiles per second
            speed = task.finished_speed or task.speed
            return f"{speed or 0:6.1f} tiles/s"

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  Rate(""), TimeRemainingColumn(), transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n=1: bar.advance(task, n)


@contextmanager
def _output_os_errors(path: Path, when_full: str = "") -> Iterator[None]:
    """An operating-system error while writing an output (no space left, no permission, ...) is
    the user's to fix: a :class:`StoreError` naming the file and the problem (``when_full``: what
    to add when the disk is full)."""
    try:
        yield
    except OSError as e:
        if isinstance(e, (BrokenPipeError, ConnectionError, TimeoutError)):
            raise
        hint = f" ({when_full})" if when_full and e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise StoreError(f"{e.filename or path}: {e.strerror or first_line(e)}{hint}") from e


def encode_associated(src: SlideSource, input_path: Path, images: dict[str, np.ndarray]) -> dict[str, EncodedImage]:
    """Each associated image as the store keeps it: the source's own compressed bytes where it has
    them, else coded losslessly (:mod:`wsicodec.associated`)."""
    return {name: original_bytes(input_path, src.vendor, name) or encode(pixels) for name, pixels in images.items()}


def canvas_reader(src: SlideSource, glass: tuple[int, int, int]) -> Callable[[int, int, int, int], np.ndarray]:
    """Reads canvas pixels: level 0 inside the slide, the glass colour beyond it."""
    W, H = src.dimensions

    def read(x: int, y: int, w: int, h: int) -> np.ndarray:
        if x >= 0 and y >= 0 and x + w <= W and y + h <= H:
            return src.read_rgb(x, y, w, h)
        out = np.empty((h, w, 3), np.uint8)
        out[:] = glass
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = src.read_rgb(x0, y0, x1 - x0, y1 - y0)
        return out

    return read


def host_split(cuda: bool, cores: int | None = None) -> tuple[int, int]:
    """The default ``(writer processes, reading threads)`` for ``cores`` host cores (default: all).
    On CUDA the host's cores read (decoding the slide's JPEG tiles is its largest cost) and code:
    a quarter code in worker processes, three quarters read (the best of the splits measured,
    docs/performance.md "GPU"). On the CPU the network takes the cores and the writer threads
    code in-process: one reading thread keeps up with about three cores running the network,
    so a quarter of the cores read."""
    cores = cores or os.cpu_count() or 1
    if cuda:
        return max(1, cores // 4), max(2, 3 * cores // 4)
    return 0, max(1, cores // 4)


def write_tiles(tiles: Iterable[tuple[int, int, np.ndarray | None]], writer: StoreWriter, threads: int,
                batch_size: int, grouped: bool, advance: Callable[[int], None] = lambda n=1: None) -> None:
    """Hand each ``(tx, ty, latents)`` to ``writer`` on ``threads`` threads while ``tiles`` (the
    network) goes on, at most about two network batches in flight. ``grouped`` (worker
    processes): ``batch_size / threads`` tiles per call, one frame to one worker, so that each
    worker gets its share of a batch at once and the parent wakes once per group, not per tile."""
    group = max(1, batch_size // max(threads, 1)) if grouped else 1

    def write(items: list) -> None:
        writer.write_tiles(items)
        advance(len(items))

    with BackgroundSink(write, threads, depth=(2 * batch_size) // group + threads) as sink:
        items: list = []
        for item in tiles:
            items.append(item)
            if len(items) >= group:
                sink.put(items)
                items = []
        if items:
            sink.put(items)


def _refiner(transforms: Transforms, effort: Effort, meta: dict[str, Any], grid: TileGrid) -> LatentRefiner:
    """The latent search of a higher effort for the store described by ``meta`` (its background
    latents complete edge chunks; its format version sets their shapes)."""
    shape = latent_array_shape(grid, transforms.card.latent_channels, meta["model"]["entropy_model"],
                               meta["format_version"])

    def chunk_shape(tx: int, ty: int) -> tuple[int, int]:
        return stored_chunk_shape(shape, grid.chunk, tx, ty, meta["format_version"])[1:]

    return LatentRefiner(transforms, effort, meta["background"]["latents"], chunk_shape)


def check_paths(input_path: Path, output: Path, overwrite: bool) -> None:
    """Refuse outputs that would write into or over the input, or through a symbolic link."""
    if output.is_symlink():
        raise StoreError(f"{output}: is a symbolic link; refusing to write through it (give the real path)")
    src, out = input_path.resolve(), output.resolve()
    if out == src:
        raise StoreError(f"{output}: refusing to write over the input")
    if src.is_relative_to(out):
        raise StoreError(f"{output}: the input {input_path} is inside it; refusing to replace it")
    if input_path.is_dir() and out.is_relative_to(src):
        raise StoreError(f"{output}: is inside the input folder {input_path}; refusing to write into the input")
    check_output_path(output, overwrite)


#: the glass-detection rule, as the store records it
GLASS_RULE = "tile is glass when <=0.1% of its pixels differ by >20 levels"
#: why a dark-background image is coded without glass detection
DARK_GLASS_OFF = ("off: dark background (fluorescence or dark-field), where faint signal lies within the "
                  "glass tolerance of the background; every tile is coded")


def store_metadata(src: SlideSource, input_path: Path, card, transforms: Transforms, glass: tuple[int, int, int],
                   grid: TileGrid, skip_glass: bool, deidentify: bool, content: dict[str, Any] | None = None,
                   glass_detection: str | None = None, quality: dict[str, Any] | None = None,
                   effort: str = "standard") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The group metadata of a new store (docs/format.md) and the associated images to keep (the
    thumbnail is not kept: a reader makes it from the store's pyramid). ``content``: what the input
    holds (:meth:`wsicodec.content.Content.to_meta`); ``glass_detection``: the recorded detection
    rule when it is not the default one; ``quality``: how the operating point was chosen
    (:class:`~wsicodec.quality.Choice`'s record); ``effort``: the encoder's effort (recorded only)."""
    W, H = src.dimensions
    props, assoc = src.properties, src.associated_images
    source: dict[str, Any] = {"file_name": input_path.name, "file_size": src.file_size, "vendor": src.vendor}
    deid: dict[str, Any] | None = None
    if deidentify:
        from wsicodec.deidentify import deidentify as scrub

        props, assoc, removed, dropped = scrub(props, assoc)
        source["file_name"] = None
        deid = {"removed_properties": removed, "removed_associated": dropped, "removed_source": ["file_name"]}
    assoc = {name: pixels for name, pixels in assoc.items() if name != "thumbnail"}
    meta: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": format_version(card.spec.entropy_model, associated=bool(assoc),
                                         variable_rate=card.spec.variable_rate, grid=grid),
        "wsicodec_version": __version__,
        "created": now_iso(),
        "model": {"name": card.name, "sha256": card.sha256, "architecture": card.architecture,
                  "params": card.params, "entropy_model": card.spec.entropy_model},
        "source": source,
        "level0": {"width": W, "height": H}, "tile_size": grid.tile, "stride": grid.stride,
        "mpp": list(src.mpp), "objective_power": src.objective_power, "vendor": src.vendor,
        "properties": props,
        "background": {"colour": list(glass), "latents": transforms.background_latents(glass).tolist(),
                       "detection": glass_detection or (GLASS_RULE if skip_glass else "off")},
        "associated": [], "deidentified": bool(deidentify),
        # provenance: which arithmetic chose the latents (a resumed run records its own)
        "encoder": {"device": transforms.device.type, "precision": transforms.precision, "effort": effort},
    }
    if transforms.rate is not None:  # a variable-rate model: which of its operating points (format 4)
        meta["operating_point"] = transforms.rate.to_meta()
    if deid is not None:
        meta["deidentification"] = deid
    if content is not None:
        meta["content"] = content
    if quality is not None:
        meta["quality"] = quality
    return meta, assoc


def resumed_choice(output: Path, target: Any, tiles: int) -> Choice | None:
    """The target search recorded in the unfinished store beside ``output``, if it searched the
    same target on as many tiles: a resumed run keeps it rather than searching again."""
    from wsicodec.quality import OperatingPoint

    old = read_store_meta(partial_path(output))
    rec = old.get("quality") if old else None
    if not (isinstance(rec, dict) and rec.get("chosen_by") == "target"
            and rec.get("target") == {"metric": target.metric, "value": target.value}
            and len(rec.get("sample", {}).get("tiles", [])) <= tiles):
        return None
    try:
        point = OperatingPoint.from_dict(rec["operating_point"])
    except (KeyError, TypeError, ValueError):
        return None
    return Choice(point, rec, f"target {target}: {point}, as chosen by the interrupted run")


@compress_urls  # input / output may be fsspec URLs (wsicodec.remote)
def compress(input_path: str | Path, output: str | Path, model: str | None = None, device: str = "auto",
             batch_size: int | None = None, tile: int | None = None, overwrite: bool = False, skip_glass: bool = True,
             progress: bool = False, model_dir: Path | None = None, resume: bool = False,
             deidentify: bool = False, io_threads: int = 2, writer_processes: int | None = None,
             read_threads: int | None = None, precision: str = "auto",
             allow_non_he: bool = False, quality: int | None = None, target: str | None = None,
             target_tiles: int | None = None, on_choice: Callable[[Choice], None] | None = None,
             effort: str = "standard") -> CompressResult:
    """Compress level 0 of a slide or image into a store at ``output``.

    The operating point: ``model`` (a shipped model, for experts; a variable-rate model takes an
    operating point as ``NAME@P``, ``P`` a trained point 0 … K−1 or a number between two, else its
    card's default point, :mod:`wsicodec.models.rates`), ``quality`` (1–100, at least
    JPEG's at that quality on the calibration set, :mod:`wsicodec.quality`), ``target``
    (``"ms_ssim=0.99"``, ``"psnr=36"``: the cheapest that reaches it on ``target_tiles`` sampled
    tissue tiles of this slide, :mod:`wsicodec.target`), or none of them: the default. How it was
    chosen is recorded in the store (``quality``), handed to ``on_choice`` as soon as it is made
    and returned (``CompressResult.choice``).

    ``tile``: the tile (= chunk) side in level-0 pixels; None: :func:`~wsicodec.tiling.default_tile` (512, or one
    tile of the image's own size for an image smaller than that).

    ``resume``: continue an interrupted run from the unfinished store (``.<name>.partial``) left
    beside ``output`` (without it, such a store is discarded and the run starts over); the result
    is the same store an uninterrupted run writes. ``deidentify``: drop the label and macro
    images and the identifying metadata (see :mod:`wsicodec.deidentify`). ``io_threads``: threads
    that entropy-code and write tiles while the network runs; ``writer_processes``: worker
    processes that do the entropy coding and writing instead (None: on CUDA a quarter of the
    cores, else none); ``read_threads``: threads reading the slide (None: on CUDA three quarters
    of the cores, else a quarter); see :func:`host_split`.
    The store's bytes depend on none of these. ``precision``: the analysis's arithmetic (``"auto"``:
    fp16 on CUDA, bf16 on a CPU with native bf16, else fp32; see :class:`~wsicodec.engine.Transforms`).
    ``effort``: ``"standard"`` (the analysis's latents), ``"high"`` or ``"max"`` (each tile's
    latents optimised for the model's rate-distortion objective, :mod:`wsicodec.refine`: fewer
    bytes at the same quality, encoding many times slower; a hyperprior model only).

    Before anything is written the input is sorted by :func:`wsicodec.content.assess`: more than
    8 bits, more than one plane or other than 1 or 3 channels raise :class:`SlideError`;
    single-channel and dark-background (fluorescence, dark-field) images too, unless
    ``allow_non_he``; a dark-background image is then coded without glass detection. Brightfield
    stains other than H&E are coded, with a note in the store's ``content`` metadata."""
    input_path, output = Path(input_path), Path(output)
    if sum(x is not None for x in (model, quality, target)) > 1:
        raise QualityError("give one of --model, --quality and --target")
    check_paths(input_path, output, overwrite)
    search = effort_setting(effort)

    def load(choice: Choice) -> tuple[Any, Any, Transforms]:
        name, position = split_model_ref(choice.point.model)  # NAME@P: a variable-rate model's point
        if choice.point.rate is not None:
            position = choice.point.rate
        net, card = load_model(name, model_dir)
        if tile is not None and tile % (card.stride * card.spec.chunk_multiple):
            raise StoreError(f"{output}: tile size {tile} must be a multiple of "
                             f"{card.stride * card.spec.chunk_multiple} for model {card.name}")
        return net, card, Transforms(net, card, device, batch_size, precision=precision,
                                     rate=resolve(net, card, position))

    search_seconds = 0.0
    if target is None:
        choice = choose(model, quality, model_dir)
        net, card, transforms = load(choice)
        if on_choice:
            on_choice(choice)
    else:
        from wsicodec.target import SAMPLE_TILES, parse_target

        target = parse_target(target) if isinstance(target, str) else target
        target_tiles = target_tiles or SAMPLE_TILES
    t0 = time.time()  # the slide's own time: without the one-off model load and a target's search
    with open_input(input_path) as src, \
            _output_os_errors(output, "the tiles written are kept: free some space, then run again with --resume"):
        from wsicodec.content import assess

        W, H = src.dimensions
        tile = tile or default_tile(W, H)
        thumb = None if src.unreadable else src.thumbnail(1024)
        content = assess(src, thumb)
        refusal = content.refusal(allow_non_he)
        if refusal:
            raise SlideError(input_path, refusal)
        glass = measure_glass(thumb, dark=content.dark_background)
        detection = DARK_GLASS_OFF if content.dark_background and skip_glass else None
        skip_glass = skip_glass and not content.dark_background
        content_meta = content.to_meta(allowed=allow_non_he)
        read = canvas_reader(src, glass)
        if target is not None:
            from wsicodec.target import choose_target

            choice = resumed_choice(output, target, target_tiles) if resume else None
            if choice is None:
                choice = choose_target(src, read, glass, target, tile, tiles=target_tiles, device=device,
                                       precision=precision, model_dir=model_dir, progress=progress)
            net, card, transforms = load(choice)
            if on_choice:
                on_choice(choice)
            search_seconds = time.time() - t0
            t0 = time.time()
        default_processes, default_reads = host_split(transforms.cuda)
        writer_processes = max(0, int(default_processes if writer_processes is None else writer_processes))
        read_threads = default_reads if read_threads is None else read_threads
        codec = store_codec(net, card)
        grid = TileGrid(W, H, tile, card.stride)
        meta, assoc = store_metadata(src, input_path, card, transforms, glass, grid, skip_glass, deidentify,
                                     content=content_meta, glass_detection=detection, quality=choice.record,
                                     effort=effort)
        refiner = _refiner(transforms, search, meta, grid) if search.steps else None
        chunk_writers = None
        if writer_processes > 0:  # entropy coding + chunk writes off this process's GIL
            chunk_writers = functools.partial(ChunkWriterProcesses, n=writer_processes, model_dir=model_dir)
        writer = StoreWriter(output, meta, grid, codec, card.latent_channels, overwrite, resume=resume,
                             chunk_writers=chunk_writers)
        try:
            writer.write_associated(encode_associated(src, input_path, assoc))
            writer.meta["associated"] = sorted(assoc)
            todo = [(tx, ty) for tx, ty in grid.reading_order() if writer.state[ty, tx] == 0]
            with _progress(progress, f"compress {input_path.name}", len(grid)) as advance:
                advance(len(grid) - len(todo))

                write_tiles(encode_tiles(read, grid, transforms, glass if skip_glass else None, tiles=todo,
                                         read_threads=read_threads, refiner=refiner),
                            writer, max(io_threads, writer_processes), transforms.batch_size, writer_processes > 0,
                            advance)
            n_glass = int((writer.state == 2).sum())
            writer.meta["tiles"] = {"total": len(grid), "glass": n_glass}
            final = writer.finish(overwrite)
        except KeyboardInterrupt:
            writer.checkpoint()  # keep the work done for --resume
            raise
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                writer.abort()
            raise
        except BaseException:
            writer.abort()
            raise
        finally:
            writer.close_workers()
    return CompressResult(final, len(grid), n_glass, time.time() - t0, store_size(final), W * H, writer.resumed,
                          store_size(final / "latents"), content_meta, choice=choice, search_seconds=search_seconds)


@decompress_urls  # store / output may be fsspec URLs (wsicodec.remote)
def decompress(store_path: str | Path, output: str | Path, tile: int = 256, compression: str = "jpeg",
               quality: int = 90, region: tuple[int, int, int, int] | None = None, overwrite: bool = False,
               device: str = "auto", batch_size: int = 8, progress: bool = False,
               model_dir: Path | None = None, precision: str = "auto") -> Path:
    """Decode a store (or a region of it) to a tiled pyramidal TIFF. ``precision``: the
    synthesis's arithmetic (see :class:`~wsicodec.store.WsiStore`)."""
    from wsicodec.tiff import write_pyramid

    output = Path(output)
    if output.is_symlink():
        raise StoreError(f"{output}: is a symbolic link; refusing to write through it (give the real path)")
    if output.exists() and not overwrite:
        raise StoreError(f"{output}: already exists (use --overwrite to replace it)")
    if output.exists() and output.is_dir():
        raise StoreError(f"{output}: is a folder; refusing to replace it")
    with WsiStore(store_path, device=device, batch_size=batch_size, model_dir=model_dir, precision=precision) as store:
        W, H = store.dimensions
        store.load_model()  # load and verify the model before any output starts
        x, y, w, h = region if region else (0, 0, W, H)
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > W or y + h > H:
            raise StoreError(f"{store_path}: region {x} {y} {w} {h} is not inside the slide ({W}x{H})")
        with _progress(progress, f"decompress {Path(store_path).name}",
                       len(store.grid.tiles_touching(x, y, w, h))) as advance, _output_os_errors(output):
            write_pyramid(store, output, (x, y, w, h), tile=tile, compression=compression,
                          quality=quality, advance=advance)
    return output
