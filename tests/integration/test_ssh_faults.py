"""Faults on a remote host, for real: its sshd killed mid-command, the host gone silent (a
blackhole route: packets vanish), the host unreachable (its link down).

The faulty host is a network namespace of this module's own (scripts/services/netns-
host.sh up cvfaultN N --no-slurm: 198.51.100.(4N+2), its own sshd, the shell queue; N is
the first index no other test session holds), torn down afterwards whatever happens. A
healthy worker (the loopback sshd) runs jobs meanwhile. Timeouts are small: connect 2 s,
channel 2 s, command 5 s, keepalive 1 s x 3, reconnect after 0.5 s, retry after 0.5 s,
lease 5 s. Each fault ends either with the job retried and completed once the host is
back, or in REMOTE_ERROR with a message naming the host and the failure; the runner's
loop never waits on the host, and the healthy worker's jobs finish during the outage.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jobflow import Flow
from test_ssh_host import TEST_ROOT, Service, load_service

from conveyor import Runner, submit_flow
from conveyor.api import retry
from conveyor.exceptions import HostError
from conveyor.hosts.pool import HostPool
from conveyor.hosts.ssh import SSHHost
from conveyor.project import Project
from conveyor.runner import runner as runner_module
from conveyor.states import JobState
from conveyor.testing import jobs as J
from conveyor.testing import temp_project
from services import service_missing

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "services" / "netns-host.sh"
#: Set by the ``faulty`` fixture: this session's namespace, its index and root-side address.
NS, IDX, ROOT_SIDE = "", 0, ""
FAST = {
    "connect_timeout": 2.0,
    "channel_timeout": 2.0,
    "transfer_timeout": 5.0,
    "command_timeout": 5.0,
    "keepalive_interval": 1.0,
    "keepalive_count_max": 3,
    "reconnect_delays": [0.5],
    "min_connect_interval": 0.0,
    "poll_interval": 0.2,
}
#: The longest a single call on the faulty host may take: a slot, a connection, a
#: channel and the command itself, each bounded, plus slack for a loaded machine.
ONE_CALL = 5.0 + 2.0 + 2.0 + 5.0


def netns(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=check
    )


def ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


@contextlib.contextmanager
def free_index() -> Iterator[int]:
    """A namespace index no other test session uses (an flock held meanwhile): two
    sessions running these tests at once get hosts of their own."""
    TEST_ROOT.mkdir(parents=True, exist_ok=True)
    for index in range(2, 63):
        with open(TEST_ROOT / f"fault-{index}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            yield index
            return
    service_missing("no free namespace index for the fault tests")


@pytest.fixture(scope="module")
def faulty() -> Iterator[Service]:
    """This module's namespace host, removed afterwards even if a test failed."""
    global NS, IDX, ROOT_SIDE
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nsenter") is None:
        service_missing("fault tests need root, ip and nsenter (network namespaces)")
    if not (TEST_ROOT / "sshd.env").is_file():
        service_missing("no test sshd: run bash scripts/services/sshd.sh as root first")
    with free_index() as index:
        NS, IDX, ROOT_SIDE = f"cvfault{index}", index, f"198.51.100.{4 * index + 1}"
        netns("down", NS, str(IDX), check=False)  # left over by a killed session?
        made = netns("up", NS, str(IDX), "--no-slurm", check=False)
        try:
            if made.returncode != 0:
                service_missing(f"netns-host.sh up {NS} failed: {made.stderr.strip()}")
            yield load_service(NS, f"bash {SCRIPT} up {NS} {IDX} --no-slurm")
        finally:
            netns("down", NS, str(IDX), check=False)
            assert not Path(f"/run/netns/{NS}").exists()


@pytest.fixture
def healed(faulty: Service) -> Iterator[Service]:
    """The faulty host, whole again after the test (routes, link, sshd)."""
    try:
        yield faulty
    finally:
        heal()


def heal() -> None:
    ip("netns", "exec", NS, "ip", "route", "del", "blackhole", f"{ROOT_SIDE}/32", check=False)
    netns("up", NS, str(IDX), "--no-slurm")


def silence() -> None:
    """The host's answers vanish: a blackhole route back to us, inside its namespace."""
    ip("netns", "exec", NS, "ip", "route", "add", "blackhole", f"{ROOT_SIDE}/32")


def cut(service: Service) -> None:
    """The host's link goes away: its address falls to the 'unreachable' route."""
    ip("link", "set", service.veth, "down")
    ip("addr", "flush", "dev", service.veth)


def session_processes(service: Service) -> list[int]:
    """The sshd processes serving connections (children of the listener, recursively)."""
    listener = service.listener_pid()
    found: list[int] = []
    todo = [listener]
    while todo:
        parent = todo.pop()
        out = subprocess.run(
            ["ps", "-o", "pid=,comm=", "--ppid", str(parent)], capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            pid, comm = line.split(None, 1)
            if comm.strip() == "sshd":
                found.append(int(pid))
                todo.append(int(pid))
    return found


def kill_sessions(service: Service) -> list[int]:
    pids = session_processes(service)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def wait_for(condition: Callable[[], bool], what: str, deadline: float = 60.0) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > deadline:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


class Background:
    """A runner looping in a thread; records how long each pass of its loop took."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.passes: list[float] = []
        tick = runner_module.Runner._tick

        def timed(runner: Any, *args: Any, **kwargs: Any) -> bool:
            started = time.monotonic()
            try:
                return bool(tick(runner, *args, **kwargs))
            finally:
                self.passes.append(time.monotonic() - started)

        monkeypatch.setattr(runner_module.Runner, "_tick", timed)
        self.runner = Runner()
        self.thread = threading.Thread(target=self.runner.run, daemon=True)

    def __enter__(self) -> Background:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the runner did not stop"


@pytest.fixture
def project(healed: Service, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Project]:
    sshd = load_service("sshd", "bash scripts/services/sshd.sh")
    attempts = getattr(request, "param", 3)
    tag = uuid.uuid4().hex[:8]
    far = f"{healed.home}/conveyor-tests/fault-{tag}"
    near = f"{sshd.home}/conveyor-tests/healthy-{tag}"
    settings = {
        "workers": {
            "healthy": sshd.worker(near, poll_interval=0.1),
            "far": healed.worker(far, **FAST),
        },
        "runner": {
            "retry_delays": [0.5],
            "lease_seconds": 5.0,
            "max_step_attempts": attempts,
            "heartbeat_interval": 1.0,
            "max_threads": 4,
        },
    }
    try:
        with temp_project(tmp_path / "project", settings=settings) as proj:
            yield proj
    finally:
        shutil.rmtree(far, ignore_errors=True)
        shutil.rmtree(near, ignore_errors=True)


def state(project: Project, db_id: int) -> JobState:
    return project.db.get_job(db_id).state


def healthy_flow(project: Project, n: int = 3) -> list[int]:
    jobs = [J.add(i, 1) for i in range(n)]
    return submit_flow(Flow(jobs), worker="healthy", project=project)


def finished(project: Project, ids: list[int]) -> bool:
    return all(state(project, i) is JobState.COMPLETED for i in ids)


# --- the sshd serving the session dies -------------------------------------------------


def test_a_killed_session_fails_the_command_at_once_and_the_next_call_reconnects(
    healed: Service,
) -> None:
    work = f"{healed.home}/conveyor-tests/kill-{uuid.uuid4().hex[:8]}"
    host = SSHHost.from_config("far", _config(healed.worker(work, **FAST)), pool=HostPool())
    assert host.execute(["true"]).ok
    box: dict[str, Any] = {}

    def long_command() -> None:
        started = time.monotonic()
        try:
            box["result"] = host.execute(["sleep", "20"], timeout=30)
        except HostError as exc:
            box["error"] = exc
        box["took"] = time.monotonic() - started

    thread = threading.Thread(target=long_command)
    thread.start()
    wait_for(lambda: len(session_processes(healed)) >= 2, "the session's sshd processes")
    time.sleep(0.3)
    killed_at = time.monotonic()
    assert kill_sessions(healed)
    thread.join(10)
    assert not thread.is_alive()
    assert "error" in box, box
    message = str(box["error"])
    assert f"{healed.user}@{healed.addr}:22" in message
    assert "lost" in message
    assert time.monotonic() - killed_at < 3.0
    assert host.execute(["echo", "back"]).stdout == "back\n"
    assert host.connection.stats["connections"] == 2
    host.close()


def test_jobs_complete_after_the_session_is_killed_while_they_run(
    project: Project, faulty: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    (far_id,) = submit_flow(J.sleep_job(2.0, "far"), worker="far", project=project)
    with Background(monkeypatch) as bg:
        wait_for(lambda: state(project, far_id) is JobState.RUNNING, "the far job to run")
        assert kill_sessions(faulty)
        near = healthy_flow(project)
        wait_for(lambda: finished(project, [far_id, *near]), "every job to complete")
    assert project.jobstore.get_output(project.db.get_job(far_id).uuid) == "far"
    host = project.host("far")
    assert isinstance(host, SSHHost)
    assert host.connection.stats["connections"] >= 2
    assert max(bg.passes) < 2.0


# --- the host goes silent --------------------------------------------------------------


def test_a_silent_host_ends_in_remote_error_naming_it_and_retry_completes_once_back(
    project: Project, faulty: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    silence()
    (far_id,) = submit_flow(J.add(20, 22), worker="far", project=project)
    near = healthy_flow(project)
    with Background(monkeypatch) as bg:
        took = wait_for(lambda: finished(project, near), "the healthy worker's jobs", 30)
        assert state(project, far_id) is not JobState.COMPLETED
        assert took < ONE_CALL  # they never waited for the silent host
        wait_for(
            lambda: state(project, far_id) is JobState.REMOTE_ERROR,
            "the far job to give up",
            3 * (ONE_CALL + 0.5) + 10,
        )
        doc = project.db.get_job(far_id)
        assert doc.error is not None
        assert f"{faulty.user}@{faulty.addr}:22" in doc.error.message
        assert "silent or unreachable" in doc.error.message
        assert doc.attempts.count == 3
        heal()
        retry(far_id, project=project)
        wait_for(lambda: finished(project, [far_id]), "the retried job", 30)
    assert project.jobstore.get_output(project.db.get_job(far_id).uuid) == 42
    assert max(bg.passes) < 2.0


def test_a_host_going_silent_mid_session_is_dropped_and_its_job_completes_once_back(
    project: Project, faulty: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    (far_id,) = submit_flow(J.sleep_job(3.0, "late"), worker="far", project=project)
    with Background(monkeypatch) as bg:
        wait_for(lambda: state(project, far_id) is JobState.RUNNING, "the far job to run")
        host = project.host("far")
        assert isinstance(host, SSHHost)
        before = host.connection.stats["connections"]
        silence()
        outage_started = time.monotonic()
        near = healthy_flow(project)
        wait_for(lambda: finished(project, near), "the healthy jobs during the outage", 30)
        # keepalive (1 s x 3, TCP_USER_TIMEOUT) or a channel timeout drops the connection
        wait_for(lambda: host.connection._live() is None, "the dead connection to be dropped", 15)
        assert time.monotonic() - outage_started < 10
        heal()
        wait_for(lambda: finished(project, [far_id]), "the far job after the outage", 60)
        assert host.connection.stats["connections"] > before
    assert project.jobstore.get_output(project.db.get_job(far_id).uuid) == "late"
    assert max(bg.passes) < 2.0


# --- the host becomes unreachable ------------------------------------------------------


@pytest.mark.parametrize("project", [20], indirect=True)
def test_an_unreachable_host_fails_fast_and_its_job_completes_once_back(
    project: Project, faulty: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    cut(faulty)
    (far_id,) = submit_flow(J.add(1, 1), worker="far", project=project)
    near = healthy_flow(project)
    with Background(monkeypatch) as bg:
        wait_for(lambda: finished(project, near), "the healthy worker's jobs", 30)
        wait_for(lambda: project.db.get_job(far_id).attempts.count >= 2, "two failed attempts", 20)
        doc = project.db.get_job(far_id)
        assert doc.state is JobState.CHECKED_OUT
        assert doc.error is not None
        assert f"{faulty.user}@{faulty.addr}:22" in doc.error.message
        assert "No route to host" in doc.error.message
        heal()
        wait_for(lambda: finished(project, [far_id]), "the far job once the host is back", 30)
    assert project.jobstore.get_output(project.db.get_job(far_id).uuid) == 2
    assert max(bg.passes) < 2.0


def _config(data: dict[str, Any]) -> Any:
    from conveyor.config.models import SSHWorkerConfig

    return SSHWorkerConfig.model_validate(data)
