"""Several runner processes, each with several threads, lock jobs in one SQLite file.

Every job must be locked exactly once overall: the select-then-lock of
``lock_next_job`` is one ``BEGIN IMMEDIATE`` transaction, atomic across threads and
processes alike.
"""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from conveyor.db.sqlite import SqliteDatabase
from conveyor.models import FlowDoc, JobDoc
from conveyor.states import JobState

pytestmark = pytest.mark.integration

PROCESSES = 3
THREADS = 8
JOBS = 600
LEASE = timedelta(minutes=10)


def lock_until_none(url: str, process: int, out: str, start: object) -> None:
    """One runner process: THREADS threads lock jobs until none is left; the db ids
    each thread locked go to ``out``, one per line, with the owner."""
    db = SqliteDatabase(url)
    taken: list[tuple[str, int]] = []
    errors: list[BaseException] = []
    guard = threading.Lock()
    ready = threading.Barrier(THREADS)

    def work(thread: int) -> None:
        owner = f"p{process}t{thread}"
        mine = []
        try:
            ready.wait()
            while (job := db.lock_next_job([JobState.READY], owner, LEASE)) is not None:
                mine.append((owner, job.db_id))
        except BaseException as exc:  # reported through the exit code
            errors.append(exc)
        with guard:
            taken.extend(mine)

    start.wait()  # type: ignore[attr-defined]
    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    db.close()
    Path(out).write_text("".join(f"{owner} {db_id}\n" for owner, db_id in taken))
    if errors:
        raise SystemExit(f"process {process}: {errors!r}")


def test_processes_and_threads_lock_each_job_once(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/conveyor.db"
    db = SqliteDatabase(url)
    flow_uuid = uuid.uuid4().hex
    first = db.next_db_ids(JOBS)
    jobs = [
        JobDoc(
            db_id=first + i,
            uuid=uuid.uuid4().hex,
            flow_uuid=flow_uuid,
            state=JobState.READY,
            job={"function": "noop"},
            worker="local",
            priority=i % 3,
        )
        for i in range(JOBS)
    ]
    db.insert_flow(FlowDoc(uuid=flow_uuid, job_uuids=[job.uuid for job in jobs]), jobs)

    context = multiprocessing.get_context("spawn")
    start = context.Event()
    outs = [tmp_path / f"locked-{n}.txt" for n in range(PROCESSES)]
    processes = [
        context.Process(target=lock_until_none, args=(url, n, str(outs[n]), start))
        for n in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(timeout=240)
    assert [process.exitcode for process in processes] == [0] * PROCESSES

    locked = [line.split() for out in outs for line in out.read_text().splitlines()]
    db_ids = sorted(int(db_id) for _, db_id in locked)
    assert db_ids == sorted(job.db_id for job in jobs)  # every job, each exactly once
    owners = {job.db_id: job.lock.owner for job in db.find_jobs()}
    assert all(owners[int(db_id)] == owner for owner, db_id in locked)
    assert len({owner[:2] for owner, _ in locked}) > 1  # the processes really competed
    db.close()
