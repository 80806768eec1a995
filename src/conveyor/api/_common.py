"""What the operations share: the project argument, per-job outcomes, and taking job
and flow locks the way a runner takes them, so that no change is ever written behind a
runner's back.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from conveyor.db.base import JobFilter
from conveyor.exceptions import ConveyorError, LockError, NotFoundError
from conveyor.models import JobDoc, utcnow
from conveyor.project import Project
from conveyor.runner.complete import refresh_flow
from conveyor.states import JobUpdate

__all__ = [
    "FLOW_LOCK_WAIT",
    "Edit",
    "Held",
    "Outcome",
    "ProjectRef",
    "by_flow",
    "change_jobs",
    "flow_locked",
    "id_list",
    "lease",
    "lock_job",
    "one_or_many",
    "owner_name",
]

ProjectRef = str | os.PathLike[str] | Project | None

#: How long an operation waits for a flow lock held by someone else. A runner holds
#: it while it completes one job (a fraction of a second); a crashed one's lease lapses.
FLOW_LOCK_WAIT = 10.0
_FLOW_LOCK_POLL = 0.05


@dataclass(frozen=True)
class Outcome:
    """What an operation did to one job.

    ``doc`` is the job after the change (as it was, for a deleted job); ``error`` says
    why the job was left alone (or, for a delete, what could not be cleaned up).
    """

    db_id: int
    name: str = ""
    doc: JobDoc | None = None
    error: ConveyorError | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        """Whether the operation did what was asked for this job."""
        return self.error is None

    @property
    def message(self) -> str:
        """The error message, or an empty string."""
        return str(self.error) if self.error is not None else ""

    def unwrap(self) -> JobDoc:
        """The job after the change; raises the error if there was one."""
        if self.error is not None:
            raise self.error
        if self.doc is None:  # pragma: no cover - every successful outcome has a doc
            raise NotFoundError(f"no job with db id {self.db_id}")
        return self.doc

    def as_dict(self) -> dict[str, Any]:
        """JSON-compatible facts: db id, name, ok, state, note, error."""
        return {
            "db_id": self.db_id,
            "name": self.name,
            "ok": self.ok,
            "state": str(self.doc.state) if self.doc is not None else None,
            "note": self.note,
            "error": self.message or None,
        }


def id_list(ids: int | Iterable[int]) -> list[int]:
    """``ids`` as a list without repeats, in the order given."""
    if isinstance(ids, int):
        return [ids]
    return list(dict.fromkeys(int(i) for i in ids))


def one_or_many(
    ids: int | Iterable[int], run: Callable[[list[int]], list[Outcome]]
) -> JobDoc | list[Outcome]:
    """Run a batch operation; for one id (an int) return its job or raise its error."""
    if isinstance(ids, int):
        (outcome,) = run([ids])
        return outcome.unwrap()
    return run(id_list(ids))


def lease(project: Project) -> timedelta:
    """The lease a lock taken for this project lasts."""
    return timedelta(seconds=project.config.runner.lease_seconds)


def owner_name(by: str) -> str:
    """The lock owner of this process acting as ``by``: ``cli-HOST-PID``."""
    return f"{by}-{socket.gethostname()}-{os.getpid()}"


def _at(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


@dataclass(frozen=True)
class Held:
    """A job we locked: the document as locked, our lock id, and the end of the step
    backoff it was in (restored if we release it unchanged)."""

    doc: JobDoc
    lock_id: str
    backoff_until: datetime | None = None


def lock_job(project: Project, doc: JobDoc, owner: str) -> Held:
    """Lock ``doc`` (in the state it is in) as a runner would.

    A job waiting out a step's backoff is free of runners until the backoff ends: it is
    locked "from" just after then, which succeeds exactly when no runner took it since.

    Raises
    ------
    LockError
        If a runner holds a live lease on the job (the message names it).
    ConveyorError
        If the job changed state meanwhile.
    """
    now = utcnow()
    at, backoff = now, None
    if doc.lock.id is None and doc.lock.expires_at > now:
        backoff = doc.lock.expires_at
        at = backoff + timedelta(milliseconds=1)
    db = project.db
    locked = db.lock_job(doc.db_id, owner, lease(project), states=[doc.state], now=at)
    if locked is not None and locked.lock.id is not None:
        return Held(locked, locked.lock.id, backoff)
    fresh = db.get_job(doc.db_id)
    if fresh is None:
        raise NotFoundError(f"no job with db id {doc.db_id}")
    now = utcnow()
    if fresh.lock.is_held(now):
        lock = fresh.lock
        age = (now - lock.acquired_at).total_seconds()
        raise LockError(
            f"job {doc.db_id} is locked by {lock.owner} (lock {lock.id}, taken {age:.0f} s "
            f"ago, until {_at(lock.expires_at)}): a runner is working on it; try again in "
            "a moment"
        )
    if fresh.state is not doc.state:
        raise ConveyorError(
            f"job {doc.db_id} went from {doc.state} to {fresh.state} meanwhile; try again"
        )
    raise LockError(f"job {doc.db_id} could not be locked; try again")  # pragma: no cover


def release(project: Project, held: Held) -> None:
    """Release a job we locked without changing it (its backoff, if any, stays)."""
    project.db.release_job_lock(held.doc.db_id, held.lock_id, free_at=held.backoff_until)


@contextmanager
def flow_locked(project: Project, flow_uuid: str, owner: str) -> Iterator[str]:
    """Hold the flow's lock inside the block, waiting up to :data:`FLOW_LOCK_WAIT`.

    Raises
    ------
    LockError
        If someone else holds it all that time.
    NotFoundError
        If there is no such flow.
    """
    db = project.db
    deadline = time.monotonic() + FLOW_LOCK_WAIT
    while (lock_id := db.lock_flow(flow_uuid, owner, lease(project))) is None:
        if time.monotonic() >= deadline:
            flow = db.get_flow(flow_uuid)
            holder = (
                f"{flow.lock.owner} (lock {flow.lock.id}, until {_at(flow.lock.expires_at)})"
                if flow is not None
                else "someone"
            )
            raise LockError(
                f"flow {flow_uuid} is locked by {holder} for more than {FLOW_LOCK_WAIT:g} s: "
                "a runner is updating it; try again in a moment"
            )
        time.sleep(_FLOW_LOCK_POLL)
    try:
        yield lock_id
    finally:
        db.release_flow_lock(flow_uuid, lock_id)


def by_flow(docs: Iterable[JobDoc]) -> dict[str, list[JobDoc]]:
    """Jobs grouped by flow, each group in db id order."""
    groups: dict[str, list[JobDoc]] = {}
    for doc in sorted(docs, key=lambda d: d.db_id):
        groups.setdefault(doc.flow_uuid, []).append(doc)
    return groups


@dataclass(frozen=True)
class Edit:
    """What a change does to one locked job: an update (None: leave it), a note, and
    whether a step backoff the job is in outlives the change (a change of settings
    leaves the step's retry schedule alone; a change of state ends it)."""

    update: JobUpdate | None
    note: str = ""
    keep_backoff: bool = False


Change = Callable[[Held], Edit]


def _change_one(project: Project, doc: JobDoc, change: Change, owner: str) -> Outcome:
    try:
        held = lock_job(project, doc, owner)
    except ConveyorError as exc:
        return Outcome(doc.db_id, doc.name, doc, error=exc)
    try:
        edit = change(held)
    except ConveyorError as exc:
        release(project, held)
        return Outcome(doc.db_id, doc.name, doc, error=exc)
    except BaseException:
        release(project, held)
        raise
    if edit.update is None:
        release(project, held)
        return Outcome(doc.db_id, doc.name, held.doc, note=edit.note)
    free_at = held.backoff_until if edit.keep_backoff else None
    if not project.db.release_job_lock(doc.db_id, held.lock_id, edit.update, free_at=free_at):
        error = LockError(f"job {doc.db_id}: our lock {held.lock_id} was lost; try again")
        return Outcome(doc.db_id, doc.name, doc, error=error)
    return Outcome(doc.db_id, doc.name, None, note=edit.note)


def change_jobs(
    project: Project,
    db_ids: Iterable[int],
    change: Change,
    *,
    by: str,
    refresh: bool = True,
) -> list[Outcome]:
    """Apply ``change`` to each job under its lock; one outcome per id, in order.

    With ``refresh`` (for changes of state), the jobs of each flow are changed while
    holding the flow's lock, and the flow is refreshed afterwards: waiting jobs whose
    parents are done become READY, and the flow gets its new state. A job that cannot
    be changed (locked by a runner, in the wrong state) is reported and the others go on.
    """
    db = project.db
    ids = id_list(db_ids)
    found = db.find_jobs(JobFilter(db_ids=ids)) if ids else []
    outcomes: dict[int, Outcome] = {
        i: Outcome(i, error=NotFoundError(f"no job with db id {i}"))
        for i in set(ids) - {d.db_id for d in found}
    }
    owner = owner_name(by)
    for flow_uuid, group in by_flow(found).items():
        if not refresh:
            for doc in group:
                outcomes[doc.db_id] = _change_one(project, doc, change, owner)
            continue
        try:
            with flow_locked(project, flow_uuid, owner):
                # Read again under the flow lock: what we act on is what is stored now.
                fresh = db.find_jobs(JobFilter(db_ids=[d.db_id for d in group]))
                for doc in fresh:
                    outcomes[doc.db_id] = _change_one(project, doc, change, owner)
                if any(outcomes[d.db_id].ok for d in fresh):
                    refresh_flow(db, flow_uuid, by)
        except (LockError, NotFoundError) as exc:
            for doc in group:
                outcomes.setdefault(doc.db_id, Outcome(doc.db_id, doc.name, doc, error=exc))
        for doc in group:  # deleted meanwhile
            gone = NotFoundError(f"no job with db id {doc.db_id}")
            outcomes.setdefault(doc.db_id, Outcome(doc.db_id, doc.name, error=gone))
    return with_fresh_docs(project, [outcomes[i] for i in ids])


def with_fresh_docs(project: Project, outcomes: list[Outcome]) -> list[Outcome]:
    """The outcomes with each successful job's document as it is now."""
    wanted = [o.db_id for o in outcomes if o.ok]
    fresh = {d.db_id: d for d in project.db.find_jobs(JobFilter(db_ids=wanted))} if wanted else {}
    return [
        replace(o, doc=fresh.get(o.db_id, o.doc), name=o.name or _name(fresh.get(o.db_id)))
        for o in outcomes
    ]


def _name(doc: JobDoc | None) -> str:
    return doc.name if doc is not None else ""
