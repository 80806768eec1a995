"""The ``conveyor`` command line, built on the Python API (one module per noun).

``app`` is the typer application (for ``typer.testing.CliRunner`` and for embedding);
``main()`` is the console script.
"""

from conveyor.cli.main import app, main

__all__ = ["app", "main"]
