"""``conveyor job ...``: look at jobs and act on one."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.text import Text

from conveyor.cli import render
from conveyor.models import utcnow
from conveyor.states import JobState

__all__ = ["app", "parse_states"]

app = typer.Typer(
    help="List jobs, show one in full, retry or rerun it.",
    no_args_is_help=True,
)


def parse_states(values: list[str] | None) -> list[JobState] | None:
    """The states named on the command line (any case); a clear error on a typo."""
    from conveyor.api import parse_state

    return [parse_state(value) for value in values] if values else None


@app.command("list")
def list_(
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state", "-s", metavar="STATE", help="Only jobs in this state (repeat for several)."
        ),
    ] = None,
    worker: Annotated[
        list[str] | None,
        typer.Option(
            "--worker",
            "-w",
            metavar="WORKER",
            help="Only jobs of this worker (repeat for several).",
        ),
    ] = None,
    flow: Annotated[
        str | None,
        typer.Option(
            "--flow", "-f", metavar="FLOW_UUID", help="Only the jobs of this flow (its uuid)."
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=0, help="Show at most this many jobs; 0: all.")
    ] = 50,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list of the jobs instead of a table.")
    ] = False,
) -> None:
    """List jobs, newest first.

    The table shows each job's db id, name, state, worker, last update and the first
    line of its error. With --json, stdout holds only a JSON list of the job documents
    (without the serialized jobflow job; see 'conveyor job info ID --json' for that).
    """
    from conveyor import api

    states = parse_states(state)
    flows = [flow] if flow else None
    docs = api.list_jobs(states=states, workers=worker, flow_uuids=flows, limit=limit)
    if as_json:
        render.print_json([render.job_json(doc) for doc in docs])
        return
    total = len(docs)
    if limit and total == limit:
        total = api.count_jobs(states=states, workers=worker, flow_uuids=flows)
    console = render.stdout()
    if docs:
        console.print(render.jobs_table(docs))
    console.print(f"{len(docs)} jobs shown of {total}", style="dim")


@app.command()
def info(
    db_id: Annotated[int, typer.Argument(metavar="ID", help="The job's db id.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole job document as JSON.")
    ] = False,
) -> None:
    """Show everything about one job.

    Its state and history, worker, run dir, queue id, queue state and exit code, the
    lock and who holds it, failed attempts, and the error with its message and
    traceback. With --json, the full stored document (including the serialized
    jobflow job).
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
def retry(db_id: Annotated[int, typer.Argument(metavar="ID", help="The job's db id.")]) -> None:
    """Try a job's failed step again now.

    A job in REMOTE_ERROR goes back to the state it failed in, with a fresh count of
    attempts; a job waiting out the backoff of a failed step is released at once. A
    running runner picks it up.
    """
    from conveyor import api

    doc = api.retry(db_id, by="cli")
    _print_state(doc.db_id, doc.name, doc.state)


@app.command()
def rerun(db_id: Annotated[int, typer.Argument(metavar="ID", help="The job's db id.")]) -> None:
    """Run a finished job again.

    The job goes back to READY and the jobs that depend on it to WAITING; they keep
    their db ids. Jobs a runner is working on are refused.
    """
    from conveyor import api

    doc = api.rerun(db_id, by="cli")
    _print_state(doc.db_id, doc.name, doc.state)


@app.command()
def script(
    db_id: Annotated[int, typer.Argument(metavar="ID", help="The job's db id.")],
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


def _print_state(db_id: int, name: str, state: JobState) -> None:
    line = Text(f"job {db_id} {name}: ")
    line.append_text(render.state_text(state))
    render.stdout().print(line)
