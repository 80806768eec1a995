"""The CLI in this process (typer's CliRunner), on throwaway projects with real jobs.

Commands are checked against what the API says about the same jobs: the table and the
JSON of ``job list`` carry the same db ids and states as the database, ``job info``
shows the error a real failed job left, ``retry`` and ``rerun`` change real states.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from datetime import timedelta
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
from conveyor.exceptions import ConveyorError
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


# --- job list: filters, sort, count ------------------------------------------------------


def chain_ids(n: int = 2, name: str = "chain") -> list[int]:
    """A flow of ``n`` add jobs, each using the one before; their db ids, in order."""
    jobs = [J.add(1, 1)]
    for _ in range(n - 1):
        jobs.append(J.add(jobs[-1].output, 1))
    submit_flow(Flow(jobs, name=name))
    return [get_job_by_uuid(j.uuid) for j in jobs]


def get_job_by_uuid(uuid_: str) -> int:
    from conveyor import api

    (doc,) = api.list_jobs(uuids=[uuid_])
    return doc.db_id


def listed(*args: str) -> list[int]:
    """The db ids ``job list --json ARGS`` prints, in order."""
    result = invoke("job", "list", "--json", *args)
    assert result.exit_code == 0, result.output
    return [d["db_id"] for d in json.loads(result.stdout)]


def test_job_list_filters_sort_and_count(project: Project) -> None:
    ids = chain_ids(3)
    failed = failed_job(project, "listed failure")
    cmd = submit_command(["true"], name="cmd_true", priority=4)
    everything = sorted([*ids, failed, cmd], reverse=True)
    assert listed() == everything
    assert listed("2-3", "1") == [3, 2, 1]
    assert listed("1,3") == [3, 1]
    assert listed("--name", "cmd_*") == [cmd]
    assert listed("--name", "add", "-s", "completed") == ids[::-1]  # failed_job ran them
    assert listed("--error") == [failed]
    assert listed("--no-error", "-s", "ready") == [cmd]
    assert listed("--created-since", "1h") == everything
    assert listed("--created-until", "1h") == []
    assert listed("--updated-since", "2099-01-01") == []
    assert listed("--unlocked") == everything
    assert listed("--locked") == []
    assert listed("--sort", "priority", "-n", "1") == [cmd]
    assert listed("--sort", "id", "--reverse") == everything[::-1]
    order = list(JobState)
    assert listed("-o", "state") == sorted(
        everything, key=lambda i: (order.index(get_job(i).state), i)
    )

    count = invoke("job", "list", "--count", "-s", "completed")
    assert count.stdout.strip() == "3"
    assert json.loads(invoke("job", "list", "-c", "--json").stdout) == {"count": 5}
    table = invoke("job", "list", "--error")
    assert table_rows(table.stdout) == {failed: "FAILED"}
    assert "1 jobs shown of 1" in table.stdout

    bad = invoke("job", "list", "--sort", "size")
    assert bad.exit_code == 1
    assert "unknown sort key 'size'" in bad.stderr
    bad_id = invoke("job", "list", "3-x")
    assert bad_id.exit_code == 1
    assert "'3-x' is not a db id or a range" in bad_id.stderr
    bad_time = invoke("job", "list", "--created-since", "soon")
    assert "cannot read the time 'soon'" in bad_time.stderr


# --- job history, logs, files, output ----------------------------------------------------


def test_job_history_table_and_json_agree(project: Project) -> None:
    (db_id,) = submit_flow(J.add(2, 3))
    assert Runner().run_all_jobs(max_seconds=120)
    doc = get_job(db_id)
    data = json.loads(invoke("job", "history", str(db_id), "--json").stdout)
    assert [row["state"] for row in data] == PATH
    assert [row["from"] for row in data] == [None, *PATH[:-1]]
    assert [row["by"] for row in data] == [h.by for h in doc.history]
    table = invoke("job", "history", str(db_id))
    assert table.exit_code == 0, table.output
    rows = re.findall(r"^(\S+)\s+([A-Z_]+)\s+\d{4}-\d\d-\d\d \S+\s+(\S+)\s*$", table.stdout, re.M)
    assert [(f, t) for f, t, _ in rows] == [("-", PATH[0]), *itertools.pairwise(PATH)]
    assert [by for _, _, by in rows] == [h.by for h in doc.history]


def test_job_logs_files_and_output_of_real_jobs(project: Project) -> None:
    (crashed,) = submit_flow(J.crash(3, "crashing for the logs"))
    (added,) = submit_flow(J.add(20, 22))
    assert Runner().run_all_jobs(max_seconds=120)
    doc = get_job(crashed)
    assert doc.state is JobState.FAILED

    info = invoke("job", "info", str(crashed))
    assert re.search(r"^failure reason\s+EXIT_CODE$", info.stdout, re.M)
    assert re.search(r"^exit code\s+3$", info.stdout, re.M)

    logs = invoke("job", "logs", str(crashed), "--stream", "err")
    assert logs.exit_code == 0, logs.output
    assert "crashing for the logs" in logs.stdout
    assert f"from the run dir {doc.remote.run_dir}" in logs.stderr
    data = json.loads(invoke("job", "logs", str(crashed), "--json").stdout)
    assert "crashing for the logs" in data["stderr"]
    assert data["source"].startswith("run dir ")
    assert invoke("job", "logs", str(crashed), "-s", "all").exit_code == 1

    files = invoke("job", "files", str(crashed))
    assert files.exit_code == 0, files.output
    names = files.stdout.split()
    assert {"job.json", "submit.sh", "queue.out", "queue.err", "conveyor.exit"} <= set(names)
    as_json = json.loads(invoke("job", "files", str(crashed), "--json").stdout)
    assert as_json["files"] == names
    assert as_json["run_dir"] == doc.remote.run_dir

    # The run dir gone, the runner's downloaded copies still tell.
    shutil.rmtree(str(doc.remote.run_dir))
    fallback = invoke("job", "logs", str(crashed), "--tail", "1", "-s", "err")
    assert fallback.exit_code == 0, fallback.output
    assert fallback.stdout.strip() == "crashing for the logs"
    assert "from the downloaded copy in" in fallback.stderr
    gone = invoke("job", "files", str(crashed))
    assert gone.exit_code == 1
    assert "does not exist" in gone.stderr

    assert json.loads(invoke("job", "output", str(added)).stdout) == 42
    missing = invoke("job", "output", str(crashed))
    assert missing.exit_code == 1
    assert "has no output in the job store" in missing.stderr
    (fresh,) = submit_flow(J.add(1, 1))
    never = invoke("job", "logs", str(fresh))
    assert never.exit_code == 1
    assert "it was never submitted" in never.stderr


# --- changing jobs ---------------------------------------------------------------------


def outcomes(result: Result) -> dict[int, dict[str, object]]:
    return {row["db_id"]: row for row in json.loads(result.stdout)}


def test_pause_resume_cancel_one_many_and_by_filter(project: Project) -> None:
    ids = chain_ids(3)
    paused = invoke("job", "pause", f"{ids[0]}-{ids[2]}")
    assert paused.exit_code == 0, paused.output
    assert paused.stdout.splitlines() == [f"job {i} add: PAUSED" for i in ids]
    resumed = invoke("job", "resume", "--state", "paused", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert {i: row["state"] for i, row in outcomes(resumed).items()} == {
        ids[0]: "READY",
        ids[1]: "WAITING",
        ids[2]: "WAITING",
    }
    assert {i: str(get_job(i).state) for i in ids} == {
        i: str(row["state"]) for i, row in outcomes(resumed).items()
    }
    cancelled = invoke("job", "cancel", str(ids[2]))
    assert cancelled.stdout.strip() == f"job {ids[2]} add: CANCELLED"
    again = invoke("job", "cancel", str(ids[2]), str(ids[1]), "999")
    assert again.exit_code == 1
    assert f"job {ids[2]} add: CANCELLED (already CANCELLED)" in again.stdout
    assert f"job {ids[1]} add: CANCELLED" in again.stdout
    assert "job 999: not cancelled: no job with db id 999" in again.stderr
    assert again.stderr.strip().splitlines()[-1] == "error: 1 of 3 job(s) not cancelled; see above"
    nothing = invoke("job", "pause", "-s", "running")
    assert nothing.exit_code == 0
    assert "No job matches; nothing changed." in nothing.stderr
    unnamed = invoke("job", "cancel")
    assert unnamed.exit_code == 1
    assert "name the jobs: db ids (12, 10-20) or filters" in unnamed.stderr


def test_cancel_a_running_job_and_a_runner_lock(project: Project) -> None:
    (db_id,) = submit_flow(J.sleep_job(60))
    assert Runner().run_one_job(db_id, target_state=JobState.RUNNING, max_seconds=60)
    queue_id = get_job(db_id).remote.queue_id
    assert project.db.lock_job(db_id, "runner-x", timedelta(minutes=5)) is not None
    busy = invoke("job", "cancel", str(db_id))
    assert busy.exit_code == 1
    (line,) = busy.stderr.strip().splitlines()
    assert line.startswith(f"error: job {db_id} is locked by runner-x (lock ")
    assert line.endswith("a runner is working on it; try again in a moment")
    assert get_job(db_id).state is JobState.RUNNING
    project.db.unlock_jobs()

    result = invoke("job", "cancel", str(db_id), "--json")
    assert result.exit_code == 0, result.output
    row = outcomes(result)[db_id]
    assert row["state"] == "CANCELLED"
    assert row["note"] == f"queue job {queue_id} cancelled"
    doc = get_job(db_id)
    assert doc.state is JobState.CANCELLED
    assert doc.history[-1].by == "cli"


def test_hold_on_the_shell_queue_is_a_clear_error(project: Project) -> None:
    (db_id,) = submit_flow(J.sleep_job(60))
    assert Runner().run_one_job(db_id, target_state=JobState.SUBMITTED, max_seconds=60)
    for command in ("hold", "release"):
        result = invoke("job", command, str(db_id))
        assert result.exit_code == 1
        (line,) = result.stderr.strip().splitlines()
        assert line == (
            f"error: job {db_id}: worker 'local' uses the shell queue, which cannot {command} jobs"
        )
    assert invoke("job", "cancel", str(db_id)).exit_code == 0


def test_set_state_needs_force_to_skip_steps(project: Project) -> None:
    ids = chain_ids(2)
    hop = invoke("job", "set-state", "checked_out", str(ids[0]))
    assert hop.stdout.strip() == f"job {ids[0]} add: CHECKED_OUT"
    skip = invoke("job", "set-state", "REMOTE_ERROR", str(ids[0]))
    assert skip.exit_code == 1
    assert "CHECKED_OUT → REMOTE_ERROR skips what the runner does in between" in skip.stderr
    assert "--force" in skip.stderr
    forced = invoke("job", "set-state", "REMOTE_ERROR", str(ids[0]), "--force")
    assert forced.exit_code == 0, forced.output
    assert get_job(ids[0]).previous_state is JobState.CHECKED_OUT
    invalid = invoke("job", "set-state", "completed", str(ids[1]), "--force")
    assert invalid.exit_code == 1
    assert "a job cannot go from WAITING to COMPLETED" in invalid.stderr
    typo = invoke("job", "set-state", "done", str(ids[1]))
    assert "unknown job state 'done'" in typo.stderr


def test_set_worker_resources_and_priority(tmp_path: Path) -> None:
    workers = {
        "local": {"type": "local", "work_dir": str(tmp_path / "work")},
        "gpu": {"type": "local", "work_dir": str(tmp_path / "gpu")},
    }
    with temp_project(tmp_path / "p", settings={"workers": workers}):
        ids = chain_ids(2)
        moved = invoke("job", "set", "worker", "gpu", *map(str, ids))
        assert moved.exit_code == 0, moved.output
        assert moved.stdout.splitlines()[0] == f"job {ids[0]} add: READY (worker local → gpu)"
        assert [get_job(i).worker for i in ids] == ["gpu", "gpu"]
        res = invoke("job", "set", "resources", "walltime=1:00:00,memory=2G", str(ids[0]))
        assert res.exit_code == 0, res.output
        assert get_job(ids[0]).resources == {"walltime": "1:00:00", "memory": "2G"}
        invoke("job", "set", "resources", "memory=,nodes=2", str(ids[0]))
        assert get_job(ids[0]).resources == {"walltime": "1:00:00", "nodes": 2}
        invoke("job", "set", "resources", '{"slurm": {"constraint": "a100"}}', "--replace", "1")
        assert get_job(ids[0]).resources == {"slurm": {"constraint": "a100"}}
        bad = invoke("job", "set", "resources", "wall=10", str(ids[0]))
        assert "unknown resource 'wall'; did you mean 'walltime'?" in bad.stderr
        assert "give key=value pairs" in invoke("job", "set", "resources", "x", "1").stderr
        prio = invoke("job", "set", "priority", "9", "--flow", get_job(ids[0]).flow_uuid)
        assert prio.exit_code == 0, prio.output
        assert [get_job(i).priority for i in ids] == [9, 9]
        unknown = invoke("job", "set", "worker", "nowhere", "1")
        assert "has no worker 'nowhere' (workers: local, gpu)" in unknown.stderr


def test_delete_with_outputs_and_files(project: Project) -> None:
    ids = chain_ids(2)
    refused = invoke("job", "delete", str(ids[0]))
    assert refused.exit_code == 1
    assert f"job(s) {ids[1]} depend on it and have not ended" in refused.stderr
    assert Runner().run_all_jobs(max_seconds=120)
    run_dir = Path(str(get_job(ids[1]).remote.run_dir))
    result = invoke("job", "delete", str(ids[1]), "--outputs", "--files")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"job {ids[1]} add: deleted; removed outputs, run dir ")
    assert not run_dir.exists()
    assert listed() == [ids[0]]
    cleared = invoke("job", "delete", "--state", "completed", "--json")
    assert outcomes(cleared)[ids[0]]["ok"] is True
    assert json.loads(invoke("flow", "list", "--json").stdout) == []


def test_many_jobs_need_confirmation(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor.cli import selection

    ids = [submit_command(["true"], name=f"c{i}") for i in range(selection.CONFIRM_THRESHOLD + 1)]
    refused = invoke("job", "pause", "-s", "ready")
    assert refused.exit_code == 1
    (line,) = refused.stderr.strip().splitlines()
    assert line == (
        f"error: this would pause {len(ids)} jobs (more than {selection.CONFIRM_THRESHOLD}); "
        "pass --yes to confirm without a terminal to ask on"
    )
    assert {get_job(i).state for i in ids} == {JobState.READY}

    monkeypatch.setattr(selection, "is_interactive", lambda: True)
    declined = CliRunner().invoke(app, ["job", "pause", "-s", "ready"], input="n\n")
    assert declined.exit_code == 1
    assert table_rows(declined.stderr) == {i: "READY" for i in ids}  # shown before asking
    assert f"Pause these {len(ids)} jobs? [y/N]" in declined.stderr
    assert "Nothing changed." in declined.stderr
    assert {get_job(i).state for i in ids} == {JobState.READY}

    accepted = CliRunner().invoke(app, ["job", "pause", "-s", "ready"], input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert {get_job(i).state for i in ids} == {JobState.PAUSED}

    monkeypatch.setattr(selection, "is_interactive", lambda: False)
    few = invoke("job", "resume", *map(str, ids[: selection.CONFIRM_THRESHOLD]))
    assert few.exit_code == 0, few.output  # up to the threshold: no question
    forced = invoke("job", "resume", "-s", "paused", "--yes")
    assert forced.exit_code == 0, forced.output
    assert {get_job(i).state for i in ids} == {JobState.READY}


def test_job_wait_for_jobs_that_ended(project: Project) -> None:
    ids = chain_ids(2)
    timeout = invoke("job", "wait", *map(str, ids), "--timeout", "0")
    assert timeout.exit_code == 1
    assert "have not terminated: job" in timeout.stderr
    assert Runner().run_all_jobs(max_seconds=120)
    done = invoke("job", "wait", "--flow", get_job(ids[0]).flow_uuid, "--json")
    assert done.exit_code == 0, done.output
    assert [d["state"] for d in json.loads(done.stdout)] == ["COMPLETED", "COMPLETED"]
    failed = failed_job(project)
    assert invoke("job", "wait", str(failed)).exit_code == 1


def test_id_and_resource_parsing() -> None:
    from conveyor.cli.job_changes import parse_resources
    from conveyor.cli.selection import parse_ids

    assert parse_ids(["3", "5-7", "1,2", "3"]) == [3, 5, 6, 7, 1, 2]
    assert parse_ids(None) is None
    for bad in ("7-5", "a", "1-", "-3"):
        with pytest.raises(ConveyorError, match="is not a db id or a range"):
            parse_ids([bad])
    assert parse_resources("walltime=1:00:00, nodes=2,qos=") == {
        "walltime": "1:00:00",
        "nodes": 2,
        "qos": None,
    }
    assert parse_resources('{"gpus": 1}') == {"gpus": 1}
    with pytest.raises(ConveyorError, match="not valid JSON"):
        parse_resources("{gpus: 1}")


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["job", "history"], "every state change"),
        (["job", "logs"], "downloaded"),
        (["job", "files"], "run dir"),
        (["job", "output"], "JobStore"),
        (["job", "wait"], "--until"),
        (["job", "pause"], "PAUSED"),
        (["job", "resume"], "PAUSED"),
        (["job", "cancel"], "scancel"),
        (["job", "set-state"], "--force"),
        (["job", "delete"], "--outputs"),
        (["job", "hold"], "HELD"),
        (["job", "release"], "release"),
        (["job", "set", "worker"], "another worker"),
        (["job", "set", "resources"], "--replace"),
        (["job", "set", "priority"], "higher goes first"),
    ],
)
def test_help_of_the_job_commands(args: list[str], text: str) -> None:
    result = invoke(*args, "--help")
    assert result.exit_code == 0, result.output
    assert text in result.stdout, args
