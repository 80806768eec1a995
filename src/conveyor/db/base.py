"""The storage interface: domain operations on jobs, flows, locks and runners.

Backends implement :class:`Database`; one contract test suite
(``tests/contract/test_database.py``) holds every backend to the same behaviour.
The interface is deliberately not a query language: each method is one thing the
runner or the CLI needs, so each backend can serve it with one indexed query.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from conveyor.models import FlowDoc, JobDoc, RunnerDoc
from conveyor.states import HISTORY_LIMIT, FlowState, JobState, JobUpdate

__all__ = [
    "SCHEMA_VERSION",
    "Database",
    "FlowFilter",
    "JobFilter",
    "apply_update",
    "check_db_id_count",
    "merged_job_uuids",
    "plain",
]

#: Version of the stored layout; a backend refuses a database of another version.
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a query selects; ``None`` means "any". Conditions are ANDed."""

    db_ids: Sequence[int] | None = None
    uuids: Sequence[str] | None = None
    flow_uuids: Sequence[str] | None = None
    states: Sequence[JobState] | None = None
    workers: Sequence[str] | None = None
    #: True: only jobs with a live lease; False: only free ones.
    locked: bool | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    #: Evaluated against this time for ``locked``; defaults to now.
    now: datetime | None = field(default=None, compare=False)


@dataclass(frozen=True)
class FlowFilter:
    """Which flows a query selects; ``None`` means "any"."""

    uuids: Sequence[str] | None = None
    states: Sequence[FlowState] | None = None


class Database(ABC):
    """Storage for jobs, flows and runners, with lease locks.

    Every method is safe to call from several threads. Times are timezone-aware UTC.
    """

    # --- lifecycle -----------------------------------------------------------------

    @abstractmethod
    def close(self) -> None:
        """Release connections and files."""

    @abstractmethod
    def reset(self) -> None:
        """Delete every job, flow, runner and counter (admin only)."""

    @abstractmethod
    def schema_version(self) -> int:
        """The schema version recorded in the database."""

    @abstractmethod
    def upgrade(self) -> int:
        """Bring the stored layout to :data:`SCHEMA_VERSION`; return the version found.

        Open the database with ``check_schema=False`` first: an open that checks
        refuses any other version.

        Raises
        ------
        SchemaVersionError
            If the database is newer than this Conveyor, or not Conveyor's.
        """

    # --- ids and inserts -----------------------------------------------------------

    @abstractmethod
    def next_db_ids(self, count: int) -> int:
        """Reserve ``count`` consecutive db ids and return the first."""

    @abstractmethod
    def insert_flow(self, flow: FlowDoc, jobs: Sequence[JobDoc]) -> None:
        """Insert a new flow and its jobs in one go."""

    @abstractmethod
    def add_jobs(self, flow_uuid: str, jobs: Sequence[JobDoc]) -> int:
        """Add jobs to an existing flow, skipping any ``(uuid, index)`` already stored.

        Returns how many were inserted. Repeating the call changes nothing (the complete
        step relies on that when it is redone after a crash).
        """

    # --- reads ---------------------------------------------------------------------

    @abstractmethod
    def get_job(self, db_id: int) -> JobDoc | None:
        """The job with this db id, or None."""

    @abstractmethod
    def get_job_by_uuid(self, uuid: str, index: int | None = None) -> JobDoc | None:
        """The job with this uuid and index (the highest index if ``index`` is None)."""

    @abstractmethod
    def find_jobs(
        self, flt: JobFilter | None = None, *, limit: int = 0, newest_first: bool = False
    ) -> list[JobDoc]:
        """Jobs matching ``flt`` sorted by db id; ``limit`` 0 means all."""

    @abstractmethod
    def count_jobs(self, flt: JobFilter | None = None) -> int:
        """How many jobs match ``flt``."""

    @abstractmethod
    def count_jobs_by_state(self, flt: JobFilter | None = None) -> dict[JobState, int]:
        """Counts of matching jobs per state (states with no job are left out)."""

    @abstractmethod
    def get_flow(self, uuid: str) -> FlowDoc | None:
        """The flow with this uuid, or None."""

    @abstractmethod
    def find_flows(
        self, flt: FlowFilter | None = None, *, limit: int = 0, newest_first: bool = False
    ) -> list[FlowDoc]:
        """Flows matching ``flt``, sorted by creation time."""

    # --- job locks -----------------------------------------------------------------

    @abstractmethod
    def lock_next_job(
        self,
        states: Iterable[JobState],
        owner: str,
        lease: timedelta,
        *,
        workers: Iterable[str] | None = None,
        now: datetime | None = None,
    ) -> JobDoc | None:
        """Atomically lock the next free job in ``states`` (on ``workers``, if given).

        Free means ``lock.expires_at < now``; a job in backoff was released with its
        ``expires_at`` at the retry time, so it is skipped by the same condition.
        Highest priority first, then oldest (lowest db id). Returns the job with the
        new lock, or None.
        """

    @abstractmethod
    def lock_job(
        self,
        db_id: int,
        owner: str,
        lease: timedelta,
        *,
        states: Iterable[JobState] | None = None,
        now: datetime | None = None,
    ) -> JobDoc | None:
        """Lock this job if it is free (and in ``states``); the locked job or None."""

    @abstractmethod
    def renew_job_lock(
        self,
        db_id: int,
        lock_id: str,
        lease: timedelta,
        *,
        update: JobUpdate | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Extend our lease, applying ``update`` in the same atomic write if given.

        Fencing as for :meth:`release_job_lock`: nothing happens unless the lock id still
        matches (and the job is in ``update.expect_state``, when set). Returns whether it
        did. A step uses ``update`` to record progress while it keeps the lock.
        """

    @abstractmethod
    def release_job_lock(
        self,
        db_id: int,
        lock_id: str,
        update: JobUpdate | None = None,
        *,
        free_at: datetime | None = None,
    ) -> bool:
        """Release our lock and apply ``update`` in the same atomic write.

        Fencing: nothing happens unless the lock id still matches; returns whether it
        did. ``free_at`` keeps the job unavailable until then (step backoff); by default
        the lock is free at once.
        """

    @abstractmethod
    def update_job(self, db_id: int, update: JobUpdate, *, require_unlocked: bool = True) -> bool:
        """Apply ``update`` if the job is in ``update.expect_state`` (when set) and, with
        ``require_unlocked``, nobody holds a live lease. Returns whether it applied."""

    @abstractmethod
    def unlock_jobs(self, flt: JobFilter | None = None) -> int:
        """Free the locks of matching jobs (admin); how many were freed."""

    # --- flows ---------------------------------------------------------------------

    @abstractmethod
    def lock_flow(
        self, uuid: str, owner: str, lease: timedelta, *, now: datetime | None = None
    ) -> str | None:
        """Lock the flow if free; the lock id, or None if someone holds it."""

    @abstractmethod
    def release_flow_lock(
        self, uuid: str, lock_id: str, fields: Mapping[str, Any] | None = None
    ) -> bool:
        """Release the flow lock, setting ``fields`` (dotted paths) if the id matches."""

    @abstractmethod
    def update_flow(self, uuid: str, fields: Mapping[str, Any]) -> bool:
        """Set ``fields`` (dotted paths) on the flow."""

    # --- deletes -------------------------------------------------------------------

    @abstractmethod
    def delete_jobs(self, db_ids: Sequence[int]) -> int:
        """Delete the jobs with these db ids; how many there were.

        Deletes whatever their state and lock: the caller makes sure nobody works on
        them (it holds their locks) and updates their flow's ``job_uuids`` itself.
        """

    @abstractmethod
    def delete_flow(self, uuid: str) -> int:
        """Delete the flow and every job of it; how many jobs were deleted.

        Raises
        ------
        NotFoundError
            If there is no such flow.
        """

    # --- runners -------------------------------------------------------------------

    @abstractmethod
    def register_runner(self, runner: RunnerDoc) -> None:
        """Insert or replace the registration of one runner process."""

    @abstractmethod
    def heartbeat_runner(
        self, runner_id: str, *, now: datetime | None = None, stopped: bool = False
    ) -> None:
        """Record that the runner is alive (or, with ``stopped``, that it has exited)."""

    @abstractmethod
    def list_runners(self) -> list[RunnerDoc]:
        """Every registered runner, newest first."""


def plain(value: Any) -> Any:
    """``value`` with enums turned into their plain values, recursively.

    Backends store plain strings, not ``StrEnum`` instances (BSON and JSON encoders
    differ in how they treat str subclasses).
    """
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def apply_update(doc: dict[str, Any], update: JobUpdate) -> dict[str, Any]:
    """Apply ``update`` to a plain document in place (for backends without ``$set``)."""
    for path, value in update.set.items():
        target = doc
        *parents, last = path.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = plain(value)
    if update.history is not None:
        history = [*doc.get("history", []), plain(update.history)]
        doc["history"] = history[-HISTORY_LIMIT:]
    return doc


def check_db_id_count(count: int) -> None:
    """Refuse to reserve fewer than one db id (for :meth:`Database.next_db_ids`)."""
    if count < 1:
        raise ValueError(f"cannot reserve {count} db ids; ask for at least one")


def merged_job_uuids(stored: Sequence[str], jobs: Iterable[JobDoc]) -> list[str] | None:
    """A flow's ``stored`` job uuids with those of ``jobs`` it lacks appended, in order.

    None if every job's uuid is already there (for :meth:`Database.add_jobs`).
    """
    job_uuids = list(stored)
    known = set(job_uuids)
    for job in jobs:
        if job.uuid not in known:
            known.add(job.uuid)
            job_uuids.append(job.uuid)
    return job_uuids if len(job_uuids) != len(stored) else None
