"""``conveyor flow ...``: list, inspect and steer flows."""

from __future__ import annotations

import typer

__all__ = ["app"]

app = typer.Typer(help="List flows, show one, draw its graph, pause, resume, cancel, rerun it.")
