"""Job and flow commands as real processes (``python -m conveyor.cli``) on a project with
the embedded SQLite database, so that what one process changes another one sees.

This process submits and runs the jobs; the command processes read and change them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobflow import Flow

from conveyor import Runner, api, submit_flow
from conveyor.config import init_project
from conveyor.project import Project, forget_project, open_project
from conveyor.states import JobState
from conveyor.testing import jobs as J

pytestmark = pytest.mark.integration

S = JobState


@pytest.fixture
def proc_project(tmp_path: Path) -> Iterator[Project]:
    """A project on the embedded SQLite database, opened in this process too."""
    path = init_project("procs", tmp_path / "project")
    project = open_project(path)
    yield project
    project.close()
    forget_project(project.path)


def conveyor(
    project: Project, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "-p", str(project.path), *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=_env(project),
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )


def _env(project: Project) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_PROJECT"}
    env["CONVEYOR_HOME"] = str(project.directory / "home")
    return env


def chain(project: Project, n: int, name: str = "chain") -> tuple[Flow, list[int]]:
    jobs = [J.add(1, 1)]
    for _ in range(n - 1):
        jobs.append(J.add(jobs[-1].output, 1))
    flow = Flow(jobs, name=name)
    submit_flow(flow, project=project)
    ids = [api.list_jobs(uuids=[j.uuid], project=project)[0].db_id for j in jobs]
    return flow, ids


def test_another_process_lists_and_draws_what_this_one_ran(
    proc_project: Project, tmp_path: Path
) -> None:
    flow, ids = chain(proc_project, 3)
    assert Runner(proc_project).run_all_jobs(max_seconds=120)

    listed = conveyor(proc_project, "job", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    truth = {d.db_id: str(d.state) for d in api.list_jobs(project=proc_project)}
    assert {d["db_id"]: d["state"] for d in json.loads(listed.stdout)} == truth
    assert set(truth.values()) == {"COMPLETED"}

    history = conveyor(proc_project, "job", "history", str(ids[0]), "--json")
    assert [row["state"] for row in json.loads(history.stdout)][-1] == "COMPLETED"

    target = tmp_path / "flow.mmd"
    graph = conveyor(proc_project, "flow", "graph", flow.uuid, "--mermaid", str(target))
    assert graph.returncode == 0, graph.stderr
    assert f"{ids[2]} add COMPLETED" in graph.stdout
    assert f"    j{ids[0]} --> j{ids[1]}" in target.read_text()

    missing = conveyor(proc_project, "job", "info", "999")
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr.strip() == "error: no job with db id 999"


def test_changes_made_by_another_process_are_seen_here(proc_project: Project) -> None:
    flow, ids = chain(proc_project, 2)
    paused = conveyor(proc_project, "job", "pause", f"{ids[0]}-{ids[1]}", "--json")
    assert paused.returncode == 0, paused.stderr
    assert [row["state"] for row in json.loads(paused.stdout)] == ["PAUSED", "PAUSED"]
    assert [api.get_job(i, project=proc_project).state for i in ids] == [S.PAUSED, S.PAUSED]

    resumed = conveyor(proc_project, "flow", "resume", flow.uuid)
    assert resumed.returncode == 0, resumed.stderr
    assert [api.get_job(i, project=proc_project).state for i in ids] == [S.READY, S.WAITING]
    assert api.get_job(ids[0], project=proc_project).history[-1].by == "cli"


def test_many_jobs_need_yes_without_a_terminal(proc_project: Project) -> None:
    flow = Flow([J.add(i, 1) for i in range(11)], name="wide")
    submit_flow(flow, project=proc_project)
    refused = conveyor(proc_project, "job", "cancel", "--flow", flow.uuid)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "error: this would cancel 11 jobs (more than 10); pass --yes to confirm without a "
        "terminal to ask on"
    ]
    assert api.count_jobs(states=["CANCELLED"], project=proc_project) == 0
    done = conveyor(proc_project, "job", "cancel", "--flow", flow.uuid, "--yes")
    assert done.returncode == 0, done.stderr
    assert api.count_jobs(states=["CANCELLED"], project=proc_project) == 11


def test_flow_wait_follows_a_runner_in_another_process(proc_project: Project) -> None:
    flow, _ = chain(proc_project, 2, name="waited")
    command = ["flow", "wait", flow.uuid, "--timeout", "120", "--interval", "0.1"]
    waiting = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "-p", str(proc_project.path), *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=_env(proc_project),
    )
    try:
        assert Runner(proc_project).run_all_jobs(max_seconds=120)
        out, err = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:  # pragma: no cover - only when the test fails
            waiting.kill()
            waiting.communicate()
    assert waiting.returncode == 0, err
    assert out.splitlines()[-1] == "Flow waited: COMPLETED (COMPLETED 2)"
