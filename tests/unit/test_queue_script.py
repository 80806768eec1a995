"""The common job script: order of its steps, quoting, containers, the exit code file.

Scripts are run for real with bash (no queue needed): the payload is a small program
and the checks look at what it saw and what the script left in the run dir.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conveyor.exceptions import QueueError
from conveyor.queue.base import EXIT_CODE_FILE, STARTED_FILE, SubmitSpec
from conveyor.queue.resources import Container, parse_resources
from conveyor.queue.script import (
    absolute_run_dir,
    comment,
    container_command,
    identifier,
    render_script,
    valid_token,
)

PY = sys.executable


def spec(run_dir: str = "/work/ab/abcd_1", **overrides: object) -> SubmitSpec:
    values: dict[str, object] = {
        "run_dir": run_dir,
        "job_name": "add",
        "submit_token": "7-0123456789ab",
        "command": [PY, "-m", "conveyor.execution", run_dir],
    }
    values.update(overrides)
    return SubmitSpec(**values)  # type: ignore[arg-type]


def run_script(text: str, run_dir: Path, env: dict[str, str] | None = None) -> str:
    script = run_dir / "job.sh"
    script.write_text(text)
    done = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        cwd="/",
    )
    return done.stdout + done.stderr


def test_layout_interpreter_directives_comments_body() -> None:
    text = render_script(spec(), adapter="test", directives=["#X --a", "#X --b"], queue_id="$QID")
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert lines[1:3] == ["#X --a", "#X --b"]
    assert lines[3] == "# Conveyor job: add"
    assert lines[4] == "# Submit token: 7-0123456789ab"
    assert "conveyor's test adapter" in lines[5]
    assert text.endswith('exit "$conveyor_exit_code"\n')
    assert shlex.join([PY, "-m", "conveyor.execution", "/work/ab/abcd_1"]) in lines
    assert "printf '%s\\n' \"$QID\" >" in text


def test_directives_come_before_any_command() -> None:
    # Schedulers stop reading directives at the first command line.
    text = render_script(spec(), adapter="test", directives=["#X --a"])
    first_command = next(
        i for i, line in enumerate(text.splitlines()) if line and not line.startswith("#")
    )
    assert first_command > 1


def test_other_interpreter() -> None:
    text = render_script(spec(), adapter="test", interpreter="#!/bin/sh -l")
    assert text.startswith("#!/bin/sh -l\n")


def test_pre_run_runs_after_the_exports_and_before_the_payload(tmp_path: Path) -> None:
    payload = [PY, "-c", "import os; print('payload', os.getcwd(), os.environ['FROM_PRE'])"]
    text = render_script(
        spec(
            str(tmp_path),
            command=payload,
            env={"GREETING": "hi"},
            pre_run='echo "pre_run sees $GREETING"\nexport FROM_PRE=yes\ncd /',
        ),
        adapter="test",
    )
    out = run_script(text, tmp_path)
    assert out.index("pre_run sees hi") < out.index("payload")
    # pre_run may change directory: the script goes back to the run dir before the payload.
    assert f"payload {tmp_path} yes" in out
    lines = text.splitlines()
    assert lines.index("# pre_run, from the worker's configuration") > lines.index(
        "export GREETING=hi"
    )


def test_no_pre_run_no_pre_run_section() -> None:
    assert "pre_run" not in render_script(spec(), adapter="test")


@pytest.mark.parametrize(
    "value",
    [
        "with space",
        "it's",
        'double "quotes"',
        "$(touch PWNED)",
        "`touch PWNED`",
        "a; touch PWNED",
        "line\nbreak",
        "$HOME and ${HOME}",
        "back\\slash",
        "",
        "*",
        "#not a comment",
        "tab\there",
    ],
)
def test_env_values_arrive_verbatim_and_run_nothing(tmp_path: Path, value: str) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    payload = [PY, "-c", "import os, sys; sys.stdout.write(repr(os.environ['VALUE']))"]
    text = render_script(spec(str(run_dir), command=payload, env={"VALUE": value}), adapter="test")
    out = run_script(text, run_dir, env={"HOME": "/nowhere"})
    assert out == repr(value)
    assert not (run_dir / "PWNED").exists()
    assert not Path("/PWNED").exists()


@pytest.mark.parametrize("key", ["1ABC", "A-B", "A B", "", "A;B", "$(x)", "é"])
def test_env_names_must_be_identifiers(key: str) -> None:
    with pytest.raises(QueueError, match="not a valid shell identifier"):
        render_script(spec(env={key: "v"}), adapter="test")
    assert identifier("_ok_1") == "_ok_1"


@pytest.mark.parametrize(
    "name", ["with space", "it's", "$(touch PWNED)", "`touch PWNED`", "a; b", "x\ny", "%j"]
)
def test_hostile_run_dir_is_quoted_everywhere(tmp_path: Path, name: str) -> None:
    run_dir = tmp_path / name
    run_dir.mkdir()
    payload = [PY, "-c", "import os; print('cwd=' + os.getcwd())"]
    text = render_script(spec(str(run_dir), command=payload), adapter="test", queue_id="42")
    out = run_script(text, run_dir)
    assert f"cwd={run_dir}" in out
    assert (run_dir / EXIT_CODE_FILE).read_text() == "0\n"
    assert (run_dir / STARTED_FILE).read_text() == "42\n"
    assert not list(tmp_path.rglob("PWNED"))


@pytest.mark.parametrize("run_dir", ["relative/dir", "", "~/x", "/a\0b"])
def test_run_dir_must_be_absolute(run_dir: str) -> None:
    with pytest.raises(QueueError, match="absolute path"):
        render_script(spec(run_dir), adapter="test")
    assert absolute_run_dir("/abs") == "/abs"


@pytest.mark.parametrize("token", ["", "-starts-with-dash", "has space", "a;b", "x" * 201, "é"])
def test_bad_tokens_are_refused(token: str) -> None:
    with pytest.raises(QueueError, match="submit token"):
        render_script(spec(submit_token=token), adapter="test")
    assert valid_token("12-abc.def:g_h") == "12-abc.def:g_h"


def test_empty_payload_is_refused() -> None:
    with pytest.raises(QueueError, match="payload command is empty"):
        render_script(spec(command=[]), adapter="test")


def test_job_name_with_newline_stays_one_comment_line() -> None:
    text = render_script(spec(job_name="evil\nrm -rf /\r"), adapter="test")
    assert "# Conveyor job: evil?rm -rf /?" in text.splitlines()
    assert comment("a\tb\x00c") == "a?b?c"


@pytest.mark.parametrize(("code", "expected"), [(0, "0"), (3, "3"), (255, "255")])
def test_exit_code_file_and_script_exit_code(tmp_path: Path, code: int, expected: str) -> None:
    text = render_script(
        spec(str(tmp_path), command=[PY, "-c", f"raise SystemExit({code})"]), adapter="test"
    )
    script = tmp_path / "job.sh"
    script.write_text(text)
    done = subprocess.run(["bash", str(script)], check=False, timeout=30, capture_output=True)
    assert done.returncode == code
    assert (tmp_path / EXIT_CODE_FILE).read_text() == f"{expected}\n"
    # Written to a temporary file, then renamed: never seen half-written.
    assert not (tmp_path / f"{EXIT_CODE_FILE}.tmp").exists()


def test_a_missing_payload_program_still_records_an_exit_code(tmp_path: Path) -> None:
    text = render_script(spec(str(tmp_path), command=["/no/such/program"]), adapter="test")
    run_script(text, tmp_path)
    assert (tmp_path / EXIT_CODE_FILE).read_text() == "127\n"


def test_unreachable_run_dir_exits_before_anything(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    text = render_script(spec(str(missing), command=["true"]), adapter="test")
    script = tmp_path / "job.sh"
    script.write_text(text)
    done = subprocess.run(["bash", str(script)], check=False, timeout=30, capture_output=True)
    assert done.returncode == 1
    assert not missing.exists()


def test_term_reaches_the_payload_and_the_code_is_recorded(tmp_path: Path) -> None:
    # A cancel or walltime kill sends TERM to the whole job: the script outlives the
    # payload long enough to write its exit code.
    started = tmp_path / "started"
    payload = [
        PY,
        "-c",
        f"import time, pathlib; pathlib.Path({str(started)!r}).touch(); time.sleep(30)",
    ]
    text = render_script(spec(str(tmp_path), command=payload), adapter="test")
    script = tmp_path / "job.sh"
    script.write_text(text)
    proc = subprocess.Popen(["bash", str(script)], start_new_session=True)
    try:
        end = time.monotonic() + 20
        while not started.exists():
            assert time.monotonic() < end, "payload did not start"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (tmp_path / EXIT_CODE_FILE).read_text() == "143\n"


# --- containers ------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["apptainer", "singularity"])
def test_apptainer_and_singularity_wrap_the_payload(runtime: str) -> None:
    container = Container(runtime=runtime, image="/img/py.sif", options=["--nv"])  # type: ignore[arg-type]
    argv = container_command(["python", "-m", "x", "/r d"], container, "/r d")
    assert argv == [
        runtime,
        "exec",
        "--bind",
        "/r d",
        "--pwd",
        "/r d",
        "--nv",
        "/img/py.sif",
        "python",
        "-m",
        "x",
        "/r d",
    ]


def test_docker_wraps_the_payload_and_passes_the_job_env() -> None:
    container = Container(runtime="docker", image="python:3.11", options=["--gpus=all"])
    argv = container_command(["python", "x.py"], container, "/run", env=["A", "B_2"])
    assert argv == [
        "docker",
        "run",
        "--rm",
        "-v",
        "/run:/run",
        "-w",
        "/run",
        "-e",
        "A",
        "-e",
        "B_2",
        "--gpus=all",
        "python:3.11",
        "python",
        "x.py",
    ]


def test_no_container_no_wrapping() -> None:
    assert container_command(["a", "b"], None, "/r", env=["X"]) == ["a", "b"]


def test_container_in_the_rendered_script_is_quoted() -> None:
    res = parse_resources(
        {"container": {"runtime": "docker", "image": "my image;rm", "options": ["-e", "X=a b"]}}
    )
    text = render_script(spec(resources=res, env={"K": "v"}), adapter="test")
    line = next(line for line in text.splitlines() if line.startswith("docker run"))
    argv = shlex.split(line)
    assert argv[argv.index("my image;rm") - 2 : argv.index("my image;rm")] == ["-e", "X=a b"]
    assert argv[7:9] == ["-e", "K"]
    assert argv[-4:] == [PY, "-m", "conveyor.execution", "/work/ab/abcd_1"]


def test_container_payload_runs_through_a_fake_runtime(tmp_path: Path) -> None:
    # A stand-in "apptainer" on PATH records the argv it was given.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apptainer"
    fake.write_text(
        f'#!/bin/sh\nexec {PY} -c "import sys, json; print(json.dumps(sys.argv[1:]))" "$@"\n'
    )
    fake.chmod(0o755)
    run_dir = tmp_path / "run dir"
    run_dir.mkdir()
    res = parse_resources({"container": {"image": "/img/a b.sif"}})
    text = render_script(
        spec(str(run_dir), command=["python", "-c", "print(1)"], resources=res), adapter="test"
    )
    out = run_script(text, run_dir, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert out.strip() == (
        f'["exec", "--bind", "{run_dir}", "--pwd", "{run_dir}", "/img/a b.sif", '
        '"python", "-c", "print(1)"]'
    )
    assert (run_dir / EXIT_CODE_FILE).read_text() == "0\n"
