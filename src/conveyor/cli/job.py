"""``conveyor job ...``: look at jobs (here) and change them (defined in
:mod:`conveyor.cli.job_changes`, registered at the end of this module).

Commands that change jobs take db ids (``12``, ``10-20``) or the filters of ``job
list``, show the jobs and ask first when there are more than
:data:`~conveyor.cli.selection.CONFIRM_THRESHOLD` of them (``--yes`` skips that), and
print what happened to each. Each calls the Python API function of the same name.
"""

from __future__ import annotations

import sys
from typing import Annotated, Literal

import typer

from conveyor.cli import job_changes, render
from conveyor.cli.selection import (
    CreatedSince,
    CreatedUntil,
    ErrorOpt,
    FlowOpt,
    Ids,
    JsonOpt,
    LockedOpt,
    NameOpt,
    Selection,
    StateOpt,
    UpdatedSince,
    UpdatedUntil,
    WorkerOpt,
)
from conveyor.exceptions import ConveyorError
from conveyor.models import utcnow
from conveyor.states import JobState

__all__ = ["app", "parse_states", "set_app"]

app = typer.Typer(
    help="List jobs, show one in full, and change them: rerun, retry, pause, resume, "
    "cancel, delete, set their state, worker, resources or priority.",
    no_args_is_help=True,
)
set_app = typer.Typer(
    help="Change the worker, queue resources or priority of jobs.", no_args_is_help=True
)
app.add_typer(set_app, name="set")

IdArg = Annotated[int, typer.Argument(metavar="ID", help="The job's db id.")]


def parse_states(values: list[str] | None) -> list[JobState] | None:
    """The states named on the command line (any case); a clear error on a typo."""
    from conveyor.api import parse_state

    return [parse_state(value) for value in values] if values else None


# --- reading ------------------------------------------------------------------------------


@app.command("list")
def list_(
    ids: Ids = None,
    state: StateOpt = None,
    worker: WorkerOpt = None,
    flow: FlowOpt = None,
    name: NameOpt = None,
    created_since: CreatedSince = None,
    created_until: CreatedUntil = None,
    updated_since: UpdatedSince = None,
    updated_until: UpdatedUntil = None,
    locked: LockedOpt = None,
    error: ErrorOpt = None,
    sort: Annotated[
        str,
        typer.Option(
            "--sort",
            "-o",
            metavar="KEY",
            help="Order by id, created, updated (newest first), priority (highest first), "
            "state (pipeline order), name or worker.",
        ),
    ] = "id",
    reverse: Annotated[bool, typer.Option("--reverse", "-r", help="Reverse the order.")] = False,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=0, help="Show at most this many jobs; 0: all.")
    ] = 50,
    count: Annotated[
        bool, typer.Option("--count", "-c", help="Print only how many jobs match.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list of the jobs instead of a table.")
    ] = False,
) -> None:
    """List jobs, newest first.

    Filters combine (all must hold): db ids and ranges (`conveyor job list 10-20`),
    --state, --worker, --flow (repeat each for several), --name PATTERN, times created
    or last changed, --locked, --error. The table shows each job's db id, name, state,
    worker, last update and the first line of its error. With --json, stdout holds only
    a JSON list of the job documents (without the serialized jobflow job; see
    'conveyor job info ID --json' for that); with --count, only the number.
    """
    from conveyor import api

    selection = Selection(
        ids, state, worker, flow, name, created_since, created_until, updated_since,
        updated_until, locked, error,
    )  # fmt: skip
    query = selection.query()
    if count:
        total = api.count_selected(query)
        if as_json:
            render.print_json({"count": total})
        else:
            render.stdout().print(total)
        return
    docs = api.select_jobs(query, sort=sort, reverse=reverse, limit=limit)
    if as_json:
        render.print_json([render.job_json(doc) for doc in docs])
        return
    total = len(docs)
    if limit and total == limit:
        total = api.count_selected(query)
    console = render.stdout()
    if docs:
        console.print(render.jobs_table(docs))
    console.print(f"{len(docs)} jobs shown of {total}", style="dim")


@app.command()
def info(
    db_id: IdArg,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole job document as JSON.")
    ] = False,
) -> None:
    """Show everything about one job.

    Its state and history, worker, run dir, queue id, queue state and exit code, the
    queue's reason for a failure, the lock and who holds it, failed attempts, and the
    error with its message and traceback. With --json, the full stored document
    (including the serialized jobflow job).
    """
    from conveyor import api

    doc = api.get_job(db_id)
    if as_json:
        render.print_json(render.job_json(doc, full=True))
        return
    console = render.stdout()
    for part in render.job_details(doc, utcnow()):
        console.print(part)


@app.command()
def history(
    db_id: IdArg,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list of the state changes.")
    ] = False,
) -> None:
    """Show every state change of a job: from, to, when and by whom (a runner id, 'cli',
    'api', 'submit').

    A job keeps its last 50 changes.
    """
    from conveyor import api

    doc = api.get_job(db_id)
    if as_json:
        render.print_json(render.history_json(doc))
        return
    console = render.stdout()
    console.print(render.history_table(doc))


@app.command()
def logs(
    db_id: IdArg,
    stream: Annotated[
        str,
        typer.Option(
            "--stream", "-s", metavar="WHICH", help="Show 'out', 'err' or 'both' (default)."
        ),
    ] = "both",
    tail: Annotated[
        int, typer.Option("--tail", "-t", min=0, help="Show only the last N lines; 0: all.")
    ] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print stdout, stderr and their source as JSON.")
    ] = False,
) -> None:
    """Show what the queue caught of a job's stdout and stderr.

    Read from the job's run dir on its worker (over SSH for a remote one), or, when the
    run dir is gone or the worker unreachable, from the copies the runner downloaded.
    """
    from conveyor import api

    if stream not in ("out", "err", "both"):
        raise ConveyorError(f"--stream {stream!r}: use out, err or both")
    found = api.job_logs(db_id)
    if as_json:
        render.print_json(
            {"db_id": db_id, "stdout": found.stdout, "stderr": found.stderr, "source": found.source}
        )
        return
    parts = {"out": ("stdout", found.stdout), "err": ("stderr", found.stderr)}
    chosen = ["out", "err"] if stream == "both" else [stream]
    render.stderr().print(f"# from the {found.source}", style="dim")
    for key in chosen:
        label, text = parts[key]
        if stream == "both":
            render.stderr().print(f"# ---- {label}", style="dim")
        if text is None:
            render.stderr().print(f"(no {label} file)", style="dim")
            continue
        lines = text.splitlines(keepends=True)
        sys.stdout.write("".join(lines[-tail:] if tail else lines))
        if lines and not lines[-1].endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()


@app.command()
def files(
    db_id: IdArg,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run dir and its file names as JSON.")
    ] = False,
) -> None:
    """List the files in a job's run dir on its worker."""
    from conveyor import api

    found = api.job_files(db_id)
    if as_json:
        render.print_json(
            {
                "db_id": found.db_id,
                "worker": found.worker,
                "host": found.host,
                "run_dir": found.run_dir,
                "files": found.names,
            }
        )
        return
    render.stderr().print(f"# {found.run_dir} on {found.host}", style="dim")
    for name in found.names:
        sys.stdout.write(name + "\n")


@app.command()
def output(
    db_id: IdArg,
    load: Annotated[
        bool,
        typer.Option("--load", help="Load data the job put in additional stores (blobs)."),
    ] = False,
) -> None:
    """Print the output a completed job stored in the project's JobStore, as JSON.

    Values JSON cannot hold are shown as monty serializes them (objects with an
    as_dict method as dicts, others as text).
    """
    from monty.json import jsanitize

    from conveyor import api

    value = api.get_output(db_id, load=load)
    render.print_json(jsanitize(value, strict=False, recursive_msonable=True, enum_values=True))


@app.command()
def script(
    db_id: IdArg,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print run dir, files and submit argv as JSON.")
    ] = False,
) -> None:
    """Show exactly what would be submitted for a job, without submitting it.

    Prints each file the upload step writes for the worker's queue (the job script,
    and for some queues a submit description), then the submit command. A job not yet
    checked out shows the run dir it would get and a placeholder submit token.
    """
    import shlex

    from conveyor import api

    found = api.job_script(db_id)
    if as_json:
        render.print_json(
            {"run_dir": found.run_dir, "files": found.files, "submit_argv": found.submit_argv}
        )
        return
    out = sys.stdout
    for name, text in found.files.items():
        out.write(f"# ---- {found.run_dir}/{name}\n{text}")
    out.write(f"# ---- submitted with (in {found.run_dir}):\n{shlex.join(found.submit_argv)}\n")


@app.command()
def wait(
    ids: Ids = None,
    state: StateOpt = None,
    worker: WorkerOpt = None,
    flow: FlowOpt = None,
    name: NameOpt = None,
    until: Annotated[
        str,
        typer.Option(
            "--until",
            "-u",
            metavar="WHEN",
            help="'terminated': every job has ended (default); 'started': every job runs.",
        ),
    ] = "terminated",
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", "-t", min=0, help="Give up after this many seconds."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Wait until jobs have ended (or started), then list them.

    A runner must be running (the daemon, or 'conveyor runner run' elsewhere): this
    only watches the database. Exit code 0 if every job COMPLETED (with --until
    terminated), 1 otherwise or on timeout.
    """
    from conveyor import api

    if until not in ("terminated", "started"):
        raise ConveyorError(f"--until {until!r}: use terminated or started")
    when: Literal["terminated", "started"] = "started" if until == "started" else "terminated"
    query = Selection(ids, state, worker, flow, name).query()
    if query.is_empty:
        raise ConveyorError("name the jobs to wait for: db ids, --state, --flow ...")
    ids_found = [doc.db_id for doc in api.select_jobs(query, reverse=True)]
    if not ids_found:
        raise ConveyorError("no job matches")
    docs = api.wait(ids_found, until=when, timeout=timeout)
    if as_json:
        render.print_json([render.job_json(doc) for doc in docs])
    else:
        render.stdout().print(render.jobs_table(docs))
    if until == "terminated" and any(doc.state is not JobState.COMPLETED for doc in docs):
        raise typer.Exit(1)


# --- changing jobs (defined in conveyor.cli.job_changes) -------------------------------

app.command()(job_changes.retry)
app.command()(job_changes.rerun)
app.command()(job_changes.pause)
app.command()(job_changes.resume)
app.command()(job_changes.cancel)
app.command("set-state")(job_changes.set_state)
app.command()(job_changes.delete)
app.command()(job_changes.hold)
app.command()(job_changes.release)
set_app.command("worker")(job_changes.set_worker)
set_app.command("resources")(job_changes.set_resources)
set_app.command("priority")(job_changes.set_priority)
