"""Small click helpers shared by the command modules: one-line errors and default subcommands."""
from __future__ import annotations

import sys

import click


class UserError(click.ClickException):
    """Printed as one line (``wsicodec: error: …``), exit status 1, no traceback."""

    def show(self, file=None) -> None:
        click.echo(f"wsicodec: error: {self.format_message()}", err=True)


def expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that describe bad input or environment, not a bug: shown as one line."""
    from wsicodec.codec import CodecError
    from wsicodec.engine import EngineError
    from wsicodec.models import ModelError
    from wsicodec.slide import SlideError
    from wsicodec.store import StoreError

    return (SlideError, StoreError, ModelError, CodecError, EngineError, FileNotFoundError,
            IsADirectoryError, PermissionError, ValueError)


class ErrorGroup(click.Group):
    """A group whose commands' expected errors become one-line messages."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            click.echo("wsicodec: interrupted", err=True)
            sys.exit(130)
        except expected_errors() as e:
            raise UserError(str(e)) from None
        except OSError as e:
            raise UserError(f"{getattr(e, 'filename', '') or ''}: {e.strerror or e}") from None


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
