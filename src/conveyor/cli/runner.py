"""``conveyor runner ...``: the supervised runner daemon, and a runner in the foreground.

The commands are thin: :class:`conveyor.runner.daemon.Daemon` does the work.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from conveyor.cli import render
from conveyor.models import utcnow

if TYPE_CHECKING:
    from conveyor.runner.daemon import DaemonLayout, DaemonStatus, RunnerStatus

__all__ = ["app"]

app = typer.Typer(
    help="Start, stop and watch the runner daemon; run a runner in the foreground.",
    no_args_is_help=True,
)

#: Without --all, status shows at most this many runners that have ended, and only
#: those that ended within :data:`RECENT`.
MAX_ENDED = 10
RECENT = timedelta(hours=1)
_STATE_STYLES = {
    "RUNNING": "green",
    "live": "green",
    "STARTING": "cyan",
    "STOPPING": "yellow",
    "BACKOFF": "bold red",
    "FATAL": "bold red",
    "EXITED": "yellow",
    "stale": "bold red",
    "dead": "red",
    "stopped": "dim",
    "STOPPED": "dim",
}

SplitOption = Annotated[
    bool,
    typer.Option(
        "--split",
        "-s",
        help="Run the checkout, transfer, queue and complete roles in processes of their own.",
    ),
]
TransferOption = Annotated[
    int | None,
    typer.Option(
        "--transfer", "-t", min=1, metavar="N", help="With --split: N transfer processes [1]."
    ),
]
CompleteOption = Annotated[
    int | None,
    typer.Option(
        "--complete", "-c", min=1, metavar="N", help="With --split: N complete processes [1]."
    ),
]


def _layout(split: bool, transfer: int | None, complete: int | None) -> DaemonLayout:
    from conveyor.runner.daemon import DaemonLayout

    return DaemonLayout(split=split, transfer=transfer or 1, complete=complete or 1)


def _styled(state: str) -> Text:
    return Text(state, style=_STATE_STYLES.get(state, ""))


def _roles(roles: Sequence[str]) -> str:
    from conveyor.runner import ALL_ROLES

    return "all" if set(roles) == set(ALL_ROLES) else ",".join(roles)


def _recent(runner: RunnerStatus) -> bool:
    last = runner.doc.stopped_at or runner.doc.heartbeat_at
    return utcnow() - last < RECENT


def _show_status(status: DaemonStatus, hidden: int) -> None:
    console = render.stdout()
    if status.running:
        console.print(
            f"Runner daemon of project {status.project!r}: running (supervisord pid "
            f"{status.pid}), {status.config}"
        )
    else:
        console.print(f"Runner daemon of project {status.project!r}: not running")
    if status.programs:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("process", "state", "pid", "roles", "started"):
            table.add_column(column, no_wrap=True)
        table.add_column("note", overflow="fold")
        for program in status.programs:
            table.add_row(
                program.name,
                _styled(program.state),
                str(program.pid or "-"),
                _roles(program.roles),
                render.when(program.started_at),
                "" if program.state == "RUNNING" else program.description,
            )
        console.print(table)
    for problem in status.problems:
        render.stderr().print(Text(problem, style="yellow"))
    console.print()
    from conveyor.runner.daemon import STALE_HEARTBEATS

    stale_after = status.heartbeat_interval * STALE_HEARTBEATS
    console.print(
        f"Runners registered in the database (heartbeat every {status.heartbeat_interval:g} s,"
        f" stale after {stale_after:g} s without one):"
    )
    if status.runners:
        now = utcnow()
        table = Table(box=None, pad_edge=False, collapse_padding=True, header_style="bold")
        table.add_column("runner id", overflow="fold", min_width=16)
        table.add_column("host", overflow="fold")
        for column in ("pid", "roles", "version", "started", "heartbeat", "status"):
            table.add_column(column, no_wrap=True)
        for runner in status.runners:
            doc = runner.doc
            table.add_row(
                doc.runner_id,
                doc.hostname,
                str(doc.pid),
                _roles(doc.roles),
                doc.version,
                doc.started_at.astimezone().strftime("%m-%d %H:%M:%S"),
                f"{(now - doc.heartbeat_at).total_seconds():.1f}s ago",
                _styled(runner.status),
            )
        console.print(table)
    else:
        console.print("  none", style="dim")
    if hidden:
        console.print(f"{hidden} older runner(s) that have ended not shown; --all shows them")


@app.command()
def start(
    split: SplitOption = False,
    transfer: TransferOption = None,
    complete: CompleteOption = None,
) -> None:
    """Start the project's runner daemon in the background.

    Writes a supervisord configuration into the folder `daemon` of the project's
    folder and starts supervisord, which starts the runner processes and
    starts again any that dies. By default one process takes every role; with --split,
    the checkout, transfer, queue and complete roles run in processes of their own
    (--transfer N and --complete N of those two). Returns once every process runs.
    Fails if the daemon already runs.
    """
    from conveyor.runner.daemon import Daemon

    daemon = Daemon()
    pid = daemon.start(_layout(split, transfer, complete))
    count = len(daemon.programs())
    render.stdout().print(
        f"Started the runner daemon of project {daemon.project.name!r}: supervisord pid {pid}, "
        f"{count} runner process(es). 'conveyor runner status' shows them."
    )


@app.command()
def stop(
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            "-w",
            help="Return only once every process has exited and released its locks.",
        ),
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            "-t",
            min=0,
            help="With --wait: give up (exit 1) after this many seconds [330].",
        ),
    ] = None,
) -> None:
    """Stop the runner daemon gracefully.

    Every runner process gets SIGTERM: it finishes the steps in hand, releases its
    locks and exits (supervisord kills one that takes over 300 s); then supervisord
    exits. Jobs in a queue keep running and are picked up by the next runner.
    """
    from conveyor.runner.daemon import Daemon

    daemon = Daemon()
    pids = daemon.stop(wait=wait, timeout=timeout)
    name = daemon.project.name
    console = render.stdout()
    if not pids:
        console.print(f"The runner daemon of project {name!r} is not running.")
    elif wait:
        console.print(f"Stopped the runner daemon of project {name!r}; no lock is held.")
    else:
        listed = " ".join(str(p) for p in pids)
        console.print(
            f"Stopping the runner daemon of project {name!r} (pids {listed}); "
            "'conveyor runner stop --wait' waits for it."
        )


@app.command()
def kill() -> None:
    """Kill the runner daemon and its runner processes at once (SIGKILL).

    Steps in hand are cut short; their locks are freed when their leases expire, and
    the next runner takes the jobs over.
    """
    from conveyor.runner.daemon import Daemon

    daemon = Daemon()
    pids = daemon.kill()
    name = daemon.project.name
    if pids:
        listed = " ".join(str(p) for p in pids)
        render.stdout().print(f"Killed the runner daemon of project {name!r}: pids {listed}.")
    else:
        render.stdout().print(f"The runner daemon of project {name!r} is not running.")


@app.command()
def restart(
    split: Annotated[
        bool | None,
        typer.Option(
            "--split/--single",
            "-s/-S",
            help="Processes per role, or one for all roles [as before].",
            show_default=False,
        ),
    ] = None,
    transfer: TransferOption = None,
    complete: CompleteOption = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0, help="Give up stopping after this many seconds [330]."),
    ] = None,
) -> None:
    """Stop the daemon (waiting for every process to exit), then start it again.

    Without options it starts the same processes as before.
    """
    from conveyor.runner.daemon import Daemon

    daemon = Daemon()
    layout = None
    if split is not None or transfer is not None or complete is not None:
        split = split if split is not None else daemon.layout().split
        layout = _layout(split, transfer, complete)
    pid = daemon.restart(layout, timeout=timeout)
    render.stdout().print(
        f"Restarted the runner daemon of project {daemon.project.name!r}: supervisord pid {pid}."
    )


@app.command()
def status(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the status as JSON instead of tables.")
    ] = False,
    all_: Annotated[
        bool,
        typer.Option("--all", "-a", help="Show every runner that has ended, not the last 10."),
    ] = False,
) -> None:
    """Show the daemon's runner processes and every runner registered in the database.

    The processes are those supervisord runs on this machine, with their state
    (STARTING, RUNNING, BACKOFF, STOPPED, EXITED, FATAL). The registrations are every
    runner of the project on any machine: live, stale (no heartbeat for three heartbeat
    intervals), stopped, or dead (on this machine, and its process is gone).
    """
    from dataclasses import replace

    from conveyor.runner.daemon import Daemon

    found = Daemon().status()
    shown = found.runners
    if not all_:
        ended = [r for r in found.runners if r.status not in ("live", "stale") and _recent(r)]
        keep = {id(r) for r in ended[:MAX_ENDED]}
        shown = [r for r in found.runners if r.status in ("live", "stale") or id(r) in keep]
    hidden = len(found.runners) - len(shown)
    found = replace(found, runners=shown)
    if as_json:
        render.print_json(found.to_json())
        return
    _show_status(found, hidden)


@app.command()
def logs(
    program: Annotated[
        str | None,
        typer.Argument(
            metavar="[PROCESS]",
            help="A process (runner_00, transfer_01), a program (transfer) or supervisord.",
            show_default=False,
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing what is appended (Ctrl-C).")
    ] = False,
    lines: Annotated[
        int, typer.Option("--lines", "-n", min=0, help="Lines from the end of each log; 0: all.")
    ] = 40,
) -> None:
    """Print the logs of the runner processes (all of them, or one)."""
    from conveyor.runner.daemon import Daemon, follow_files, last_lines

    daemon = Daemon()
    files = daemon.log_files(program)
    out = sys.stdout
    read_to = {}
    for path in files:
        if len(files) > 1:
            out.write(f"==> {path} <==\n")
        text, read_to[path] = last_lines(path, lines)
        out.write("".join(text))
    out.flush()
    if follow:

        def write(text: str) -> None:
            out.write(text)
            out.flush()

        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends --follow, quietly
            follow_files(lambda: daemon.log_files(program), write, since=read_to)


@app.command()
def run(
    roles: Annotated[
        list[str] | None,
        typer.Option(
            "--roles",
            "-r",
            metavar="ROLES",
            help="Roles, comma-separated or repeated: checkout, transfer, queue, complete [all].",
            show_default=False,
        ),
    ] = None,
    worker: Annotated[
        list[str] | None,
        typer.Option(
            "--worker", "-w", metavar="WORKER", help="Only jobs of this worker (repeat) [all]."
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            "-n",
            help="Name this process in its runner id (the daemon names its processes).",
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", "-l", help="DEBUG, INFO, WARNING or ERROR.")
    ] = "INFO",
) -> None:
    """Run a runner in the foreground until Ctrl-C or SIGTERM; log to stderr.

    For debugging, and for workers whose login asks for a password or a one-time code.
    The first Ctrl-C (or SIGTERM) finishes the steps in hand and releases every lock;
    a second one exits at once.
    """
    from conveyor.runner import ALL_ROLES, Runner
    from conveyor.runner.daemon import runner_id_for

    chosen = [part.strip() for value in roles or [] for part in value.split(",") if part.strip()]
    unknown = sorted(set(chosen) - set(ALL_ROLES))
    if unknown:
        raise typer.BadParameter(
            f"unknown roles {unknown}; use {', '.join(ALL_ROLES)}", param_hint="--roles"
        )
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        raise typer.BadParameter(f"unknown level {log_level!r}", param_hint="--log-level")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        runner_id = runner_id_for(name) if name else None
        Runner(roles=chosen or None, workers=worker, runner_id=runner_id).run()
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
