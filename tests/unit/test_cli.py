"""The CLI in this process (typer's CliRunner), on throwaway projects with real jobs.

Commands are checked against what the API says about the same jobs: the table and the
JSON of ``job list`` carry the same db ids and states as the database, ``job info``
shows the error a real failed job left, ``retry`` and ``rerun`` change real states.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml
from jobflow import Flow
from typer.testing import CliRunner, Result

from conveyor import Runner, __version__, submit_command, submit_flow
from conveyor.api import get_job
from conveyor.cli import app, main
from conveyor.cli.render import MASK, HistoryFollower, masked
from conveyor.config import init_project, load_config
from conveyor.models import HistoryEntry, JobDoc, utcnow
from conveyor.project import Project
from conveyor.states import JobState
from conveyor.testing import jobs as J
from conveyor.testing import temp_project

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
#: ``job N NAME: [FROM → ]TO [(submitted)]``, as the demo and ``run`` print it.
CHANGE = re.compile(r"^job (\d+) (\S+): (?:(\w+) → )?(\w+)( \(submitted\))?$")


def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def table_rows(text: str) -> dict[int, str]:
    """db id → state, from the rows of a jobs table."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^\s*(\d+)\s+\S+\s+([A-Z_]+)\s", line)
        if match:
            rows[int(match[1])] = match[2]
    return rows


def states_seen(text: str) -> dict[int, list[str]]:
    """db id → every state a job was reported in, in order."""
    seen: dict[int, list[str]] = {}
    for line in text.splitlines():
        match = CHANGE.match(line)
        if match:
            seen.setdefault(int(match[1]), []).append(match[4])
    return seen


def failed_job(project: Project, message: str = "boom on purpose") -> int:
    (db_id,) = submit_flow(J.fail(message))
    assert Runner().run_all_jobs(max_seconds=120)
    assert get_job(db_id).state is JobState.FAILED
    return db_id


def write_flow_file(folder: Path, body: str) -> Path:
    """A flow file with a unique module name (modules stay imported between tests)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"cli_flow_{uuid.uuid4().hex[:8]}.py"
    path.write_text(body)
    return path


TWO_JOBS = """
from jobflow import Flow, job


@job
def double(x):
    return 2 * x


@job
def describe(name, value):
    return f"{name} is {value}"


first = double(21)
second = describe("answer", first.output)
flow = Flow([first, second], name="two-jobs")
"""


# --- the root: help, version, console script -----------------------------------------


def test_help_of_every_command() -> None:
    top = invoke("--help")
    assert top.exit_code == 0
    for command in ("demo", "run", "job", "project"):
        assert command in top.stdout
    for args, text in [
        (["demo"], "current project"),
        (["run"], "FILE.py"),
        (["job", "list"], "newest first"),
        (["job", "info"], "everything about one job"),
        (["job", "retry"], "failed step"),
        (["job", "rerun"], "finished job again"),
        (["project", "init"], "project file"),
        (["project", "show"], "YAML"),
    ]:
        result = invoke(*args, "--help")
        assert result.exit_code == 0, args
        assert text in result.stdout, args


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"conveyor {__version__}"


def test_console_script_is_main() -> None:
    (script,) = entry_points(group="console_scripts", name="conveyor")
    assert script.value == "conveyor.cli:main"
    assert script.load() is main


# --- project ---------------------------------------------------------------------------


def test_project_init_in_a_folder_writes_a_file_that_loads(tmp_path: Path) -> None:
    result = invoke("project", "init", "mine", "--dir", str(tmp_path / "proj"))
    assert result.exit_code == 0, result.output
    path = (tmp_path / "proj" / "project.yaml").resolve()
    assert str(path) in result.stdout
    assert "conveyor demo" in result.stdout
    assert f"conveyor --project {path} run FILE.py" in result.stdout
    config = load_config(path)
    assert config.name == "mine"
    assert config.workers["local"].work_dir == str(path.parent / "work")


def test_project_init_by_name_refuses_to_overwrite_without_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path / "home"))
    path = tmp_path / "home" / "projects" / "named" / "project.yaml"
    assert invoke("project", "init", "named").exit_code == 0
    assert load_config(path).name == "named"

    again = invoke("project", "init", "named")
    assert again.exit_code == 1
    assert again.stderr.strip().splitlines() == [
        f"error: a project already exists at {path}; pass --force to overwrite it"
    ]
    assert invoke("project", "init", "named", "--force").exit_code == 0


def test_project_show_prints_the_settings_as_yaml(project: Project) -> None:
    result = invoke("project", "show")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"# project {project.name}: {project.path}\n")
    shown = yaml.safe_load(result.stdout)
    assert shown == project.config.model_dump(mode="json")


def test_project_show_masks_passwords(tmp_path: Path) -> None:
    url = "mongodb://alice:s3cret@db.example.org:27017/conveyor"
    path = init_project("secret", tmp_path, settings={"database": {"url": url}})
    result = invoke("--project", str(path), "project", "show")
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.stdout
    assert f"mongodb://alice:{MASK}@db.example.org:27017/conveyor" in result.stdout

    data = {"ssh": {"passphrase": "p", "key_password": "k", "user": "bob", "password": None}}
    assert masked(data) == {
        "ssh": {"passphrase": MASK, "key_password": MASK, "user": "bob", "password": None}
    }


def test_project_option_applies_to_the_command_only(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONVEYOR_PROJECT")
    missing = invoke("project", "show", env={"CONVEYOR_HOME": str(project.directory / "home")})
    assert missing.exit_code == 1
    assert "conveyor project init" in missing.stderr

    found = invoke("-p", str(project.path), "project", "show")
    assert found.exit_code == 0, found.output
    assert f"name: {project.name}" in found.stdout
    assert "CONVEYOR_PROJECT" not in os.environ


# --- job list ---------------------------------------------------------------------------


def test_job_list_table_and_json_agree_with_the_database(project: Project) -> None:
    one = J.add(1, 2)
    two = J.add(one.output, 3)
    first_flow = Flow([one, two])
    ids = submit_flow(first_flow) + submit_flow(J.add(5, 5))
    truth = {db_id: str(get_job(db_id).state) for db_id in ids}
    assert set(truth.values()) == {"READY", "WAITING"}

    table = invoke("job", "list")
    assert table.exit_code == 0, table.output
    assert table_rows(table.stdout) == truth
    assert "3 jobs shown of 3" in table.stdout

    as_json = invoke("job", "list", "--json")
    assert as_json.exit_code == 0
    data = json.loads(as_json.stdout)
    assert {d["db_id"]: d["state"] for d in data} == truth
    assert [d["db_id"] for d in data] == sorted(ids, reverse=True)  # newest first
    assert all("job" not in d and d["worker"] == "local" for d in data)

    limited = invoke("job", "list", "-n", "1")
    assert table_rows(limited.stdout) == {max(ids): truth[max(ids)]}
    assert "1 jobs shown of 3" in limited.stdout

    waiting = json.loads(invoke("job", "list", "--json", "-s", "waiting").stdout)
    assert [d["db_id"] for d in waiting] == [ids[1]]
    in_flow = json.loads(invoke("job", "list", "--json", "--flow", first_flow.uuid).stdout)
    assert sorted(d["db_id"] for d in in_flow) == ids[:2]
    assert json.loads(invoke("job", "list", "--json", "-w", "elsewhere").stdout) == []


def test_a_bad_state_is_one_red_line_and_exit_1(project: Project) -> None:
    result = invoke("job", "list", "--state", "DONE", env={"FORCE_COLOR": "1"})
    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert "\x1b[31m" in line  # red
    plain = re.sub(r"\x1b\[[0-9;]*m", "", line)
    assert plain.startswith("error: unknown job state 'DONE'; valid states: WAITING, READY")
    assert "COMPLETED" in plain
    assert "Traceback" not in result.stderr


# --- job info -----------------------------------------------------------------------------


def test_job_info_shows_the_error_and_traceback_of_a_failed_job(project: Project) -> None:
    db_id = failed_job(project)
    doc = get_job(db_id)
    assert doc.error is not None

    result = invoke("job", "info", str(db_id))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"Job {db_id}: fail" in out
    assert "FAILED" in out
    assert "RuntimeError: boom on purpose" in out
    assert "Error in the job's own code" in out
    assert "Traceback (most recent call last)" in out
    assert "RuntimeError" in (doc.error.traceback or "")
    assert str(doc.remote.run_dir) in out
    assert str(doc.remote.queue_id) in out
    assert re.search(rf"^exit code\s+{doc.remote.exit_code}$", out, re.M)
    history = out.split("History:")[1]
    assert [s for s in re.findall(r"^([A-Z_]+)\s", history, re.M)] == [
        *PATH[:-1],
        "FAILED",
    ]

    listed = invoke("job", "list")
    assert "RuntimeError: boom on purpose" in listed.stdout

    full = json.loads(invoke("job", "info", str(db_id), "--json").stdout)
    assert full["db_id"] == db_id
    assert full["state"] == "FAILED"
    assert "RuntimeError" in full["error"]["traceback"]
    assert full["job"]["name"] == "fail"  # the serialized jobflow job is included


def test_an_unknown_job_is_exit_1_with_a_message(project: Project) -> None:
    result = invoke("job", "info", "999")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: no job with db id 999"


def test_debug_shows_the_traceback(project: Project) -> None:
    result = invoke("--debug", "job", "info", "999")
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "conveyor.exceptions.NotFoundError: no job with db id 999" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: no job with db id 999"


# --- job retry / rerun ----------------------------------------------------------------------


def test_rerun_sends_a_failed_job_back_to_ready(project: Project) -> None:
    db_id = failed_job(project)
    result = invoke("job", "rerun", str(db_id))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"job {db_id} fail: READY"
    doc = get_job(db_id)
    assert doc.state is JobState.READY
    assert doc.error is None
    assert doc.history[-1].by == "cli"

    again = invoke("job", "rerun", str(db_id))
    assert again.exit_code == 1
    assert "only finished jobs can be rerun" in again.stderr


def test_retry_resumes_a_job_in_remote_error(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the work dir should be")
    worker = {"local": {"type": "local", "work_dir": str(blocker / "work")}}
    with temp_project(tmp_path / "p", settings={"workers": worker}):
        (db_id,) = submit_flow(J.add(1, 2))
        assert Runner().run_all_jobs(max_seconds=120)
        assert get_job(db_id).state is JobState.REMOTE_ERROR

        info = invoke("job", "info", str(db_id))
        assert "REMOTE_ERROR (failed in CHECKED_OUT)" in info.stdout
        assert "Error in step upload" in info.stdout
        assert "Not a directory" in info.stdout

        blocker.unlink()
        result = invoke("job", "retry", str(db_id))
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == f"job {db_id} add: CHECKED_OUT"
        assert Runner().run_all_jobs(max_seconds=120)
        assert get_job(db_id).state is JobState.COMPLETED

        nothing = invoke("job", "retry", str(db_id))
        assert nothing.exit_code == 1
        assert "has no failed step to retry; use rerun" in nothing.stderr


# --- run ------------------------------------------------------------------------------------


def test_run_a_flow_file(project: Project, tmp_path: Path) -> None:
    path = write_flow_file(tmp_path / "flows", TWO_JOBS)
    result = invoke("run", str(path))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"Submitted 2 job(s) of {path.name} to project '{project.name}'" in out
    seen = states_seen(out)
    assert sorted(seen) == [1, 2]
    for states in seen.values():
        assert states[-len(PATH) :] == PATH
    assert table_rows(out) == {1: "COMPLETED", 2: "COMPLETED"}
    assert "answer is 42" in out
    assert "Flow two-jobs: COMPLETED" in out
    assert get_job(2).exec_env["PYTHONPATH"].split(os.pathsep)[0] == str(path.parent)


def test_run_quiet_and_a_failing_flow(project: Project, tmp_path: Path) -> None:
    body = TWO_JOBS.replace("return 2 * x", "raise ValueError(f'no doubling {x}')")
    path = write_flow_file(tmp_path / "flows", body)
    result = invoke("run", str(path), "--quiet", "--max-seconds", "120")
    assert result.exit_code == 1
    assert states_seen(result.stdout) == {}
    rows = table_rows(result.stdout)
    assert rows[1] == "FAILED"
    assert "ValueError: no doubling 21" in result.stdout
    assert "Not completed: job(s) 1 2" in result.stderr


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("cli_noflow_{}.py", "x = 1\n", "defines no module-level 'flow'"),
        ("cli_badflow_{}.py", "flow = [1, 2]\n", "'flow' in {} is a list"),
        ("cli_empty_{}.py", "from jobflow import Flow\nflow = Flow([])\n", "has no jobs"),
        ("cli_broken_{}.py", "flow = undefined_name\n", "NameError: name 'undefined_name'"),
        ("json.py", "flow = None\n", "has the name of the module 'json'"),
        ("my-flow.py", "flow = None\n", "rename the file to a Python module name"),
    ],
)
def test_run_refuses_files_without_a_usable_flow(
    project: Project, tmp_path: Path, name: str, body: str, message: str
) -> None:
    path = tmp_path / name.format(uuid.uuid4().hex[:8])
    path.write_text(body)
    result = invoke("run", str(path))
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert message.format(path.name) in line
    assert invoke("job", "list", "--json").stdout.strip() == "[]"  # nothing submitted


def test_run_a_missing_file_is_a_usage_error(project: Project) -> None:
    result = invoke("run", "no/such/file.py")
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


# --- demo -----------------------------------------------------------------------------------


def test_demo_runs_in_the_current_project_and_shows_every_state(project: Project) -> None:
    result = invoke("demo")
    assert result.exit_code == 0, result.output
    seen = states_seen(result.stdout)
    assert sorted(seen) == [1, 2, 3, 4]
    for states in seen.values():
        assert states[-len(PATH) :] == PATH
    assert table_rows(result.stdout) == dict.fromkeys([1, 2, 3, 4], "COMPLETED")
    assert re.search(r"^\s*4\s+combine\s+COMPLETED\s+36\s*$", result.stdout, re.M)
    assert "Flow diamond: COMPLETED" in result.stdout
    assert project.db.count_jobs_by_state() == {JobState.COMPLETED: 4}


def test_demo_throwaway_leaves_nothing(project: Project) -> None:
    result = invoke("demo", "--throwaway")
    assert result.exit_code == 0, result.output
    folder = re.search(r"throwaway project in (\S+)", result.stdout)
    assert folder is not None
    assert not Path(folder[1]).exists()
    assert project.db.count_jobs() == 0


# --- rendering ------------------------------------------------------------------------------


def _doc(states: Sequence[str]) -> JobDoc:
    now = utcnow()
    return JobDoc(
        db_id=7,
        uuid="u",
        flow_uuid="f",
        name="job",
        state=JobState(states[-1]),
        job={},
        worker="local",
        history=[HistoryEntry(state=JobState(s), at=now) for s in states],
    )


def test_history_follower_reports_each_change_once() -> None:
    follower = HistoryFollower()
    first = [line.plain for _, line in follower.new_lines([_doc(["READY", "CHECKED_OUT"])])]
    assert first == ["job 7 job: READY (submitted)", "job 7 job: READY → CHECKED_OUT"]
    later = follower.new_lines([_doc(["READY", "CHECKED_OUT", "UPLOADED", "SUBMITTED"])])
    assert [line.plain for _, line in later] == [
        "job 7 job: CHECKED_OUT → UPLOADED",
        "job 7 job: UPLOADED → SUBMITTED",
    ]
    assert follower.new_lines([_doc(["READY", "CHECKED_OUT", "UPLOADED", "SUBMITTED"])]) == []


def test_run_a_file_whose_flow_is_one_job(project: Project, tmp_path: Path) -> None:
    body = "from jobflow import job\n\n\n@job\ndef hello():\n    return 'hi'\n\n\nflow = hello()\n"
    path = write_flow_file(tmp_path / "flows", body)
    result = invoke("run", str(path), "-q")
    assert result.exit_code == 0, result.output
    assert table_rows(result.stdout) == {1: "COMPLETED"}
    assert re.search(r"^\s*1\s+hello\s+COMPLETED\s+'hi'\s*$", result.stdout, re.M)
    assert f"Flow {path.stem}: COMPLETED" in result.stdout


def test_job_script_shows_what_would_be_submitted(project: Project) -> None:
    db_id = submit_command(["echo", "it's $(not) run"], project=project)
    result = CliRunner().invoke(app, ["job", "script", str(db_id)])
    assert result.exit_code == 0, result.output
    assert "# ---- " in result.output
    assert "conveyor.execution" in result.output
    assert "submitted with" in result.output
    assert project.db.get_job(db_id).state is JobState.READY  # nothing was submitted
    as_json = CliRunner().invoke(app, ["job", "script", str(db_id), "--json"])
    data = json.loads(as_json.stdout)
    assert data["submit_argv"][0] == "bash"
    assert "submit.sh" in data["files"]
    assert data["run_dir"].startswith(project.work_dir("local"))
