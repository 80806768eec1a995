"""The ``conveyor`` command as a real process (``python -m conveyor.cli``).

Each test gets its own ``CONVEYOR_HOME`` and no ``CONVEYOR_PROJECT``, so nothing reads
or writes the real home. The default database is in memory, so every test does its
work within one command.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor import __version__
from conveyor.config import load_config

pytestmark = pytest.mark.integration

PATH = [
    "READY",
    "CHECKED_OUT",
    "UPLOADED",
    "SUBMITTED",
    "RUNNING",
    "TERMINATED",
    "DOWNLOADED",
    "COMPLETED",
]
CHANGE = re.compile(r"^job (\d+) (\S+): (?:(\w+) → )?(\w+)( \(submitted\))?$")

FLOW_FILE = """
from jobflow import Flow, job


@job
def square(x):
    return x * x


@job
def total(values):
    return sum(values)


squares = [square(i) for i in range(1, 4)]
flow = Flow([*squares, total([s.output for s in squares])], name="sum-of-squares")
"""


def conveyor(
    *args: str, home: Path, cwd: Path | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_PROJECT"}
    env["CONVEYOR_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "conveyor.cli", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def states_seen(text: str) -> dict[tuple[int, str], list[str]]:
    """(db id, name) → every state the job was reported in, in order."""
    seen: dict[tuple[int, str], list[str]] = {}
    for line in text.splitlines():
        match = CHANGE.match(line)
        if match:
            seen.setdefault((int(match[1]), match[2]), []).append(match[4])
    return seen


def outputs(text: str) -> dict[str, str]:
    """name → output, from the final table (``db id  name  state  output``)."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"^\s*\d+\s+(\S+)\s+COMPLETED\s+(.+?)\s*$", line)
        if match:
            found[match[1]] = match[2]
    return found


def test_version_and_help(tmp_path: Path) -> None:
    version = conveyor("--version", home=tmp_path)
    assert version.returncode == 0
    assert version.stdout.strip() == f"conveyor {__version__}"
    help_ = conveyor("--help", home=tmp_path)
    assert help_.returncode == 0
    assert "Usage: conveyor" in help_.stdout


def test_demo_on_a_fresh_machine_leaves_jobs_another_process_lists(tmp_path: Path) -> None:
    result = conveyor("demo", home=tmp_path, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    seen = states_seen(result.stdout)
    assert sorted(seen) == [(1, "start"), (2, "left"), (3, "right"), (4, "combine")]
    for job, states in seen.items():
        assert states[-len(PATH) :] == PATH, job
        assert states[: -len(PATH)] in ([], ["WAITING"]), job
    assert outputs(result.stdout) == {"start": "3", "left": "13", "right": "23", "combine": "36"}
    assert "Flow diamond: COMPLETED" in result.stdout
    # The default project was made on the embedded database...
    project_file = tmp_path / "projects" / "default" / "project.yaml"
    assert load_config(project_file).database.url.startswith("sqlite:///")
    # ...and another process sees the demo's jobs in it.
    listed = conveyor("job", "list", "--json", home=tmp_path, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    jobs = json.loads(listed.stdout)
    assert sorted((job["name"], job["state"]) for job in jobs) == sorted(
        (name, "COMPLETED") for name in ("start", "left", "right", "combine")
    )


def test_run_a_file_in_a_project_made_by_project_init(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init = conveyor("project", "init", "--dir", str(tmp_path / "proj"), home=home)
    assert init.returncode == 0, init.stderr
    project_file = tmp_path / "proj" / "project.yaml"
    assert load_config(project_file).name == "default"

    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "squares.py").write_text(FLOW_FILE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = conveyor(
        "--project",
        str(project_file),
        "run",
        str(flows / "squares.py"),
        "--max-seconds",
        "150",
        home=home,
        cwd=elsewhere,  # the file's folder is not the cwd: the worker still finds it
    )
    assert result.returncode == 0, result.stdout + result.stderr
    seen = states_seen(result.stdout)
    assert [name for _, name in sorted(seen)] == ["square", "square", "square", "total"]
    for states in seen.values():
        assert states[-len(PATH) :] == PATH
    found = outputs(result.stdout)
    assert found["total"] == "14"
    assert "Flow sum-of-squares: COMPLETED" in result.stdout
    assert not home.exists()  # the named-project folder was never needed


def test_errors_are_one_line_with_the_fix(tmp_path: Path) -> None:
    result = conveyor("job", "info", "1", home=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: no project file at ")
    assert "conveyor project init" in line

    debug = conveyor("--debug", "job", "info", "1", home=tmp_path)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == line
