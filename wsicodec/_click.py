"""Small click helpers shared by the command modules: one-line errors, default subcommands, path
or URL arguments and ``--storage-option``."""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from wsicodec import remote
from wsicodec.errors import WsicodecError


class UserError(click.ClickException):
    """Printed as one line (``wsicodec: error: …``), exit status 1, no traceback."""

    def show(self, file=None) -> None:
        click.echo(f"wsicodec: error: {self.format_message()}", err=True)


class ErrorGroup(click.Group):
    """A group whose commands' :class:`~wsicodec.errors.WsicodecError` (bad input, damaged store,
    missing model, ...) become one-line messages; any other exception is a bug and keeps its
    traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            click.echo("wsicodec: interrupted", err=True)
            sys.exit(130)
        except WsicodecError as e:
            raise UserError(str(e)) from None


class DefaultGroup(ErrorGroup):
    """A group whose first argument, when it is not a subcommand, goes to ``default_command``:
    ``wsicodec train DATA...`` runs ``train run DATA...`` while ``train export`` still works."""

    def __init__(self, *args, default_command: str = "run", **kwargs):
        super().__init__(*args, **kwargs)
        self.default_command = default_command

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


def _storage_options_callback(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> None:
    try:
        options = remote.parse_storage_options(value)
    except WsicodecError as e:
        raise click.BadParameter(str(e).removeprefix("--storage-option: "), param_hint="--storage-option") from None
    ctx.call_on_close(remote.set_options(options or None))  # the options hold for this command only


def storage_option_flag(f: Callable) -> Callable:
    """The CLI's ``--storage-option KEY=VALUE`` (repeatable): options for every URL of the command."""
    return click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
                        expose_value=False, callback=_storage_options_callback, is_eager=True,
                        help="fsspec storage option for URL inputs/outputs (repeatable), e.g. "
                             "endpoint_url=http://127.0.0.1:9000 or anon=true.")(f)


class PathOrURL(click.ParamType):
    """A CLI argument that is a local path (``pathlib.Path``) or an fsspec URL
    (:class:`~wsicodec.remote.RemotePath`)."""

    name = "path_or_url"

    def convert(self, value: Any, param: Any, ctx: Any) -> Path | remote.RemotePath:
        if isinstance(value, (Path, remote.RemotePath)):
            return value
        return remote.as_path(value)


PATH_OR_URL = PathOrURL()
