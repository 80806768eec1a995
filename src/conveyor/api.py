"""Operations on stored jobs for scripts, notebooks and the CLI: read, retry, rerun.

The CLI calls these same functions; none of them holds database logic the Python API
lacks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from conveyor.db.base import FlowFilter, JobFilter
from conveyor.exceptions import ConveyorError, NotFoundError
from conveyor.flows import descendants
from conveyor.models import EPOCH, FlowDoc, JobDoc
from conveyor.project import Project, open_project
from conveyor.runner.complete import refresh_flow
from conveyor.states import ERROR_STATES, FlowState, JobState, JobUpdate, transition

__all__ = [
    "count_jobs",
    "get_flow",
    "get_job",
    "get_output",
    "job_script",
    "list_flows",
    "list_jobs",
    "rerun",
    "retry",
    "upgrade_database",
]

_RERUNNABLE = ERROR_STATES | {JobState.COMPLETED, JobState.STOPPED, JobState.CANCELLED}

ProjectRef = str | os.PathLike[str] | Project | None


def get_job(db_id: int, *, project: ProjectRef = None) -> JobDoc:
    """The job with this db id; :class:`NotFoundError` if there is none."""
    doc = open_project(project).db.get_job(db_id)
    if doc is None:
        raise NotFoundError(f"no job with db id {db_id}")
    return doc


def parse_state(value: JobState | str) -> JobState:
    """A job state from its name (any case); ConveyorError listing the valid ones."""
    try:
        return JobState(str(value).upper())
    except ValueError:
        valid = ", ".join(JobState)
        raise ConveyorError(f"unknown job state {value!r}; valid states: {valid}") from None


def job_filter(
    *,
    states: Iterable[JobState | str] | None = None,
    workers: Iterable[str] | None = None,
    flow_uuids: Iterable[str] | None = None,
    db_ids: Iterable[int] | None = None,
    uuids: Iterable[str] | None = None,
) -> JobFilter:
    """A :class:`JobFilter` from the API's keyword arguments (None means any)."""
    return JobFilter(
        states=[parse_state(s) for s in states] if states is not None else None,
        workers=list(workers) if workers is not None else None,
        flow_uuids=list(flow_uuids) if flow_uuids is not None else None,
        db_ids=list(db_ids) if db_ids is not None else None,
        uuids=list(uuids) if uuids is not None else None,
    )


def list_jobs(
    *,
    states: Iterable[JobState | str] | None = None,
    workers: Iterable[str] | None = None,
    flow_uuids: Iterable[str] | None = None,
    db_ids: Iterable[int] | None = None,
    uuids: Iterable[str] | None = None,
    limit: int = 0,
    newest_first: bool = True,
    project: ProjectRef = None,
) -> list[JobDoc]:
    """Jobs matching every given condition, newest first by default."""
    flt = job_filter(
        states=states, workers=workers, flow_uuids=flow_uuids, db_ids=db_ids, uuids=uuids
    )
    return open_project(project).db.find_jobs(flt, limit=limit, newest_first=newest_first)


def count_jobs(
    *,
    states: Iterable[JobState | str] | None = None,
    workers: Iterable[str] | None = None,
    flow_uuids: Iterable[str] | None = None,
    db_ids: Iterable[int] | None = None,
    project: ProjectRef = None,
) -> int:
    """How many jobs match every given condition (counted by the database)."""
    flt = job_filter(states=states, workers=workers, flow_uuids=flow_uuids, db_ids=db_ids)
    return open_project(project).db.count_jobs(flt)


def get_flow(uuid: str, *, project: ProjectRef = None) -> FlowDoc:
    """The flow with this uuid; :class:`NotFoundError` if there is none."""
    doc = open_project(project).db.get_flow(uuid)
    if doc is None:
        raise NotFoundError(f"no flow with uuid {uuid}")
    return doc


def list_flows(
    *,
    states: Iterable[FlowState | str] | None = None,
    limit: int = 0,
    newest_first: bool = True,
    project: ProjectRef = None,
) -> list[FlowDoc]:
    """Flows, newest first by default."""
    flt = FlowFilter(states=[FlowState(str(s).upper()) for s in states] if states else None)
    return open_project(project).db.find_flows(flt, limit=limit, newest_first=newest_first)


def get_output(db_id: int, *, load: bool = False, project: ProjectRef = None) -> Any:
    """The output a completed job stored in the project's JobStore.

    Raises
    ------
    NotFoundError
        If there is no such job, or it stored no output (yet).
    """
    proj = open_project(project)
    doc = get_job(db_id, project=proj)
    with proj.jobstore_lock:
        found = proj.jobstore.query_one({"uuid": doc.uuid, "index": doc.index}, ["output"])
        if found is None:
            raise NotFoundError(f"job {db_id} ({doc.state}) has no output in the job store")
        return proj.jobstore.get_output(doc.uuid, which=doc.index, load=load)


def retry(db_id: int, *, project: ProjectRef = None, by: str = "api") -> JobDoc:
    """Try a job's failed step again now.

    A job in REMOTE_ERROR goes back to the state it failed in, with a fresh attempt
    count; a job waiting out a step's backoff is released at once.
    """
    proj = open_project(project)
    doc = get_job(db_id, project=proj)
    reset = {"attempts.count": 0, "attempts.retry_at": EPOCH, "error": None}
    if doc.state is JobState.REMOTE_ERROR:
        if doc.previous_state is None:
            raise ConveyorError(f"job {db_id} is in REMOTE_ERROR without a previous state")
        update = transition(doc.state, doc.previous_state, by=by, extra=reset)
        applied = proj.db.update_job(db_id, update)
    elif doc.attempts.count > 0:
        applied = proj.db.unlock_jobs(JobFilter(db_ids=[db_id])) > 0
        applied = proj.db.update_job(db_id, JobUpdate(reset, expect_state=doc.state)) or applied
    else:
        raise ConveyorError(
            f"job {db_id} is {doc.state} and has no failed step to retry; "
            "use rerun to run a finished job again"
        )
    if not applied:
        raise ConveyorError(f"job {db_id} changed or is locked by a runner; try again")
    return get_job(db_id, project=proj)


def rerun(db_id: int, *, project: ProjectRef = None, by: str = "api") -> JobDoc:
    """Run a finished or errored job again: it goes to READY, its descendants to WAITING.

    The job and its descendants keep their db ids; their errors and queue data are
    cleared. Refuses jobs a runner is working on.
    """
    proj = open_project(project)
    db = proj.db
    doc = get_job(db_id, project=proj)
    if doc.state not in _RERUNNABLE:
        raise ConveyorError(f"job {db_id} is {doc.state}; only finished jobs can be rerun")
    lock = db.lock_flow(doc.flow_uuid, f"{by}-rerun", _lease(proj))
    if lock is None:
        raise ConveyorError(f"the flow of job {db_id} is being updated by a runner; try again")
    try:
        flow_jobs = db.find_jobs(JobFilter(flow_uuids=[doc.flow_uuid]))
        later = descendants(flow_jobs, [doc.uuid])
        reset = {
            "attempts.count": 0,
            "attempts.retry_at": EPOCH,
            "error": None,
            "remote": {},
            "stored_data": None,
            "started_at": None,
        }
        if not db.update_job(db_id, transition(doc.state, JobState.READY, by=by, extra=reset)):
            raise ConveyorError(f"job {db_id} changed or is locked by a runner; try again")
        for other in flow_jobs:
            if other.uuid in later and other.state is not JobState.WAITING:
                db.update_job(
                    other.db_id, transition(other.state, JobState.WAITING, by=by, extra=reset)
                )
        refresh_flow(db, doc.flow_uuid, by)
    finally:
        db.release_flow_lock(doc.flow_uuid, lock)
    return get_job(db_id, project=proj)


def _lease(project: Project) -> timedelta:
    return timedelta(seconds=project.config.runner.lease_seconds)


@dataclass(frozen=True)
class JobScript:
    """What the runner would write and run to submit a job."""

    run_dir: str
    files: dict[str, str]
    submit_argv: list[str]


def job_script(db_id: int, *, project: ProjectRef = None) -> JobScript:
    """The queue files and submit command of a job, rendered exactly as the runner
    renders them, without writing or submitting anything."""
    from conveyor.runner.steps import render_files

    proj = open_project(project)
    spec, files, argv = render_files(proj, get_job(db_id, project=proj))
    return JobScript(spec.run_dir, files, argv)


def upgrade_database(*, project: ProjectRef = None) -> tuple[int, int]:
    """Bring the project's database to this Conveyor's schema version.

    Returns the version found and the version it now has.
    """
    from conveyor.db import open_database
    from conveyor.db.base import SCHEMA_VERSION

    config = open_project(project).config.database
    db = open_database(config.url, config.name, check_schema=False)
    try:
        return db.upgrade(), SCHEMA_VERSION
    finally:
        db.close()
