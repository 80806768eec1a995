"""Changing jobs: retry, rerun, pause, resume, cancel, set their state or settings,
hold and release them in their queue.

Each function takes one db id (and returns the job, or raises) or several (and returns
one :class:`Outcome` per job: the others go on when one cannot be changed). Every
state change goes through :func:`conveyor.states.transition` under the job's lock, so a
runner never has a job changed under its feet: a job a runner is working on is refused
with a message saying to try again.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any, overload

from conveyor.api._common import (
    Edit,
    Held,
    Outcome,
    ProjectRef,
    change_jobs,
    id_list,
    one_or_many,
)
from conveyor.api._reads import parse_state
from conveyor.db.base import JobFilter
from conveyor.exceptions import CommandError, ConveyorError, NotFoundError, QueueError
from conveyor.models import EPOCH, JobDoc, utcnow
from conveyor.project import Project, open_project
from conveyor.queue.base import QueueAdapter
from conveyor.states import (
    ACTIVE_STATES,
    DONE_STATES,
    QUEUED_STATES,
    TRANSITIONS,
    JobState,
    JobUpdate,
    transition,
)

__all__ = [
    "cancel",
    "hold",
    "pause",
    "release",
    "resume",
    "retry",
    "set_priority",
    "set_resources",
    "set_state",
    "set_worker",
]

S = JobState

#: Consecutive states of the runner's pipeline: a move along one of them skips nothing.
_HOPS = frozenset(itertools.pairwise([s for s in JobState if s in ACTIVE_STATES]))
#: States in which a job's worker and resources may change: nothing has been set up
#: on a worker yet, or the job has ended (a rerun starts it afresh).
_RECONFIGURABLE = frozenset({S.WAITING, S.READY, S.PAUSED} | DONE_STATES)


# --- retry ------------------------------------------------------------------------------


@overload
def retry(db_id: int, *, project: ProjectRef = ..., by: str = ...) -> JobDoc: ...
@overload
def retry(db_id: Iterable[int], *, project: ProjectRef = ..., by: str = ...) -> list[Outcome]: ...
def retry(
    db_id: int | Iterable[int], *, project: ProjectRef = None, by: str = "api"
) -> JobDoc | list[Outcome]:
    """Try a job's failed step again now.

    A job in REMOTE_ERROR goes back to the state it failed in, with a fresh attempt
    count; a job waiting out a step's backoff is released at once.

    Parameters
    ----------
    db_id
        One job's db id (the job is returned, or the error raised), or several (one
        :class:`Outcome` each is returned).
    project
        The project (name, path or object); default: the current one.
    by
        Who asks, recorded in the job's history (``"api"``, ``"cli"``).
    """
    proj = open_project(project)
    reset = {"attempts.count": 0, "attempts.retry_at": EPOCH, "error": None}

    def change(held: Held) -> Edit:
        doc = held.doc
        if doc.state is S.REMOTE_ERROR:
            if doc.previous_state is None:
                raise ConveyorError(f"job {doc.db_id} is in REMOTE_ERROR without a previous state")
            return Edit(transition(doc.state, doc.previous_state, by=by, extra=reset))
        if doc.attempts.count > 0:
            # Released below with the lock: the backoff ends now.
            return Edit(JobUpdate(reset, expect_state=doc.state), "backoff ended")
        raise ConveyorError(
            f"job {doc.db_id} is {doc.state} and has no failed step to retry; "
            "use rerun to run a finished job again"
        )

    return one_or_many(db_id, lambda ids: change_jobs(proj, ids, change, by=by))


# --- pause, resume ----------------------------------------------------------------------


@overload
def pause(db_id: int, *, project: ProjectRef = ..., by: str = ...) -> JobDoc: ...
@overload
def pause(db_id: Iterable[int], *, project: ProjectRef = ..., by: str = ...) -> list[Outcome]: ...
def pause(
    db_id: int | Iterable[int], *, project: ProjectRef = None, by: str = "api"
) -> JobDoc | list[Outcome]:
    """Keep READY or WAITING jobs from starting: they become PAUSED until resumed.

    A job already PAUSED is left as it is. Parameters as for :func:`retry`.
    """
    proj = open_project(project)

    def change(held: Held) -> Edit:
        doc = held.doc
        if doc.state is S.PAUSED:
            return Edit(None, "already PAUSED")
        if doc.state not in (S.READY, S.WAITING):
            raise ConveyorError(
                f"job {doc.db_id} is {doc.state}; only READY or WAITING jobs can be paused"
            )
        return Edit(transition(doc.state, S.PAUSED, by=by))

    return one_or_many(db_id, lambda ids: change_jobs(proj, ids, change, by=by))


@overload
def resume(db_id: int, *, project: ProjectRef = ..., by: str = ...) -> JobDoc: ...
@overload
def resume(db_id: Iterable[int], *, project: ProjectRef = ..., by: str = ...) -> list[Outcome]: ...
def resume(
    db_id: int | Iterable[int], *, project: ProjectRef = None, by: str = "api"
) -> JobDoc | list[Outcome]:
    """Let PAUSED jobs run again: READY if their parents are done, else WAITING.

    Parameters as for :func:`retry`.
    """
    proj = open_project(project)

    def change(held: Held) -> Edit:
        doc = held.doc
        if doc.state is not S.PAUSED:
            raise ConveyorError(f"job {doc.db_id} is {doc.state}, not PAUSED")
        # WAITING first: refreshing the flow readies it if its parents are done.
        return Edit(transition(doc.state, S.WAITING, by=by))

    return one_or_many(db_id, lambda ids: change_jobs(proj, ids, change, by=by))


# --- cancel -----------------------------------------------------------------------------


def _timeout(project: Project, doc: JobDoc) -> float:
    return project.worker(doc.worker).command_timeout


def _queue_id(project: Project, doc: JobDoc) -> str | None:
    """The queue id of the job's queue job, if it may have one.

    An UPLOADED job whose submission started may have been submitted by a runner that
    died before it recorded the queue id: the submit token finds it, as a retry would.
    """
    remote = doc.remote
    uploaded = S.UPLOADED in (doc.state, doc.previous_state)
    if remote.queue_id or not uploaded or remote.submitted_at is None:
        return remote.queue_id
    if not remote.submit_token:
        return None
    adapter, host = project.adapter(doc.worker), project.host(doc.worker)
    found = host.execute(
        adapter.find_by_token_command(remote.submit_token), timeout=_timeout(project, doc)
    )
    return adapter.parse_find_by_token(
        found.exit_code, found.stdout, found.stderr, remote.submit_token
    )


def _cancel_in_queue(project: Project, doc: JobDoc, queue_id: str) -> str:
    """Cancel the queue job; a note saying what happened. CommandError with the
    evidence if the queue refused while it still lists the job."""
    adapter, host = project.adapter(doc.worker), project.host(doc.worker)
    timeout = _timeout(project, doc)
    result = host.execute(adapter.cancel_command(queue_id), timeout=timeout)
    if result.ok:
        return f"queue job {queue_id} cancelled"
    # It may have left the queue since the last poll: then nothing is left to cancel.
    status = host.execute(adapter.status_command([queue_id]), timeout=timeout)
    try:
        gone = queue_id not in adapter.parse_status_output(
            status.exit_code, status.stdout, status.stderr, [queue_id]
        )
    except QueueError:
        gone = False  # cannot tell: the queue's refusal stands
    if not gone:
        raise CommandError(result.argv, result.exit_code, result.stdout, result.stderr, host.name)
    return f"queue job {queue_id} had already left the queue"


@overload
def cancel(db_id: int, *, project: ProjectRef = ..., by: str = ...) -> JobDoc: ...
@overload
def cancel(db_id: Iterable[int], *, project: ProjectRef = ..., by: str = ...) -> list[Outcome]: ...
def cancel(
    db_id: int | Iterable[int], *, project: ProjectRef = None, by: str = "api"
) -> JobDoc | list[Outcome]:
    """Cancel jobs that have not ended: they become CANCELLED and never run.

    A job in its worker's queue (SUBMITTED, RUNNING) is cancelled there first, with the
    queue's own cancel command on the worker's host; if the queue refuses (and still
    lists the job) the job is left as it is and the error carries the command's output.
    Jobs that depend on a cancelled job cannot run: they stay WAITING until it is rerun
    (cancel them too, or the whole flow). Parameters as for :func:`retry`.
    """
    proj = open_project(project)

    def change(held: Held) -> Edit:
        doc = held.doc
        if doc.state is S.CANCELLED:
            return Edit(None, "already CANCELLED")
        if S.CANCELLED not in TRANSITIONS[doc.state]:
            raise ConveyorError(f"job {doc.db_id} is {doc.state}: it has ended already")
        note = ""
        # A job that gave up while in the queue (REMOTE_ERROR) may still be there.
        where = doc.previous_state if doc.state is S.REMOTE_ERROR else doc.state
        queue_id = _queue_id(proj, doc) if where in (*QUEUED_STATES, S.UPLOADED) else None
        if queue_id:
            note = _cancel_in_queue(proj, doc, queue_id)
        return Edit(transition(doc.state, S.CANCELLED, by=by), note)

    return one_or_many(db_id, lambda ids: change_jobs(proj, ids, change, by=by))


# --- set state --------------------------------------------------------------------------


def skips_steps(current: JobState, new: JobState) -> bool:
    """Whether moving a job from ``current`` to ``new`` skips what the runner (or the
    user) would do in between: anything but one hop along the pipeline, or a move to
    READY or WAITING."""
    return new not in (S.READY, S.WAITING) and (current, new) not in _HOPS


@overload
def set_state(
    db_id: int,
    state: JobState | str,
    *,
    force: bool = ...,
    project: ProjectRef = ...,
    by: str = ...,
) -> JobDoc: ...
@overload
def set_state(
    db_id: Iterable[int],
    state: JobState | str,
    *,
    force: bool = ...,
    project: ProjectRef = ...,
    by: str = ...,
) -> list[Outcome]: ...
def set_state(
    db_id: int | Iterable[int],
    state: JobState | str,
    *,
    force: bool = False,
    project: ProjectRef = None,
    by: str = "api",
) -> JobDoc | list[Outcome]:
    """Put jobs in ``state`` by hand (a repair tool; prefer retry, rerun, cancel).

    Only moves in the transition table are made. Moves that skip steps (anything but
    one hop along the pipeline READY → CHECKED_OUT → ... → DOWNLOADED, or a move to
    READY or WAITING) need ``force=True``: a job forced to COMPLETED has no output, a
    job forced out of its queue keeps running there. Parameters as for :func:`retry`.
    """
    proj = open_project(project)
    target = parse_state(state)

    def change(held: Held) -> Edit:
        doc = held.doc
        if doc.state is target:
            return Edit(None, f"already {target}")
        update = transition(doc.state, target, by=by)  # refuses moves not in the table
        if skips_steps(doc.state, target) and not force:
            raise ConveyorError(
                f"job {doc.db_id}: {doc.state} → {target} skips what the runner does in "
                "between; pass force=True (--force on the command line) if you mean it"
            )
        return Edit(update)

    return one_or_many(db_id, lambda ids: change_jobs(proj, ids, change, by=by))


# --- settings: worker, resources, priority ----------------------------------------------


def _reconfigurable(doc: JobDoc, what: str) -> None:
    if doc.state not in _RECONFIGURABLE:
        raise ConveyorError(
            f"job {doc.db_id} is {doc.state}: its {what} can change while it is WAITING, "
            "READY or PAUSED, or once it has ended (then rerun it)"
        )


def _settings(fields: dict[str, Any], doc: JobDoc) -> JobUpdate:
    return JobUpdate({**fields, "updated_at": utcnow()}, expect_state=doc.state)


@overload
def set_worker(db_id: int, worker: str, *, project: ProjectRef = ..., by: str = ...) -> JobDoc: ...
@overload
def set_worker(
    db_id: Iterable[int], worker: str, *, project: ProjectRef = ..., by: str = ...
) -> list[Outcome]: ...
def set_worker(
    db_id: int | Iterable[int], worker: str, *, project: ProjectRef = None, by: str = "api"
) -> JobDoc | list[Outcome]:
    """Run jobs on another of the project's workers.

    Only jobs that have not started (WAITING, READY, PAUSED) or have ended: a started
    job's run dir and queue job are on its worker. Parameters as for :func:`retry`.
    """
    proj = open_project(project)
    proj.worker(worker)  # a typo fails now, naming the known workers

    def change(held: Held) -> Edit:
        doc = held.doc
        _reconfigurable(doc, "worker")
        if doc.worker == worker:
            return Edit(None, f"already on {worker}")
        note = f"worker {doc.worker} → {worker}"
        return Edit(_settings({"worker": worker}, doc), note, keep_backoff=True)

    return one_or_many(db_id, lambda ids: change_jobs(proj, ids, change, by=by, refresh=False))


@overload
def set_resources(
    db_id: int,
    resources: Mapping[str, Any],
    *,
    replace: bool = ...,
    project: ProjectRef = ...,
    by: str = ...,
) -> JobDoc: ...
@overload
def set_resources(
    db_id: Iterable[int],
    resources: Mapping[str, Any],
    *,
    replace: bool = ...,
    project: ProjectRef = ...,
    by: str = ...,
) -> list[Outcome]: ...
def set_resources(
    db_id: int | Iterable[int],
    resources: Mapping[str, Any],
    *,
    replace: bool = False,
    project: ProjectRef = None,
    by: str = "api",
) -> JobDoc | list[Outcome]:
    """Change the queue resources jobs ask for (walltime, memory, nodes ...).

    The given keys are set over the job's own resources (a key set to None is
    removed); with ``replace`` they become its only ones. The result, over the
    worker's defaults, must be valid resources. Same states as :func:`set_worker`.
    """
    from conveyor.queue.resources import parse_resources

    proj = open_project(project)

    def change(held: Held) -> Edit:
        doc = held.doc
        _reconfigurable(doc, "resources")
        new = {} if replace else dict(doc.resources)
        for key, value in resources.items():
            if value is None:
                new.pop(key, None)
            else:
                new[key] = value
        parse_resources(proj.worker(doc.worker).resources, new)  # QueueError if invalid
        if new == doc.resources:
            return Edit(None, "unchanged")
        return Edit(_settings({"resources": new}, doc), keep_backoff=True)

    return one_or_many(db_id, lambda ids: change_jobs(proj, ids, change, by=by, refresh=False))


@overload
def set_priority(
    db_id: int, priority: int, *, project: ProjectRef = ..., by: str = ...
) -> JobDoc: ...
@overload
def set_priority(
    db_id: Iterable[int], priority: int, *, project: ProjectRef = ..., by: str = ...
) -> list[Outcome]: ...
def set_priority(
    db_id: int | Iterable[int], priority: int, *, project: ProjectRef = None, by: str = "api"
) -> JobDoc | list[Outcome]:
    """Set the priority of jobs: among the jobs a runner may take, higher goes first.

    Any state; it matters only for steps still to come. Parameters as for :func:`retry`.
    """
    proj = open_project(project)

    def change(held: Held) -> Edit:
        doc = held.doc
        if doc.priority == priority:
            return Edit(None, f"already priority {priority}")
        note = f"priority {priority}"
        return Edit(_settings({"priority": int(priority)}, doc), note, keep_backoff=True)

    return one_or_many(db_id, lambda ids: change_jobs(proj, ids, change, by=by, refresh=False))


# --- hold, release ----------------------------------------------------------------------


def _queue_action(project: Project, ids: list[int], action: str) -> list[Outcome]:
    found = {d.db_id: d for d in project.db.find_jobs(JobFilter(db_ids=ids))} if ids else {}
    outcomes = []
    for i in ids:
        doc = found.get(i)
        if doc is None:
            outcomes.append(Outcome(i, error=NotFoundError(f"no job with db id {i}")))
            continue
        try:
            note = _queue_command(project, doc, action)
        except ConveyorError as exc:
            outcomes.append(Outcome(i, doc.name, doc, error=exc))
        else:
            outcomes.append(Outcome(i, doc.name, doc, note=note))
    return outcomes


def _queue_command(project: Project, doc: JobDoc, action: str) -> str:
    adapter = project.adapter(doc.worker)
    name = f"{action}_command"
    build = adapter.hold_command if action == "hold" else adapter.release_command
    # A queue without the command cannot do it whatever the job's state: say that first.
    if getattr(type(adapter), name) is getattr(QueueAdapter, name):
        raise QueueError(
            f"job {doc.db_id}: worker {doc.worker!r} uses the {adapter.name} queue, which "
            f"cannot {action} jobs"
        )
    queue_id = doc.remote.queue_id
    if doc.state is not S.SUBMITTED or not queue_id:
        done = "held" if action == "hold" else "released"
        raise ConveyorError(
            f"job {doc.db_id} is {doc.state}; only a job waiting in its queue (SUBMITTED) "
            f"can be {done}"
        )
    argv = build(queue_id)
    host = project.host(doc.worker)
    host.execute(argv, timeout=_timeout(project, doc)).check()
    shown = "HELD" if action == "hold" else "it queued again"
    return f"{action} sent to queue job {queue_id}; the next poll shows {shown}"


@overload
def hold(db_id: int, *, project: ProjectRef = ..., by: str = ...) -> JobDoc: ...
@overload
def hold(db_id: Iterable[int], *, project: ProjectRef = ..., by: str = ...) -> list[Outcome]: ...
def hold(
    db_id: int | Iterable[int], *, project: ProjectRef = None, by: str = "api"
) -> JobDoc | list[Outcome]:
    """Ask the queue to hold jobs waiting in it (SUBMITTED), with its hold command.

    Nothing is recorded here: the runner's next poll sees the queue state HELD. A queue
    that cannot hold jobs (``shell``) is a :class:`QueueError`. ``by`` is accepted for
    symmetry with the other operations. Parameters as for :func:`retry`.
    """
    proj = open_project(project)
    return one_or_many(db_id, lambda ids: _queue_action(proj, id_list(ids), "hold"))


@overload
def release(db_id: int, *, project: ProjectRef = ..., by: str = ...) -> JobDoc: ...
@overload
def release(db_id: Iterable[int], *, project: ProjectRef = ..., by: str = ...) -> list[Outcome]: ...
def release(
    db_id: int | Iterable[int], *, project: ProjectRef = None, by: str = "api"
) -> JobDoc | list[Outcome]:
    """Ask the queue to release held jobs, with its release command (see :func:`hold`)."""
    proj = open_project(project)
    return one_or_many(db_id, lambda ids: _queue_action(proj, id_list(ids), "release"))
