"""The root of the ``conveyor`` command: global options, the one error handler, ``demo``
and ``run``. The nouns (``job``, ``project``) live in modules of their own.

Every command parses its arguments, calls the function the Python API offers for the
task, and renders what it returned (:mod:`conveyor.cli.render`). Errors are handled in
one place, :class:`ConveyorGroup`: a :class:`~conveyor.exceptions.ConveyorError` (or a
pydantic validation error, or an OS error such as a permission problem) becomes one red
line on stderr and exit code 1; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text
from typer.core import TyperGroup

from conveyor._version import __version__
from conveyor.cli import admin as admin_cli
from conveyor.cli import flow as flow_cli
from conveyor.cli import job as job_cli
from conveyor.cli import project as project_cli
from conveyor.cli import render
from conveyor.cli import runner as runner_cli
from conveyor.exceptions import ConveyorError, NotFoundError
from conveyor.states import JobState

if TYPE_CHECKING:
    from typer._click import Context

    from conveyor.models import JobDoc
    from conveyor.project import Project
    from conveyor.runner import Runner

__all__ = ["ConveyorGroup", "app", "main"]

PROJECT_ENV = "CONVEYOR_PROJECT"
#: Seconds between two looks at the database while jobs run.
WATCH_INTERVAL = 0.1
#: How long ``conveyor demo`` lets its four jobs take.
DEMO_SECONDS = 120.0


def user_error(exc: BaseException) -> str | None:
    """The message to show for an error the user can act on; None for a bug."""
    if isinstance(exc, ConveyorError):
        return str(exc)
    if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
        return str(exc)
    if "pydantic" in sys.modules:
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            from conveyor.config.loading import format_validation_error

            return format_validation_error(exc, exc.title)
    return None


class ConveyorGroup(TyperGroup):
    """The root command group; turns user errors from any command into one red line."""

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            message = user_error(exc)
            if message is None:
                raise  # a bug: typer shows the whole traceback
            render.error_line(message, exc, debug=bool(ctx.params.get("debug")))
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=ConveyorGroup,
    name="conveyor",
    help="Run jobflow workflows and command jobs on this machine and on clusters.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="markdown",  # reflows the paragraphs of docstrings
)
app.add_typer(job_cli.app, name="job")
app.add_typer(project_cli.app, name="project")
app.add_typer(flow_cli.app, name="flow")
app.add_typer(runner_cli.app, name="runner")
app.add_typer(admin_cli.app, name="admin")


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"conveyor {__version__}")
        raise typer.Exit()


def _restore_env(name: str, previous: str | None) -> None:
    if previous is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = previous


@app.callback()
def root(
    ctx: typer.Context,
    project: Annotated[
        str | None,
        typer.Option(
            "--project",
            "-p",
            metavar="NAME_OR_PATH",
            help="The project: a name under $CONVEYOR_HOME/projects or a project file "
            "(default: $CONVEYOR_PROJECT, else 'default').",
            show_default=False,
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of errors.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_show_version,
            is_eager=True,
            help="Show Conveyor's version and exit.",
        ),
    ] = False,
) -> None:
    """Run jobflow workflows and command jobs on this machine and on clusters.

    Try 'conveyor demo' first; then 'conveyor project init' and 'conveyor run FILE.py'.
    """
    if project is not None:
        from conveyor.config import project_file

        # Every API call of the command opens the current project through this variable.
        ctx.call_on_close(partial(_restore_env, PROJECT_ENV, os.environ.get(PROJECT_ENV)))
        os.environ[PROJECT_ENV] = str(project_file(project))


def main() -> None:
    """The ``conveyor`` console script."""
    app(prog_name="conveyor")


# --- running flows and watching them ----------------------------------------------


class _Watcher(threading.Thread):
    """Calls ``show`` every :data:`WATCH_INTERVAL` seconds until :meth:`finish`.

    The runner keeps the main thread, so its SIGINT/SIGTERM handling (first signal:
    finish the steps in hand; second: exit) works as in a runner process.
    """

    def __init__(self, show: Callable[[], object]) -> None:
        super().__init__(name="conveyor-watch", daemon=True)
        self._show = show
        self._done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self._done.wait(WATCH_INTERVAL):
                self._show()
        except BaseException as exc:  # handed to the main thread by finish()
            self.error = exc

    def finish(self) -> None:
        self._done.set()
        self.join()
        if self.error is not None:
            raise self.error


def _run_and_watch(
    runner: Runner, flow_uuid: str, max_seconds: float | None, *, follow: bool
) -> tuple[bool, list[JobDoc]]:
    """Run every job to the end (or ``max_seconds``), printing each state change of the
    flow's jobs if ``follow``. Returns whether the runner finished, and the jobs."""
    from conveyor import api

    follower = render.HistoryFollower()
    console = render.stdout()

    def show() -> list[JobDoc]:
        docs = api.list_jobs(flow_uuids=[flow_uuid], newest_first=False, project=runner.project)
        if follow:
            for _, line in follower.new_lines(docs):
                console.print(line)
        return docs

    show()
    watcher = _Watcher(show)
    watcher.start()
    try:
        finished = runner.run_all_jobs(max_seconds=max_seconds, flows=[flow_uuid])
    finally:
        watcher.finish()
    return finished, show()


def _output_text(project: Project, doc: JobDoc) -> str:
    if doc.state is not JobState.COMPLETED:
        return "-"
    from conveyor import api

    try:
        value = api.get_output(doc.db_id, project=project)
    except NotFoundError:
        return "(no output stored)"
    return render.short(repr(value), 200)


def _report(
    project: Project, flow_uuid: str, docs: list[JobDoc], finished: bool, max_seconds: float | None
) -> bool:
    """Print the jobs with their outputs and the flow's state; True if all completed."""
    console = render.stdout()
    console.print()
    console.print(render.outputs_table((doc, _output_text(project, doc)) for doc in docs))
    from conveyor import api

    flow = api.get_flow(flow_uuid, project=project)
    line = Text(f"Flow {flow.name or flow.uuid}: ")
    line.append(str(flow.state), style="green" if flow.state == "COMPLETED" else "bold red")
    console.print(line)
    if not finished:
        limit = f" after {max_seconds:g} s" if max_seconds is not None else ""
        render.stderr().print(
            Text(f"The runner stopped{limit} before every job finished.", style="yellow")
        )
    failed = [doc.db_id for doc in docs if doc.state is not JobState.COMPLETED]
    if failed:
        ids = " ".join(str(i) for i in failed)
        render.stderr().print(
            Text(f"Not completed: job(s) {ids}; see 'conveyor job info ID'.", style="red")
        )
    return finished and not failed


@app.command()
def demo(
    throwaway: Annotated[
        bool,
        typer.Option(
            "--throwaway",
            "-t",
            help="Use a temporary project, deleted afterwards, instead of the current one.",
        ),
    ] = False,
) -> None:
    """Run a small example flow and show every state change.

    The flow runs in the current project (--project / CONVEYOR_PROJECT, else 'default',
    which is created on first use: an embedded database in the project folder and a
    local worker that runs each job as a background process), so 'conveyor job list'
    shows its jobs afterwards. The flow is a diamond of four 'add' jobs (start = 1 + 2;
    left and right add 10 and 20 to it; combine adds those two). Every job is shown
    passing READY, CHECKED_OUT, UPLOADED, SUBMITTED, RUNNING, TERMINATED, DOWNLOADED and
    COMPLETED; then the outputs. Exit code 0 if every job completed.
    """
    import shutil
    import tempfile

    from conveyor.config import init_project
    from conveyor.project import open_project

    if throwaway:
        folder = Path(tempfile.mkdtemp(prefix="conveyor-demo-"))
        try:
            ok = _demo(open_project(init_project("demo", folder)), f"throwaway project in {folder}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    else:
        from conveyor.config import DEFAULT_PROJECT, project_file

        path = project_file()
        made = ""
        if not path.exists() and not os.environ.get(PROJECT_ENV):
            init_project(DEFAULT_PROJECT)
            made = " (created now)"
        project = open_project(path)
        ok = _demo(project, f"project {project.name!r}{made}: {path}")
    if not ok:
        raise typer.Exit(1)


def _demo(project: Project, where: str) -> bool:
    from conveyor.examples import demo_flow
    from conveyor.runner import Runner
    from conveyor.submit import submit_flow

    console = render.stdout()
    flow = demo_flow()
    ids = submit_flow(flow, project=project)
    console.print(f"Demo in {where}")
    console.print(f"Submitted flow {flow.name!r}: jobs {ids[0]} to {ids[-1]}.\n")
    runner = Runner(project)
    finished, docs = _run_and_watch(runner, flow.uuid, DEMO_SECONDS, follow=True)
    ok = _report(project, flow.uuid, docs, finished, DEMO_SECONDS)
    console.print("See them again with 'conveyor job list'.")
    return ok


def load_flow(path: Path) -> Any:
    """Import ``path`` as the module named after its stem and return its ``flow``.

    jobflow records a job's function by module name, so the runner and the worker must
    both import the file under that name: its folder goes first on ``sys.path`` here,
    and into ``PYTHONPATH`` of the jobs (see :func:`run`).
    """
    import importlib.util

    from jobflow.core.flow import Flow
    from jobflow.core.job import Job

    path = path.resolve()
    stem = path.stem
    if not stem.isidentifier():
        raise ConveyorError(
            f"{path.name}: rename the file to a Python module name (letters, digits, '_'); "
            "workers import its jobs by that name"
        )
    _refuse_shadowing(stem, path)
    folder = str(path.parent)
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(stem, path)
    if spec is None or spec.loader is None:
        raise ConveyorError(f"{path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[stem] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(stem, None)
        raise ConveyorError(
            f"importing {path} failed: {type(exc).__name__}: {exc} (--debug shows the traceback)"
        ) from exc
    flow = getattr(module, "flow", None)
    if flow is None:
        raise ConveyorError(
            f"{path.name} defines no module-level 'flow'; add one, e.g. flow = Flow([job1, job2])"
        )
    if not isinstance(flow, Flow | Job):
        raise ConveyorError(
            f"'flow' in {path.name} is a {type(flow).__name__}; it must be a jobflow Flow or Job"
        )
    return flow


def _refuse_shadowing(stem: str, path: Path) -> None:
    """Refuse a file named like a module that this process or a worker may need."""
    import importlib.util

    loaded = sys.modules.get(stem)
    if loaded is not None:
        if getattr(loaded, "__file__", None) == str(path):
            return  # the same file again (tests running it twice in one process)
        clash = getattr(loaded, "__file__", None) or "built in"
    elif stem in sys.stdlib_module_names:
        clash = "the standard library"
    else:
        try:
            spec = importlib.util.find_spec(stem)
        except (ImportError, ValueError):
            spec = None
        origin = spec.origin if spec is not None else None
        if spec is None or origin == str(path):
            return
        clash = origin or "a package"
    raise ConveyorError(
        f"{path.name} has the name of the module {stem!r} ({clash}); rename the file, "
        "since jobs are imported by the file's name"
    )


@app.command()
def run(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE.py",
            exists=True,
            dir_okay=False,
            readable=True,
            help="A Python file with a module-level 'flow' (a jobflow Flow or Job).",
        ),
    ],
    worker: Annotated[
        str | None,
        typer.Option("--worker", "-w", help="Run the jobs on this worker (default: the first)."),
    ] = None,
    max_seconds: Annotated[
        float | None,
        typer.Option(
            "--max-seconds", "-t", min=0, help="Stop after this many seconds (default: no limit)."
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Do not print each state change.")
    ] = False,
) -> None:
    """Submit the 'flow' of a Python file to the current project and run it to the end.

    FILE.py is imported as the module named after the file (not as `__main__`), so the
    @job functions defined in it can be imported by name on the worker: its folder is
    put on the jobs' PYTHONPATH. A runner in this process then runs every job; the
    state changes are printed as they happen, then each job's final state and output.
    Exit code 0 if every job completed. Ctrl-C stops the runner after the steps in hand.
    """
    from jobflow.core.flow import Flow

    from conveyor.project import open_project
    from conveyor.runner import Runner
    from conveyor.submit import submit_flow

    flow = load_flow(file)
    if not isinstance(flow, Flow):
        flow = Flow([flow], name=file.stem)
    if not flow.jobs:
        raise ConveyorError(f"the flow in {file.name} has no jobs")
    folder = str(file.resolve().parent)
    pythonpath = os.pathsep.join(p for p in (folder, os.environ.get("PYTHONPATH")) if p)
    project = open_project()
    ids = submit_flow(flow, worker=worker, exec_env={"PYTHONPATH": pythonpath}, project=project)
    render.stdout().print(
        f"Submitted {len(ids)} job(s) of {file.name} to project {project.name!r}; running them."
    )
    runner = Runner(project)
    finished, docs = _run_and_watch(runner, flow.uuid, max_seconds, follow=not quiet)
    if not _report(project, flow.uuid, docs, finished, max_seconds):
        raise typer.Exit(1)
