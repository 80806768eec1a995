"""Flow logic shared by submission and completion: job documents from jobflow objects,
which jobs may run, descendants, and the flow's derived state.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.db.base import Database, JobFilter
from conveyor.models import JobDoc, utcnow
from conveyor.states import FlowState, JobState, flow_state_from_jobs

if TYPE_CHECKING:
    from jobflow.core.flow import Flow
    from jobflow.core.job import Job

__all__ = [
    "Assume",
    "JobDefaults",
    "descendants",
    "flow_state",
    "job_docs_from_flow",
    "latest_states",
    "parent_done",
    "serialize_job",
]


class JobDefaults:
    """Where and how new jobs run unless their ``manager_config`` says otherwise."""

    def __init__(
        self,
        worker: str,
        resources: Mapping[str, Any] | None = None,
        exec_env: Mapping[str, str] | None = None,
        priority: int = 0,
    ) -> None:
        self.worker = worker
        self.resources = dict(resources or {})
        self.exec_env = dict(exec_env or {})
        self.priority = priority


def serialize_job(job: Job) -> dict[str, Any]:
    """A jobflow Job as a JSON-compatible dict (what the database and job.json hold)."""
    from monty.json import jsanitize

    data: dict[str, Any] = jsanitize(job, strict=True, enum_values=True, allow_bson=False)
    return data


def _on_missing(job: Job) -> str:
    value = getattr(job.config.on_missing_references, "value", job.config.on_missing_references)
    return str(value)


def parent_done(state: JobState | None, on_missing: str) -> bool:
    """Whether a parent in ``state`` lets a child with ``on_missing`` run.

    A completed parent always does. A failed parent does when the child accepts
    missing references (jobflow's ``on_missing_references`` is ``none`` or ``pass``).
    """
    if state is JobState.COMPLETED:
        return True
    return state is JobState.FAILED and on_missing != "error"


#: A state to use instead of the stored one, for one ``(uuid, index)``: the job being
#: completed counts as finished before its own document says so.
Assume = Mapping[tuple[str, int], JobState]


def _latest(docs: Iterable[JobDoc], assume: Assume | None) -> dict[str, JobState]:
    best: dict[str, JobDoc] = {}
    for doc in docs:
        if doc.uuid not in best or doc.index > best[doc.uuid].index:
            best[doc.uuid] = doc
    assume = assume or {}
    return {uuid: assume.get(doc.key, doc.state) for uuid, doc in best.items()}


def latest_states(
    db: Database, uuids: Iterable[str], assume: Assume | None = None
) -> dict[str, JobState]:
    """The state of the highest index of each uuid (a replaced job lives on as index+1)."""
    wanted = sorted(set(uuids))
    if not wanted:
        return {}
    return _latest(db.find_jobs(JobFilter(uuids=wanted)), assume)


def job_docs_from_flow(
    flow: Flow,
    db: Database,
    defaults: JobDefaults,
    *,
    extra_root_parents: Sequence[str] = (),
    assume: Assume | None = None,
    flow_uuid: str | None = None,
) -> list[JobDoc]:
    """Documents for every job of ``flow``, WAITING or READY, with fresh db ids.

    A job's parents are the jobs it follows in the flow's graph plus every job whose
    output it references (also outside the flow). ``extra_root_parents`` are added to
    jobs with no parent inside the flow (for additions and detours: the job that
    created them). ``assume`` overrides stored states (a job being completed).
    ``flow_uuid`` puts the jobs in an existing flow (default: ``flow`` itself).
    """
    entries: list[tuple[Job, list[str]]] = []
    with warnings.catch_warnings():
        # jobflow warns that unconnected jobs run in random order: true, and harmless
        # here, since every job waits only for its own parents.
        warnings.filterwarnings("ignore", "Some jobs are not connected", UserWarning)
        walk = list(flow.iterflow())  # type: ignore[no-untyped-call]
    inside = {job.uuid for job, _ in walk}
    for job, graph_parents in walk:
        found = set(graph_parents) | set(job.input_uuids)
        if not found & inside:
            found |= set(extra_root_parents)
        found.discard(job.uuid)
        entries.append((job, sorted(found)))
    outside = {p for _, parents in entries for p in parents} - inside
    states = latest_states(db, outside, assume)
    first = db.next_db_ids(len(entries)) if entries else 0
    now = utcnow()
    docs = []
    for offset, (job, parents) in enumerate(entries):
        manager = dict(job.config.manager_config or {})
        on_missing = _on_missing(job)
        ready = all(p not in inside and parent_done(states.get(p), on_missing) for p in parents)
        state = JobState.READY if ready else JobState.WAITING
        docs.append(
            JobDoc(
                db_id=first + offset,
                uuid=job.uuid,
                index=job.index,
                flow_uuid=flow_uuid or flow.uuid,
                name=job.name,
                state=state,
                job=serialize_job(job),
                parents=parents,
                on_missing=on_missing,
                worker=manager.get("worker", defaults.worker),
                resources={**defaults.resources, **manager.get("resources", {})},
                exec_env={**defaults.exec_env, **manager.get("exec_env", {})},
                priority=int(manager.get("priority", defaults.priority)),
                history=[{"state": state, "at": now, "by": "submit"}],
                created_at=now,
                updated_at=now,
            )
        )
    return docs


def descendants(jobs: Sequence[JobDoc], roots: Iterable[str]) -> set[str]:
    """uuids of every job in ``jobs`` that depends, directly or not, on ``roots``."""
    children: dict[str, set[str]] = {}
    for doc in jobs:
        for parent in doc.parents:
            children.setdefault(parent, set()).add(doc.uuid)
    found: set[str] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def flow_state(jobs: Iterable[JobDoc], assume: Assume | None = None) -> FlowState:
    """A flow's state from its jobs (the highest index of each uuid counts)."""
    return flow_state_from_jobs(_latest(jobs, assume).values())
