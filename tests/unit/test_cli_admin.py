"""``conveyor admin unlock/reset`` and ``conveyor project list`` in this process, on
throwaway projects with jobs locked the way runners lock them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from conveyor import submit_flow
from conveyor.api import get_job, list_jobs
from conveyor.cli import app
from conveyor.cli.render import MASK
from conveyor.config import init_project
from conveyor.models import RunnerDoc, utcnow
from conveyor.project import Project
from conveyor.testing import jobs as J

LEASE = timedelta(minutes=10)


def invoke(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), input=stdin)


def register(project: Project, runner_id: str, pid: int) -> None:
    now = utcnow()
    doc = RunnerDoc(
        runner_id=runner_id,
        hostname=socket.gethostname(),
        pid=pid,
        started_at=now,
        heartbeat_at=now,
    )
    project.db.register_runner(doc)


def exited_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def three_jobs(project: Project) -> list[int]:
    ids = submit_flow([J.add(1, 1), J.add(2, 2), J.add(3, 3)])
    return sorted(ids)


def lock(project: Project, db_id: int, owner: str) -> None:
    assert project.db.lock_job(db_id, owner, LEASE) is not None


def locked_ids(project: Project) -> list[int]:
    return sorted(d.db_id for d in list_jobs(locked=True))


def test_unlock_frees_only_the_selected_locks(project: Project) -> None:
    first, second, third = three_jobs(project)
    for db_id in (first, second, third):
        lock(project, db_id, "cli-elsewhere-1")
    state = get_job(first).state

    result = invoke("admin", "unlock", str(first))
    assert result.exit_code == 0, result.output
    assert "Freed 1 lock(s)." in result.stdout
    assert locked_ids(project) == [second, third]
    assert get_job(first).state is state  # only the lock changed

    result = invoke("admin", "unlock", "--state", "READY", "--name", "add")
    assert result.exit_code == 0, result.output
    assert "Freed 2 lock(s)." in result.stdout
    assert locked_ids(project) == []


def test_unlock_keeps_a_live_runners_lock_unless_forced(project: Project) -> None:
    first, second, _ = three_jobs(project)
    register(project, "live-runner", os.getpid())
    register(project, "gone-runner", exited_pid())
    lock(project, first, "live-runner")
    lock(project, second, "gone-runner")

    result = invoke("admin", "unlock")
    assert result.exit_code == 0, result.output
    assert "Freed 1 lock(s)." in result.stdout
    assert locked_ids(project) == [first]

    result = invoke("admin", "unlock", "--force")
    assert result.exit_code == 0, result.output
    assert locked_ids(project) == []


def test_reset_refuses_a_wrong_name_and_empties_the_database_with_the_right_one(
    project: Project,
) -> None:
    three_jobs(project)
    wrong = invoke("admin", "reset", "--confirm", "nope")
    assert wrong.exit_code == 1
    assert "'nope' is not the project's name ('test'); nothing deleted" in wrong.stderr
    assert len(list_jobs()) == 3

    right = invoke("admin", "reset", "--confirm", project.name)
    assert right.exit_code == 0, right.output
    assert list_jobs() == []


def test_reset_asks_for_the_name(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    three_jobs(project)
    no_terminal = invoke("admin", "reset")
    assert no_terminal.exit_code == 1
    assert "--confirm NAME" in no_terminal.stderr

    monkeypatch.setattr("conveyor.cli.admin.is_interactive", lambda: True)
    typo = invoke("admin", "reset", stdin="tset\n")
    assert typo.exit_code == 1
    assert "Type the project's name to confirm" in typo.stderr
    assert len(list_jobs()) == 3

    typed = invoke("admin", "reset", stdin=f"{project.name}\n")
    assert typed.exit_code == 0, typed.output
    assert list_jobs() == []


def test_reset_is_refused_while_a_runner_is_live(project: Project) -> None:
    three_jobs(project)
    register(project, "live-runner", os.getpid())
    result = invoke("admin", "reset", "--confirm", project.name)
    assert result.exit_code == 1
    assert "live-runner" in result.stderr
    assert len(list_jobs()) == 3


def test_project_list_shows_each_project_masked_and_the_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CONVEYOR_PROJECT", "beta")
    assert invoke("project", "list").stdout.startswith("No project")
    url = "mongodb://alice:s3cret@db.example.org:27017/conveyor"
    alpha = init_project("alpha", None)
    beta = init_project("beta", None, settings={"database": {"url": url}})
    broken = tmp_path / "home" / "projects" / "broken" / "project.yaml"
    broken.parent.mkdir(parents=True)
    broken.write_text("- not a mapping\n")

    result = invoke("project", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert list(rows) == ["alpha", "beta", "broken"]
    assert rows["alpha"]["path"] == str(alpha)
    assert rows["alpha"]["current"] is False
    assert rows["beta"] == {
        "name": "beta",
        "path": str(beta),
        "database_url": f"mongodb://alice:{MASK}@db.example.org:27017/conveyor",
        "current": True,
        "error": None,
    }
    assert "must hold a mapping" in rows["broken"]["error"]

    table = invoke("project", "list")
    assert table.exit_code == 0, table.output
    assert "s3cret" not in table.stdout
    (current,) = [line for line in table.stdout.splitlines() if line.lstrip().startswith("*")]
    assert "beta" in current
