"""Job and flow states, the one table of allowed transitions, and the update it builds.

No other module writes a ``state`` field: every state change goes through
:func:`transition`, which refuses any pair that is not in :data:`TRANSITIONS`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from conveyor.exceptions import InvalidTransitionError

__all__ = [
    "ACTIVE_STATES",
    "DONE_STATES",
    "ERROR_STATES",
    "HISTORY_LIMIT",
    "QUEUED_STATES",
    "RUNNABLE_STATES",
    "TRANSITIONS",
    "FlowState",
    "JobState",
    "JobUpdate",
    "flow_state_from_jobs",
    "transition",
]


class JobState(StrEnum):
    """The state of one job document."""

    WAITING = "WAITING"
    READY = "READY"
    CHECKED_OUT = "CHECKED_OUT"
    UPLOADED = "UPLOADED"
    SUBMITTED = "SUBMITTED"
    RUNNING = "RUNNING"
    TERMINATED = "TERMINATED"
    DOWNLOADED = "DOWNLOADED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    REMOTE_ERROR = "REMOTE_ERROR"
    PAUSED = "PAUSED"
    STOPPED = "STOPPED"
    CANCELLED = "CANCELLED"


class FlowState(StrEnum):
    """The state of a flow, derived from the states of its jobs."""

    WAITING = "WAITING"
    READY = "READY"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    PAUSED = "PAUSED"
    STOPPED = "STOPPED"
    CANCELLED = "CANCELLED"


S = JobState

#: The normal path a job takes, one step per pair.
_PIPELINE: tuple[JobState, ...] = (
    S.READY,
    S.CHECKED_OUT,
    S.UPLOADED,
    S.SUBMITTED,
    S.RUNNING,
    S.TERMINATED,
    S.DOWNLOADED,
)

#: States in which a runner is (or will be) working on the job.
ACTIVE_STATES: frozenset[JobState] = frozenset(_PIPELINE)
#: States in which the job sits in the worker's queue.
QUEUED_STATES: frozenset[JobState] = frozenset({S.SUBMITTED, S.RUNNING})
#: States that a runner advances by taking a lock and running a step.
RUNNABLE_STATES: frozenset[JobState] = frozenset(
    {S.READY, S.CHECKED_OUT, S.UPLOADED, S.TERMINATED, S.DOWNLOADED}
)
#: States a job reaches at the end of its life (until a rerun).
DONE_STATES: frozenset[JobState] = frozenset({S.COMPLETED, S.FAILED, S.STOPPED, S.CANCELLED})
#: States that need a person (or a retry) to move on.
ERROR_STATES: frozenset[JobState] = frozenset({S.FAILED, S.REMOTE_ERROR})

_RERUNNABLE = (S.COMPLETED, S.FAILED, S.REMOTE_ERROR, S.STOPPED, S.CANCELLED)


def _build_table() -> dict[JobState, frozenset[JobState]]:
    table: dict[JobState, set[JobState]] = {state: set() for state in JobState}
    for here, there in itertools.pairwise(_PIPELINE):
        table[here].add(there)
    table[S.WAITING] |= {S.READY, S.PAUSED, S.STOPPED, S.CANCELLED}
    table[S.READY] |= {S.WAITING, S.PAUSED, S.STOPPED, S.CANCELLED}
    table[S.PAUSED] |= {S.READY, S.WAITING, S.CANCELLED, S.STOPPED}
    table[S.DOWNLOADED] |= {S.COMPLETED, S.FAILED}
    # The queue can kill or lose a job at any point after submission, and a step can
    # give up in any active state.
    for state in ACTIVE_STATES:
        table[state] |= {S.REMOTE_ERROR, S.CANCELLED}
    # A job gone from the queue before it was ever seen running still passes RUNNING;
    # the runner records both hops, so every job has every state in its history.
    table[S.REMOTE_ERROR] |= {*ACTIVE_STATES, S.CANCELLED}
    # rerun: a finished or errored job goes back to READY (or WAITING for descendants).
    for state in _RERUNNABLE:
        table[state] |= {S.READY, S.WAITING}
    # A job that completed can be sent back to WAITING when a parent reruns; same for
    # the in-between states, which the rerun cancels first.
    return {state: frozenset(targets - {state}) for state, targets in table.items()}


#: Every allowed ``from -> to`` transition; nothing else may happen.
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = _build_table()

#: How many entries of a job's history are kept.
HISTORY_LIMIT = 50


class JobUpdate:
    """A change to a job document: fields to set (dotted paths) and a history entry.

    Backends apply it natively (MongoDB ``$set``/``$push``) or to the JSON document
    (SQLite). ``expect_state`` makes the update conditional on the current state.
    """

    __slots__ = ("expect_state", "history", "set")

    def __init__(
        self,
        set: dict[str, Any] | None = None,  # noqa: A002 - mirrors MongoDB's $set
        history: dict[str, Any] | None = None,
        expect_state: JobState | None = None,
    ) -> None:
        self.set: dict[str, Any] = dict(set or {})
        self.history = history
        self.expect_state = expect_state

    def merge(self, other: JobUpdate) -> JobUpdate:
        """Return a new update doing this one then ``other`` (other wins on conflicts)."""
        merged = JobUpdate({**self.set, **other.set}, other.history or self.history)
        merged.expect_state = self.expect_state or other.expect_state
        return merged

    @property
    def new_state(self) -> JobState | None:
        value = self.set.get("state")
        return JobState(value) if value is not None else None

    def __repr__(self) -> str:
        return f"JobUpdate(set={self.set!r}, expect_state={self.expect_state!r})"


def transition(
    current: JobState | str,
    new: JobState | str,
    *,
    by: str | None = None,
    now: datetime | None = None,
    extra: dict[str, Any] | None = None,
) -> JobUpdate:
    """Build the update that moves a job from ``current`` to ``new``.

    Parameters
    ----------
    current, new
        The state the job is in, and the state it moves to.
    by
        Who makes the change (a runner id, ``"cli"``, ``"api"``); kept in the history.
    now
        The time of the change (defaults to now, UTC).
    extra
        Other fields to set in the same update (dotted paths).

    Raises
    ------
    InvalidTransitionError
        If ``current -> new`` is not in :data:`TRANSITIONS`.
    """
    current, new = JobState(current), JobState(new)
    if new not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none"
        raise InvalidTransitionError(
            f"a job cannot go from {current} to {new} (allowed from {current}: {allowed})"
        )
    now = now or datetime.now(UTC)
    fields: dict[str, Any] = {"state": new, "updated_at": now}
    if new is S.REMOTE_ERROR:
        fields["previous_state"] = current
    elif current is not S.REMOTE_ERROR:
        fields["previous_state"] = None
    if new is S.RUNNING:
        fields["started_at"] = now
    if new in DONE_STATES:
        fields["ended_at"] = now
    if new in (S.READY, S.WAITING) and current in _RERUNNABLE:
        fields["ended_at"] = None
    fields.update(extra or {})
    return JobUpdate(
        fields,
        history={"state": new, "at": now, "by": by},
        expect_state=current,
    )


def flow_state_from_jobs(states: Iterable[JobState | str]) -> FlowState:
    """Derive a flow's state from the states of its jobs (latest index of each).

    Precedence: a flow with a job in the pipeline is READY (if nothing has started)
    or RUNNING; then an error with nothing left to run makes it FAILED (jobs waiting
    on a failed parent cannot run); then PAUSED, WAITING; a flow whose jobs are all
    finished is COMPLETED, STOPPED or CANCELLED.
    """
    present = {JobState(s) for s in states}
    if not present:
        return FlowState.WAITING
    if present & ACTIVE_STATES:
        # READY alone means nothing has started; beside anything else the flow is moving.
        return FlowState.READY if present <= {S.READY, S.WAITING} else FlowState.RUNNING
    if present & ERROR_STATES:
        return FlowState.FAILED
    if S.PAUSED in present:
        return FlowState.PAUSED
    if S.WAITING in present:
        return FlowState.RUNNING if S.COMPLETED in present else FlowState.WAITING
    if present <= {S.COMPLETED}:
        return FlowState.COMPLETED
    if S.CANCELLED in present:
        return FlowState.CANCELLED
    return FlowState.STOPPED
