"""``wsicodec bench``: a click group whose default command runs the rate–distortion benchmark
(``wsicodec bench INPUT... --out DIR``), whose ``distortions`` subcommand runs the metric study
(``wsicodec bench distortions IMAGES... --out DIR``) and whose ``plot`` subcommand draws the
rate–distortion plots of an earlier run again (``wsicodec bench plot RESULTS.csv``). Thin shells
over :func:`wsicodec.bench.runner.run_benchmark`, :func:`wsicodec.bench.distortions.run_distortions`
and :func:`wsicodec.bench.runner.plot_results`.

Anything that is not a subcommand name (or ``--help``) as the first argument goes to the default
``run`` command; to benchmark a file literally called ``distortions`` or ``plot``, write
``./distortions`` or ``wsicodec bench run distortions``.
"""
from __future__ import annotations

from pathlib import Path

import click

from wsicodec._click import DefaultGroup
from wsicodec.effort import EFFORTS

DEFAULT_COMMAND = "run"


@click.group(cls=DefaultGroup, default_command=DEFAULT_COMMAND,
             context_settings={"help_option_names": ["--help", "-h"]})
def command() -> None:
    """Benchmark wsicodec against JPEG, WebP, JPEG-XL, AVIF and JPEG 2000.

    \b
    wsicodec bench INPUT... --out DIR            rate–distortion benchmark (the `run` command)
    wsicodec bench distortions IMAGES... --out DIR   metric responses to JPEG and colour shifts
    wsicodec bench plot RESULTS.csv              draw the plots of an earlier run again
    """


def _threads(n: int) -> None:
    import torch

    if n > 0:
        torch.set_num_threads(n)


@command.command(DEFAULT_COMMAND)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="INPUT...")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Folder for the results.")
@click.option("--codecs", default=None, metavar="LIST",
              help="Comma-separated: jpeg,webp,jxl,avif,j2k,wsicodec (default: all; wsicodec if a model is shipped).")
@click.option("--metrics", default=None, metavar="LIST",
              help="Comma-separated: psnr,ms_ssim,lpips,st_lpips,st_lpips_vgg (default: all but st_lpips_vgg).")
@click.option("--tiles", type=click.IntRange(1, 100000), default=8, show_default=True,
              help="Tissue tiles sampled from each slide.")
@click.option("--tile-size", type=click.IntRange(16, 8192), default=512, show_default=True,
              help="Side of a sampled slide tile in level-0 pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the tile sampling.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Device for wsicodec.")
@click.option("--threads", type=click.IntRange(0, 1024), default=0, help="torch CPU threads (0: torch default).")
@click.option("--precision", type=click.Choice(["auto", "fp32"]), default="auto", show_default=True,
              help="wsicodec's arithmetic, compress and decompress alike (auto: half precision where native).")
@click.option("--models", default=None, metavar="LIST",
              help="Comma-separated wsicodec models to measure (default: every model in the model folder "
                   "that no other supersedes).")
@click.option("--settings", "sweeps", multiple=True, metavar="CODEC=LIST",
              help="A classical codec's sweep instead of its default, e.g. jpeg=1-100 or jpeg=50,80 (repeatable).")
@click.option("--models-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Model folder (default: the installed one).")
@click.option("--reuse", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="An earlier results.csv: its rows for the same images are kept, except for the codec "
                   "settings (models) measured now (e.g. add a model without re-measuring the others).")
@click.option("--effort", type=click.Choice(list(EFFORTS)), default="standard", show_default=True,
              help="wsicodec's encoder effort (`wsicodec compress --effort`); its curves are named "
                   "...-high, ...-max.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or tables.")
def run(inputs, out, codecs, metrics, tiles, tile_size, seed, device, threads, precision, models, sweeps, models_dir,
        reuse, effort, quiet):
    """Rate–distortion benchmark of INPUT images, folders and slides; results in --out."""
    from wsicodec.bench.runner import run_benchmark

    _threads(threads)
    settings = {"wsicodec": [m.strip() for m in models.split(",") if m.strip()]} if models else {}
    settings.update(parse_sweeps(sweeps))
    r = run_benchmark(list(inputs), out, codecs=codecs, metrics=metrics, tiles=tiles, tile_size=tile_size,
                      seed=seed, settings=settings or None, model_dir=models_dir, device=device, progress=not quiet,
                      reuse=reuse, precision=precision, effort=effort)
    if not quiet:
        click.echo(f"{len(r.rows)} measurements; wrote " + ", ".join(p.name for p in r.files) + f" to {r.out}")


def parse_sweeps(specs: tuple[str, ...]) -> dict[str, list[float]]:
    """``("jpeg=1-100", "webp=50,80")`` -> ``{"jpeg": [1, 2, …, 100], "webp": [50, 80]}``: a
    classical codec's sweep, as integer ranges ``A-B`` and single values."""
    out: dict[str, list[float]] = {}
    for spec in specs:
        codec, _, values = spec.partition("=")
        sweep: list[float] = []
        try:
            for part in filter(None, (p.strip() for p in values.split(","))):
                lo, dash, hi = part.partition("-")
                sweep += list(range(int(lo), int(hi) + 1)) if dash else [float(part) if "." in part else int(part)]
        except ValueError:
            raise click.BadParameter(f"{spec!r}: expected CODEC=LIST, e.g. jpeg=1-100 or jpeg=50,80",
                                     param_hint="--settings") from None
        if not codec.strip() or not sweep or codec.strip() == "wsicodec":
            raise click.BadParameter(f"{spec!r}: expected a classical codec and its settings, e.g. jpeg=1-100 "
                                     "(wsicodec models: --models)", param_hint="--settings")
        out[codec.strip()] = sweep
    return out


@command.command("distortions")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="IMAGES...")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Folder for the results.")
@click.option("--metrics", default=None, metavar="LIST",
              help="Comma-separated: psnr,ms_ssim,lpips,st_lpips,st_lpips_vgg.")
@click.option("--tiles", type=click.IntRange(1, 100000), default=4, show_default=True,
              help="Tissue tiles sampled from each slide.")
@click.option("--tile-size", type=click.IntRange(16, 8192), default=512, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(0, 1024), default=0, help="torch CPU threads (0: torch default).")
@click.option("--quiet", "-q", is_flag=True)
def distortions(inputs, out, metrics, tiles, tile_size, seed, threads, quiet):
    """Metric responses to JPEG blocking and Lab colour shifts (the paper's Fig. 1)."""
    from wsicodec.bench.distortions import run_distortions

    _threads(threads)
    run_distortions(list(inputs), out, metrics=metrics, tiles=tiles, tile_size=tile_size, seed=seed,
                    progress=not quiet)
    if not quiet:
        click.echo(f"wrote distortions.csv, distortions.json, distortions.png, distortions_strip.png to {out}")


@command.command("plot")
@click.argument("results", type=click.Path(path_type=Path), metavar="RESULTS.csv")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the plots (default: the folder of RESULTS.csv).")
@click.option("--metrics", default=None, metavar="LIST",
              help="Comma-separated metrics to plot (default: every metric RESULTS.csv has values of).")
@click.option("--quiet", "-q", is_flag=True)
def plot(results, out, metrics, quiet):
    """Draw the rate–distortion plots of a results.csv again, measuring nothing."""
    from wsicodec.bench.runner import plot_results

    files = plot_results(results, out, metrics=metrics)
    if not quiet:
        click.echo(f"wrote {', '.join(p.name for p in files)} to {files[0].parent if files else out}")
