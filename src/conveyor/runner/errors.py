"""Step failures: transient ones are retried with backoff, the rest end in REMOTE_ERROR."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta

from conveyor.config.models import RunnerConfig
from conveyor.exceptions import DatabaseError, HostError, QueueError, StepError
from conveyor.models import EPOCH, ErrorInfo, JobDoc, utcnow
from conveyor.states import JobState, JobUpdate, transition

__all__ = ["StepFailure", "is_transient", "step_failure"]

#: Errors a later attempt may not meet: the network, a busy queue, a full disk.
_TRANSIENT = (HostError, QueueError, DatabaseError, OSError, TimeoutError)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the step later can help."""
    if isinstance(exc, StepError):
        return exc.transient
    return isinstance(exc, _TRANSIENT)


@dataclass
class StepFailure:
    """How to record a failed step: the update, and until when the job rests."""

    update: JobUpdate
    free_at: datetime | None
    error: ErrorInfo


def step_failure(
    doc: JobDoc, step: str, exc: BaseException, config: RunnerConfig, by: str
) -> StepFailure:
    """The update for a step that raised ``exc``: backoff, or REMOTE_ERROR at the end.

    The attempt count and retry time live on the job, so any runner continues the
    backoff where another left it.
    """
    now = utcnow()
    attempt = doc.attempts.count + 1
    transient = is_transient(exc)
    retry = transient and attempt < config.max_step_attempts
    error = ErrorInfo(
        step=step,
        message=f"{type(exc).__name__}: {exc}",
        traceback="".join(traceback.format_exception(exc)),
        at=now,
        transient=retry,
    )
    if retry:
        delays = config.retry_delays
        delay = delays[min(attempt - 1, len(delays) - 1)]
        retry_at = now + timedelta(seconds=delay)
        update = JobUpdate(
            {
                "attempts.count": attempt,
                "attempts.retry_at": retry_at,
                "error": error.model_dump(),
                "updated_at": now,
            },
            expect_state=doc.state,
        )
        return StepFailure(update, retry_at, error)
    update = transition(
        doc.state,
        JobState.REMOTE_ERROR,
        by=by,
        now=now,
        extra={
            "attempts.count": attempt,
            "attempts.retry_at": EPOCH,
            "error": error.model_dump(),
        },
    )
    return StepFailure(update, None, error)
