"""The Runner end to end through the pbs adapter and the fake qsub/qstat/qselect/qdel/
qhold/qrls of tests/fakes (no PBS server can be installed here; the fakes print the
formats of the recorded corpus and really run the jobs)."""

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


@pytest.fixture(params=["pro", "torque"])
def pbs(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Project, str]]:
    flavor = request.param
    with (
        fake_queue(tmp_path, monkeypatch, CONVEYOR_FAKE_PBS_FLAVOR=flavor),
        queue_project(tmp_path, "pbs", {"flavor": flavor}) as project,
    ):
        yield project, flavor


def wait_for(condition: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {DEADLINE} s waiting for {what}")
        time.sleep(0.05)


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30)


def test_a_job_completes_with_its_output(pbs: tuple[Project, str]) -> None:
    project, _ = pbs
    (db_id,) = submit_flow(J.add(1, 2), resources={"walltime": 600, "processes": 1})
    assert Runner().run_one_job(db_id, max_seconds=DEADLINE)
    doc = project.db.get_job(db_id)
    assert doc.state is JobState.COMPLETED, doc.error
    assert project.jobstore.get_output(doc.uuid) == 3
    assert doc.remote.queue_id is not None
    assert doc.remote.queue_id.endswith(".fakepbs")
    assert doc.remote.exit_code == 0
    assert doc.remote.failure_reason is None  # exit code 0: no accounting asked
    run_dir = Path(str(doc.remote.run_dir))
    assert (run_dir / STARTED_FILE).read_text().strip() == doc.remote.queue_id


def test_a_non_zero_exit_is_exit_code(pbs: tuple[Project, str]) -> None:
    project, _ = pbs
    (db_id,) = submit_flow(J.crash(7, "dying on purpose"))
    assert Runner().run_one_job(db_id, max_seconds=DEADLINE)
    doc = project.db.get_job(db_id)
    assert doc.state is JobState.FAILED
    assert (doc.remote.failure_reason, doc.remote.exit_code) == ("EXIT_CODE", 7)
    assert doc.error is not None
    assert "dying on purpose" in doc.error.message


def test_the_walltime_is_timeout(pbs: tuple[Project, str]) -> None:
    project, _ = pbs
    (db_id,) = submit_flow(J.sleep_job(120), resources={"walltime": 2})
    assert Runner().run_one_job(db_id, max_seconds=DEADLINE)
    doc = project.db.get_job(db_id)
    assert doc.state is JobState.FAILED
    assert doc.remote.failure_reason == "TIMEOUT"
    assert doc.remote.exit_code == 143  # the script outlived the payload to record it


def test_a_held_job_runs_once_released(pbs: tuple[Project, str]) -> None:
    project, _ = pbs
    (db_id,) = submit_flow(J.add(2, 3), resources={"extra_directives": ["#PBS -h"]})
    runner = Runner()
    assert runner.run_one_job(db_id, max_seconds=DEADLINE, target_state=JobState.SUBMITTED)

    def held() -> bool:
        runner.run_one_job(db_id, max_seconds=0.3, raise_at_timeout=False)
        return project.db.get_job(db_id).remote.queue_state == QueueState.HELD

    wait_for(held, "the runner to see the job held")
    doc = project.db.get_job(db_id)
    assert doc.state is JobState.SUBMITTED
    assert doc.remote.native_state == "H"
    adapter = project.adapter("local")
    run(adapter.release_command(str(doc.remote.queue_id)))
    assert runner.run_one_job(db_id, max_seconds=DEADLINE)
    doc = project.db.get_job(db_id)
    assert doc.state is JobState.COMPLETED
    assert project.jobstore.get_output(doc.uuid) == 5


def test_a_deleted_job_is_cancelled(pbs: tuple[Project, str]) -> None:
    project, flavor = pbs
    (db_id,) = submit_flow(J.sleep_job(120))
    runner = Runner()
    assert runner.run_one_job(db_id, max_seconds=DEADLINE, target_state=JobState.RUNNING)
    doc = project.db.get_job(db_id)
    run(project.adapter("local").cancel_command(str(doc.remote.queue_id)))
    assert runner.run_one_job(db_id, max_seconds=DEADLINE)
    doc = project.db.get_job(db_id)
    assert doc.state is JobState.FAILED
    assert doc.remote.exit_code == 143
    # Pro keeps the deletion in the job's history (substate 91); Torque shows only the
    # script's exit status, so there the job failed by its exit code.
    assert doc.remote.failure_reason == ("CANCELLED" if flavor == "pro" else "EXIT_CODE")


def test_a_retried_submission_adopts_the_job_it_finds(
    pbs: tuple[Project, str], tmp_path: Path
) -> None:
    project, _ = pbs
    (db_id,) = submit_flow(J.add(20, 22))
    runner = Runner()
    assert runner.run_one_job(db_id, max_seconds=DEADLINE, target_state=JobState.UPLOADED)
    doc = project.db.get_job(db_id)
    # An earlier attempt submitted the script, then died before recording the id.
    run_dir = str(doc.remote.run_dir)
    earlier = subprocess.run(
        ["qsub", f"{run_dir}/submit.sh"], capture_output=True, text=True, cwd=run_dir, check=True
    ).stdout.strip()
    project.db.update_job(
        db_id, JobUpdate({"remote.submitted_at": utcnow()}, expect_state=JobState.UPLOADED)
    )
    assert runner.run_one_job(db_id, max_seconds=DEADLINE)
    doc = project.db.get_job(db_id)
    assert doc.state is JobState.COMPLETED
    assert doc.remote.queue_id == earlier
    assert project.jobstore.get_output(doc.uuid) == 42
    state = json.loads(Path(os.environ["CONVEYOR_FAKE_QUEUE_STATE"]).read_text())
    assert [job["id"] for job in state["jobs"].values()] == [earlier]  # exactly one
