"""The `clt` command line, built on clt.api: commands, their rendering and their progress bars."""

from clt.cli.commands import app, main

__all__ = ["app", "main"]
