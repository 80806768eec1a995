"""A real runner process and SIGTERM: the first finishes the step in hand and releases
every lock, a second exits at once; a new runner then finishes the flow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobflow import Flow

from conveyor import submit_flow
from conveyor.config import init_project
from conveyor.db.base import JobFilter
from conveyor.project import Project, forget_project, open_project
from conveyor.runner import Runner
from conveyor.states import JobState
from conveyor.testing import jobs as J

pytestmark = pytest.mark.integration

RUNNER = "import sys; from conveyor import Runner; Runner(sys.argv[1]).run()"


@pytest.fixture
def shared_project(tmp_path: Path) -> Iterator[Project]:
    """A project on the embedded database, which several processes can share."""
    path = init_project("signals", tmp_path / "project", settings={"runner": {"lease_seconds": 5}})
    project = open_project(path)
    if not project.config.database.url.startswith("sqlite://"):
        pytest.fail("the default project must use the embedded sqlite database")
    yield project
    project.close()
    forget_project(project.path)


def start_runner(project: Project, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(project.path)],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(predicate: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.05)


def test_sigterm_mid_flow_releases_locks_and_another_runner_finishes(
    shared_project: Project,
) -> None:
    db = shared_project.db
    first = J.sleep_job(1.0, 1)
    second = J.add(first.output, 1)
    third = J.add(second.output, 1)
    ids = submit_flow(Flow([first, second, third]), project=shared_project)
    proc = start_runner(shared_project)
    wait_for(lambda: db.get_job(ids[0]).state is JobState.RUNNING)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert db.count_jobs(JobFilter(locked=True)) == 0
    (registered,) = db.list_runners()
    assert registered.stopped_at is not None
    assert db.get_job(ids[-1]).state is JobState.WAITING  # the flow was not finished

    assert Runner(shared_project).run_all_jobs(max_seconds=120)
    assert [db.get_job(i).state for i in ids] == [JobState.COMPLETED] * 3
    assert shared_project.jobstore.get_output(third.uuid) == 3


def test_a_second_sigterm_exits_at_once(shared_project: Project, tmp_path: Path) -> None:
    # A `ps` that hangs makes the runner's poll of the queue a step that never ends.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    started = tmp_path / "ps-started"
    fake_ps = bin_dir / "ps"
    fake_ps.write_text(f"#!/bin/sh\necho $$ > '{started}'\nexec sleep 60\n")
    fake_ps.chmod(0o755)
    (db_id,) = submit_flow(J.add(1, 1), project=shared_project)
    proc = start_runner(shared_project, {"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    wait_for(lambda: started.exists() and started.read_text().strip())
    proc.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=1.0)  # the first signal waits for the hanging poll
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    os.kill(int(started.read_text()), signal.SIGKILL)  # the hanging `ps`, now orphaned
    assert proc.returncode == 128 + signal.SIGTERM
    assert shared_project.db.get_job(db_id).state is JobState.SUBMITTED
