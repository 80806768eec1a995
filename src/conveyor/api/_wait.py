"""Waiting for jobs and flows: poll the database (no runner here) until they get there."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Literal

from conveyor.api._common import ProjectRef, id_list
from conveyor.api._flows import FINAL_FLOW_STATES, find_flow
from conveyor.db.base import JobFilter
from conveyor.exceptions import ConveyorError, NotFoundError, WaitTimeoutError
from conveyor.models import FlowDoc, JobDoc
from conveyor.project import open_project
from conveyor.states import DONE_STATES, ERROR_STATES, JobState

__all__ = ["ENDED_STATES", "STARTED_STATES", "WaitTimeoutError", "wait", "wait_flow"]

#: Seconds between two looks at the database, by default.
POLL_INTERVAL = 0.5

#: A job in one of these has ended: nothing more happens to it without a person.
ENDED_STATES = frozenset(DONE_STATES | ERROR_STATES)
#: A job in one of these has started running (or will never start).
STARTED_STATES = frozenset({JobState.RUNNING, JobState.TERMINATED, JobState.DOWNLOADED}) | (
    ENDED_STATES
)
_UNTIL = {"terminated": ENDED_STATES, "started": STARTED_STATES}


def _sleep(deadline: float | None, interval: float) -> None:
    left = interval if deadline is None else min(interval, deadline - time.monotonic())
    if left > 0:
        time.sleep(left)


def wait(
    db_id: int | Iterable[int],
    *,
    until: Literal["terminated", "started"] = "terminated",
    timeout: float | None = None,
    interval: float = POLL_INTERVAL,
    project: ProjectRef = None,
) -> list[JobDoc]:
    """Wait until every job has ended (``until="terminated"``: COMPLETED, FAILED,
    STOPPED, CANCELLED or REMOTE_ERROR) or started running (``"started"``: RUNNING or
    later, or ended without running). A runner must be running elsewhere.

    Returns the jobs, in the order of ``db_id``.

    Raises
    ------
    WaitTimeoutError
        After ``timeout`` seconds, naming the jobs not there yet and their states.
    NotFoundError
        If a job does not exist (or was deleted meanwhile).
    """
    if until not in _UNTIL:
        raise ConveyorError(f"wait until {until!r}? Use 'terminated' or 'started'")
    wanted = _UNTIL[until]
    ids = id_list(db_id)
    db = open_project(project).db
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        docs = {doc.db_id: doc for doc in db.find_jobs(JobFilter(db_ids=ids))}
        missing = [i for i in ids if i not in docs]
        if missing:
            raise NotFoundError(f"no job with db id {' '.join(map(str, missing))}")
        behind = [docs[i] for i in ids if docs[i].state not in wanted]
        if not behind:
            return [docs[i] for i in ids]
        if deadline is not None and time.monotonic() >= deadline:
            listed = ", ".join(f"job {d.db_id} is {d.state}" for d in behind[:20])
            more = f" and {len(behind) - 20} more" if len(behind) > 20 else ""
            raise WaitTimeoutError(
                f"after {timeout:g} s, {len(behind)} of {len(ids)} job(s) have not "
                f"{until}: {listed}{more}; is a runner running? ('conveyor runner status')"
            )
        _sleep(deadline, interval)


Progress = Callable[[FlowDoc, dict[JobState, int]], None]


def wait_flow(
    ref: str | int,
    *,
    timeout: float | None = None,
    interval: float = POLL_INTERVAL,
    progress: Progress | None = None,
    project: ProjectRef = None,
) -> FlowDoc:
    """Wait until the flow's state is final (COMPLETED, FAILED, STOPPED, CANCELLED).

    ``progress`` is called after every look with the flow and its job counts by state.
    Returns the flow; :class:`WaitTimeoutError` after ``timeout`` seconds.
    """
    proj = open_project(project)
    uuid = find_flow(ref, project=proj).uuid
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        flow = proj.db.get_flow(uuid)
        if flow is None:
            raise NotFoundError(f"flow {uuid} was deleted while waiting for it")
        if progress is not None:
            progress(flow, proj.db.count_jobs_by_state(JobFilter(flow_uuids=[uuid])))
        if flow.state in FINAL_FLOW_STATES:
            return flow
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeoutError(
                f"after {timeout:g} s, flow {uuid} is {flow.state}, not finished; is a "
                "runner running? ('conveyor runner status')"
            )
        _sleep(deadline, interval)
