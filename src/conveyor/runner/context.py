"""What a step handler gets (the job under its lock) and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from conveyor.db.base import Database
from conveyor.exceptions import LockLostError
from conveyor.models import JobDoc
from conveyor.project import Project
from conveyor.states import JobState, JobUpdate

__all__ = ["FlowLockBusy", "LockedJob", "StepResult"]


@dataclass
class StepResult:
    """The state a step declares the job moves to, and the fields it sets with it.

    The runner applies both in the same write that releases (or keeps) the lock, and
    only if the step raised nothing and the lock is still ours.
    """

    state: JobState
    fields: dict[str, Any] = field(default_factory=dict)
    #: Extra hops recorded before ``state`` (e.g. RUNNING for a job that finished
    #: before any poll saw it run): every job passes every state.
    via: tuple[JobState, ...] = ()


class FlowLockBusy(Exception):
    """Another runner holds the flow lock; try the step again shortly, no attempt used."""


class LockedJob:
    """A job document together with the lease we hold on it.

    Parameters
    ----------
    project
        The project the job belongs to.
    doc
        The job as it was when we locked it.
    owner
        Our runner id.
    lease
        Length of our lease.
    """

    def __init__(self, project: Project, doc: JobDoc, owner: str, lease: timedelta) -> None:
        if doc.lock.id is None:
            raise ValueError(f"job {doc.db_id} is not locked")
        self.project = project
        self.doc = doc
        self.owner = owner
        self.lease = lease
        self.lock_id: str = doc.lock.id

    @property
    def db(self) -> Database:
        """The project's database."""
        return self.project.db

    @property
    def db_id(self) -> int:
        """The job's db id."""
        return self.doc.db_id

    def save(self, fields: dict[str, Any]) -> None:
        """Record progress (dotted fields) while keeping the lock, and extend the lease.

        Raises
        ------
        LockLostError
            If our lease was taken over meanwhile.
        """
        self.save_transition(JobUpdate(fields, expect_state=self.doc.state))

    def save_transition(self, update: JobUpdate) -> None:
        """Apply ``update`` (a state change, say) while keeping the lock.

        Raises
        ------
        LockLostError
            If our lease was taken over meanwhile.
        """
        if not self.db.renew_job_lock(self.db_id, self.lock_id, self.lease, update=update):
            raise LockLostError(self.lost_message())
        refreshed = self.db.get_job(self.db_id)
        if refreshed is None:
            raise LockLostError(f"job {self.db_id} was deleted while {self.owner} held it")
        self.doc = refreshed

    def renew(self) -> bool:
        """Extend the lease; False if it is no longer ours."""
        return self.db.renew_job_lock(self.db_id, self.lock_id, self.lease)

    def lost_message(self) -> str:
        """Evidence for a lost lease: the job, our lock id and when we took it."""
        return (
            f"job {self.db_id}: lock {self.lock_id} of {self.owner} (taken at "
            f"{self.doc.lock.acquired_at.isoformat()}) was taken over by another runner"
        )
