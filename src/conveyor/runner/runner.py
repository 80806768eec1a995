"""The Runner: a loop that locks jobs, runs their steps in a thread pool, and polls queues.

A job that finishes a step goes straight on with the next one while its lock is held,
so a chain of dependent jobs never waits a poll interval per hop. Only a job sitting in
a queue (SUBMITTED/RUNNING) is left unlocked, to be watched by the batched poll.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from types import FrameType
from typing import Any

from conveyor._version import __version__
from conveyor.db.base import JobFilter
from conveyor.exceptions import (
    DatabaseError,
    LockLostError,
    NotFoundError,
    RunnerTimeoutError,
)
from conveyor.models import EPOCH, JobDoc, RunnerDoc, utcnow
from conveyor.project import Project, open_project
from conveyor.runner.complete import complete
from conveyor.runner.context import FlowLockBusy, LockedJob, StepResult
from conveyor.runner.errors import step_failure
from conveyor.runner.polling import poll_worker, terminate
from conveyor.runner.steps import checkout, download, submit, upload
from conveyor.states import ACTIVE_STATES, JobState, transition

__all__ = ["ALL_ROLES", "STEPS", "Runner"]

log = logging.getLogger(__name__)

Handler = Callable[[LockedJob], StepResult | None]

#: The dispatch table: state → (step name, role, handler). SUBMITTED and RUNNING are
#: advanced by the poll, which hands jobs gone from the queue to ``terminate``.
STEPS: dict[JobState, tuple[str, str, Handler]] = {
    JobState.READY: ("checkout", "checkout", checkout),
    JobState.CHECKED_OUT: ("upload", "transfer", upload),
    JobState.UPLOADED: ("submit", "queue", submit),
    JobState.SUBMITTED: ("terminate", "queue", terminate),
    JobState.RUNNING: ("terminate", "queue", terminate),
    JobState.TERMINATED: ("download", "transfer", download),
    JobState.DOWNLOADED: ("complete", "complete", complete),
}
ALL_ROLES: tuple[str, ...] = ("checkout", "transfer", "queue", "complete")
#: States a job rests in when no runner works on it.
FINAL_STATES = frozenset(JobState) - ACTIVE_STATES - {JobState.WAITING}
_QUEUED = (JobState.SUBMITTED, JobState.RUNNING)
#: How soon a complete step that found its flow locked tries again.
_FLOW_BUSY_PAUSE = timedelta(milliseconds=50)


class Runner:
    """Advances the jobs of a project through their states.

    Parameters
    ----------
    project
        The project (name, path or object); default: the current one.
    roles
        Which steps this process takes: any of ``checkout``, ``transfer``, ``queue``,
        ``complete`` (default: all).
    workers
        Only work on jobs of these workers (default: all the project's workers).
    runner_id
        A unique name for this process (default: host, pid and a random suffix).
    """

    def __init__(
        self,
        project: str | os.PathLike[str] | Project | None = None,
        *,
        roles: Iterable[str] | None = None,
        workers: Iterable[str] | None = None,
        runner_id: str | None = None,
    ) -> None:
        self.project = open_project(project)
        self.config = self.project.config.runner
        self.roles = frozenset(roles or ALL_ROLES)
        unknown = self.roles - set(ALL_ROLES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; use {', '.join(ALL_ROLES)}")
        self.workers = list(workers or self.project.config.workers)
        for worker in self.workers:
            self.project.worker(worker)
        host = socket.gethostname()
        self.runner_id = runner_id or f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lease = timedelta(seconds=self.config.lease_seconds)
        self._stop = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._jobs: dict[int, Future[None]] = {}
        self._polls: dict[str, Future[None]] = {}
        self._held: dict[int, LockedJob] = {}
        self._held_lock = threading.Lock()
        self._last_poll: dict[str, float] = {}
        self._last_renew = self._last_heartbeat = 0.0
        self._stop_at: JobState | None = None
        self._signals = 0

    # --- public entry points -------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the steps in hand, release its locks and return."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested."""
        return self._stop.is_set()

    def run(self, ticks: int | None = None) -> None:
        """Run until stopped (SIGTERM, SIGINT or :meth:`stop`), or for ``ticks`` loops.

        The first SIGTERM finishes the steps in hand and releases every lock; a second
        one exits at once (the leases then expire and other runners take over).
        """
        with self._session():
            count = 0
            while not self.stopping and (ticks is None or count < ticks):
                self._idle(self._tick())
                count += 1

    def run_all_jobs(
        self, max_seconds: float | None = None, *, flows: Sequence[str] | None = None
    ) -> bool:
        """Run until no job of this runner's workers is active; False on timeout.

        With ``flows`` (flow uuids), stop as soon as those flows have no active job
        (other jobs are still worked on meanwhile).
        """
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        with self._session():
            while not self.stopping:
                busy = self._tick()
                if not self._jobs and not self._polls and not self._active(flows):
                    return True
                if deadline is not None and time.monotonic() > deadline:
                    return False
                self._idle(busy)
        return False

    def run_one_job(
        self,
        db_id: int | None = None,
        job_id: tuple[str, int] | None = None,
        max_seconds: float | None = None,
        raise_at_timeout: bool = True,
        target_state: JobState | str | None = None,
    ) -> bool:
        """Drive one job until it reaches ``target_state`` (default: a final state).

        Parameters
        ----------
        db_id, job_id
            The job, by db id or by ``(uuid, index)``.
        max_seconds
            Give up after this long.
        raise_at_timeout
            Raise :class:`RunnerTimeoutError` on timeout instead of returning False.
        target_state
            Stop once the job is in this state (its steps stop there too).
        """
        db_id = self._resolve(db_id, job_id)
        target = JobState(target_state) if target_state is not None else None
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        self._stop_at = target
        try:
            with self._session():
                while not self.stopping:
                    busy = self._tick(db_ids=[db_id])
                    try:
                        doc = self.project.db.get_job(db_id)
                    except DatabaseError as exc:
                        log.warning("runner %s: cannot read job %s: %s", self.runner_id, db_id, exc)
                        if deadline is not None and time.monotonic() > deadline:
                            if raise_at_timeout:
                                raise RunnerTimeoutError(
                                    f"job {db_id}: the database failed until the timeout: {exc}"
                                ) from exc
                            return False
                        self._idle(False)
                        continue
                    if doc is None:
                        raise NotFoundError(f"job {db_id} disappeared")
                    idle = db_id not in self._jobs
                    if idle and (doc.state == target or (not target and doc.state in FINAL_STATES)):
                        return True
                    if deadline is not None and time.monotonic() > deadline:
                        if raise_at_timeout:
                            raise RunnerTimeoutError(
                                f"job {db_id} is {doc.state} after {max_seconds} s, not "
                                f"{target or 'finished'}"
                            )
                        return False
                    self._idle(busy)
        finally:
            self._stop_at = None
        return False

    # --- the loop ------------------------------------------------------------------

    def _session(self, signals: bool = True) -> _Session:
        return _Session(self, signals)

    def _start(self) -> None:
        self._stop.clear()
        self._signals = 0
        self._pool = ThreadPoolExecutor(self.config.max_threads, thread_name_prefix="conveyor")
        self.project.db.register_runner(
            RunnerDoc(
                runner_id=self.runner_id,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                roles=sorted(self.roles),
                version=__version__,
            )
        )
        self._last_heartbeat = time.monotonic()
        log.info("runner %s: started with roles %s", self.runner_id, ",".join(sorted(self.roles)))

    def _finish(self) -> None:
        # Steps in hand finish; their chains see the stop flag and release their locks.
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._jobs.clear()
        self._polls.clear()
        try:
            self.project.db.heartbeat_runner(self.runner_id, stopped=True)
        except DatabaseError as exc:  # the registration then goes stale by itself
            log.warning("runner %s: cannot record the stop: %s", self.runner_id, exc)
        log.info("runner %s: stopped", self.runner_id)

    def _idle(self, busy: bool) -> None:
        if not busy:
            self._stop.wait(self.config.idle_sleep)

    def _active(self, flows: Sequence[str] | None = None) -> bool:
        flt = JobFilter(states=list(ACTIVE_STATES), workers=self.workers, flow_uuids=flows)
        try:
            return self.project.db.count_jobs(flt) > 0
        except DatabaseError as exc:  # unknown: assume there is work, ask again next pass
            log.warning("runner %s: cannot count active jobs: %s", self.runner_id, exc)
            return True

    def _resolve(self, db_id: int | None, job_id: tuple[str, int] | None) -> int:
        if db_id is not None:
            return db_id
        if job_id is None:
            raise ValueError("give db_id or job_id")
        doc = self.project.db.get_job_by_uuid(job_id[0], job_id[1])
        if doc is None:
            raise NotFoundError(f"no job with uuid {job_id[0]} and index {job_id[1]}")
        return doc.db_id

    def _tick(self, db_ids: Sequence[int] | None = None) -> bool:
        """One pass: housekeeping, polls, and new work for free threads. Busy or not.

        A database error (a locked or unreachable database) does not end the loop: the
        pass is logged and skipped; leases keep every job safe meanwhile.
        """
        try:
            return self._pass(db_ids)
        except DatabaseError as exc:
            log.warning("runner %s: database error, pausing this pass: %s", self.runner_id, exc)
            self._stop.wait(min(1.0, self.config.lease_seconds / 10))
            return False

    def _pass(self, db_ids: Sequence[int] | None) -> bool:
        self._reap()
        now = time.monotonic()
        if now - self._last_heartbeat >= self.config.heartbeat_interval:
            self.project.db.heartbeat_runner(self.runner_id)
            self._last_heartbeat = now
        if now - self._last_renew >= self.config.lease_seconds / 3:
            self._renew_leases()
            self._last_renew = now
        busy = False
        if "queue" in self.roles:
            busy |= self._start_polls(now, db_ids)
        busy |= self._take_jobs(db_ids)
        return busy

    def _reap(self) -> None:
        for table in (self._jobs, self._polls):
            for key, future in list(table.items()):
                if future.done():
                    del table[key]  # type: ignore[arg-type]
                    exc = future.exception()
                    if exc is not None:
                        log.error("runner %s: %s failed: %r", self.runner_id, key, exc)

    def _renew_leases(self) -> None:
        with self._held_lock:
            held = list(self._held.values())
        for job in held:
            if not job.renew():
                log.warning("%s", job.lost_message())

    def _start_polls(self, now: float, db_ids: Sequence[int] | None) -> bool:
        assert self._pool is not None
        started = False
        for worker in self.workers:
            interval = self.project.worker(worker).poll_interval
            if worker in self._polls or now - self._last_poll.get(worker, 0.0) < interval:
                continue
            self._last_poll[worker] = now
            self._polls[worker] = self._pool.submit(self._poll, worker, db_ids)
            started = True
        return started

    def _poll(self, worker: str, db_ids: Sequence[int] | None) -> None:
        try:
            gone = poll_worker(self.project, worker, self.runner_id, self.lease, db_ids=db_ids)
        except Exception as exc:  # a flaky status command must not stop the runner
            log.warning("runner %s: polling worker %s failed: %s", self.runner_id, worker, exc)
            return
        for job in gone:
            self._advance(job)

    def _runnable_states(self) -> list[JobState]:
        return [
            state
            for state, (_, role, _) in STEPS.items()
            if role in self.roles and state not in _QUEUED
        ]

    def _take_jobs(self, db_ids: Sequence[int] | None) -> bool:
        assert self._pool is not None
        states = [s for s in self._runnable_states() if s != self._stop_at]
        taken = False
        while len(self._jobs) < self.config.max_threads and not self.stopping:
            doc = self._lock_next(states, db_ids)
            if doc is None:
                break
            job = LockedJob(self.project, doc, self.runner_id, self.lease)
            self._jobs[doc.db_id] = self._pool.submit(self._advance, job)
            taken = True
        return taken

    def _lock_next(self, states: list[JobState], db_ids: Sequence[int] | None) -> JobDoc | None:
        db = self.project.db
        if db_ids is not None:
            for db_id in db_ids:
                if db_id in self._jobs:
                    continue
                doc = db.lock_job(db_id, self.runner_id, self.lease, states=states)
                if doc is not None:
                    return doc
            return None
        others = [s for s in states if s is not JobState.READY]
        doc = (
            db.lock_next_job(others, self.runner_id, self.lease, workers=self.workers)
            if others
            else None
        )
        if doc is None and JobState.READY in states:
            workers = self._workers_with_room()
            if workers:
                doc = db.lock_next_job(
                    [JobState.READY], self.runner_id, self.lease, workers=workers
                )
        return doc

    def _workers_with_room(self) -> list[str]:
        room = []
        for worker in self.workers:
            limit = self.project.worker(worker).max_jobs
            if limit is None:
                room.append(worker)
                continue
            busy_states = [s for s in ACTIVE_STATES if s is not JobState.READY]
            count = self.project.db.count_jobs(JobFilter(states=busy_states, workers=[worker]))
            if count < limit:
                room.append(worker)
        return room

    # --- one job through its steps -------------------------------------------------

    def _advance(self, job: LockedJob) -> None:
        """Run the job's steps one after another while we hold its lock."""
        with self._held_lock:
            self._held[job.db_id] = job
        try:
            self._chain(job)
        finally:
            with self._held_lock:
                self._held.pop(job.db_id, None)

    def _chain(self, job: LockedJob) -> None:
        db = self.project.db
        while True:
            state = job.doc.state
            name, _, handler = STEPS[state]
            try:
                result = handler(job)
            except FlowLockBusy:
                db.release_job_lock(job.db_id, job.lock_id, free_at=utcnow() + _FLOW_BUSY_PAUSE)
                return
            except LockLostError as exc:
                log.warning("runner %s: %s; result of step %s dropped", self.runner_id, exc, name)
                return
            except Exception as exc:
                failure = step_failure(job.doc, name, exc, self.config, self.runner_id)
                log.warning(
                    "runner %s: job %s step %s failed (attempt %s): %s",
                    self.runner_id,
                    job.db_id,
                    name,
                    job.doc.attempts.count + 1,
                    exc,
                )
                db.release_job_lock(job.db_id, job.lock_id, failure.update, free_at=failure.free_at)
                return
            if result is None:  # nothing to do yet (a job in its grace period)
                db.release_job_lock(job.db_id, job.lock_id)
                return
            for hop in result.via:
                job.save_transition(transition(state, hop, by=self.runner_id))
                state = hop
            update = transition(
                state,
                result.state,
                by=self.runner_id,
                extra={
                    "attempts.count": 0,
                    "attempts.retry_at": EPOCH,
                    "error": None,
                    **result.fields,
                },
            )
            if not self._continues(result.state):
                if not db.release_job_lock(job.db_id, job.lock_id, update):
                    log.warning("%s; result of step %s dropped", job.lost_message(), name)
                return
            try:
                job.save_transition(update)
            except LockLostError as exc:
                log.warning("runner %s: %s; result of step %s dropped", self.runner_id, exc, name)
                return

    def _continues(self, state: JobState) -> bool:
        """Whether the chain goes on from ``state`` in this process."""
        step = STEPS.get(state)
        return (
            step is not None
            and state not in _QUEUED
            and step[1] in self.roles
            and not self.stopping
            and state != self._stop_at
        )


class _Session:
    """Starts and stops a runner around a loop; installs signal handlers if asked."""

    def __init__(self, runner: Runner, signals: bool) -> None:
        self.runner = runner
        self.signals = signals and threading.current_thread() is threading.main_thread()
        self.previous: dict[int, Any] = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.runner._signals += 1
        if self.runner._signals > 1:
            log.warning("runner %s: second signal, exiting now", self.runner.runner_id)
            os._exit(128 + signum)
        log.info("runner %s: signal %s, finishing the steps in hand", self.runner.runner_id, signum)
        self.runner.stop()

    def __enter__(self) -> _Session:
        if self.signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.previous[signum] = signal.signal(signum, self._on_signal)
        self.runner._start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.runner._finish()
        finally:
            for signum, handler in self.previous.items():
                signal.signal(signum, handler)
