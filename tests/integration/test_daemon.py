"""The runner daemon for real: supervisord and its runner processes on a project on the
embedded database, flows submitted from other processes, SIGKILLed runners, and the
status at every point. Liveness is checked in /proc (a zombie counts as gone)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conveyor._version import __version__
from conveyor.cli import app
from conveyor.config import init_project
from conveyor.db.base import JobFilter
from conveyor.exceptions import ConveyorError
from conveyor.project import Project, forget_project, open_project
from conveyor.runner import ALL_ROLES
from conveyor.runner.daemon import DAEMON_ENV, Daemon, daemon_key, pid_alive
from conveyor.states import FlowState, JobState
from services import service_missing

pytestmark = pytest.mark.integration

#: Submits COUNT pairs (sleep SECONDS, then append the pair's number to TARGET) and
#: prints the flow's uuid: another process than the test's and the daemon's.
SUBMIT = """
import sys
from jobflow import Flow
from conveyor import submit_flow
from conveyor.testing import jobs as J

path, target, count, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
jobs = []
for i in range(count):
    nap = J.sleep_job(seconds, str(i))
    jobs += [nap, J.append_line(target, nap.output)]
flow = Flow(jobs)
submit_flow(flow, project=path)
print(flow.uuid)
"""
#: Which role makes a job enter each state (READY: the complete step readies children).
ROLE_OF_STATE = {
    JobState.READY: "complete",
    JobState.CHECKED_OUT: "checkout",
    JobState.UPLOADED: "transfer",
    JobState.SUBMITTED: "queue",
    JobState.RUNNING: "queue",
    JobState.TERMINATED: "queue",
    JobState.DOWNLOADED: "transfer",
    JobState.COMPLETED: "complete",
}

cli = CliRunner()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A project on the embedded database with short leases and heartbeats, and its
    daemon, killed at the end whatever happened."""
    if importlib.util.find_spec("supervisor") is None:
        service_missing("supervisor is not installed: pip install supervisor")
    settings = {"runner": {"lease_seconds": 3, "heartbeat_interval": 0.5}}
    project = open_project(init_project("daemon", tmp_path / "project", settings=settings))
    found = Daemon(project)
    try:
        yield found
    finally:
        try:
            found.kill()
        finally:
            project.close()
            forget_project(project.path)


def conveyor(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``conveyor`` command in a process of its own."""
    argv = [sys.executable, "-m", "conveyor.cli", "--project", str(project.path), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def invoke(project: Project, *args: str) -> str:
    """The ``conveyor`` command in this process; its stdout."""
    result = cli.invoke(app, ["--project", str(project.path), *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def status(project: Project) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(invoke(project, "runner", "status", "--json", "--all"))
    return found


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def submit(project: Project, target: Path, count: int, seconds: float) -> str:
    argv = [sys.executable, "-c", SUBMIT, str(project.path), str(target), str(count), str(seconds)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def wait_flow(project: Project, flow_uuid: str, timeout: float = 120.0) -> None:
    def done() -> bool:
        flow = project.db.get_flow(flow_uuid)
        assert flow is not None
        assert flow.state not in (FlowState.FAILED, FlowState.STOPPED), flow.state
        return flow.state is FlowState.COMPLETED

    wait_for(f"flow {flow_uuid} completes: {project.db.count_jobs_by_state()}", done, timeout)


def assert_each_job_ran_once(target: Path, count: int) -> None:
    assert sorted(target.read_text().splitlines(), key=int) == [str(i) for i in range(count)]


def marked_processes(daemon: Daemon) -> list[int]:
    """Live processes that carry this daemon's mark, read from /proc."""
    mark = f"{DAEMON_ENV}={daemon_key(daemon.directory)}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                environ = (entry / "environ").read_bytes().split(b"\0")
                if mark in environ and pid_alive(int(entry.name)):
                    found.append(int(entry.name))
    return found


def runners_by_pid(found: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {runner["pid"]: runner for runner in found["runners"]}


def test_start_run_a_flow_and_stop_wait_as_commands(daemon: Daemon, tmp_path: Path) -> None:
    project = daemon.project
    started = conveyor(project, "runner", "start")
    assert started.returncode == 0, started.stderr
    found = status(project)
    supervisord = found["daemon"]["pid"]
    assert found["daemon"]["running"]
    (program,) = found["programs"]
    assert (program["name"], program["state"]) == ("runner_00", "RUNNING")
    assert program["roles"] == list(ALL_ROLES)
    (runner,) = found["runners"]
    assert (runner["pid"], runner["status"], runner["live"]) == (program["pid"], "live", True)
    assert sorted(runner["roles"]) == sorted(ALL_ROLES)
    assert (runner["version"], runner["stopped_at"]) == (__version__, None)
    assert marked_processes(daemon) == [program["pid"]]

    again = conveyor(project, "runner", "start")
    assert again.returncode == 1
    assert f"already running (pid {supervisord})" in again.stderr
    assert status(project)["programs"][0]["pid"] == program["pid"]  # untouched

    target = tmp_path / "lines.txt"
    wait_flow(project, submit(project, target, count=3, seconds=0.2))
    assert_each_job_ran_once(target, 3)
    assert "started with roles" in invoke(project, "runner", "logs")

    stopped = conveyor(project, "runner", "stop", "--wait")
    assert stopped.returncode == 0, stopped.stderr
    assert "no lock is held" in stopped.stdout
    assert not pid_alive(supervisord)
    assert not pid_alive(program["pid"])
    assert marked_processes(daemon) == []
    assert project.db.count_jobs(JobFilter(locked=True)) == 0
    assert not daemon.pid_file.exists()
    found = status(project)
    assert (found["daemon"]["running"], found["programs"]) == (False, [])
    assert runners_by_pid(found)[program["pid"]]["status"] == "stopped"
    assert conveyor(project, "runner", "stop").stdout.strip().endswith("is not running.")


def test_a_sigkilled_runner_is_restarted_and_its_leases_taken_over(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A `bash` that takes a second over `bash -c` makes the submit step, which runs
    # under the job's lock, long enough to kill the runner in the middle of it.
    real_bash = shutil.which("bash")
    assert real_bash is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bash").write_text(
        f'#!/bin/sh\nif [ "$1" = "-c" ]; then sleep 1; fi\nexec {real_bash} "$@"\n'
    )
    (bin_dir / "bash").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")  # the daemon's runners
    project = daemon.project
    daemon.start()
    (victim,) = status(project)["programs"]
    old = runners_by_pid(status(project))[victim["pid"]]["runner_id"]
    target = tmp_path / "lines.txt"
    flow_uuid = submit(project, target, count=6, seconds=1.0)

    def submitting() -> list[int]:
        locked = JobFilter(states=[JobState.UPLOADED], locked=True)
        return [doc.db_id for doc in project.db.find_jobs(locked) if doc.lock.owner == old]

    held = wait_for("the runner is in a submit step", submitting)
    os.kill(victim["pid"], signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        found = status(project)
        (program,) = found["programs"]
        runners = runners_by_pid(found)
        new = runners.get(program["pid"], {})
        fresh = program["pid"] != victim["pid"] and program["state"] == "RUNNING"
        return found if fresh and new.get("live") else None

    found = wait_for("supervisord starts the runner again", restarted)
    runners = runners_by_pid(found)
    assert runners[victim["pid"]]["status"] == "dead"  # its pid is gone from /proc
    assert not pid_alive(victim["pid"])
    successor = runners[found["programs"][0]["pid"]]["runner_id"]

    wait_flow(project, flow_uuid)
    assert_each_job_ran_once(target, 6)
    for db_id in held:  # the lease expired and the new runner adopted the queue job
        doc = project.db.get_job(db_id)
        assert doc is not None
        (submitted,) = [h for h in doc.history if h.state is JobState.SUBMITTED]
        assert submitted.by == successor, doc.history
    assert "adopted queue job" in invoke(project, "runner", "logs", "--lines", "0")
    assert daemon.stop(wait=True, timeout=120)
    assert project.db.count_jobs(JobFilter(locked=True)) == 0
    assert marked_processes(daemon) == []


def test_split_runs_each_role_in_processes_of_its_own(daemon: Daemon, tmp_path: Path) -> None:
    project = daemon.project
    out = invoke(project, "runner", "start", "--split", "--transfer", "2", "--complete", "2")
    assert "6 runner process(es)" in out
    found = status(project)
    programs = {p["name"]: p for p in found["programs"]}
    assert {name: p["roles"] for name, p in programs.items()} == {
        "checkout_00": ["checkout"],
        "transfer_00": ["transfer"],
        "transfer_01": ["transfer"],
        "queue_00": ["queue"],
        "complete_00": ["complete"],
        "complete_01": ["complete"],
    }
    assert {p["state"] for p in programs.values()} == {"RUNNING"}
    runners = runners_by_pid(found)
    for program in programs.values():
        runner = runners[program["pid"]]
        assert (runner["live"], runner["roles"]) == (True, program["roles"])
        assert program["name"] in runner["runner_id"]
    assert sorted(marked_processes(daemon)) == sorted(p["pid"] for p in programs.values())

    target = tmp_path / "lines.txt"
    wait_flow(project, submit(project, target, count=4, seconds=0.1))
    assert_each_job_ran_once(target, 4)
    roles = {r["runner_id"]: r["roles"] for r in found["runners"]}
    for doc in project.db.find_jobs():
        for entry in doc.history[1:]:  # the first is the submission
            assert ROLE_OF_STATE[entry.state] in roles[entry.by], (doc.db_id, entry)

    assert "Restarted" in invoke(project, "runner", "restart")  # the same layout again
    again = status(project)
    assert sorted(p["name"] for p in again["programs"]) == sorted(programs)
    assert {p["state"] for p in again["programs"]} == {"RUNNING"}
    assert not {p["pid"] for p in again["programs"]} & {p["pid"] for p in programs.values()}
    assert not pid_alive(found["daemon"]["pid"])
    for program in programs.values():
        assert not pid_alive(program["pid"])
        assert runners_by_pid(again)[program["pid"]]["status"] == "stopped"

    assert "Killed" in invoke(project, "runner", "kill")
    assert marked_processes(daemon) == []
    assert not pid_alive(again["daemon"]["pid"])
    after = status(project)
    assert not after["daemon"]["running"]
    for program in again["programs"]:
        assert runners_by_pid(after)[program["pid"]]["status"] == "dead"
    recent = json.loads(invoke(project, "runner", "status", "--json"))["runners"]
    assert [r["runner_id"] for r in recent] == [r["runner_id"] for r in after["runners"][:10]]
    assert "older runner(s)" in invoke(project, "runner", "status")


def test_runners_left_by_a_killed_supervisord_are_found_and_stopped(daemon: Daemon) -> None:
    daemon.start()
    supervisord = daemon.supervisord_pid()
    assert supervisord is not None
    (program,) = daemon.programs()
    os.kill(supervisord, signal.SIGKILL)  # a zombie for a while, which is not alive
    wait_for("supervisord is gone", lambda: not pid_alive(supervisord), timeout=10)
    assert daemon.pid_file.exists()  # left behind, stale

    found = daemon.status()
    assert not found.running
    assert not daemon.pid_file.exists()  # cleaned up
    assert any(str(program.pid) in problem for problem in found.problems)
    with pytest.raises(ConveyorError, match="without their supervisord"):
        daemon.start()
    assert daemon.stop(wait=True, timeout=60) == [program.pid]
    assert not pid_alive(program.pid)
    runners = {r.doc.pid: r for r in daemon.runners()}
    assert runners[program.pid].status == "stopped"  # it finished gracefully

    daemon.start()
    assert [p.state for p in daemon.programs()] == ["RUNNING"]


def test_a_runner_that_cannot_start_fails_start_with_its_log(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if 'run' in sys.argv and '--roles' in sys.argv:\n"
        "    sys.stderr.write('boom: this runner cannot start\\n')\n"
        "    os._exit(3)\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    started = conveyor(daemon.project, "runner", "start")
    assert started.returncode == 1
    assert "runner process runner_00 exits at once" in started.stderr
    assert "boom: this runner cannot start" in started.stderr  # the end of its log
    assert daemon.supervisord_pid() is None  # the daemon was stopped
    assert marked_processes(daemon) == []


def registered(project: Project) -> dict[str, Any] | None:
    found = status(project)
    return found if found["runners"] else None


@pytest.mark.timeout(60)  # a blocked read fails fast
def test_run_in_the_foreground_logs_to_stderr_and_stops_on_sigterm(daemon: Daemon) -> None:
    project = daemon.project
    argv = [sys.executable, "-m", "conveyor.cli", "--project", str(project.path), "runner"]
    proc = subprocess.Popen(
        [*argv, "run", "--roles", "queue,complete", "--name", "debug"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        found = wait_for("the runner registers", lambda: registered(project))
        (runner,) = found["runners"]
        assert (runner["pid"], runner["status"]) == (proc.pid, "live")
        assert runner["roles"] == ["complete", "queue"]
        assert runner["runner_id"].endswith(f"-debug-{proc.pid}")
        assert not found["daemon"]["running"]  # not the daemon's
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out == ""
    assert f"runner {runner['runner_id']}: started with roles complete,queue" in err
    assert runners_by_pid(status(project))[proc.pid]["status"] == "stopped"


@pytest.mark.timeout(60)  # a blocked read fails fast
def test_logs_follow_prints_what_is_appended_until_ctrl_c(daemon: Daemon) -> None:
    log = daemon.log_dir / "runner_00.log"
    log.parent.mkdir(parents=True)
    log.write_text("first\nsecond\n")
    argv = [sys.executable, "-m", "conveyor.cli", "--project", str(daemon.project.path)]
    proc = subprocess.Popen(
        [*argv, "runner", "logs", "--follow", "--lines", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "second\n"
        with log.open("a") as handle:
            handle.write("third\n")
        assert proc.stdout.readline() == "third\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, out, err) == (0, "", "")
