"""``conveyor admin check`` against inconsistencies produced for real: a runner that
died holding a lock, a queue job killed before its script ended, a run dir whose output
was deleted. Each is listed (exit 1), repaired with --fix, and a second check is clean.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from conveyor import Runner, api, submit_flow
from conveyor.api import GONE_OWNER, NO_OUTPUT, QUEUE_LOST
from conveyor.cli import app
from conveyor.models import RunnerDoc
from conveyor.project import Project
from conveyor.runfiles import EXIT_CODE_FILE, OUTPUT_FILE
from conveyor.runner.daemon import pid_alive
from conveyor.states import JobState
from conveyor.testing import jobs as J

pytestmark = pytest.mark.integration

S = JobState


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def check_json(*args: str) -> tuple[int, list[dict[str, object]]]:
    result = invoke("admin", "check", "--json", *args)
    return result.exit_code, json.loads(result.stdout)


def assert_found_fixed_and_clean(db_id: int, kind: str) -> None:
    listed = invoke("admin", "check")
    assert listed.exit_code == 1, listed.output
    assert f"job {db_id} " in listed.stdout
    assert kind in listed.stdout
    assert "(--fix)" in listed.stdout

    code, findings = check_json("--fix")
    assert code == 0, findings
    assert [(f["db_id"], f["kind"], f["fixed"]) for f in findings] == [(db_id, kind, True)]

    again = invoke("admin", "check")
    assert again.exit_code == 0, again.output
    assert "No inconsistency found." in again.stdout


def exited_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def queued(project: Project) -> Iterator[int]:
    """A sleeping job in the shell queue (SUBMITTED), killed at the end if still alive."""
    (db_id,) = submit_flow(J.sleep_job(300))
    assert Runner(project).run_one_job(db_id, target_state=S.SUBMITTED, max_seconds=60)
    yield db_id
    pid = int(str(api.get_job(db_id).remote.queue_id))
    if pid_alive(pid):
        os.killpg(pid, signal.SIGKILL)


def test_a_lock_of_a_runner_whose_process_is_gone_is_freed(project: Project) -> None:
    (db_id,) = submit_flow(J.add(1, 2))
    runner = RunnerDoc(runner_id="gone-runner", hostname=socket.gethostname(), pid=exited_pid())
    project.db.register_runner(runner)
    assert project.db.lock_job(db_id, "gone-runner", timedelta(minutes=10)) is not None

    code, findings = check_json()
    assert code == 1
    (finding,) = findings
    assert finding["kind"] == GONE_OWNER
    assert f"its process {runner.pid} on {runner.hostname} is gone" in str(finding["evidence"])
    assert finding["fixed"] is False

    assert_found_fixed_and_clean(db_id, GONE_OWNER)
    assert api.count_jobs(locked=True) == 0
    assert api.get_job(db_id).state is S.READY  # only the lock changed
    assert Runner(project).run_one_job(db_id, max_seconds=60)  # and it goes on
    assert api.get_job(db_id).state is S.COMPLETED


def test_a_live_runners_lock_is_left_alone(project: Project) -> None:
    (db_id,) = submit_flow(J.add(1, 2))
    runner = RunnerDoc(runner_id="live-runner", hostname=socket.gethostname(), pid=os.getpid())
    project.db.register_runner(runner)
    assert project.db.lock_job(db_id, "live-runner", timedelta(minutes=10)) is not None
    assert check_json("--fix") == (0, [])
    assert api.count_jobs(locked=True) == 1


def test_a_job_the_queue_lost_goes_to_remote_error(project: Project, queued: int) -> None:
    doc = api.get_job(queued)
    pid = int(str(doc.remote.queue_id))
    assert doc.state is S.SUBMITTED
    assert check_json() == (0, [])  # it is still in the queue: nothing to say

    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)
    (Path(str(doc.remote.run_dir)) / EXIT_CODE_FILE).unlink(missing_ok=True)

    code, findings = check_json()
    assert code == 1
    (finding,) = findings
    assert finding["kind"] == QUEUE_LOST
    assert f"queue id {pid}, which the local queue (shell) no longer lists" in str(
        finding["evidence"]
    )

    assert_found_fixed_and_clean(queued, QUEUE_LOST)
    fixed = api.get_job(queued)
    assert fixed.state is S.REMOTE_ERROR
    assert fixed.previous_state is S.SUBMITTED
    assert fixed.error is not None
    assert QUEUE_LOST in fixed.error.message


@pytest.mark.parametrize("state", [S.TERMINATED, S.DOWNLOADED])
def test_a_run_dir_without_output_goes_to_remote_error(project: Project, state: S) -> None:
    (db_id,) = submit_flow(J.add(1, 2))
    assert Runner(project).run_one_job(db_id, target_state=state, max_seconds=60)
    doc = api.get_job(db_id)
    assert doc.state is state
    assert check_json() == (0, [])  # a job that ended well, with its output

    run_dir = Path(str(doc.remote.run_dir))
    for name in (OUTPUT_FILE, EXIT_CODE_FILE):
        (run_dir / name).unlink()
    (project.job_downloads(doc.uuid, doc.index) / OUTPUT_FILE).unlink(missing_ok=True)

    code, findings = check_json()
    assert code == 1
    (finding,) = findings
    assert finding["kind"] == NO_OUTPUT
    assert f"neither {OUTPUT_FILE} nor {EXIT_CODE_FILE}" in str(finding["evidence"])

    assert_found_fixed_and_clean(db_id, NO_OUTPUT)
    assert api.get_job(db_id).state is S.REMOTE_ERROR
    assert api.get_job(db_id).previous_state is state


def test_a_download_missing_while_the_run_dir_has_output_is_reported_without_fix(
    project: Project,
) -> None:
    (db_id,) = submit_flow(J.add(1, 2))
    assert Runner(project).run_one_job(db_id, target_state=S.DOWNLOADED, max_seconds=60)
    doc = api.get_job(db_id)
    (project.job_downloads(doc.uuid, doc.index) / OUTPUT_FILE).unlink()

    code, findings = check_json("--fix")
    assert code == 1
    (finding,) = findings
    assert (finding["kind"], finding["fixed"], finding["fix"]) == (NO_OUTPUT, False, "")
    assert "no allowed transition" in str(finding["note"])
    assert api.get_job(db_id).state is S.DOWNLOADED
