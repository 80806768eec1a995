"""Throughput on the local worker: N independent trivial jobs, submit → all COMPLETED.

Prints jobs per second and where the time goes: the mean time each job spent in each
state (from the job histories the runner writes) and, for scale, the cost of one bare
``python -m conveyor.execution`` start on this machine.

    python benchmarks/throughput.py [--jobs 50] [--threads 4] [--kind jobflow|command]
                                    [--database URL]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from jobflow import Flow

from conveyor import Runner, submit_command, submit_flow
from conveyor.db.base import JobFilter
from conveyor.states import JobState
from conveyor.testing import make_project
from conveyor.testing.jobs import add


def interpreter_start() -> float:
    """Seconds for the worker-side entry point to start and exit (median of 5)."""
    times = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import jobflow, conveyor.execution.run"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--database", default=None, help="database URL (default: project's)")
    parser.add_argument(
        "--kind",
        choices=["jobflow", "command"],
        default="jobflow",
        help="jobflow add(i, 1) jobs, or command jobs running `true`",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        settings: dict[str, object] = {"runner": {"max_threads": args.threads}}
        if args.database:
            settings["database"] = {"url": args.database}
        project = make_project(Path(tmp), name="bench", settings=settings)
        start = time.perf_counter()
        if args.kind == "jobflow":
            submit_flow(Flow([add(i, 1) for i in range(args.jobs)]), project=project)
        else:
            for _ in range(args.jobs):
                submit_command(["true"], project=project)
        submitted = time.perf_counter()
        assert Runner(project).run_all_jobs(max_seconds=600)
        done = time.perf_counter()
        jobs = project.db.find_jobs(JobFilter())
        assert all(j.state is JobState.COMPLETED for j in jobs), "not every job completed"

        dwell: dict[str, list[float]] = defaultdict(list)
        for job in jobs:
            for here, there in zip(job.history, job.history[1:], strict=False):
                dwell[here.state].append((there.at - here.at).total_seconds())
        total = done - start
        print(
            f"{args.kind} jobs: {args.jobs}, runner threads: {args.threads}, database: "
            f"{project.config.database.url.split(':')[0]}"
        )
        print(
            f"submit: {submitted - start:.3f} s; submit to all COMPLETED: {total:.2f} s; "
            f"{args.jobs / total:.1f} jobs/s"
        )
        print("mean seconds per job in each state (time until the next state):")
        for state in JobState:
            if dwell.get(state):
                print(f"  {state:<12} {statistics.mean(dwell[state]):.3f}")
        print(
            f"one worker-side Python start (import jobflow + execution): "
            f"{interpreter_start():.3f} s"
        )
        project.close()


if __name__ == "__main__":
    main()
