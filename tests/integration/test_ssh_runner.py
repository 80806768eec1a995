"""The Runner end to end on ``type: ssh`` workers: a real sshd on loopback with the shell
queue, and a second host (a network namespace with its own sshd and its own SLURM)
reached only over SSH. Outputs come back into the project's JobStore. Also
``conveyor project check`` against those hosts, and the round trips per job.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jobflow import Flow
from test_ssh_host import CANARY, Service, load_service
from typer.testing import CliRunner

from conveyor import Runner, submit_flow
from conveyor.cli.main import app
from conveyor.cli.project import check_worker
from conveyor.db.base import JobFilter
from conveyor.hosts.ssh import SSHHost
from conveyor.project import Project
from conveyor.queue import QueueState
from conveyor.runner import runner as runner_module
from conveyor.states import JobState
from conveyor.testing import jobs as J
from conveyor.testing import temp_project

pytestmark = pytest.mark.integration

DEADLINE = 90.0
#: A work dir no shell could survive unquoted (kept free of '/' inside its last part).
AWKWARD = "w 'q' \"d\" $(touch conveyor-pwned) `touch conveyor-pwned`; z\nnl"


@pytest.fixture(scope="module")
def sshd() -> Service:
    return load_service("sshd", "bash scripts/services/sshd.sh")


@pytest.fixture(scope="module")
def nshost() -> Service:
    service = load_service("cvhost1", "bash scripts/services/netns-host.sh")
    if not service.slurm:
        pytest.skip("the namespace host runs no SLURM (netns-host.sh --no-slurm)")
    return service


def ssh_project(
    tmp_path: Path, workers: dict[str, dict[str, Any]], **runner: Any
) -> Iterator[Project]:
    settings = {
        "workers": workers,
        "runner": {"retry_delays": [0.5], "heartbeat_interval": 1.0, **runner},
    }
    with temp_project(tmp_path / "project", settings=settings) as project:
        yield project


def parent_of(work_dir: str) -> str:
    return work_dir.rsplit("/", 1)[0]


@pytest.fixture
def shell_project(sshd: Service, tmp_path: Path) -> Iterator[Project]:
    work = f"{sshd.home}/conveyor-tests/{uuid.uuid4().hex[:8]}/{AWKWARD}"
    worker = sshd.worker(work, poll_interval=0.1)
    try:
        yield from ssh_project(tmp_path, {"remote": worker})
    finally:
        shutil.rmtree(parent_of(work), ignore_errors=True)


def count_polls(monkeypatch: pytest.MonkeyPatch, host: SSHHost, program: str) -> list[int]:
    """Status commands run by each poll of the worker (patched into the runner)."""
    seen: list[int] = []
    poll = runner_module.poll_worker

    def counting(*args: Any, **kwargs: Any) -> Any:
        before = host.stats.snapshot()["programs"].get(program, 0)
        try:
            return poll(*args, **kwargs)
        finally:
            seen.append(host.stats.snapshot()["programs"].get(program, 0) - before)

    monkeypatch.setattr(runner_module, "poll_worker", counting)
    return seen


def test_a_flow_runs_on_an_ssh_worker_with_an_awkward_work_dir(
    shell_project: Project, sshd: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    CANARY.unlink(missing_ok=True)
    first = J.add(1, 2)
    first.name = "add $(touch conveyor-pwned) `x`; y\nz 'q'"
    second = J.add(first.output, 3)
    many = [J.sleep_job(0.5, i) for i in range(4)]
    ids = submit_flow(Flow([first, second, *many]))
    host = shell_project.host("remote")
    assert isinstance(host, SSHHost)
    polls = count_polls(monkeypatch, host, "ps")
    assert Runner().run_all_jobs(max_seconds=DEADLINE)
    for db_id in ids:
        doc = shell_project.db.get_job(db_id)
        assert doc.state is JobState.COMPLETED, doc.error
        assert doc.remote.queue_state == QueueState.DONE
        assert doc.remote.run_dir is not None
        assert doc.remote.run_dir.startswith(shell_project.work_dir("remote"))
        assert Path(doc.remote.run_dir, "output.json").is_file()
    assert shell_project.jobstore.get_output(second.uuid) == 6
    assert [shell_project.jobstore.get_output(j.uuid) for j in many] == [0, 1, 2, 3]
    # Nothing the names held ran anywhere.
    work = shell_project.work_dir("remote")
    for place in (
        CANARY,
        Path(sshd.home, "conveyor-pwned"),
        Path(parent_of(work), "conveyor-pwned"),
    ):
        assert not place.exists(), place
    stats = host.connection.stats.snapshot()
    assert stats["connections"] == 1
    assert stats["sftp_sessions"] == 1
    assert polls, "the runner never polled"
    assert max(polls) == 1  # one status command per poll, however many jobs are queued
    assert host.stats.snapshot()["programs"]["bash"] == len(ids)  # one submit per job


def test_a_flow_runs_on_the_second_host_through_its_own_slurm(
    nshost: Service, tmp_path: Path
) -> None:
    work = f"{nshost.home}/conveyor-tests/slurm-{uuid.uuid4().hex[:8]}"
    worker = nshost.worker(
        work,
        queue="slurm",
        # Not `sacct -c`: its jobcomp plugin opens the (root-owned) completion log for
        # writing, which a non-root user may not. Without accounting storage, plain sacct
        # says so and the exit code file alone decides how each job ended.
        missing_grace=1.0,
        poll_interval=0.3,
    )
    try:
        for project in ssh_project(tmp_path, {"cluster": worker}):
            first = J.add(1, 2)
            second = J.add(first.output, 3)
            failing = J.crash(5, "dying on the far cluster")
            ids = submit_flow(Flow([first, second]))
            (crash_id,) = submit_flow(failing)
            assert Runner().run_all_jobs(max_seconds=DEADLINE)
            assert project.jobstore.get_output(second.uuid) == 6
            for db_id in ids:
                doc = project.db.get_job(db_id)
                assert doc.state is JobState.COMPLETED, doc.error
                # SLURM job ids of the namespace's cluster start at 1000000.
                assert int(doc.remote.queue_id or 0) >= 1000000
            crashed = project.db.get_job(crash_id)
            assert crashed.state is JobState.FAILED
            assert crashed.remote.exit_code == 5
            assert crashed.error is not None
            assert "dying on the far cluster" in crashed.error.message
            host = project.host("cluster")
            assert isinstance(host, SSHHost)
            assert host.connection.label == f"{nshost.user}@{nshost.addr}:22"
            assert host.connection.stats["connections"] == 1
            left = [
                d for d in project.db.find_jobs(JobFilter()) if d.state is not JobState.COMPLETED
            ]
            assert [d.db_id for d in left] == [crash_id]
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- conveyor project check ------------------------------------------------------------


def test_project_check_passes_on_a_ready_worker_and_names_each_fix(
    sshd: Service, tmp_path: Path
) -> None:
    work = f"{sshd.home}/conveyor-tests/check-{uuid.uuid4().hex[:8]}"
    workers = {
        "good": sshd.worker(work),
        "bad": sshd.worker("/root/conveyor", queue="htcondor", python="/nonexistent/python"),
        # "localhost", not the address: a connection of its own (the pool shares one per
        # host, port and user, with the settings of the first worker that connects).
        "unknownkey": sshd.worker(
            work, host="localhost", known_hosts=str(tmp_path / "empty_known_hosts")
        ),
    }
    try:
        for project in ssh_project(tmp_path, workers):
            good = check_worker(project, "good")
            assert [(c.what, c.ok) for c in good] == [
                ("connect", True),
                ("work dir writable", True),
                ("queue commands", True),
                ("worker python", True),
            ], good
            bad = {c.what: c for c in check_worker(project, "bad")}
            assert bad["connect"].ok
            assert not bad["work dir writable"].ok
            assert "/root/conveyor" in bad["work dir writable"].detail
            assert not bad["queue commands"].ok
            assert "condor_submit" in bad["queue commands"].detail
            assert not bad["worker python"].ok
            assert "pip install conveyor-runner" in bad["worker python"].fix
            (refused,) = check_worker(project, "unknownkey")
            assert not refused.ok
            assert "accept_new_host_keys" in refused.detail

            result = CliRunner().invoke(
                app, ["--project", str(project.path), "project", "check", "-w", "good"]
            )
            assert result.exit_code == 0, result.output
            assert "all 1 worker(s) ready" in result.output
            result = CliRunner().invoke(
                app, ["--project", str(project.path), "project", "check", "--worker", "bad"]
            )
            assert result.exit_code == 1
            assert "fix: install Conveyor" in result.output
            assert "3 problem(s) found" in result.output
    finally:
        shutil.rmtree(work, ignore_errors=True)
