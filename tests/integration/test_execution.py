"""``python -m conveyor.execution RUN_DIR`` as a real subprocess: job.json in, output.json out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import execution_jobs as jobs
import pytest
from jobflow import Flow, Job
from monty.json import MontyDecoder, jsanitize

from conveyor import __version__
from conveyor.execution.command import STDERR_NAME, STDOUT_NAME, run_command
from conveyor.queue.base import JOB_FILE, OUTPUT_FILE

pytestmark = pytest.mark.integration


def _pythonpath() -> str:
    """Where the worker finds ``execution_jobs`` under the name this process gave it."""
    depth = jobs.__name__.count(".") + 1
    root = Path(jobs.__file__).resolve().parents[depth - 1]
    return os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


def worker(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    return subprocess.run(
        [sys.executable, "-m", "conveyor.execution", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def write_job(run_dir: Path, job: Job, additional_stores: list[str] | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "version": 1,
        "job": jsanitize(job, strict=True, enum_values=True, allow_bson=False),
        "additional_stores": additional_stores or [],
    }
    (run_dir / JOB_FILE).write_text(json.dumps(payload))


def run_job(
    tmp_path: Path, job: Job, additional_stores: list[str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]:
    run_dir = tmp_path / "run dir"
    write_job(run_dir, job, additional_stores)
    # Started elsewhere: the worker must chdir into the run dir by itself.
    proc = worker(str(run_dir), cwd=tmp_path)
    output = json.loads((run_dir / OUTPUT_FILE).read_text())
    return proc, output, run_dir


def the_doc(output: dict[str, Any]) -> dict[str, Any]:
    docs = output["store"]["docs"]
    assert len(docs) == 1
    doc: dict[str, Any] = docs[0]
    return doc


def test_successful_job(tmp_path: Path) -> None:
    job = jobs.add(1, 2)
    proc, output, run_dir = run_job(tmp_path, job)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert output["version"] == 1
    assert output["uuid"] == job.uuid
    assert output["index"] == 1
    assert output["error"] is None
    assert output["response"] == {
        "replace": None,
        "addition": None,
        "detour": None,
        "stored_data": None,
        "stop_children": False,
        "stop_jobflow": False,
    }
    doc = the_doc(output)
    assert doc["uuid"] == job.uuid
    assert doc["index"] == 1
    assert doc["output"] == 3
    assert "_id" not in doc
    assert output["store"]["additional"] == {}
    timings = output["timings"]
    started = datetime.fromisoformat(timings["started_at"])
    ended = datetime.fromisoformat(timings["ended_at"])
    assert started.utcoffset() is not None
    assert started <= ended
    assert 0 <= timings["seconds"] < 60
    # Nothing but output.json is left next to job.json.
    assert sorted(os.listdir(run_dir)) == [JOB_FILE, OUTPUT_FILE]


def test_stdout_is_the_jobs_own(tmp_path: Path) -> None:
    proc, output, _ = run_job(tmp_path, jobs.shout("hi"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "HI\n"
    assert the_doc(output)["output"] == "HI"


def test_datetimes_in_stored_documents_become_strings(tmp_path: Path) -> None:
    proc, output, _ = run_job(tmp_path, jobs.when())
    assert proc.returncode == 0, proc.stderr
    assert datetime.fromisoformat(the_doc(output)["output"]).year == 2024


def test_failing_job(tmp_path: Path) -> None:
    job = jobs.fail("boom at step 3")
    proc, output, _ = run_job(tmp_path, job)
    assert proc.returncode == 1
    assert output["uuid"] == job.uuid
    assert output["response"] is None
    error = output["error"]
    assert error["type"] == "ValueError"
    assert error["message"] == "boom at step 3"
    assert "Traceback (most recent call last)" in error["traceback"]
    assert "in fail" in error["traceback"]
    assert output["store"] == {"docs": [], "additional": {}}
    assert "boom at step 3" in proc.stderr


def test_unresolved_reference_fails_the_job(tmp_path: Path) -> None:
    parent = jobs.add(1, 2)
    child = jobs.add(parent.output, 1)
    proc, output, _ = run_job(tmp_path, child)
    assert proc.returncode == 1
    assert output["error"]["type"] == "ValueError"
    assert parent.uuid in output["error"]["message"]


def test_response_with_addition_stop_children_and_stored_data(tmp_path: Path) -> None:
    proc, output, _ = run_job(tmp_path, jobs.add_more(5))
    assert proc.returncode == 0, proc.stderr
    response = output["response"]
    assert response["stop_children"] is True
    assert response["stop_jobflow"] is False
    assert response["stored_data"] == {"seen": 5}
    assert response["replace"] is None
    assert response["detour"] is None
    addition = MontyDecoder().process_decoded(response["addition"])
    assert isinstance(addition, Flow)
    (added,) = addition.jobs
    assert list(added.function_args) == [5, 1]
    assert the_doc(output)["output"] == 5


def test_response_with_replace(tmp_path: Path) -> None:
    job = jobs.replace_with_flow(1)
    proc, output, _ = run_job(tmp_path, job)
    assert proc.returncode == 0, proc.stderr
    replace = output["response"]["replace"]
    assert replace["@class"] == "Flow"
    flow = MontyDecoder().process_decoded(replace)
    assert isinstance(flow, Flow)
    # jobflow adds a job with the replaced job's uuid and the next index for the output.
    assert [j.name for j in flow.jobs].count("add") == 2
    assert [(j.uuid, j.index) for j in flow.jobs if j.uuid == job.uuid] == [(job.uuid, 2)]


def test_response_with_detour_and_stop_jobflow(tmp_path: Path) -> None:
    proc, output, _ = run_job(tmp_path, jobs.detour_and_stop(1))
    assert proc.returncode == 0, proc.stderr
    response = output["response"]
    assert response["stop_jobflow"] is True
    detour = MontyDecoder().process_decoded(response["detour"])
    assert isinstance(detour, Flow)
    assert [list(j.function_args) for j in detour.jobs] == [[1, 2]]


def test_additional_store(tmp_path: Path) -> None:
    proc, output, _ = run_job(tmp_path, jobs.with_big_data(4), additional_stores=["data", "x"])
    assert proc.returncode == 0, proc.stderr
    stored = output["store"]
    (blob,) = stored["additional"]["data"]
    assert stored["additional"]["x"] == []
    assert blob["data"] == [0, 1, 2, 3]
    assert "_id" not in blob
    doc = the_doc(output)
    assert doc["output"]["small"] == 4
    assert doc["output"]["big"]["blob_uuid"] == blob["blob_uuid"]


def test_missing_job_file(tmp_path: Path) -> None:
    proc = worker(str(tmp_path))
    assert proc.returncode == 2
    assert f"cannot read {tmp_path / JOB_FILE}" in proc.stderr
    output = json.loads((tmp_path / OUTPUT_FILE).read_text())
    assert output["uuid"] is None
    assert output["response"] is None
    assert output["error"]["type"] == "JobFileError"


def test_missing_run_dir(tmp_path: Path) -> None:
    proc = worker(str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert "cannot read" in proc.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"version": 99, "job": {}}', "not a version 1 job file"),
        ('{"version": 1, "job": {"a": 1}}', "not a serialized jobflow Job"),
        ('{"version": 1, "job": {}, "additional_stores": "data"}', "additional_stores"),
    ],
)
def test_bad_job_file(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / JOB_FILE).write_text(content)
    proc = worker(str(tmp_path))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert message in json.loads((tmp_path / OUTPUT_FILE).read_text())["error"]["message"]


def test_job_whose_module_cannot_be_imported(tmp_path: Path) -> None:
    data = jsanitize(jobs.add(1, 2), strict=True, enum_values=True, allow_bson=False)
    data["function"]["@module"] = "no_such_module_for_conveyor"
    (tmp_path / JOB_FILE).write_text(json.dumps({"version": 1, "job": data}))
    proc = worker(str(tmp_path))
    assert proc.returncode == 2
    assert "no_such_module_for_conveyor" in proc.stderr
    assert "importable" in proc.stderr


def test_version() -> None:
    proc = worker("--version")
    assert proc.returncode == 0
    assert proc.stdout == f"conveyor {__version__}\n"


def test_command_job(tmp_path: Path) -> None:
    code = "import sys; print('out'); print('err', file=sys.stderr)"
    job = run_command([sys.executable, "-c", code])
    proc, output, run_dir = run_job(tmp_path, job)
    assert proc.returncode == 0, proc.stderr
    assert the_doc(output)["output"] == {
        "argv": [sys.executable, "-c", code],
        "exit_code": 0,
        "stdout_tail": "out\n",
        "stderr_tail": "err\n",
    }
    assert (run_dir / STDOUT_NAME).read_text() == "out\n"
    assert (run_dir / STDERR_NAME).read_text() == "err\n"


def test_command_job_runs_in_the_run_dir_without_a_shell(tmp_path: Path) -> None:
    code = "import os, sys; print(os.getcwd()); print(sys.argv[1])"
    proc, output, run_dir = run_job(tmp_path, run_command([sys.executable, "-c", code, "$(id)"]))
    assert proc.returncode == 0, proc.stderr
    assert the_doc(output)["output"]["stdout_tail"] == f"{run_dir}\n$(id)\n"


def test_command_job_failure(tmp_path: Path) -> None:
    code = "import sys; print('bad input', file=sys.stderr); sys.exit(4)"
    proc, output, _ = run_job(tmp_path, run_command([sys.executable, "-c", code]))
    assert proc.returncode == 1
    error = output["error"]
    assert error["type"] == "CommandFailedError"
    assert "exited with code 4" in error["message"]
    assert "bad input" in error["message"]
    assert sys.executable in error["message"]


def test_command_job_failure_without_check(tmp_path: Path) -> None:
    code = "import sys; sys.exit(4)"
    job = run_command([sys.executable, "-c", code], check=False)
    proc, output, _ = run_job(tmp_path, job)
    assert proc.returncode == 0, proc.stderr
    assert the_doc(output)["output"]["exit_code"] == 4


def test_command_job_missing_program(tmp_path: Path) -> None:
    proc, output, _ = run_job(tmp_path, run_command(["no-such-program-for-conveyor"]))
    assert proc.returncode == 1
    assert output["error"]["type"] == "CommandFailedError"
    assert "could not be started" in output["error"]["message"]


def test_command_job_keeps_only_the_tail(tmp_path: Path) -> None:
    code = "print('x' * 100 + 'END', end='')"
    job = run_command([sys.executable, "-c", code], tail_chars=5)
    proc, output, _ = run_job(tmp_path, job)
    assert proc.returncode == 0, proc.stderr
    assert the_doc(output)["output"]["stdout_tail"] == "xxEND"


def test_execution_imports_stay_light() -> None:
    code = (
        "import json, sys\n"
        "import conveyor.execution.run, conveyor.execution.__main__\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(proc.stdout))
    heavy = {
        "conveyor.db",
        "conveyor.runner",
        "conveyor.hosts",
        "conveyor.cli",
        "conveyor.config",
        "pydantic",
        "typer",
        "rich",
        "jobflow",
        "maggma",
    }
    assert loaded & heavy == set()


def test_command_fast_path_needs_no_jobflow(tmp_path: Path) -> None:
    """The runner's upload adds a "command" section for command jobs: the worker runs it
    without decoding (or importing) the jobflow job, and stores what jobflow would."""
    from conveyor.runner.steps import command_spec

    job = run_command(["sh", "-c", "echo fast; exit 0"])
    payload = jsanitize(job, strict=True, enum_values=True, allow_bson=False)
    spec = command_spec(payload)
    assert spec is not None
    run_dir = tmp_path / "fast"
    run_dir.mkdir()
    # An undecodable job proves the jobflow path is never taken.
    bogus = {"@module": "no_such_module_anywhere", "@class": "Nope"}
    (run_dir / JOB_FILE).write_text(json.dumps({"version": 1, "job": bogus, "command": spec}))
    probe = (
        "import sys, runpy; sys.argv = ['x', sys.argv[1]];"
        "from conveyor.execution.run import execute; code = execute(sys.argv[1]);"
        "print('jobflow' in sys.modules); sys.exit(code)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(run_dir)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    output = json.loads((run_dir / OUTPUT_FILE).read_text())
    (doc,) = output["store"]["docs"]
    assert doc["uuid"] == job.uuid
    assert doc["index"] == 1
    assert doc["output"]["stdout_tail"] == "fast\n"
    assert output["error"] is None


def test_command_spec_is_only_for_command_jobs() -> None:
    from conveyor.runner.steps import command_spec

    assert command_spec(jsanitize(jobs.add(1, 2), strict=True, enum_values=True)) is None
    spec = command_spec(jsanitize(run_command(["a", "b"], check=False, tail_chars=5), strict=True))
    assert spec is not None
    assert (spec["argv"], spec["check"], spec["tail_chars"]) == (["a", "b"], False, 5)
