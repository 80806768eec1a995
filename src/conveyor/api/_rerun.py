"""Rerunning and deleting jobs: operations that reach beyond one job, to the jobs that
depend on it and to its flow, done under the flow's lock.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from typing import Any, overload

from conveyor.api._common import (
    Held,
    Outcome,
    ProjectRef,
    by_flow,
    flow_locked,
    id_list,
    lock_job,
    one_or_many,
    owner_name,
    release,
    with_fresh_docs,
)
from conveyor.api._reads import download_dir
from conveyor.db.base import JobFilter
from conveyor.exceptions import ConveyorError, LockError, NotFoundError
from conveyor.flows import descendants, latest_states, parent_done
from conveyor.models import EPOCH, JobDoc, utcnow
from conveyor.project import Project, open_project
from conveyor.runner.complete import refresh_flow
from conveyor.runner.steps import run_dir_for
from conveyor.states import (
    DONE_STATES,
    ERROR_STATES,
    QUEUED_STATES,
    TRANSITIONS,
    JobState,
    transition,
)

__all__ = ["RERUNNABLE_STATES", "delete_jobs", "remove_job_files", "rerun"]

S = JobState

#: States a job can be rerun from: it has ended, or given up.
RERUNNABLE_STATES = frozenset(ERROR_STATES | {S.COMPLETED, S.STOPPED, S.CANCELLED})

#: What a rerun clears: the job starts afresh, in a new run of its steps.
_RESET: dict[str, Any] = {
    "attempts.count": 0,
    "attempts.retry_at": EPOCH,
    "error": None,
    "remote": {},
    "stored_data": None,
    "started_at": None,
}


# --- rerun ------------------------------------------------------------------------------


@overload
def rerun(db_id: int, *, project: ProjectRef = ..., by: str = ...) -> JobDoc: ...
@overload
def rerun(db_id: Iterable[int], *, project: ProjectRef = ..., by: str = ...) -> list[Outcome]: ...
def rerun(
    db_id: int | Iterable[int], *, project: ProjectRef = None, by: str = "api"
) -> JobDoc | list[Outcome]:
    """Run finished or errored jobs again: each goes to READY (WAITING if its own
    parents are not done), the jobs that depend on it to WAITING.

    The jobs keep their db ids; their errors and queue data are cleared. Dependent jobs
    that are PAUSED stay paused. Refused while a runner works on the job, or while a
    job that depends on it is being run (wait for it, or cancel it first). Selecting
    a job and jobs that depend on it reruns them together.

    Parameters
    ----------
    db_id
        One job's db id (the job is returned, or the error raised), or several (one
        :class:`Outcome` each is returned).
    project
        The project (name, path or object); default: the current one.
    by
        Who asks, recorded in the jobs' history (``"api"``, ``"cli"``).
    """
    proj = open_project(project)
    return one_or_many(db_id, lambda ids: _rerun(proj, ids, by))


def _rerun(project: Project, ids: list[int], by: str) -> list[Outcome]:
    db = project.db
    found = db.find_jobs(JobFilter(db_ids=ids)) if ids else []
    outcomes: dict[int, Outcome] = {
        i: Outcome(i, error=NotFoundError(f"no job with db id {i}"))
        for i in set(ids) - {d.db_id for d in found}
    }
    for flow_uuid, group in by_flow(found).items():
        try:
            with flow_locked(project, flow_uuid, owner_name(by)):
                outcomes.update(_rerun_in_flow(project, flow_uuid, group, by))
                refresh_flow(db, flow_uuid, by)
        except (LockError, NotFoundError) as exc:
            for doc in group:
                outcomes.setdefault(doc.db_id, Outcome(doc.db_id, doc.name, doc, error=exc))
    return with_fresh_docs(project, [outcomes[i] for i in ids])


def _rerun_in_flow(
    project: Project, flow_uuid: str, group: list[JobDoc], by: str
) -> dict[int, Outcome]:
    db = project.db
    flow_jobs = db.find_jobs(JobFilter(flow_uuids=[flow_uuid]))
    wanted = {doc.db_id for doc in group}
    selected = [doc for doc in flow_jobs if doc.db_id in wanted]
    below = descendants(flow_jobs, [doc.uuid for doc in selected])
    # Jobs no other selected job leads to go first: rerunning them resets the others.
    order = sorted(selected, key=lambda doc: (doc.uuid in below, doc.db_id))
    reset_by: dict[str, int] = {}
    out: dict[int, Outcome] = {}
    for doc in order:
        if doc.uuid in reset_by:
            note = f"back to WAITING with job {reset_by[doc.uuid]}"
            out[doc.db_id] = Outcome(doc.db_id, doc.name, note=note)
            continue
        current = next(d for d in flow_jobs if d.db_id == doc.db_id)
        try:
            later, moved = _rerun_one(project, current, flow_jobs, by)
        except ConveyorError as exc:
            out[doc.db_id] = Outcome(doc.db_id, doc.name, current, error=exc)
            continue
        for uuid in later:
            reset_by.setdefault(uuid, doc.db_id)
        note = f"{moved} dependent job(s) back to WAITING" if moved else ""
        out[doc.db_id] = Outcome(doc.db_id, doc.name, note=note)
        flow_jobs = db.find_jobs(JobFilter(flow_uuids=[flow_uuid]))
    return out


def _rerun_one(
    project: Project, doc: JobDoc, flow_jobs: list[JobDoc], by: str
) -> tuple[set[str], int]:
    """Rerun one job of the flow (whose lock we hold); the uuids of the jobs that depend
    on it, and how many of their documents went back to WAITING."""
    db = project.db
    if doc.state not in RERUNNABLE_STATES:
        raise ConveyorError(f"job {doc.db_id} is {doc.state}; only finished jobs can be rerun")
    if doc.state is S.REMOTE_ERROR and doc.previous_state in QUEUED_STATES:
        # Its queue job may still run, and would share the run dir with the new run.
        raise ConveyorError(
            f"job {doc.db_id} gave up while in the queue of worker {doc.worker!r} (queue "
            f"id {doc.remote.queue_id}), where it may still run; cancel it first "
            f"('conveyor job cancel {doc.db_id}'), then rerun it"
        )
    later = descendants(flow_jobs, [doc.uuid])
    dependents = [d for d in flow_jobs if d.uuid in later]
    busy = [
        d
        for d in dependents
        if d.state not in (S.WAITING, S.PAUSED) and S.WAITING not in TRANSITIONS[d.state]
    ]
    if busy:
        listed = ", ".join(f"job {d.db_id} is {d.state}" for d in busy)
        raise ConveyorError(
            f"job {doc.db_id} cannot be rerun while jobs that depend on it are under way "
            f"({listed}); wait for them to end, or cancel them first"
        )
    now = utcnow()
    locked = [d for d in (doc, *dependents) if d.lock.is_held(now)]
    if locked:
        listed = ", ".join(f"job {d.db_id} by {d.lock.owner}" for d in locked)
        raise LockError(
            f"job {doc.db_id} cannot be rerun now: a runner holds {listed}; try again in a moment"
        )
    states = latest_states(db, doc.parents)
    ready = all(parent_done(states.get(p), doc.on_missing) for p in doc.parents)
    target = S.READY if ready else S.WAITING
    if not db.update_job(doc.db_id, transition(doc.state, target, by=by, extra=_RESET)):
        raise ConveyorError(f"job {doc.db_id} changed or is locked by a runner; try again")
    moved = 0
    for other in dependents:
        if other.state not in (S.WAITING, S.PAUSED):
            update = transition(other.state, S.WAITING, by=by, extra=_RESET)
            moved += db.update_job(other.db_id, update)
    return later, moved


# --- delete -----------------------------------------------------------------------------


def remove_job_files(project: Project, doc: JobDoc, *, outputs: bool, files: bool) -> list[str]:
    """Remove a job's outputs from the JobStore and/or its run dir on the worker and
    the runner's downloaded copies; what was removed, for people."""
    removed: list[str] = []
    if outputs:
        with project.jobstore_lock:
            project.jobstore.remove_docs({"uuid": doc.uuid, "index": doc.index})
        removed.append("outputs")
    if files:
        # A rerun forgets the run dir, but the job's next run would use the same one.
        run_dir = doc.remote.run_dir or run_dir_for(
            project.work_dir(doc.worker), doc.uuid, doc.index
        )
        host = project.host(doc.worker)
        if host.exists(run_dir):
            host.rmtree(run_dir)
            removed.append(f"run dir {run_dir}")
        local = download_dir(project, doc)
        if local.exists():
            shutil.rmtree(local)
            removed.append("downloaded files")
    return removed


def cleanup(
    project: Project, docs: Iterable[JobDoc], *, outputs: bool, files: bool, note: str
) -> list[Outcome]:
    """Outcomes of deleted jobs, after removing their outputs and files if asked."""
    out = []
    for doc in docs:
        try:
            removed = remove_job_files(project, doc, outputs=outputs, files=files)
        except (ConveyorError, OSError) as exc:
            error = ConveyorError(
                f"job {doc.db_id} was deleted, but its outputs or files could not be removed: {exc}"
            )
            out.append(Outcome(doc.db_id, doc.name, doc, error=error))
            continue
        extra = f"; removed {', '.join(removed)}" if removed else ""
        out.append(Outcome(doc.db_id, doc.name, doc, note=f"{note}{extra}"))
    return out


def _deletable(doc: JobDoc) -> None:
    if doc.state in QUEUED_STATES:
        raise ConveyorError(
            f"job {doc.db_id} is {doc.state} in the queue of worker {doc.worker!r}; cancel it first"
        )


@overload
def delete_jobs(
    db_id: int,
    *,
    outputs: bool = ...,
    files: bool = ...,
    project: ProjectRef = ...,
    by: str = ...,
) -> JobDoc: ...
@overload
def delete_jobs(
    db_id: Iterable[int],
    *,
    outputs: bool = ...,
    files: bool = ...,
    project: ProjectRef = ...,
    by: str = ...,
) -> list[Outcome]: ...
def delete_jobs(
    db_id: int | Iterable[int],
    *,
    outputs: bool = False,
    files: bool = False,
    project: ProjectRef = None,
    by: str = "api",
) -> JobDoc | list[Outcome]:
    """Delete jobs from the database; with ``outputs`` their outputs in the JobStore,
    with ``files`` their run dirs on the workers and the runner's downloaded copies.

    Refused for a job in its queue (cancel it first), a job a runner works on, and a
    job that unfinished jobs depend on (delete those too, or the whole flow). A flow
    left without jobs is deleted with its last one. Returns the deleted documents.
    Parameters as for :func:`rerun`.
    """
    proj = open_project(project)
    return one_or_many(db_id, lambda ids: _delete(proj, ids, outputs, files, by))


def _delete(project: Project, ids: list[int], outputs: bool, files: bool, by: str) -> list[Outcome]:
    db = project.db
    found = db.find_jobs(JobFilter(db_ids=ids)) if ids else []
    outcomes: dict[int, Outcome] = {
        i: Outcome(i, error=NotFoundError(f"no job with db id {i}"))
        for i in set(ids) - {d.db_id for d in found}
    }
    owner = owner_name(by)
    for flow_uuid, group in by_flow(found).items():
        try:
            with flow_locked(project, flow_uuid, owner):
                deleted, refused = _delete_in_flow(project, flow_uuid, group, owner, by)
        except (LockError, NotFoundError) as exc:
            for doc in group:
                outcomes[doc.db_id] = Outcome(doc.db_id, doc.name, doc, error=exc)
            continue
        outcomes.update(refused)
        done = cleanup(project, deleted, outputs=outputs, files=files, note="deleted")
        outcomes.update({o.db_id: o for o in done})
    return [outcomes[i] for i in id_list(ids)]


def _delete_in_flow(
    project: Project, flow_uuid: str, group: list[JobDoc], owner: str, by: str
) -> tuple[list[JobDoc], dict[int, Outcome]]:
    db = project.db
    flow_jobs = db.find_jobs(JobFilter(flow_uuids=[flow_uuid]))
    wanted = {doc.db_id for doc in group}
    refused: dict[int, Outcome] = {}
    held: dict[int, Held] = {}
    for doc in flow_jobs:
        if doc.db_id not in wanted:
            continue
        try:
            _deletable(doc)
            held[doc.db_id] = lock_job(project, doc, owner)
        except ConveyorError as exc:
            refused[doc.db_id] = Outcome(doc.db_id, doc.name, doc, error=exc)
    # A job that stays must not wait forever for a deleted one.
    changed = True
    while changed:
        changed = False
        staying = [d for d in flow_jobs if d.db_id not in held]
        kept = {d.uuid for d in staying}
        for db_id, h in list(held.items()):
            if h.doc.uuid in kept:
                continue  # another index of the job stays
            waiting = [d for d in staying if h.doc.uuid in d.parents and d.state not in DONE_STATES]
            if waiting:
                release(project, h)
                del held[db_id]
                ids = " ".join(str(d.db_id) for d in waiting)
                error = ConveyorError(
                    f"job {db_id}: job(s) {ids} depend on it and have not ended; delete "
                    "them too, or cancel them, or delete the whole flow"
                )
                refused[db_id] = Outcome(db_id, h.doc.name, h.doc, error=error)
                changed = True
    if not held:
        return [], refused
    db.delete_jobs(list(held))
    staying = [d for d in flow_jobs if d.db_id not in held]
    if not staying:
        db.delete_flow(flow_uuid)
    else:
        kept = {d.uuid for d in staying}
        flow = db.get_flow(flow_uuid)
        job_uuids = [u for u in (flow.job_uuids if flow else []) if u in kept]
        db.update_flow(flow_uuid, {"job_uuids": job_uuids, "updated_at": utcnow()})
        refresh_flow(db, flow_uuid, by)
    before = {d.db_id: d for d in flow_jobs}
    return [before[db_id] for db_id in held], refused
