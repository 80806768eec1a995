"""Several real runner processes on one database: every job runs exactly once, a
SIGKILLed runner's jobs are taken over, and readers never see a half-written job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import submit_command
from conveyor.config import init_project
from conveyor.db.base import JobFilter
from conveyor.models import JobDoc
from conveyor.project import Project, forget_project, open_project
from conveyor.states import JobState

pytestmark = pytest.mark.integration

RUNNER = "import sys; from conveyor import Runner; Runner(sys.argv[1]).run()"
APPEND = 'printf "%s\\n" "$1" >> "$2"'


def database_urls() -> list[Any]:
    urls: list[Any] = ["sqlite"]
    mongo = os.environ.get("CONVEYOR_TEST_MONGODB_URI")
    urls.append(
        pytest.param(mongo or "", id="mongodb")
        if mongo
        else pytest.param(
            "",
            id="mongodb",
            marks=pytest.mark.skip(reason="set CONVEYOR_TEST_MONGODB_URI for a real MongoDB"),
        )
    )
    return urls


@pytest.fixture(params=database_urls())
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Project]:
    """A project on a database several processes share, with short leases."""
    settings: dict[str, Any] = {"runner": {"lease_seconds": 3, "max_threads": 4}}
    if request.param != "sqlite":
        db_name = f"conveyor_test_{os.getpid()}_{time.monotonic_ns()}"
        settings["database"] = {"url": request.param, "name": db_name}
    path = init_project("many", tmp_path / "project", settings=settings)
    project = open_project(path)
    yield project
    if request.param != "sqlite":
        project.db.reset()
    project.close()
    forget_project(project.path)


def start_runners(project: Project, count: int) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(project.path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]


def stop_runners(runners: list[subprocess.Popen[str]]) -> None:
    for proc in runners:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in runners:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGKILL), err[-3000:]


def submit_appenders(project: Project, count: int, target: Path) -> list[int]:
    return [
        submit_command(["sh", "-c", APPEND, "append", str(i), str(target)], project=project)
        for i in range(count)
    ]


def wait_all_done(project: Project, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline:
        done = project.db.count_jobs(JobFilter(states=[JobState.COMPLETED]))
        if done == total:
            return
        time.sleep(0.2)
    counts = project.db.count_jobs_by_state()
    pytest.fail(f"only {done} of {total} jobs completed in {timeout} s: {counts}")


def assert_exactly_once(project: Project, target: Path, count: int) -> None:
    lines = target.read_text().splitlines()
    assert sorted(lines, key=int) == [str(i) for i in range(count)]
    assert project.db.count_jobs(JobFilter(states=[JobState.COMPLETED])) == count
    assert project.db.count_jobs(JobFilter(locked=True)) == 0


class Reader(threading.Thread):
    """Lists every job through the CLI, in its own process, again and again."""

    def __init__(self, project: Project) -> None:
        super().__init__(daemon=True)
        self.project = project
        self.stop = threading.Event()
        self.reads = 0
        self.failures: list[str] = []

    def run(self) -> None:
        argv = [sys.executable, "-m", "conveyor.cli", "--project", str(self.project.path)]
        while not self.stop.is_set():
            proc = subprocess.run(
                [*argv, "job", "list", "--json", "--limit", "0"],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                self.failures.append(f"exit {proc.returncode}: {proc.stderr[-2000:]}")
                continue
            try:
                for raw in json.loads(proc.stdout):
                    JobDoc.model_validate({**raw, "job": {}})
            except ValueError as exc:  # JSON or validation: a half-written job
                self.failures.append(f"{exc}: {proc.stdout[-500:]}")
            self.reads += 1


def test_four_runners_run_500_jobs_exactly_once_while_the_cli_reads(
    shared: Project, tmp_path: Path
) -> None:
    target = tmp_path / "lines.txt"
    submit_appenders(shared, 500, target)
    reader = Reader(shared)
    runners = start_runners(shared, 4)
    reader.start()
    try:
        wait_all_done(shared, 500, timeout=600)
    finally:
        reader.stop.set()
        stop_runners(runners)
        reader.join(timeout=120)
    assert_exactly_once(shared, target, 500)
    assert reader.reads >= 2
    assert reader.failures == []
    runners_seen = {h.by for doc in shared.db.find_jobs() for h in doc.history}
    assert len(runners_seen - {"submit"}) == 4  # every runner took part


def test_a_sigkilled_runner_is_taken_over(shared: Project, tmp_path: Path) -> None:
    target = tmp_path / "lines.txt"
    submit_appenders(shared, 150, target)
    victim, *others = start_runners(shared, 3)
    deadline = time.monotonic() + 120
    while shared.db.count_jobs(JobFilter(states=[JobState.COMPLETED])) < 20:
        assert time.monotonic() < deadline, "no progress before the kill"
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    try:
        wait_all_done(shared, 150, timeout=300)
    finally:
        stop_runners(others)
    assert_exactly_once(shared, target, 150)
