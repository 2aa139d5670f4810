"""``wsicodec train``: train a model (``train [run] DATA... --out RUN``) and export it into the
model folder (``train export RUN NAME``)."""
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
@click.option("-N", "N", default=64, show_default=True, help="Transform width.")
@click.option("-M", "M", default=96, show_default=True, help="Latent channels.")
@click.option("--lambda", "lmbda", default=0.013, show_default=True, help="Rate-distortion trade-off λ.")
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
              help="Stop after this many CPU minutes of training steps, validation excluded (0: no limit).")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=0, show_default=True, help="torch threads (0: torch's default).")
@click.option("--init-from", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Start from another run's or model's weights (fine-tuning); repeatable, later files "
                   "override earlier ones; from another architecture, the tensors of the same name and shape.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16: g_a / g_s trained under bf16 autocast (weights, entropy models and loss fp32; "
                   "validation fp32); 1.3x the steps per CPU minute when fine-tuning on a CPU with AVX512-BF16, "
                   "same objective; from scratch it trailed fp32 (docs/training.md).")
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where it stopped.")
def run(data, out, val, architecture, N, M, lmbda, feature_net, psi, patch, batch, steps, lr, transform_lr, clip,
        val_every, checkpoint_minutes, max_minutes, seed, threads, init_from, precision, resume):
    """Train on DATA (image files, folders, slides)."""
    from wsicodec.train import TrainConfig, Trainer

    cfg = TrainConfig(data=list(data), out=str(out), architecture=architecture, N=N, M=M, lmbda=lmbda,
                      feature_net=feature_net, psi=[float(v) for v in psi.split(",")], patch=patch, batch=batch,
                      steps=steps, lr=lr, transform_lr=transform_lr, clip=clip, val=list(val), val_every=val_every,
                      checkpoint_minutes=checkpoint_minutes, max_minutes=max_minutes, seed=seed, threads=threads,
                      init_from=",".join(init_from), precision=precision)
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


@command.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("name")
@click.option("--models-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write (default: the package's model folder).")
@click.option("--last", is_flag=True, help="Export the last weights, not the best validated ones.")
@click.option("--data-desc", default="", help="How the model card describes the training data (default: the paths).")
@click.option("--notes", default="", help="Free-text notes for the model card.")
@click.option("--val", "val", multiple=True, help="Validation folder for the card's figures (default: the run's).")
def export(run_dir, name, models_dir, last, data_desc, notes, val):
    """Write RUN_DIR's model as NAME (.pt with frozen CDF tables, .json model card with sha256)."""
    from wsicodec.models import model_dir
    from wsicodec.train.loop import Trainer

    overrides = {"val": list(val)} if val else {}
    card = Trainer.from_checkpoint(run_dir, **overrides).export(name, models_dir or model_dir(), use_best=not last,
                                                                data_desc=data_desc, notes=notes)
    click.echo(f"{name}: sha256 {card.sha256}, validation {card.validation}")
