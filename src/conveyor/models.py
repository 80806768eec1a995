"""Pydantic models of the stored documents: jobs, flows and runners.

Sentinels instead of nulls where a field is filtered on: a free lock has ``expires_at``
at the epoch and ``attempts.retry_at`` is the epoch when no backoff is pending. That
keeps "is this job free" one range condition on a field that is always present.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from conveyor.states import FlowState, JobState

__all__ = [
    "EPOCH",
    "Attempts",
    "ErrorInfo",
    "FlowDoc",
    "HistoryEntry",
    "JobDoc",
    "Lock",
    "RemoteInfo",
    "RunnerDoc",
    "utcnow",
]

#: The sentinel time of a free lock and of "no backoff".
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utcnow() -> datetime:
    """Now, timezone-aware UTC, truncated to milliseconds (what every backend keeps)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _aware(value: Any) -> Any:
    # MongoDB hands back naive datetimes that are UTC; never let a naive one in.
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class _Doc(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_assignment=False)


class Lock(_Doc):
    """A lease on a document: free when ``expires_at`` is in the past."""

    id: str | None = Field(None, description="Lock id (fencing token); null when free.")
    owner: str | None = Field(None, description="Runner id of the holder.")
    acquired_at: datetime = Field(EPOCH, description="When the lease was taken.")
    expires_at: datetime = Field(EPOCH, description="When the lease lapses.")

    _fix = field_validator("acquired_at", "expires_at", mode="before")(_aware)

    def is_held(self, now: datetime) -> bool:
        """Whether somebody holds a live lease at ``now``."""
        return self.id is not None and self.expires_at > now


class Attempts(_Doc):
    """Backoff state of the step the job is in."""

    count: int = Field(0, description="Failed attempts of the current step.")
    retry_at: datetime = Field(EPOCH, description="Not before this time; epoch: no backoff.")

    _fix = field_validator("retry_at", mode="before")(_aware)


class ErrorInfo(_Doc):
    """What went wrong, with the evidence."""

    step: str = Field(description="The step that failed (or 'job' for the job's own code).")
    message: str = Field(description="One paragraph: what ran, exit code, output tail.")
    traceback: str | None = Field(None, description="Python traceback, if any.")
    at: datetime = Field(default_factory=utcnow, description="When it happened.")
    transient: bool = Field(False, description="Whether the step will be retried.")

    _fix = field_validator("at", mode="before")(_aware)


class RemoteInfo(_Doc):
    """Where and how the job runs on its worker."""

    run_dir: str | None = None
    submit_token: str | None = None
    submitted_at: datetime | None = None
    queue_id: str | None = None
    queue_state: str | None = None
    native_state: str | None = None
    exit_code: int | None = None
    failure_reason: str | None = None
    missing_since: datetime | None = None
    polled_at: datetime | None = None

    _fix = field_validator("submitted_at", "missing_since", "polled_at", mode="before")(_aware)


class HistoryEntry(_Doc):
    """One state change."""

    state: JobState
    at: datetime
    by: str | None = None

    _fix = field_validator("at", mode="before")(_aware)


class JobDoc(_Doc):
    """One jobflow job (or command job) and everything the runner knows about it."""

    db_id: int = Field(description="Short sequential id for people.")
    uuid: str
    index: int = 1
    flow_uuid: str
    name: str = ""
    state: JobState
    previous_state: JobState | None = None
    job: dict[str, Any] = Field(description="The serialized jobflow Job.")
    parents: list[str] = Field(default_factory=list, description="uuids this job waits for.")
    on_missing: str = Field("error", description="jobflow on_missing_references of the job.")
    worker: str
    resources: dict[str, Any] = Field(default_factory=dict)
    exec_env: dict[str, str] = Field(default_factory=dict)
    priority: int = 0
    lock: Lock = Field(default_factory=Lock)
    attempts: Attempts = Field(default_factory=Attempts)
    error: ErrorInfo | None = None
    remote: RemoteInfo = Field(default_factory=RemoteInfo)
    stored_data: dict[str, Any] | None = None
    history: list[HistoryEntry] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    ended_at: datetime | None = None

    _fix = field_validator("created_at", "updated_at", "started_at", "ended_at", mode="before")(
        _aware
    )

    @property
    def key(self) -> tuple[str, int]:
        """``(uuid, index)``: the jobflow identity of the job."""
        return (self.uuid, self.index)


class FlowDoc(_Doc):
    """A flow: its jobs and its derived state."""

    uuid: str
    name: str = ""
    state: FlowState = FlowState.WAITING
    job_uuids: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    lock: Lock = Field(default_factory=Lock)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    _fix = field_validator("created_at", "updated_at", mode="before")(_aware)


class RunnerDoc(_Doc):
    """One runner process, registered while it runs."""

    runner_id: str
    hostname: str
    pid: int
    roles: list[str] = Field(default_factory=list)
    version: str = ""
    started_at: datetime = Field(default_factory=utcnow)
    heartbeat_at: datetime = Field(default_factory=utcnow)
    stopped_at: datetime | None = None

    _fix = field_validator("started_at", "heartbeat_at", "stopped_at", mode="before")(_aware)
