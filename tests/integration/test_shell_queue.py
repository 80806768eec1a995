"""The shell adapter driven end to end through LocalHost: real background processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from monty.json import jsanitize

from conveyor.exceptions import QueueParseError
from conveyor.execution.command import run_command
from conveyor.hosts import LocalHost
from conveyor.queue import QueueState, SubmitSpec, get_adapter
from conveyor.queue.base import (
    EXIT_CODE_FILE,
    JOB_FILE,
    OUTPUT_FILE,
    STARTED_FILE,
    STDERR_FILE,
    STDOUT_FILE,
)
from conveyor.queue.shell import ShellAdapter

pytestmark = pytest.mark.integration

DEADLINE = 30.0
NASTY_DIR = 'it\'s a "dir" with $(touch pwned) `x`; & | <>'


class ShellQueue:
    """Submit scripts under a root dir and watch them, as the runner would."""

    def __init__(self, root: Path) -> None:
        self.host = LocalHost(name="test", root=str(root))
        adapter = get_adapter("shell")
        assert isinstance(adapter, ShellAdapter)
        self.adapter = adapter
        self.submitted: list[str] = []

    def submit(
        self,
        run_dir: Path,
        command: Sequence[str],
        *,
        token: str = "1-abcdef",
        env: Mapping[str, str] | None = None,
        pre_run: str | None = None,
    ) -> str:
        spec = SubmitSpec(
            run_dir=str(run_dir),
            job_name=f"conveyor-{token}",
            submit_token=token,
            command=list(command),
            pre_run=pre_run,
            env=dict(env or {}),
        )
        self.host.mkdir(str(run_dir))
        for name, text in self.adapter.render(spec).items():
            self.host.write_bytes(f"{run_dir}/{name}", text.encode())
        # A timeout well below the payloads' lifetimes: submitting must not wait for them.
        result = self.host.execute(self.adapter.submit_command(spec), cwd=str(run_dir), timeout=10)
        queue_id = self.adapter.parse_submit_output(result.exit_code, result.stdout, result.stderr)
        self.submitted.append(queue_id)
        return queue_id

    def status(self, queue_id: str) -> QueueState | None:
        result = self.host.execute(self.adapter.status_command([queue_id]), timeout=10)
        jobs = self.adapter.parse_status_output(
            result.exit_code, result.stdout, result.stderr, [queue_id]
        )
        return jobs[queue_id].state if queue_id in jobs else None

    def find(self, token: str) -> str | None:
        result = self.host.execute(self.adapter.find_by_token_command(token), timeout=10)
        return self.adapter.parse_find_by_token(
            result.exit_code, result.stdout, result.stderr, token
        )

    def cancel(self, queue_id: str) -> None:
        self.host.execute(self.adapter.cancel_command(queue_id), timeout=10).check()

    def wait_gone(self, queue_id: str) -> None:
        wait_for(lambda: self.status(queue_id) is None, f"job {queue_id} to leave ps")

    def kill_all(self) -> None:
        for queue_id in self.submitted:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(queue_id), signal.SIGKILL)


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[ShellQueue]:
    q = ShellQueue(tmp_path)
    yield q
    q.kill_all()


def wait_for(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        time.sleep(0.05)


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited: no /proc entry, or a zombie (never ``kill -0``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_job_runs_and_records_its_exit_code(queue: ShellQueue, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code = "import os; print('hello', os.getcwd()); print(os.environ['NASTY'], flush=True)"
    nasty = "$(touch pwned) `id` 'q' \"d\"; a\nb"
    queue_id = queue.submit(run_dir, py(code), env={"NASTY": nasty}, pre_run="cd /")
    queue.wait_gone(queue_id)
    assert (run_dir / EXIT_CODE_FILE).read_text() == "0\n"
    assert (run_dir / STARTED_FILE).read_text().strip() == queue_id
    assert (run_dir / STDOUT_FILE).read_text() == f"hello {run_dir}\n{nasty}\n"
    assert (run_dir / STDERR_FILE).read_text() == ""
    assert not (run_dir / "pwned").exists()
    assert not Path("/pwned").exists()
    assert sorted(os.listdir(run_dir)) == sorted(
        ["submit.sh", EXIT_CODE_FILE, STARTED_FILE, STDOUT_FILE, STDERR_FILE]
    )


def test_non_zero_exit_code(queue: ShellQueue, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    queue_id = queue.submit(run_dir, py("import sys; sys.exit(7)"))
    queue.wait_gone(queue_id)
    assert (run_dir / EXIT_CODE_FILE).read_text() == "7\n"


def test_run_dir_with_spaces_and_quotes(queue: ShellQueue, tmp_path: Path) -> None:
    run_dir = tmp_path / NASTY_DIR / "run $HOME"
    code = "import os, sys; print(os.getcwd()); print(sys.argv[1])"
    queue_id = queue.submit(run_dir, [*py(code), str(run_dir)], token="2-dir")
    queue.wait_gone(queue_id)
    assert (run_dir / EXIT_CODE_FILE).read_text() == "0\n"
    assert (run_dir / STDOUT_FILE).read_text() == f"{run_dir}\n{run_dir}\n"
    assert not (run_dir / "pwned").exists()
    assert not (tmp_path / "pwned").exists()


def test_find_by_token_finds_a_running_job(queue: ShellQueue, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    stop = run_dir / "stop"
    code = f"import os, time\nwhile not os.path.exists({str(stop)!r}):\n    time.sleep(0.02)\n"
    queue_id = queue.submit(run_dir, py(code), token="3-sleeper")
    assert queue.status(queue_id) is QueueState.RUNNING
    assert queue.find("3-sleeper") == queue_id
    assert queue.find("3-sleepe") is None
    assert queue.find("3-other") is None
    stop.touch()
    queue.wait_gone(queue_id)
    assert queue.find("3-sleeper") is None
    assert (run_dir / EXIT_CODE_FILE).read_text() == "0\n"


def test_suspended_job(queue: ShellQueue, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    queue_id = queue.submit(run_dir, py("import time; time.sleep(60)"), token="4-stop")
    os.kill(int(queue_id), signal.SIGSTOP)
    try:
        wait_for(lambda: queue.status(queue_id) is QueueState.SUSPENDED, "the job to stop")
    finally:
        os.kill(int(queue_id), signal.SIGCONT)
    wait_for(lambda: queue.status(queue_id) is QueueState.RUNNING, "the job to continue")
    queue.cancel(queue_id)
    queue.wait_gone(queue_id)


def test_cancel_kills_the_payload_and_its_children(queue: ShellQueue, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    child_pid_file = run_dir / "child.pid"
    code = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(child_pid_file)!r} + '.tmp', 'w').write(str(child.pid))\n"
        "import os\n"
        f"os.replace({str(child_pid_file)!r} + '.tmp', {str(child_pid_file)!r})\n"
        "child.wait()\n"
    )
    queue_id = queue.submit(run_dir, py(code), token="5-cancel")
    wait_for(child_pid_file.exists, "the payload to start its child")
    child_pid = int(child_pid_file.read_text())
    assert not process_gone(child_pid)
    queue.cancel(queue_id)
    queue.wait_gone(queue_id)
    wait_for(lambda: process_gone(child_pid), "the payload's child to die")
    # The script outlives the payload just long enough to record how it ended.
    assert (run_dir / EXIT_CODE_FILE).read_text() == f"{128 + signal.SIGTERM}\n"


def test_status_of_several_jobs(queue: ShellQueue, tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    code = f"import os, time\nwhile not os.path.exists({str(stop)!r}):\n    time.sleep(0.02)\n"
    ids = [queue.submit(tmp_path / f"run{i}", py(code), token=f"6-{i}") for i in range(3)]
    result = queue.host.execute(queue.adapter.status_command(ids))
    jobs = queue.adapter.parse_status_output(result.exit_code, result.stdout, result.stderr, ids)
    assert {q: info.state for q, info in jobs.items()} == dict.fromkeys(ids, QueueState.RUNNING)
    stop.touch()
    for queue_id in ids:
        queue.wait_gone(queue_id)
    result = queue.host.execute(queue.adapter.status_command(ids))
    assert (
        queue.adapter.parse_status_output(result.exit_code, result.stdout, result.stderr, ids) == {}
    )


def test_submit_into_a_missing_run_dir_fails_cleanly(queue: ShellQueue, tmp_path: Path) -> None:
    spec = SubmitSpec(
        run_dir=str(tmp_path / "missing"),
        job_name="x",
        submit_token="7-missing",
        command=["true"],
    )
    result = queue.host.execute(queue.adapter.submit_command(spec), timeout=10)
    with pytest.raises(QueueParseError, match="code 1") as info:
        queue.adapter.parse_submit_output(result.exit_code, result.stdout, result.stderr)
    assert "missing" in str(info.value)


def test_execution_module_as_the_payload(queue: ShellQueue, tmp_path: Path) -> None:
    """The real pairing: the script runs ``python -m conveyor.execution RUN_DIR``."""
    run_dir = tmp_path / NASTY_DIR
    job = run_command([sys.executable, "-c", "print('from the command')"])
    payload = {
        "version": 1,
        "job": jsanitize(job, strict=True, enum_values=True, allow_bson=False),
        "additional_stores": [],
    }
    queue.host.mkdir(str(run_dir))
    queue.host.write_bytes(f"{run_dir}/{JOB_FILE}", json.dumps(payload).encode())
    command = [sys.executable, "-m", "conveyor.execution", str(run_dir)]
    queue_id = queue.submit(run_dir, command, token="8-exec", pre_run="cd /")
    queue.wait_gone(queue_id)
    assert (run_dir / EXIT_CODE_FILE).read_text() == "0\n", (run_dir / STDERR_FILE).read_text()
    output = json.loads((run_dir / OUTPUT_FILE).read_text())
    assert output["error"] is None
    (doc,) = output["store"]["docs"]
    assert doc["output"]["stdout_tail"] == "from the command\n"
