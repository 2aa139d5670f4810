"""Small click helpers shared by the command modules."""
from __future__ import annotations

import click


class DefaultGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to ``default_command``:
    ``wsicodec train DATA...`` runs ``train run DATA...`` while ``train export`` still works."""

    def __init__(self, *args, default_command: str = "run", **kwargs):
        super().__init__(*args, **kwargs)
        self.default_command = default_command

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)
