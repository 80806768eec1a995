"""The ``conveyor job`` commands that change jobs: retry, rerun, pause, resume, cancel,
set-state, delete, hold, release, and ``job set worker|resources|priority``.

Each takes db ids or the filters of ``job list``, confirms a change to many jobs, calls
the API function of the same name and reports what happened to each job (see
:mod:`conveyor.cli.selection`). :mod:`conveyor.cli.job` registers them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

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
    YesOpt,
    run_on_selection,
)
from conveyor.exceptions import ConveyorError

if TYPE_CHECKING:
    from collections.abc import Callable

    from conveyor.api import Outcome

__all__ = [
    "cancel",
    "delete",
    "hold",
    "parse_resources",
    "pause",
    "release",
    "rerun",
    "resume",
    "retry",
    "set_priority",
    "set_resources",
    "set_state",
    "set_worker",
]


def _run(
    selection: Selection,
    action: Callable[[list[int]], list[Outcome]],
    verb: str,
    done: str,
    yes: bool,
    as_json: bool,
    show_state: bool = True,
) -> None:
    run_on_selection(
        selection,
        action,
        verb=verb,
        done=done,
        yes=yes,
        as_json=as_json,
        show_state=show_state,
    )


def retry(
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
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Try a job's failed step again now.

    A job in REMOTE_ERROR goes back to the state it failed in, with a fresh count of
    attempts; a job waiting out the backoff of a failed step is released at once. A
    running runner picks it up.
    """
    from conveyor import api

    selection = Selection(
        ids, state, worker, flow, name, created_since, created_until, updated_since,
        updated_until, locked, error,
    )  # fmt: skip
    _run(selection, lambda i: api.retry(i, by="cli"), "retry", "retried", yes, as_json)


def rerun(
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
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Run a finished job again.

    The job goes back to READY (WAITING if its own parents are not done) and the jobs
    that depend on it to WAITING; they keep their db ids. Refused while a runner works
    on it or on a job that depends on it.
    """
    from conveyor import api

    selection = Selection(
        ids, state, worker, flow, name, created_since, created_until, updated_since,
        updated_until, locked, error,
    )  # fmt: skip
    _run(selection, lambda i: api.rerun(i, by="cli"), "rerun", "rerun", yes, as_json)


def pause(
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
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Keep READY or WAITING jobs from starting: they become PAUSED until resumed."""
    from conveyor import api

    selection = Selection(
        ids, state, worker, flow, name, created_since, created_until, updated_since,
        updated_until, locked, error,
    )  # fmt: skip
    _run(selection, lambda i: api.pause(i, by="cli"), "pause", "paused", yes, as_json)


def resume(
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
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Let PAUSED jobs run again: READY if the jobs they depend on are done, else
    WAITING."""
    from conveyor import api

    selection = Selection(
        ids, state, worker, flow, name, created_since, created_until, updated_since,
        updated_until, locked, error,
    )  # fmt: skip
    _run(selection, lambda i: api.resume(i, by="cli"), "resume", "resumed", yes, as_json)


def cancel(
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
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Cancel jobs that have not ended; a job in its worker's queue is cancelled there
    first (scancel, qdel, condor_rm, kill ...).

    Jobs that depend on a cancelled job stay WAITING: cancel them too, or the whole
    flow ('conveyor flow cancel'). A job a runner is working on this instant is refused:
    try again a moment later.
    """
    from conveyor import api

    selection = Selection(
        ids, state, worker, flow, name, created_since, created_until, updated_since,
        updated_until, locked, error,
    )  # fmt: skip
    _run(selection, lambda i: api.cancel(i, by="cli"), "cancel", "cancelled", yes, as_json)


def set_state(
    new_state: Annotated[str, typer.Argument(metavar="STATE", help="The state to set.")],
    ids: Ids = None,
    force: Annotated[
        bool, typer.Option("--force", help="Allow a move that skips the runner's steps.")
    ] = False,
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
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Put jobs in a state by hand: a repair tool (prefer retry, rerun, cancel).

    Only moves the transition table allows. One hop along the pipeline (READY →
    CHECKED_OUT → UPLOADED → SUBMITTED → RUNNING → TERMINATED → DOWNLOADED) or a move
    to READY or WAITING is made at once; any other move skips what the runner does in
    between and needs --force (a job forced to COMPLETED has no output; one forced out
    of its queue keeps running there).
    """
    from conveyor import api

    api.parse_state(new_state)  # a typo fails before anything is selected
    selection = Selection(
        ids, state, worker, flow, name, created_since, created_until, updated_since,
        updated_until, locked, error,
    )  # fmt: skip

    def action(i: list[int]) -> list[Outcome]:
        return api.set_state(i, new_state, force=force, by="cli")

    _run(selection, action, "change the state of", "changed", yes, as_json)


def delete(
    ids: Ids = None,
    outputs: Annotated[
        bool, typer.Option("--outputs", help="Also delete their outputs from the JobStore.")
    ] = False,
    run_dirs: Annotated[
        bool,
        typer.Option(
            "--files", help="Also delete their run dirs on the workers and downloaded copies."
        ),
    ] = False,
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
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete jobs from the database (with --outputs and --files, what they left too).

    Refused for a job in its queue (cancel it first), a job a runner works on, and a
    job that unfinished jobs depend on (delete them together, or the whole flow with
    'conveyor flow delete'). A flow left without jobs is deleted with its last one.
    """
    from conveyor import api

    selection = Selection(
        ids, state, worker, flow, name, created_since, created_until, updated_since,
        updated_until, locked, error,
    )  # fmt: skip

    def action(i: list[int]) -> list[Outcome]:
        return api.delete_jobs(i, outputs=outputs, files=run_dirs, by="cli")

    _run(selection, action, "delete", "deleted", yes, as_json, show_state=False)


def hold(
    ids: Ids = None,
    state: StateOpt = None,
    worker: WorkerOpt = None,
    flow: FlowOpt = None,
    name: NameOpt = None,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Ask the queue to hold jobs waiting in it (SUBMITTED): scontrol hold, qhold ...

    Nothing is recorded until the runner's next poll, which shows the queue state HELD
    in 'conveyor job info'. The shell queue of local workers cannot hold jobs.
    """
    from conveyor import api

    selection = Selection(ids, state, worker, flow, name)
    _run(selection, lambda i: api.hold(i, by="cli"), "hold", "held", yes, as_json, False)


def release(
    ids: Ids = None,
    state: StateOpt = None,
    worker: WorkerOpt = None,
    flow: FlowOpt = None,
    name: NameOpt = None,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Ask the queue to release held jobs: scontrol release, qrls ..."""
    from conveyor import api

    selection = Selection(ids, state, worker, flow, name)
    _run(selection, lambda i: api.release(i, by="cli"), "release", "released", yes, as_json, False)


# --- settings -----------------------------------------------------------------------------


def parse_resources(text: str) -> dict[str, Any]:
    """Resources from a JSON object or ``key=value,key=value`` (``key=`` removes one)."""
    import json

    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConveyorError(f"resources {text!r} are not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConveyorError(f"resources {text!r} must be a JSON object")
        return data
    found: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConveyorError(
                f"resources {text!r}: give key=value pairs (walltime=2:00:00,memory=4G) "
                "or a JSON object"
            )
        value = value.strip()
        found[key.strip()] = None if value == "" else int(value) if value.isdigit() else value
    return found


def set_worker(
    new_worker: Annotated[str, typer.Argument(metavar="WORKER", help="A worker of the project.")],
    ids: Ids = None,
    state: StateOpt = None,
    worker: WorkerOpt = None,
    flow: FlowOpt = None,
    name: NameOpt = None,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Run jobs on another worker of the project.

    Only jobs not started yet (WAITING, READY, PAUSED) or ended (then rerun them).
    """
    from conveyor import api

    selection = Selection(ids, state, worker, flow, name)

    def action(i: list[int]) -> list[Outcome]:
        return api.set_worker(i, new_worker, by="cli")

    _run(selection, action, "change the worker of", "changed", yes, as_json)


def set_resources(
    resources: Annotated[
        str,
        typer.Argument(
            metavar="RESOURCES",
            help="key=value pairs, comma separated (walltime=2:00:00,memory=4G; 'key=' "
            'removes one), or a JSON object (\'{"slurm": {"constraint": "gpu"}}\').',
        ),
    ],
    ids: Ids = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace the job's resources instead of merging.")
    ] = False,
    state: StateOpt = None,
    worker: WorkerOpt = None,
    flow: FlowOpt = None,
    name: NameOpt = None,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Change the queue resources jobs ask for (walltime, memory, nodes, queue ...).

    The keys given are set over the job's own resources; the result, over the
    worker's defaults, must be valid (see docs/configuration.md). Same states as 'job
    set worker'.
    """
    from conveyor import api

    values = parse_resources(resources)
    selection = Selection(ids, state, worker, flow, name)

    def action(i: list[int]) -> list[Outcome]:
        return api.set_resources(i, values, replace=replace, by="cli")

    _run(selection, action, "change the resources of", "changed", yes, as_json)


def set_priority(
    priority: Annotated[
        int, typer.Argument(metavar="PRIORITY", help="Higher runs first (negative: later).")
    ],
    ids: Ids = None,
    state: StateOpt = None,
    worker: WorkerOpt = None,
    flow: FlowOpt = None,
    name: NameOpt = None,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Set the priority of jobs: among the jobs a runner may take, higher goes first."""
    from conveyor import api

    selection = Selection(ids, state, worker, flow, name)

    def action(i: list[int]) -> list[Outcome]:
        return api.set_priority(i, priority, by="cli")

    _run(selection, action, "change the priority of", "changed", yes, as_json)
