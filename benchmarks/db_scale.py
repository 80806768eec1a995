"""Database operations the runner and the CLI repeat, against a database of N jobs of
which nine in ten are COMPLETED: none of them should grow with the finished jobs.

    python benchmarks/db_scale.py [--jobs 10000 100000] [--database sqlite|mongomock]

Measures (median of repeated runs, milliseconds): locking the next READY job (and
releasing it), listing the newest 50 jobs, counting jobs by state, and one pass of an
idle runner loop (the runner's own `_tick` with nothing it may take: the unfinished
jobs paused).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from conveyor.config import init_project
from conveyor.db.base import JobFilter
from conveyor.models import FlowDoc, JobDoc, utcnow
from conveyor.project import open_project
from conveyor.runner import Runner
from conveyor.states import JobState, transition

FLOW_SIZE = 1000


def fill(project_dir: Path, jobs: int, database: str) -> Path:
    settings: dict[str, object] = {}
    if database == "mongomock":
        settings["database"] = {"url": f"mongomock://bench-{uuid.uuid4().hex[:8]}"}
    path = init_project("bench", project_dir, settings=settings)
    db = open_project(path).db
    now = utcnow()
    made = 0
    while made < jobs:
        size = min(FLOW_SIZE, jobs - made)
        first = db.next_db_ids(size)
        flow = FlowDoc(uuid=str(uuid.uuid4()), name="bench")
        docs = [
            JobDoc(
                db_id=first + i,
                uuid=str(uuid.uuid4()),
                flow_uuid=flow.uuid,
                name="bench",
                # nine in ten finished; the rest READY, spread over the whole table
                state=JobState.READY if (made + i) % 10 == 0 else JobState.COMPLETED,
                job={"@module": "bench", "@class": "Job", "args": [made + i]},
                worker="local",
                created_at=now,
                updated_at=now,
            )
            for i in range(size)
        ]
        db.insert_flow(flow, docs)
        made += size
    return path


def median_ms(action: Callable[[], object], repeat: int = 50) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure(jobs: int, database: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = fill(Path(tmp) / "project", jobs, database)
        filled = time.perf_counter() - start
        project = open_project(path)
        db = project.db
        lease = timedelta(seconds=60)

        def lock_and_release() -> None:
            doc = db.lock_next_job([JobState.READY], "bench", lease, workers=["local"])
            assert doc is not None
            assert doc.lock.id is not None
            db.release_job_lock(doc.db_id, doc.lock.id)

        runner = Runner(project, roles=["checkout", "transfer", "complete"])
        results = {
            "fill (s)": filled,
            "lock next READY + release": median_ms(lock_and_release),
            "list newest 50": median_ms(lambda: db.find_jobs(limit=50, newest_first=True)),
            "list newest 50 FAILED": median_ms(
                lambda: db.find_jobs(
                    JobFilter(states=[JobState.FAILED]), limit=50, newest_first=True
                )
            ),
            "count by state": median_ms(lambda: db.count_jobs_by_state(), repeat=20),
        }
        # An idle runner: nothing it may take. The unfinished jobs are paused.
        for doc in db.find_jobs(JobFilter(states=[JobState.READY])):
            db.update_job(doc.db_id, transition(JobState.READY, JobState.PAUSED))
        runner._start()
        try:
            results["idle runner loop pass"] = median_ms(lambda: runner._tick())
        finally:
            runner._finish()
        project.close()
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--database", choices=["sqlite", "mongomock"], default="sqlite")
    args = parser.parse_args()
    table = {jobs: measure(jobs, args.database) for jobs in args.jobs}
    names = list(next(iter(table.values())))
    print(f"database: {args.database}; milliseconds (median) unless noted")
    print(f"{'operation':<28}" + "".join(f"{jobs:>14,}" for jobs in table))
    for name in names:
        print(f"{name:<28}" + "".join(f"{table[jobs][name]:>14.3f}" for jobs in table))


if __name__ == "__main__":
    main()
