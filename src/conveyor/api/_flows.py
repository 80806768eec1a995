"""Flows: read them, and steer all their jobs at once (pause, resume, cancel, rerun,
delete). A flow is named by its uuid, or by the db id of any of its jobs.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from conveyor.api._changes import cancel, pause, resume
from conveyor.api._common import Outcome, ProjectRef, flow_locked, lock_job, owner_name, release
from conveyor.api._reads import get_job
from conveyor.api._rerun import RERUNNABLE_STATES, cleanup, rerun
from conveyor.db.base import FlowFilter, JobFilter
from conveyor.exceptions import ConveyorError, NotFoundError
from conveyor.models import FlowDoc, JobDoc
from conveyor.project import open_project
from conveyor.states import DONE_STATES, ERROR_STATES, QUEUED_STATES, FlowState, JobState

__all__ = [
    "FINAL_FLOW_STATES",
    "FLOW_ACTIONS",
    "cancel_flow",
    "delete_flow",
    "find_flow",
    "flow_counts",
    "flow_jobs",
    "flow_targets",
    "get_flow",
    "list_flows",
    "pause_flow",
    "rerun_flow",
    "resume_flow",
]

S = JobState

#: Flow states in which nothing more happens without a person.
FINAL_FLOW_STATES = frozenset(
    {FlowState.COMPLETED, FlowState.FAILED, FlowState.STOPPED, FlowState.CANCELLED}
)

#: The jobs of a flow each flow action applies to, by state.
FLOW_ACTIONS: dict[str, frozenset[JobState]] = {
    "pause": frozenset({S.READY, S.WAITING}),
    "resume": frozenset({S.PAUSED}),
    "cancel": frozenset(set(JobState) - DONE_STATES),
    # A rerun of a flow retries what went wrong; STOPPED jobs were stopped by the flow.
    "rerun": frozenset(ERROR_STATES | {S.CANCELLED}),
    "rerun-all": RERUNNABLE_STATES,
    "delete": frozenset(JobState),
}


def get_flow(uuid: str, *, project: ProjectRef = None) -> FlowDoc:
    """The flow with this uuid; :class:`NotFoundError` if there is none."""
    doc = open_project(project).db.get_flow(uuid)
    if doc is None:
        raise NotFoundError(f"no flow with uuid {uuid}")
    return doc


def find_flow(ref: str | int, *, project: ProjectRef = None) -> FlowDoc:
    """A flow by its uuid, or by the db id of one of its jobs (an int, or digits)."""
    proj = open_project(project)
    if isinstance(ref, int) or ref.strip().isdigit():
        return get_flow(get_job(int(ref), project=proj).flow_uuid, project=proj)
    return get_flow(ref.strip(), project=proj)


def list_flows(
    *,
    states: Iterable[FlowState | str] | None = None,
    name: str | None = None,
    limit: int = 0,
    newest_first: bool = True,
    project: ProjectRef = None,
) -> list[FlowDoc]:
    """Flows, newest first by default; ``name`` is a shell-style pattern (``*``, ``?``)
    the whole name must match (checked on what the database returns)."""
    try:
        wanted = [FlowState(str(s).upper()) for s in states] if states else None
    except ValueError:
        valid = ", ".join(FlowState)
        raise ConveyorError(f"unknown flow state in {states!r}; valid states: {valid}") from None
    db = open_project(project).db
    flt = FlowFilter(states=wanted)
    if name is None:
        return db.find_flows(flt, limit=limit, newest_first=newest_first)
    found = [
        f
        for f in db.find_flows(flt, newest_first=newest_first)
        if fnmatch.fnmatchcase(f.name, name)
    ]
    return found[:limit] if limit else found


def flow_jobs(
    ref: str | int,
    *,
    states: Iterable[JobState | str] | None = None,
    project: ProjectRef = None,
) -> list[JobDoc]:
    """The jobs of a flow (every index of replaced jobs), in db id order."""
    proj = open_project(project)
    flow = find_flow(ref, project=proj)
    wanted = [S(str(s).upper()) for s in states] if states is not None else None
    return proj.db.find_jobs(JobFilter(flow_uuids=[flow.uuid], states=wanted))


def flow_counts(ref: str | int, *, project: ProjectRef = None) -> dict[JobState, int]:
    """How many jobs of the flow are in each state (counted by the database)."""
    proj = open_project(project)
    flow = find_flow(ref, project=proj)
    return proj.db.count_jobs_by_state(JobFilter(flow_uuids=[flow.uuid]))


def flow_targets(ref: str | int, action: str, *, project: ProjectRef = None) -> list[JobDoc]:
    """The jobs of a flow that a flow action (a key of :data:`FLOW_ACTIONS`) changes."""
    if action not in FLOW_ACTIONS:
        raise ConveyorError(f"unknown flow action {action!r}; use one of {', '.join(FLOW_ACTIONS)}")
    return flow_jobs(ref, states=sorted(FLOW_ACTIONS[action]), project=project)


def _ids(ref: str | int, action: str, project: ProjectRef) -> list[int]:
    return [doc.db_id for doc in flow_targets(ref, action, project=project)]


def pause_flow(ref: str | int, *, project: ProjectRef = None, by: str = "api") -> list[Outcome]:
    """Pause every READY or WAITING job of the flow; one :class:`Outcome` each."""
    proj = open_project(project)
    return pause(_ids(ref, "pause", proj), project=proj, by=by)


def resume_flow(ref: str | int, *, project: ProjectRef = None, by: str = "api") -> list[Outcome]:
    """Resume every PAUSED job of the flow; one :class:`Outcome` each."""
    proj = open_project(project)
    return resume(_ids(ref, "resume", proj), project=proj, by=by)


def cancel_flow(ref: str | int, *, project: ProjectRef = None, by: str = "api") -> list[Outcome]:
    """Cancel every job of the flow that has not ended (in its queue too); see
    :func:`~conveyor.api.cancel`."""
    proj = open_project(project)
    return cancel(_ids(ref, "cancel", proj), project=proj, by=by)


def rerun_flow(
    ref: str | int, *, all_jobs: bool = False, project: ProjectRef = None, by: str = "api"
) -> list[Outcome]:
    """Rerun the jobs of the flow that failed, gave up or were cancelled (their
    dependents wait for them again); with ``all_jobs``, every job that has ended, so
    the flow runs again from its first jobs. See :func:`~conveyor.api.rerun`."""
    proj = open_project(project)
    return rerun(_ids(ref, "rerun-all" if all_jobs else "rerun", proj), project=proj, by=by)


def delete_flow(
    ref: str | int,
    *,
    outputs: bool = False,
    files: bool = False,
    project: ProjectRef = None,
    by: str = "api",
) -> list[Outcome]:
    """Delete a flow and all its jobs; with ``outputs`` their outputs in the JobStore,
    with ``files`` their run dirs and the runner's downloaded copies.

    All or nothing: refused while a job of the flow is in its queue (cancel the flow
    first) or a runner works on one. One :class:`Outcome` per deleted job (an error
    there means only that its outputs or files could not be removed).
    """
    proj = open_project(project)
    flow = find_flow(ref, project=proj)
    db = proj.db
    owner = owner_name(by)
    with flow_locked(proj, flow.uuid, owner):
        docs = db.find_jobs(JobFilter(flow_uuids=[flow.uuid]))
        queued = [d for d in docs if d.state in QUEUED_STATES]
        if queued:
            listed = ", ".join(f"job {d.db_id} is {d.state}" for d in queued)
            raise ConveyorError(
                f"flow {flow.uuid} has jobs in their queue ({listed}); cancel the flow first"
            )
        held = []
        try:
            for doc in docs:
                held.append(lock_job(proj, doc, owner))
        except ConveyorError:
            for h in held:
                release(proj, h)
            raise
        db.delete_flow(flow.uuid)
    return cleanup(proj, docs, outputs=outputs, files=files, note="deleted (and its flow)")
