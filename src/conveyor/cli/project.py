"""``conveyor project ...``: create a project file and show the current one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from conveyor.cli import render

__all__ = ["app"]

app = typer.Typer(help="Create a project, or show the settings of the current one.")


@app.command()
def init(
    name: Annotated[
        str,
        typer.Argument(
            metavar="NAME", help="Project name; also its folder under $CONVEYOR_HOME/projects."
        ),
    ] = "default",
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            "-d",
            file_okay=False,
            help="Put the project in this folder instead of under $CONVEYOR_HOME/projects.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Overwrite an existing project file.")
    ] = False,
) -> None:
    """Write a working project file: one local worker that runs jobs as processes.

    Edit the file to add workers or a persistent database; 'conveyor project show'
    prints what it holds.
    """
    from conveyor.config import DEFAULT_PROJECT, init_project

    path = init_project(name, directory, force=force)
    console = render.stdout()
    console.print(f"Created project {name!r}: {path}")
    if directory is not None:
        choose = f"conveyor --project {path} "
    elif name != DEFAULT_PROJECT:
        choose = f"conveyor --project {name} "
    else:
        choose = "conveyor "
    console.print("Next: 'conveyor demo' shows a flow running (it needs no project),")
    console.print(f"      '{choose}run FILE.py' runs the module-level `flow` of FILE.py.")


@app.command()
def show() -> None:
    """Print the settings of the current project (--project / CONVEYOR_PROJECT) as YAML.

    Defaults are filled in; passwords and passphrases are masked.
    """
    import yaml

    from conveyor.project import open_project

    project = open_project()
    settings = render.masked(project.config.model_dump(mode="json"))
    typer.echo(f"# project {project.name}: {project.path}")
    typer.echo(yaml.safe_dump(settings, sort_keys=False), nl=False)
