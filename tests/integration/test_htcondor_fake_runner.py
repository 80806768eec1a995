"""The Runner end to end through the htcondor adapter and the fake condor_submit/condor_q/
condor_history/condor_rm/condor_release of tests/fakes (no HTCondor pool can be run
here; the fakes print the formats of the recorded corpus and really run the jobs)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from conveyor import Runner, submit_flow
from conveyor.models import utcnow
from conveyor.project import Project
from conveyor.queue import QueueState
from conveyor.queue.base import STARTED_FILE
from conveyor.states import JobState, JobUpdate
from conveyor.testing import jobs as J
from conveyor.testing import temp_project

pytestmark = pytest.mark.integration

FAKES = Path(__file__).parents[1] / "fakes" / "_fakeq.py"
DEADLINE = 60.0


def load_fakes() -> ModuleType:
    spec = importlib.util.spec_from_file_location("conveyor_test_fakeq", FAKES)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def fake_queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> Iterator[Path]:
    """The fake commands on PATH for this process (the runner's commands inherit it)."""
    state = tmp_path / "fake-queue.json"
    load_fakes().install(tmp_path / "bin", state)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CONVEYOR_FAKE_QUEUE_STATE", str(state))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        yield state
    finally:  # leave no job running
        for job in json.loads(state.read_text())["jobs"].values():
            if job.get("pgid"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job["pgid"], signal.SIGKILL)


def queue_project(
    tmp_path: Path, queue: str, options: dict[str, Any]
) -> contextlib.AbstractContextManager[Project]:
    settings = {
        "workers": {
            "local": {
                "type": "local",
                "work_dir": str(tmp_path / "work"),
                "queue": queue,
                "queue_options": options,
                "missing_grace": 0.2,
                "poll_interval": 0.2,
                "command_timeout": 30,
            }
        },
        "runner": {"retry_delays": [0.2], "heartbeat_interval": 1.0},
    }
    return temp_project(tmp_path / "project", settings=settings)


@pytest.fixture
def condor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    with fake_queue(tmp_path, monkeypatch), queue_project(tmp_path, "htcondor", {}) as project:
        yield project


def wait_for(condition: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {DEADLINE} s waiting for {what}")
        time.sleep(0.05)


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30)


def test_a_job_completes_with_its_output(condor: Project) -> None:
    (db_id,) = submit_flow(J.add(1, 2), resources={"memory": "1G", "processes": 1})
    assert Runner().run_one_job(db_id, max_seconds=DEADLINE)
    doc = condor.db.get_job(db_id)
    assert doc.state is JobState.COMPLETED, doc.error
    assert condor.jobstore.get_output(doc.uuid) == 3
    assert doc.remote.queue_id == "101.0"
    assert doc.remote.exit_code == 0
    assert doc.remote.failure_reason is None  # exit code 0: no accounting asked
    run_dir = Path(str(doc.remote.run_dir))
    assert (run_dir / STARTED_FILE).read_text().strip() == "101.0"
    assert sorted(p.name for p in run_dir.iterdir() if p.suffix in (".sub", ".sh")) == [
        "job.sh",
        "job.sub",
    ]


def test_a_non_zero_exit_is_exit_code(condor: Project) -> None:
    (db_id,) = submit_flow(J.crash(7, "dying on purpose"))
    assert Runner().run_one_job(db_id, max_seconds=DEADLINE)
    doc = condor.db.get_job(db_id)
    assert doc.state is JobState.FAILED
    assert (doc.remote.failure_reason, doc.remote.exit_code) == ("EXIT_CODE", 7)


def test_the_walltime_is_timeout(condor: Project) -> None:
    (db_id,) = submit_flow(J.sleep_job(120), resources={"walltime": 2})
    assert Runner().run_one_job(db_id, max_seconds=DEADLINE)
    doc = condor.db.get_job(db_id)
    assert doc.state is JobState.FAILED
    assert doc.remote.failure_reason == "TIMEOUT"
    assert "ConveyorWalltime" in str(doc.remote.native_state)


def test_a_held_job_runs_once_released(condor: Project) -> None:
    (db_id,) = submit_flow(J.add(2, 3), resources={"htcondor": {"hold": "true"}})
    runner = Runner()
    assert runner.run_one_job(db_id, max_seconds=DEADLINE, target_state=JobState.SUBMITTED)

    def held() -> bool:
        runner.run_one_job(db_id, max_seconds=0.3, raise_at_timeout=False)
        return condor.db.get_job(db_id).remote.queue_state == QueueState.HELD

    wait_for(held, "the runner to see the job held")
    doc = condor.db.get_job(db_id)
    assert doc.remote.native_state == "5 (Held)"
    run(condor.adapter("local").release_command(str(doc.remote.queue_id)))
    assert runner.run_one_job(db_id, max_seconds=DEADLINE)
    doc = condor.db.get_job(db_id)
    assert doc.state is JobState.COMPLETED
    assert condor.jobstore.get_output(doc.uuid) == 5


def test_a_removed_job_is_cancelled(condor: Project) -> None:
    (db_id,) = submit_flow(J.sleep_job(120))
    runner = Runner()
    assert runner.run_one_job(db_id, max_seconds=DEADLINE, target_state=JobState.RUNNING)
    doc = condor.db.get_job(db_id)
    run(condor.adapter("local").cancel_command(str(doc.remote.queue_id)))
    assert runner.run_one_job(db_id, max_seconds=DEADLINE)
    doc = condor.db.get_job(db_id)
    assert doc.state is JobState.FAILED
    assert doc.remote.failure_reason == "CANCELLED"
    assert doc.remote.exit_code == 143


def test_a_retried_submission_adopts_the_job_it_finds(condor: Project) -> None:
    (db_id,) = submit_flow(J.add(20, 22))
    runner = Runner()
    assert runner.run_one_job(db_id, max_seconds=DEADLINE, target_state=JobState.UPLOADED)
    doc = condor.db.get_job(db_id)
    # An earlier attempt submitted the job, then died before recording the id.
    earlier = run(["condor_submit", "-terse", f"{doc.remote.run_dir}/job.sub"]).stdout
    condor.db.update_job(
        db_id, JobUpdate({"remote.submitted_at": utcnow()}, expect_state=JobState.UPLOADED)
    )
    assert runner.run_one_job(db_id, max_seconds=DEADLINE)
    doc = condor.db.get_job(db_id)
    assert doc.state is JobState.COMPLETED
    assert earlier == "101.0 - 101.0\n"
    assert doc.remote.queue_id == "101.0"
    assert condor.jobstore.get_output(doc.uuid) == 42
    state = json.loads(Path(os.environ["CONVEYOR_FAKE_QUEUE_STATE"]).read_text())
    assert [job["id"] for job in state["jobs"].values()] == ["101.0"]  # exactly one
