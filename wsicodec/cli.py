"""``wsicodec``: one click group; each command is a thin shell over a library function."""
from __future__ import annotations

import json
from pathlib import Path

import click

from wsicodec import __version__
from wsicodec._click import PATH_OR_URL, ErrorGroup, UserError, storage_option_flag
from wsicodec.effort import EFFORTS


@click.group(cls=ErrorGroup)
@click.version_option(__version__, prog_name="wsicodec")
def main() -> None:
    """Learned compression of pathology whole-slide images."""


@main.command()
@click.argument("paths", nargs=-1, required=False, type=PATH_OR_URL)
@storage_option_flag
@click.option("--out-dir", type=PATH_OR_URL, default=None,
              help="Compress every PATH (or --manifest entry) into OUT_DIR/<name>.zarr.")
@click.option("--manifest", type=click.Path(path_type=Path), default=None, help="File listing inputs, one per line.")
@click.option("--workers", type=click.IntRange(0, 1024), default=0, show_default=True,
              help="With --out-dir: slides in parallel on a local dask.distributed cluster of N workers.")
@click.option("--scheduler", default=None, help="With --out-dir: address of an existing dask scheduler.")
@click.option("--retries", type=click.IntRange(0, 10), default=2, show_default=True)
@click.option("--quality", type=click.IntRange(1, 100), default=None,
              help="1-100: at least as good as JPEG at this quality (PSNR and MS-SSIM on the calibration set), "
                   "in fewer bytes; see `wsicodec models`.  [default: the archive operating point]")
@click.option("--target", default=None, metavar="METRIC=VALUE",
              help="ms_ssim=0.99 or psnr=36: the cheapest operating point that reaches it on sampled tissue tiles "
                   "of each slide (recorded in the store; `verify --against` checks it).")
@click.option("--target-tiles", type=click.IntRange(1, 256), default=None,
              help="Tissue tiles sampled for --target  [default: 8]")
@click.option("--model", "-m", default=None,
              help="Shipped model name, for experts (see `wsicodec models`); a variable-rate model takes an "
                   "operating point as NAME@P (P: 0 … K-1, or between two, e.g. NAME@4.5; default: its card's).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 1024), default=None,
              help="Tiles per network batch  [default: 32 on CUDA, 8 on the CPU]")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto", show_default=True,
              help="The analysis's arithmetic: auto = fp16 on CUDA, bf16 on a CPU with native bf16 "
                   "(AVX512-BF16 / AMX), else fp32. Half precision is faster and changes ~0.1-1.3% of "
                   "latents by 1; the store decodes the same everywhere.")
@click.option("--effort", type=click.Choice(list(EFFORTS)), default="standard", show_default=True,
              help="high: search each tile's latents for fewer bytes at the same quality (hyperprior and "
                   "variable-rate models; encoding 16-30x slower on a CPU, decoding unchanged); max: a "
                   "longer search, about 3x high's time, for the last tenths of a dB (docs/performance.md).")
@click.option("--writer-processes", type=click.IntRange(0, 256), default=None,
              help="Processes that entropy-code and write tiles  [default: on CUDA a quarter of the cores, else 0]")
@click.option("--read-threads", type=click.IntRange(1, 256), default=None,
              help="Threads reading the slide  [default: on CUDA 3/4 of the cores, else 1/4]")
@click.option("--tile", type=click.IntRange(64, 4096), default=None,
              help="Tile (= chunk) size in level-0 pixels, a multiple of 16 (64 for a hyperprior)  "
                   "[default: 512; an image smaller than that: one tile, its longer side rounded up to 64].")
@click.option("--keep-glass", is_flag=True, help="Encode empty-glass tiles too (no background skipping).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists (only a wsicodec store).")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run from its unfinished store (otherwise that is discarded).")
@click.option("--deidentify", is_flag=True,
              help="Drop the label and macro images and identifying metadata (names, dates, IDs).")
@click.option("--allow-non-he", is_flag=True,
              help="Code fluorescence / dark-field and single-channel images too (refused by default: the "
                   "models were trained on H&E brightfield). More than 8 bits or 3 channels are always refused.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
def compress(paths, out_dir, manifest, workers, scheduler, retries, quality, target, target_tiles, model, device,
             batch_size, precision, effort, writer_processes, read_threads, tile, keep_glass, overwrite, resume,
             deidentify, allow_non_he, quiet):
    """Compress level 0 of a slide or image into a Zarr store.

    \b
    wsicodec compress INPUT OUTPUT.zarr
    wsicodec compress INPUT... --out-dir DIR [--workers N | --scheduler ADDRESS]
    wsicodec compress --manifest FILE --out-dir DIR"""
    from wsicodec.pipeline import compress as run

    opts = dict(model=model, device=device, batch_size=batch_size, tile=tile, overwrite=overwrite,
                skip_glass=not keep_glass, precision=precision, writer_processes=writer_processes,
                read_threads=read_threads)
    if effort != "standard":
        opts["effort"] = effort
    for key, value in (("quality", quality), ("target", target), ("target_tiles", target_tiles)):
        if value is not None:
            opts[key] = value
    if sum(v is not None for v in (model, quality, target)) > 1:
        raise UserError("give one of --model, --quality and --target")
    if target_tiles is not None and target is None:
        raise UserError("--target-tiles needs --target")
    if resume:
        opts["resume"] = True
    if deidentify:
        opts["deidentify"] = True
    if allow_non_he:
        opts["allow_non_he"] = True
    if out_dir is not None or manifest is not None:
        if out_dir is None:
            raise UserError("--manifest needs --out-dir")
        from wsicodec.batch import read_manifest

        inputs = [str(p) for p in paths] + (read_manifest(manifest) if manifest else [])
        if not inputs:
            raise UserError("no inputs given")
        _compress_many(inputs, out_dir, workers, scheduler, retries, quiet, opts)
        return
    if len(paths) != 2:
        raise UserError("give INPUT and OUTPUT, or inputs with --out-dir DIR")
    if workers or scheduler:
        raise UserError("--workers and --scheduler need --out-dir")

    def announce(choice) -> None:  # a quality beyond the models' reach, a target's pick: before the work starts
        if choice.note:
            click.echo(choice.note, err=True)

    r = run(paths[0], paths[1], progress=not quiet, on_choice=announce, **opts)
    if not quiet:
        note = (r.content or {}).get("note")  # also kept in the store's metadata, shown by `info`
        if note:
            click.echo(f"note: {note}", err=True)
        if r.resumed_tiles:
            click.echo(f"resumed: {r.resumed_tiles} of {r.tiles} tiles were already written")
        mpix = r.pixels * (1 - r.glass_tiles / max(r.tiles, 1)) / 1e6
        click.echo(f"{r.output}: {r.bytes:,} bytes, {r.bpp:.3f} bits/pixel ({r.latent_bpp:.3f} for the image alone), "
                   f"{r.tiles} tiles "
                   f"({r.glass_tiles} glass), {r.seconds:.1f} s, {mpix / max(r.seconds, 1e-9):.2f} Mpx tissue/s; "
                   f"operating point {r.choice.point} ({describe_choice(r.choice.record)})")


def describe_choice(record: dict) -> str:
    """How an operating point was chosen, in a few words (a store's ``quality`` record)."""
    how = record.get("chosen_by")
    if how == "quality":
        return f"quality {record['quality']}" + ("" if record.get("matched") else ", beyond the models' reach")
    if how == "target":
        t, m = record["target"], record.get("measured", {})
        return f"target {t['metric']}={t['value']:g}, measured {m.get(t['metric'])} on the sample"
    return {"default": "the default", "model": "named"}.get(how, str(how))


def _compress_many(inputs, out_dir, workers, scheduler, retries, quiet, opts) -> None:
    from rich.console import Console
    from rich.table import Table

    from wsicodec.batch import compress_many

    console = Console(stderr=True, quiet=quiet)
    results = compress_many(inputs, out_dir, workers=workers, scheduler=scheduler, retries=retries,
                            on_result=lambda r: console.print(f"{r.status:8s} {r.input}"
                                                              + (f": {r.error}" if r.error else "")),
                            **opts)
    t = Table(title=f"wsicodec compress → {out_dir}")
    for col in ("input", "status", "output", "bytes", "bits/px", "seconds", "error"):
        t.add_column(col)
    for r in results:
        t.add_row(r.input, r.status, r.output, f"{r.bytes:,}" if r.bytes else "", f"{r.bpp:.3f}" if r.bpp else "",
                  f"{r.seconds:.1f}" if r.seconds else "", r.error)
    console.print(t)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise UserError(f"{len(failed)} of {len(results)} inputs failed (first: {failed[0].input}: {failed[0].error})")


@main.command()
@click.argument("store", type=PATH_OR_URL)
@click.argument("output", type=PATH_OR_URL)
@storage_option_flag
@click.option("--tile", type=click.IntRange(16, 4096), default=256, show_default=True)
@click.option("--compression", type=click.Choice(["jpeg", "deflate", "zstd", "none"]), default="jpeg",
              show_default=True)
@click.option("--quality", type=click.IntRange(1, 100), default=90, show_default=True, help="JPEG quality.")
@click.option("--region", type=int, nargs=4, default=None, metavar="X Y W H",
              help="Decode only this level-0 box.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 1024), default=8, show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32"]), default="auto", show_default=True,
              help="The synthesis's arithmetic: auto = fp16 on CUDA, bf16 on a CPU with native bf16 (about "
                   "3x as fast; pixels within 2 levels of fp32's), else fp32.")
@click.option("--overwrite", is_flag=True)
@click.option("--quiet", "-q", is_flag=True)
def decompress(store, output, tile, compression, quality, region, device, batch_size, precision, overwrite, quiet):
    """Decode STORE to a tiled pyramidal TIFF OUTPUT that OpenSlide and QuPath open."""
    import time

    from wsicodec.pipeline import decompress as run

    t0 = time.time()
    out = run(store, output, tile=tile, compression=compression, quality=quality,
              region=tuple(region) if region else None, overwrite=overwrite, device=device,
              batch_size=batch_size, precision=precision, progress=not quiet)
    if not quiet:
        from wsicodec.remote import file_size

        click.echo(f"{out}: {file_size(out):,} bytes, {time.time() - t0:.1f} s")


@main.command()
@click.argument("path", type=PATH_OR_URL)
@storage_option_flag
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(path, as_json):
    """Describe a store or a slide: size against the source, bits per pixel, MPP, model."""
    from wsicodec.info import describe

    d = describe(path)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    for line in d.get("summary", []):
        click.echo(line)
    t = Table(show_header=False, title=str(path))
    for k, v in d.items():
        if k not in ("properties", "summary"):
            t.add_row(k, str(v))
    Console().print(t)


@main.command()
@click.argument("store", type=PATH_OR_URL)
@storage_option_flag
@click.option("--against", type=PATH_OR_URL, default=None, metavar="SLIDE",
              help="Also decode the pixels and report PSNR / MS-SSIM against the source SLIDE.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def verify(store, against, device, as_json):
    """Check that STORE is whole: metadata, model, tile map, every chunk's checksum and entropy
    decoding, associated images. Exit status 1 if anything is wrong."""
    from wsicodec.remote import local_input
    from wsicodec.verify import verify_store

    with local_input(store) as local, local_input(against) as local_against:  # a URL is fetched first
        rep = verify_store(local, against=local_against, device=device)
    rep.path = str(store)
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=2))
    else:
        m = rep.model
        model = f"{m['name']} (sha256 {m['sha256'][:12]}… {'verified' if m.get('checked') else 'NOT verified'})"
        click.echo(f"{store}: {rep.tiles} tiles ({rep.coded} coded, {rep.glass} glass), "
                   f"{rep.chunks_decoded} chunks decoded, model {model}, "
                   f"associated: {', '.join(rep.associated) or 'none'}")
        if rep.quality:
            q = rep.quality
            click.echo(f"against {q['against']}: PSNR {q['psnr']} dB (worst tile {tuple(q['worst_tile'])}: "
                       f"{q['worst_tile_psnr']} dB), MS-SSIM {q['ms_ssim']}")
            if q.get("target"):
                t = q["target"]
                click.echo(f"target {t['metric']}={t['value']:g}: {t['measured']} over the coded tiles "
                           f"(sample at compression: {t['sample_measured']}): {'met' if t['met'] else 'NOT met'}")
        for p in rep.problems:
            click.echo(f"problem: {p}")
    if not rep.ok:
        raise UserError(f"{store}: {len(rep.problems)} problem(s) found")
    if not as_json:
        click.echo("OK")


def _retired_models(as_json: bool) -> None:
    """``wsicodec models --retired``: each superseded model, its successor and today's replacement."""
    from wsicodec.models import list_retired

    rows = [{"name": c.name, "kind": c.kind, "superseded_by": c.superseded_by, "replacement": now,
             "sha256": c.sha256} for c, now in list_retired()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table

    t = Table(title="retired models", box=box.SIMPLE_HEAD,
              caption="kept so that stores written with them decode; the model listing, --quality and the "
                      "benchmark leave them out. Replacement: the shipped model that took its place, at "
                      "about the same rate.")
    for col in ("model", "kind", "superseded by", "replacement"):
        t.add_column(col, no_wrap=col != "kind")
    for r in rows:
        t.add_row(r["name"], r["kind"], r["superseded_by"], r["replacement"] or "none shipped")
    Console().print(t)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--retired", is_flag=True, help="List the superseded models and what replaced each.")
def models(as_json, retired):
    """List the shipped models' operating points: bits per pixel, PSNR and MS-SSIM on the
    calibration set, the JPEG quality each matches and the --quality values that use it.
    --retired: the superseded models instead, which stay installed so that their stores decode."""
    if retired:
        _retired_models(as_json)
        return
    from wsicodec.quality import model_rows

    rows, caption = model_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table

    t = Table(title="shipped models", caption=caption, box=box.SIMPLE_HEAD)
    cells = [[r["operating_point"] + (" *" if r["default"] else ""), r["kind"],
              *(("" if r[k] is None else f"{r[k]:.{d}f}") for k, d in (("bpp", 3), ("psnr", 2), ("ms_ssim", 4))),
              f"q{r['matches_jpeg']}" if r["matches_jpeg"] else "", r["qualities"]] for r in rows]
    for i, col in enumerate(("operating point", "kind", "bpp", "PSNR", "MS-SSIM", "≥ JPEG", "--quality")):
        # kind and --quality may wrap between words in a narrow terminal; names and figures may not
        whole = i not in (1, 6)
        widths = [len(c[i]) for c in cells] if whole else [len(w) for c in cells for w in c[i].split()]
        t.add_column(col, no_wrap=whole, min_width=max([len(col) if whole else 0, *widths]))
    for c in cells:
        t.add_row(*c)
    Console().print(t)


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--against", type=click.Path(path_type=Path), default=None, metavar="SLIDE",
              help="Show the source SLIDE beside the store, pan and zoom kept together.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface, anyone who can reach this machine sees the slide).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0: any free port.")
@click.option("--no-browser", is_flag=True, help="Do not open the page in a browser.")
@click.option("--format", "fmt", type=click.Choice(["png", "webp"]), default="png", show_default=True,
              help="Tile format (both lossless).")
@click.option("--cache-mb", type=click.IntRange(16, 1 << 20), default=512, show_default=True,
              help="Memory for decoded tiles.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def view(store, against, host, port, no_browser, fmt, cache_mb, device):
    """Look at STORE in the browser (DeepZoom, decoded on demand), beside its original with --against."""
    from wsicodec.view import app
    from wsicodec.view.serve import ViewError, listen, serve

    if against is not None and not against.is_file():
        raise UserError(f"{against}: {'is a folder, not a slide' if against.is_dir() else 'no such file'}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"wsicodec view: warning: listening on {host}: anyone who can reach this machine "
                   f"can see the slide", err=True)
    try:
        sock = listen(host, port)
    except ViewError as e:
        raise UserError(str(e)) from None
    try:
        application = app(store, against=against, fmt=fmt, cache_mb=cache_mb, device=device)
    except BaseException:
        sock.close()
        raise
    serve(application, sock, open_browser=not no_browser)


@main.command()
def example():
    """Print the path of the bundled example slide (CMU-1-Small-Region.svs, CC0)."""
    from importlib import resources

    click.echo(str(resources.files("wsicodec.examples") / "CMU-1-Small-Region.svs"))


def _register_optional() -> None:
    """Commands that live with their own stage (train, bench) attach themselves here."""
    for mod, name in (("wsicodec.train.cli", "train"), ("wsicodec.bench.cli", "bench")):
        try:
            module = __import__(mod, fromlist=["command"])
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith(mod.rsplit(".", 1)[0]):
                continue
            raise
        main.add_command(module.command, name)


_register_optional()


if __name__ == "__main__":
    main()
