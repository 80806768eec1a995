"""The queue side: one status command per worker per poll, and the terminate step.

Polling is read-only; only jobs whose queue state changed are locked and updated.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from conveyor.db.base import JobFilter
from conveyor.models import JobDoc, utcnow
from conveyor.project import Project
from conveyor.queue.base import EXIT_CODE_FILE, QueueJobInfo, QueueState
from conveyor.runner.context import LockedJob, StepResult
from conveyor.states import JobState, JobUpdate, transition

__all__ = ["poll_worker", "terminate"]

log = logging.getLogger(__name__)

_QUEUED = [JobState.SUBMITTED, JobState.RUNNING]
_LEFT = (QueueState.DONE, QueueState.FAILED)


def poll_worker(
    project: Project,
    worker: str,
    owner: str,
    lease: timedelta,
    *,
    db_ids: Sequence[int] | None = None,
) -> list[LockedJob]:
    """Check the worker's queued jobs with one status command.

    Jobs seen running move to RUNNING; jobs gone from the queue are locked and
    returned, for the caller to run :func:`terminate` and the steps after it.
    """
    db = project.db
    jobs = [
        job
        for job in db.find_jobs(
            JobFilter(states=_QUEUED, workers=[worker], locked=False, db_ids=db_ids)
        )
        if job.remote.queue_id
    ]
    if not jobs:
        return []
    host, adapter = project.host(worker), project.adapter(worker)
    ids = [str(job.remote.queue_id) for job in jobs]
    result = host.execute(
        adapter.status_command(ids), timeout=project.worker(worker).command_timeout
    )
    infos = adapter.parse_status_output(result.exit_code, result.stdout, result.stderr, ids)
    now = utcnow()
    gone: list[LockedJob] = []
    for job in jobs:
        info = infos.get(str(job.remote.queue_id))
        if info is not None and info.state not in _LEFT:
            _note_state(project, job, info, owner)
            continue
        if info is not None and info.state is QueueState.FAILED:
            # Some queues keep a failed job listed for ever (SGE's Eqw): remove it, or it
            # would hold its slot in the queue's books.
            _remove_failed(project, worker, info)
        locked = db.lock_job(job.db_id, owner, lease, states=_QUEUED, now=now)
        if locked is not None:
            gone.append(LockedJob(project, locked, owner, lease))
    return gone


def _remove_failed(project: Project, worker: str, info: QueueJobInfo) -> None:
    argv = project.adapter(worker).cancel_command(info.queue_id)
    try:
        project.host(worker).execute(argv, timeout=project.worker(worker).command_timeout)
    except Exception as exc:  # best effort: the job is over for us either way
        log.warning("could not remove failed queue job %s: %s", info.queue_id, exc)


def _note_state(project: Project, job: JobDoc, info: QueueJobInfo, owner: str) -> None:
    """Record what the queue says; SUBMITTED → RUNNING once it runs."""
    fields = {
        "remote.queue_state": info.state,
        "remote.native_state": info.native_state,
        "remote.missing_since": None,
    }
    unchanged = (
        job.remote.queue_state == info.state
        and job.remote.native_state == info.native_state
        and job.remote.missing_since is None
    )
    if job.state is JobState.SUBMITTED and info.state in (
        QueueState.RUNNING,
        QueueState.SUSPENDED,
    ):
        update = transition(job.state, JobState.RUNNING, by=owner, extra=fields)
    elif unchanged:
        return
    else:
        update = JobUpdate(fields, expect_state=job.state)
    project.db.update_job(job.db_id, update)


def _exit_code(job: LockedJob) -> int | None:
    """The exit code the script wrote into the run dir, if it got that far."""
    run_dir = job.doc.remote.run_dir
    host = job.project.host(job.doc.worker)
    try:
        text = host.read_bytes(f"{run_dir}/{EXIT_CODE_FILE}").decode().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text)
    except ValueError:
        log.warning("job %s: unreadable exit code file %r", job.db_id, text)
        return None


def _transfer_data(job: LockedJob) -> None:
    """Fetch a spooled job's files into its run dir before anything reads them."""
    doc = job.doc
    argv = job.project.adapter(doc.worker).transfer_data_command(str(doc.remote.queue_id))
    if argv is None:
        return
    host = job.project.host(doc.worker)
    host.execute(argv, timeout=job.project.worker(doc.worker).command_timeout).check()


def _accounting(job: LockedJob) -> QueueJobInfo | None:
    doc = job.doc
    adapter = job.project.adapter(doc.worker)
    argv = adapter.accounting_command(str(doc.remote.queue_id))
    if argv is None:
        return None
    host = job.project.host(doc.worker)
    result = host.execute(argv, timeout=job.project.worker(doc.worker).command_timeout)
    return adapter.parse_accounting_output(
        result.exit_code, result.stdout, result.stderr, str(doc.remote.queue_id)
    )


def terminate(job: LockedJob) -> StepResult | None:
    """SUBMITTED/RUNNING → TERMINATED for a job gone from the queue.

    The job first waits out the adapter's grace period (a job can vanish from a
    listing for a moment); then the queue's accounting and the exit-code file decide
    DONE or FAILED and why. Returns None while the grace period lasts.
    """
    doc = job.doc
    adapter = job.project.adapter(doc.worker)
    now = utcnow()
    setting = job.project.worker(doc.worker).missing_grace
    grace = adapter.missing_grace if setting is None else timedelta(seconds=setting)
    if grace > timedelta(0):
        since = doc.remote.missing_since
        if since is None:
            job.save({"remote.missing_since": now})
            return None
        if now - since < grace:
            return None
    _transfer_data(job)
    exit_code = _exit_code(job)
    # A payload that exited 0 needs no accounting: nothing killed it (one command saved
    # per job, a round trip on a remote cluster).
    info = None if exit_code == 0 else _accounting(job)
    since = doc.remote.missing_since
    if info is None and exit_code is None and since is not None and now - since < 2 * grace:
        # Nothing known yet: queues write their accounting a little after the job left
        # the listing (SGE flushes every 15 s). Wait one more grace period for it.
        return None
    if exit_code is None and info is not None:
        exit_code = info.exit_code
    reason = info.reason if info is not None and info.state is QueueState.FAILED else None
    if reason is None and exit_code is None:
        reason = "NO_EXIT_CODE"
    elif reason is None and exit_code != 0:
        reason = "EXIT_CODE"
    state = QueueState.DONE if reason is None else QueueState.FAILED
    fields = {
        "remote.queue_state": state,
        "remote.native_state": info.native_state if info is not None else doc.remote.native_state,
        "remote.exit_code": exit_code,
        "remote.failure_reason": reason,
    }
    via = (JobState.RUNNING,) if doc.state is JobState.SUBMITTED else ()
    return StepResult(JobState.TERMINATED, fields, via=via)
