"""``conveyor runner ...``: the supervised runner daemon."""

from __future__ import annotations

import typer

__all__ = ["app"]

app = typer.Typer(help="Start, stop and watch the runner daemon; run a runner in the foreground.")
