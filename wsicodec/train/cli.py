"""``wsicodec train``: train a model (``train [run] DATA... --out RUN``), continue a run with its own
settings (``train continue RUN``), export it into the model folder (``train export RUN NAME``), and
carry training to another machine: a size-bounded training pack (``train pack``) and a run handed
back as a few files of bounded size (``train bundle`` / ``train merge``)."""
from __future__ import annotations

from pathlib import Path

import click

from wsicodec._click import DefaultGroup


@click.group(cls=DefaultGroup, default_command="run")
def command() -> None:
    """Train models with the paper's recipe (Fischer 2023) and export them."""


@command.command("run")
@click.argument("data", nargs=-1, required=True)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Run folder (checkpoints, logs).")
@click.option("--val", "val", multiple=True, help="Validation image folder or file (repeatable).")
@click.option("--architecture", default="bmshj2018-factorized", show_default=True)
@click.option("-N", "N", type=int, default=None, help="Transform width  [default: 64; mbt2018-mean-gain: 128]")
@click.option("-M", "M", type=int, default=None, help="Latent channels  [default: 96; mbt2018-mean-gain: 320]")
@click.option("--lambda", "lmbda", default=0.013, show_default=True, help="Rate-distortion trade-off λ.")
@click.option("--lambdas", default="", metavar="L0,L1,…",
              help="A variable-rate architecture's λ ladder, one per operating point, increasing "
                   "(default: 0.0008,0.002,0.005,0.013,0.032,0.08,0.2,0.5).")
@click.option("--param", "params", multiple=True, metavar="KEY=INT",
              help="An architecture parameter beyond -N / -M, e.g. --param N_s=48 (repeatable).")
@click.option("--feature-net", default="none", show_default=True,
              help="none | stlpips | ciga:CHECKPOINT (the perceptual term's network C).")
@click.option("--psi", default="0.5,0.7", show_default=True, help="ψ before,after the switch point.")
@click.option("--patch", default=128, show_default=True)
@click.option("--batch", default=8, show_default=True)
@click.option("--steps", default=100_000, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--transform-lr", default=0.0, show_default=True,
              help="Learning rate of the transforms g_a / g_s (0: --lr); e.g. lower for a warm-started hyperprior.")
@click.option("--clip", default=1.0, show_default=True)
@click.option("--val-every", default=2000, show_default=True)
@click.option("--checkpoint-minutes", default=5.0, show_default=True)
@click.option("--minutes", "max_minutes", default=0.0,
              help="Stop after this many minutes of training steps, validation excluded (0: no limit): CPU time "
                   "on the CPU, wall time on a GPU.")
@click.option("--wall-minutes", default=0.0,
              help="Stop in time to validate and save within this many wall-clock minutes of the run, data "
                   "loading and compilation included (0: no limit).")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=0, show_default=True, help="torch threads (0: torch's default).")
@click.option("--init-from", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Start from another run's or model's weights (fine-tuning); repeatable, later files "
                   "override earlier ones; from another architecture, the tensors of the same name and shape.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="g_a / g_s trained under autocast at this precision (weights, entropy models and loss fp32; "
                   "validation fp32); fp16 with a gradient scaler. auto: bf16 on a GPU that has it (else fp16); "
                   "on the CPU bf16 for a run from --init-from weights where the CPU computes bf16 itself "
                   "(AVX512-BF16 / AMX: 1.3-1.9x the steps, validating as fp32), else fp32 (bf16 trailed fp32 "
                   "from scratch; docs/training.md).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--workers", default=-1, show_default=True,
              help="Processes making batches (-1: none on the CPU, all cores but two, at most 12, on a GPU).")
@click.option("--compile/--no-compile", "compile_", default=False, show_default=True,
              help="torch.compile the training forward (pays on a GPU for long runs; compiles at the first step).")
@click.option("--freeze-transforms", is_flag=True,
              help="Train the entropy model alone (h_a, h_s, priors) on the --init-from model's fixed g_a / g_s: "
                   "the rate only, g_s never runs (e.g. a cheaper hyper-decoder, --param h_kernel=1).")
@click.option("--distortion", type=click.Choice(["mse", "ms-ssim"]), default="mse", show_default=True,
              help="The loss's distortion term: λ·255²·MSE, or λ·(1 − MS-SSIM) for a model that serves an "
                   "MS-SSIM policy (crops of at least 161 px).")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Leave out the training files whose path matches this shell pattern, e.g. '*/train/ebhi-*' "
                   "to keep a set of images for a check (repeatable).")
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where it stopped.")
def run(data, out, val, architecture, N, M, lmbda, lambdas, params, feature_net, psi, patch, batch, steps, lr,
        transform_lr, clip, val_every, checkpoint_minutes, max_minutes, wall_minutes, seed, threads, init_from,
        precision, device, workers, compile_, freeze_transforms, distortion, exclude, resume):
    """Train on DATA (image files, folders, slides, training packs)."""
    from wsicodec.train import TrainConfig, Trainer

    ladder = _floats(lambdas) or []
    try:
        extra = {k.strip(): int(v) for k, v in (p.split("=", 1) for p in params)}
    except ValueError:
        raise click.BadParameter("--param takes KEY=INT") from None
    from wsicodec.train.ladder import default_widths

    N, M = (N, M) if N and M else tuple(a or b for a, b in zip((N, M), default_widths(architecture), strict=True))
    cfg = TrainConfig(data=list(data), out=str(out), architecture=architecture, N=N, M=M, lmbda=lmbda,
                      lambdas=ladder, params=extra,
                      feature_net=feature_net, psi=[float(v) for v in psi.split(",")], patch=patch, batch=batch,
                      steps=steps, lr=lr, transform_lr=transform_lr, clip=clip, val=list(val), val_every=val_every,
                      checkpoint_minutes=checkpoint_minutes, max_minutes=max_minutes, wall_minutes=wall_minutes,
                      seed=seed, threads=threads, init_from=",".join(init_from), precision=precision, device=device,
                      workers=workers, compile=compile_, freeze_transforms=freeze_transforms,
                      distortion=distortion, exclude=list(exclude))
    if freeze_transforms and not init_from and not resume:
        raise click.BadParameter("--freeze-transforms keeps the transforms of an --init-from model; name one")
    t = Trainer(cfg)
    if resume:
        if not t.ckpt_path.exists():
            raise click.ClickException(f"{t.ckpt_path}: no checkpoint to resume from")
        t.resume()
        click.echo(f"resumed at step {t.step}")
    else:
        for path in init_from:
            t.init_weights_from(Path(path))
    t.run()
    click.echo(f"stopped at step {t.step}; checkpoint {t.ckpt_path}")


@command.command("continue")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("data", nargs=-1)
@click.option("--val", "val", multiple=True, help="Validation folder or file (default: the run's).")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N (default: the run's).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default=None,
              help="Training precision (default: the run's).")
@click.option("--batch", type=int, default=None)
@click.option("--workers", type=int, default=None)
@click.option("--compile/--no-compile", "compile_", default=None)
@click.option("--steps", type=int, default=None, help="Step count to stop at (default: the run's).")
@click.option("--val-every", type=int, default=None)
@click.option("--checkpoint-minutes", type=float, default=None)
@click.option("--minutes", "max_minutes", type=float, default=None,
              help="Training-step minutes of the whole run (CPU time on the CPU, wall time on a GPU).")
@click.option("--wall-minutes", type=float, default=None, help="Wall-clock minutes of this continuation.")
@click.option("--threads", type=int, default=None)
def continue_run(run_dir, data, val, device, precision, batch, workers, compile_, steps, val_every,
                 checkpoint_minutes, max_minutes, wall_minutes, threads):
    """Continue RUN_DIR with its own settings: exactly from its checkpoint.pt, or from its
    weights.pt (step count kept, fresh optimiser state). DATA and the options replace the run's
    (data paths, say, on another machine)."""
    from wsicodec.train.loop import Trainer

    given = {"data": list(data) or None, "val": list(val) or None, "device": device, "precision": precision,
             "batch": batch, "workers": workers, "compile": compile_, "steps": steps, "val_every": val_every,
             "checkpoint_minutes": checkpoint_minutes, "max_minutes": max_minutes, "wall_minutes": wall_minutes,
             "threads": threads}
    t = Trainer.from_checkpoint(run_dir, **{k: v for k, v in given.items() if v is not None})
    fresh = "" if t.ckpt_path.exists() else " from weights.pt, fresh optimiser state"
    click.echo(f"continuing {run_dir} at step {t.step} on {t.device} ({t.precision.name}, "
               f"{t.workers} batch workers){fresh}")
    t.run()
    click.echo(f"stopped at step {t.step}; checkpoint {t.ckpt_path}")


@command.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("name")
@click.option("--models-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write (default: the package's model folder).")
@click.option("--last", is_flag=True, help="Export the last weights, not the best validated ones.")
@click.option("--data-desc", default="", help="How the model card describes the training data "
              "(default: the names of its folders and files).")
@click.option("--notes", default="", help="Free-text notes for the model card.")
@click.option("--val", "val", multiple=True, help="Validation folder for the card's figures (default: the run's).")
@click.option("--default-point", type=int, default=None,
              help="A variable-rate model's default operating point (default: the ladder's middle).")
@click.option("--half-weights", is_flag=True,
              help="Round the large weights to fp16 where fp16 holds them (about half the file; the "
                   "card's figures are measured on the rounded weights).")
@click.option("--lambdas", default=None,
              help="A variable-rate model's operating points at these λ (comma-separated, increasing) "
                   "instead of its trained ladder: gains interpolated between trained points, extrapolated "
                   "beyond them; the card says which points were trained.")
def export(run_dir, name, models_dir, last, data_desc, notes, val, default_point, half_weights, lambdas):
    """Write RUN_DIR's model as NAME (.pt with frozen CDF tables, .json model card with sha256;
    a variable-rate model's card lists every operating point with its λ and validation figures)."""
    from wsicodec.models import model_dir
    from wsicodec.train.loop import Trainer

    overrides = {"val": list(val)} if val else {}
    if default_point is not None:
        overrides["default_point"] = default_point
    card = Trainer.from_checkpoint(run_dir, **overrides).export(name, models_dir or model_dir(), use_best=not last,
                                                                data_desc=data_desc, notes=notes,
                                                                half=half_weights,
                                                                lambdas=_floats(lambdas))
    click.echo(f"{name}: sha256 {card.sha256}, validation {card.validation}")


def _floats(text: str | None) -> list[float] | None:
    """``--lambdas L0,L1,…`` as numbers (None when not given)."""
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"--lambdas takes comma-separated numbers, not {text!r}") from None


@command.command("pack")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--train", "train", multiple=True, required=True, help="Training images, folders or slides (repeatable).")
@click.option("--val", "val", multiple=True, help="Validation images or folders (repeatable): their centre crops.")
@click.option("--crop", default=256, show_default=True,
              help="Side of the training crops (the largest --patch the pack serves).")
@click.option("--val-crop", default=256, show_default=True,
              help="Side of the validation centre crops (the largest --val-crop).")
@click.option("--max-mib", default=40.0, show_default=True, help="Size budget of the whole pack.")
@click.option("--seed", default=0, show_default=True)
def pack(out, train, val, crop, val_crop, max_mib, seed):
    """Write a training pack to OUT: crops of the training images (lossless WebP sheets, as many as
    --max-mib holds, spread over all images) and the validation images' centre crops."""
    from wsicodec.train.pack import build_pack

    report = build_pack(out, list(train), list(val), crop=crop, val_crop=val_crop, max_mib=max_mib, seed=seed)
    click.echo(report.summary())


@command.command("bundle")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--max-files", default=8, show_default=True, help="Files the bundle may have (manifest included).")
@click.option("--max-part-mib", default=16.0, show_default=True, help="Largest file of the bundle.")
@click.option("--max-total-mib", type=float, default=None,
              help="All the bundle's files together at most (default: files x largest file).")
def bundle(run_dir, out_dir, max_files, max_part_mib, max_total_mib):
    """Write RUN_DIR's logs and weights (the full checkpoint if it fits) into OUT_DIR as bundle.json
    and parts of bounded size."""
    from wsicodec.train.bundle import bundle_run

    bundle_run(run_dir, out_dir, max_files=max_files, max_part_mib=max_part_mib, log=click.echo,
               max_total_mib=max_total_mib)


@command.command("merge")
@click.argument("bundle_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--val", "val", multiple=True,
              help="Validate the merged weights on these images (centre crops, real bits, on the CPU).")
@click.option("--val-crop", default=256, show_default=True)
@click.option("--half-weights", is_flag=True,
              help="Write weights.pt with fp16 tensors (half the bytes: a wide model's run that must travel); "
                   "checkpoint.pt and best_model.pt stay fp32.")
def merge(bundle_dir, run_dir, val, val_crop, half_weights):
    """Check BUNDLE_DIR's parts against their sha256, reassemble them and put the run's files into
    RUN_DIR; with --val, validate the last and the best weights there (on the CPU)."""
    import torch

    from wsicodec.train.bundle import merge_bundle
    from wsicodec.train.loop import Trainer, validate

    merge_bundle(bundle_dir, run_dir, log=click.echo, half_weights=half_weights)
    if not val:
        return
    # the run's own model, on the CPU; the validation images stand in for its training data
    t = Trainer.from_checkpoint(run_dir, data=list(val), val=list(val), val_crop=val_crop, device="cpu",
                                patch=min(val_crop, 64), workers=0)
    for name in ("weights.pt", "best_model.pt"):
        path = Path(run_dir) / name
        if not path.exists():
            continue
        st = torch.load(path, map_location="cpu", weights_only=False)
        # the entropy models' tables are left out (their sizes vary): validation rebuilds them
        tables = ("_quantized_cdf", "_offset", "_cdf_length")
        weights = {k: v for k, v in st["model"].items() if not k.endswith(tables)}
        missing, unexpected = torch.nn.Module.load_state_dict(t.model, weights, strict=False)
        if unexpected or any(not k.endswith(tables) for k in missing):
            raise click.ClickException(f"{path}: not the weights of this run's model")
        ladder = getattr(t, "ladder", None)
        if ladder:  # a variable-rate model: every operating point
            from wsicodec.train.ladder import validate_ladder

            points, _ = validate_ladder(t.model, t.val, ladder, validate)
        else:
            points = [validate(t.model, t.val)]
        for k, v in enumerate(points):
            at = f" point {k}" if len(points) > 1 else ""
            click.echo(f"{name} (step {st['step']}){at}: {v['bpp']:.4f} bpp, {v['psnr']:.2f} dB, "
                       f"MS-SSIM {v['ms_ssim']:.4f}")
