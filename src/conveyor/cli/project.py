"""``conveyor project ...``: create a project file, list them, show the current one,
check its workers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from conveyor.cli import render

if TYPE_CHECKING:
    from conveyor.hosts import CommandResult
    from conveyor.project import Project
    from conveyor.queue import QueueAdapter

__all__ = ["Check", "app", "check_worker"]

app = typer.Typer(help="Create a project, show its settings, or check its workers.")


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


@app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """List the projects under $CONVEYOR_HOME/projects: name, file, database URL
    (password masked), and which one is current (--project / CONVEYOR_PROJECT).
    """
    from rich.table import Table
    from rich.text import Text

    from conveyor import api

    entries = api.list_projects()
    rows = [
        {
            "name": e.name,
            "path": str(e.path),
            "database_url": render.masked(e.database_url),
            "current": e.current,
            "error": e.error or None,
        }
        for e in entries
    ]
    if as_json:
        render.print_json(rows)
        return
    if not rows:
        render.stdout().print(
            "No project under $CONVEYOR_HOME/projects; 'conveyor project init' creates one."
        )
        return
    table = Table(box=None)
    for column in ("", "name", "path", "database"):
        table.add_column(column)
    for row in rows:
        url, error = row["database_url"], row["error"]
        database = Text(str(error), style="red") if error else Text(str(url))
        mark = "*" if row["current"] else ""
        table.add_row(mark, Text(row["name"]), Text(row["path"]), database)
    render.stdout().print(table)


@dataclass
class Check:
    """One check of a worker: what was checked, whether it passed, and the fix."""

    worker: str
    what: str
    ok: bool
    detail: str = ""
    fix: str = ""


def _queue_programs(adapter: QueueAdapter) -> list[str]:
    """The programs the worker's queue commands run (submit, status, accounting...)."""
    from conveyor.queue import SubmitSpec

    spec = SubmitSpec(
        run_dir="/conveyor-check",
        job_name="check",
        submit_token="check-000000000000",
        command=["true"],
    )
    builders: list[Callable[[], list[str] | None]] = [
        lambda: adapter.submit_command(spec),
        lambda: adapter.status_command(["1"]),
        lambda: adapter.accounting_command("1"),
        lambda: adapter.cancel_command("1"),
        lambda: adapter.find_by_token_command(spec.submit_token),
    ]
    programs: list[str] = []
    for build in builders:
        try:
            argv = build()
        except Exception:  # an adapter may refuse the dummy id: that command is skipped
            continue
        if argv and argv[0] not in programs:
            programs.append(argv[0])
    return programs


def check_worker(project: Project, worker: str) -> list[Check]:
    """Connect to a worker's host and check what its jobs need; one :class:`Check` each.

    The host answers; the work dir is writable; the queue's commands are on the PATH;
    the worker's Python (after ``pre_run``) runs ``python -m conveyor.execution``.
    """
    import uuid

    from conveyor._version import __version__
    from conveyor.exceptions import ConveyorError

    config = project.worker(worker)
    checks: list[Check] = []

    def add(what: str, ok: bool, detail: str = "", fix: str = "") -> None:
        checks.append(Check(worker, what, ok, detail, fix))

    try:
        host = project.host(worker)
        host.execute(["true"], timeout=config.command_timeout).check()
    except ConveyorError as exc:
        add(
            "connect",
            False,
            str(exc),
            "fix the host settings of the worker (see docs/ssh.md), then check again",
        )
        return checks
    add("connect", True, host.name)

    work_dir = project.work_dir(worker)
    probe = f"{work_dir.rstrip('/')}/.conveyor-check-{uuid.uuid4().hex[:8]}"
    try:
        host.mkdir(work_dir)
        host.write_bytes(probe, b"conveyor check\n")
        host.remove(probe)
        add("work dir writable", True, work_dir)
    except (ConveyorError, OSError) as exc:
        add(
            "work dir writable",
            False,
            f"{work_dir}: {exc}",
            f"create {work_dir} on the worker with write permission for its user, or set "
            "the worker's work_dir to a directory that user can write",
        )

    programs = _queue_programs(project.adapter(worker))
    which = 'for c do command -v "$c" >/dev/null 2>&1 || echo "$c"; done'
    found = host.execute(["sh", "-c", which, "sh", *programs], timeout=config.command_timeout)
    missing = found.stdout.split()
    if found.exit_code == 0 and not missing:
        add("queue commands", True, f"{config.queue}: {' '.join(programs)}")
    else:
        add(
            "queue commands",
            False,
            f"{config.queue}: not on the PATH of the worker's login shell: "
            f"{' '.join(missing) or found.stderr.strip()}",
            f"check that the worker's queue is {config.queue!r}; put its commands on the PATH "
            "of non-interactive logins (~/.bashrc on the host), e.g. a module load there",
        )

    python = project.python(worker)
    argv = [python, "-m", "conveyor.execution", "--version"]
    if config.pre_run:
        # As in the job script: pre_run first (module loads, environment activation).
        argv = ["bash", "-c", f'{config.pre_run}\nexec "$@"', "conveyor-check", *argv]
    result: CommandResult | None = None
    try:
        result = host.execute(argv, timeout=config.command_timeout)
        detail = (result.stdout + result.stderr).strip()[-300:]
    except ConveyorError as exc:
        detail = str(exc)
    if result is not None and result.exit_code == 0:
        version = result.stdout.strip().rpartition(" ")[2]
        if version == __version__:
            add("worker python", True, f"{python}: conveyor {version}")
        else:
            add(
                "worker python",
                False,
                f"{python}: conveyor {version} there, {__version__} here",
                f"install the same version on the worker: {python} -m pip install "
                f"'conveyor-runner=={__version__}'",
            )
    else:
        add(
            "worker python",
            False,
            f"{python} -m conveyor.execution --version failed: {detail}",
            f"install Conveyor where the worker's jobs run: {python} -m pip install "
            "conveyor-runner (after pre_run's module loads), or set the worker's python to "
            "a Python that has it",
        )
    return checks


@app.command()
def check(
    workers: Annotated[
        list[str] | None,
        typer.Option("--worker", "-w", help="Check only this worker (repeat for more)."),
    ] = None,
) -> None:
    """Connect to each worker and check what its jobs need, with the fix for each problem.

    For every worker: the host answers (host key, login), the work dir is writable, the
    queue's commands are on the PATH, and the worker's Python runs
    'python -m conveyor.execution --version'. Exit code 1 if anything failed.
    """
    from conveyor.project import open_project

    project = open_project()
    names = workers or list(project.config.workers)
    for name in names:
        project.worker(name)  # a typo fails now, naming the known workers
    console = render.stdout()
    failed = 0
    for name in names:
        for item in check_worker(project, name):
            mark = "[green]ok[/green]  " if item.ok else "[red]FAIL[/red]"
            console.print(f"{mark} {item.worker}: {item.what}: {item.detail}", highlight=False)
            if not item.ok:
                failed += 1
                console.print(f"      fix: {item.fix}", highlight=False)
    if failed:
        console.print(f"{failed} problem(s) found", highlight=False)
        raise typer.Exit(1)
    console.print(f"all {len(names)} worker(s) ready", highlight=False)
