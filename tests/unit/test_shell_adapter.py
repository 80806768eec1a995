"""The shell adapter's pure functions: rendering, argv building, parsing ``ps`` output."""

from __future__ import annotations

import logging
import shlex

import pytest

from conveyor.exceptions import ConfigError, QueueError, QueueParseError
from conveyor.queue import QueueJobInfo, QueueState, SubmitSpec, adapter_class, get_adapter
from conveyor.queue.base import EXIT_CODE_FILE, STARTED_FILE, STDERR_FILE, STDOUT_FILE
from conveyor.queue.shell import NATIVE_STATES, SUBMIT_PROGRAM, ShellAdapter

NASTY = [
    "with space",
    "it's",
    'double "quotes"',
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    "a; rm -rf ~",
    "line\nbreak",
    "$HOME and ${HOME}",
    "back\\slash",
    "",
]


def spec(**overrides: object) -> SubmitSpec:
    values: dict[str, object] = {
        "run_dir": "/work/ab/abcd_1",
        "job_name": "conveyor-7-0123456789ab",
        "submit_token": "7-0123456789ab",
        "command": ["/usr/bin/python3", "-m", "conveyor.execution", "/work/ab/abcd_1"],
    }
    values.update(overrides)
    return SubmitSpec(**values)  # type: ignore[arg-type]


def script(s: SubmitSpec) -> str:
    files = ShellAdapter().render(s)
    assert list(files) == ["submit.sh"]
    return files["submit.sh"]


def test_registry_and_get_adapter() -> None:
    assert adapter_class("shell") is ShellAdapter
    adapter = get_adapter("shell")
    assert isinstance(adapter, ShellAdapter)
    assert adapter.name == "shell"
    assert adapter.missing_grace.total_seconds() == 0
    assert adapter.accounting_command("123") is None


def test_get_adapter_unknown_name_suggests_close_match() -> None:
    with pytest.raises(ConfigError, match=r"'shel'.*known: .*shell.*did you mean 'shell'"):
        get_adapter("shel")
    with pytest.raises(ConfigError, match="'slurmx'") as info:
        get_adapter("slurmx")
    assert "shell" in str(info.value)


def test_render_order_of_steps() -> None:
    text = script(spec(env={"OMP_NUM_THREADS": "4"}, pre_run="module load python"))
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    steps = [
        "cd -- /work/ab/abcd_1 || exit 1",
        f'"$$" >{STARTED_FILE}.tmp && mv -f -- {STARTED_FILE}.tmp {STARTED_FILE}',
        "export OMP_NUM_THREADS=4",
        "module load python",
        "/usr/bin/python3 -m conveyor.execution /work/ab/abcd_1",
        "conveyor_exit_code=$?",
        f"/work/ab/abcd_1/{EXIT_CODE_FILE}",
        'exit "$conveyor_exit_code"',
    ]
    positions = [next(i for i, line in enumerate(lines) if step in line) for step in steps]
    assert positions == sorted(positions)
    # The exit code is written to a temporary file, then renamed: never seen half-written.
    assert f"/work/ab/abcd_1/{EXIT_CODE_FILE}.tmp" in text
    assert "mv -f --" in text


def test_render_comments_name_the_job_and_token() -> None:
    text = script(spec())
    assert "# Conveyor job: conveyor-7-0123456789ab" in text
    assert "# Submit token: 7-0123456789ab" in text


@pytest.mark.parametrize("value", NASTY)
def test_render_quotes_env_values(value: str) -> None:
    text = script(spec(env={"MY_VAR": value}))
    (line,) = [line for line in _logical_lines(text) if line.startswith("export MY_VAR=")]
    assert shlex.split(line) == ["export", f"MY_VAR={value}"]


@pytest.mark.parametrize("value", [v for v in NASTY if v])
def test_render_quotes_run_dir_and_command(value: str) -> None:
    run_dir = f"/work/{value}/run"
    text = script(spec(run_dir=run_dir, command=["python", "-c", value, run_dir]))
    logical = _logical_lines(text)
    cds = [line for line in logical if line.startswith("cd -- ")]
    assert cds
    assert all(shlex.split(line) == ["cd", "--", run_dir, "||", "exit", "1"] for line in cds)
    assert [shlex.split(line) for line in logical if line.startswith("python ")] == [
        ["python", "-c", value, run_dir]
    ]
    (write,) = [line for line in logical if 'conveyor_exit_code" >' in line]
    words = shlex.split(write)
    assert f"{run_dir}/{EXIT_CODE_FILE}.tmp" in words
    assert words[-1] == f"{run_dir}/{EXIT_CODE_FILE}"


@pytest.mark.parametrize("name", [*NASTY, "x\rY", "x\u2028y", "x\x00y"])
def test_render_job_name_cannot_leave_its_comment(name: str) -> None:
    text = script(spec(job_name=name))
    plain = script(spec(job_name="plain"))
    assert len(text.splitlines()) == len(plain.splitlines())
    (comment,) = [line for line in text.splitlines() if line.startswith("# Conveyor job: ")]
    assert comment.isprintable()
    assert text.replace(comment, "# Conveyor job: plain") == plain


def test_render_pre_run_is_verbatim_and_followed_by_cd() -> None:
    pre_run = 'source "$HOME/venv/bin/activate"\ncd /tmp\nexport A=$(hostname)\n'
    lines = script(spec(pre_run=pre_run)).splitlines()
    start = lines.index('source "$HOME/venv/bin/activate"')
    assert lines[start : start + 4] == [
        'source "$HOME/venv/bin/activate"',
        "cd /tmp",
        "export A=$(hostname)",
        "cd -- /work/ab/abcd_1 || exit 1",
    ]


def test_render_without_pre_run_has_no_pre_run_section() -> None:
    assert "pre_run" not in script(spec(pre_run=None))


@pytest.mark.parametrize("key", ["1ABC", "A-B", "A B", "A=B", "", "$(x)", "A\nB", "é"])
def test_render_refuses_bad_env_names(key: str) -> None:
    with pytest.raises(QueueError, match="not a valid shell identifier") as info:
        script(spec(env={key: "v"}))
    assert repr(key) in str(info.value)


@pytest.mark.parametrize("token", ["", "a b", "-x", "a;b", "a\nb", "x" * 201, "$(x)"])
def test_bad_tokens_are_refused(token: str) -> None:
    with pytest.raises(QueueError, match="submit token"):
        script(spec(submit_token=token))
    with pytest.raises(QueueError, match="submit token"):
        ShellAdapter().submit_command(spec(submit_token=token))


@pytest.mark.parametrize("run_dir", ["relative/dir", "", "~/work", "/a\x00b"])
def test_run_dir_must_be_absolute(run_dir: str) -> None:
    with pytest.raises(QueueError, match="absolute"):
        script(spec(run_dir=run_dir))
    with pytest.raises(QueueError, match="absolute"):
        ShellAdapter().submit_command(spec(run_dir=run_dir))


def test_render_refuses_an_empty_command() -> None:
    with pytest.raises(QueueError, match="empty"):
        script(spec(command=[]))


def test_submit_command_passes_values_as_positional_parameters() -> None:
    run_dir = "/work/$(evil) 'q' `x`;"
    argv = ShellAdapter().submit_command(spec(run_dir=run_dir))
    assert argv == [
        "bash",
        "-c",
        SUBMIT_PROGRAM,
        "conveyor-submit",
        run_dir,
        "submit.sh",
        "7-0123456789ab",
    ]
    # The program is a constant: nothing of the job is ever interpolated into it.
    assert ShellAdapter().submit_command(spec(run_dir="/other"))[2] == SUBMIT_PROGRAM
    assert "setsid" in SUBMIT_PROGRAM
    assert f">{STDOUT_FILE} 2>{STDERR_FILE} </dev/null &" in SUBMIT_PROGRAM


@pytest.mark.parametrize(
    ("stdout", "pid"),
    [("12345\n", "12345"), ("  77  \n\n", "77"), ("welcome to the cluster\n4242\n", "4242")],
)
def test_parse_submit_output(stdout: str, pid: str) -> None:
    assert ShellAdapter().parse_submit_output(0, stdout, "") == pid


@pytest.mark.parametrize("stdout", ["", "\n", "abc\n", "12 34\n", "-1\n", "0\n", "12x\n"])
def test_parse_submit_output_without_pid(stdout: str) -> None:
    with pytest.raises(QueueParseError, match="no pid") as info:
        ShellAdapter().parse_submit_output(0, stdout, "some stderr")
    assert repr(stdout.strip()) in str(info.value)
    assert "exit code 0" in str(info.value)


def test_parse_submit_output_failure_quotes_stderr() -> None:
    with pytest.raises(QueueParseError, match=r"code 1.*No such file or directory"):
        ShellAdapter().parse_submit_output(
            1, "", "bash: line 1: cd: /x: No such file or directory\n"
        )


def test_status_command() -> None:
    assert ShellAdapter().status_command(["12", "345"]) == [
        "ps",
        "-o",
        "pid=,stat=",
        "-p",
        "12,345",
    ]


@pytest.mark.parametrize("ids", [[], ["12", "abc"], ["-1"], ["1,2"], ["12 "]])
def test_status_command_refuses_bad_ids(ids: list[str]) -> None:
    with pytest.raises(QueueError):
        ShellAdapter().status_command(ids)


def test_parse_status_none_alive() -> None:
    # procps ps exits 1, silently, when none of the pids exists.
    assert ShellAdapter().parse_status_output(1, "", "", ["12", "13"]) == {}


def test_parse_status_states() -> None:
    out = "   12 Ss\n   13 R+\n   14 Z\n   15 T\n   16 Dl\n   17 X\n   18 t\n  999 S\n"
    ids = ["12", "13", "14", "15", "16", "17", "18", "19"]
    jobs = ShellAdapter().parse_status_output(0, out, "", ids)
    assert jobs == {
        "12": QueueJobInfo("12", QueueState.RUNNING, "Ss"),
        "13": QueueJobInfo("13", QueueState.RUNNING, "R+"),
        "15": QueueJobInfo("15", QueueState.SUSPENDED, "T"),
        "16": QueueJobInfo("16", QueueState.RUNNING, "Dl"),
        "18": QueueJobInfo("18", QueueState.SUSPENDED, "t"),
    }


def test_parse_status_unknown_code_is_unknown_with_a_log_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="conveyor.queue.shell"):
        jobs = ShellAdapter().parse_status_output(0, "  12 Q\n", "", ["12"])
    assert jobs["12"].state is QueueState.UNKNOWN
    assert jobs["12"].native_state == "Q"
    assert "unknown ps process state 'Q'" in caplog.text


@pytest.mark.parametrize(
    ("exit_code", "stdout", "stderr"),
    [
        (0, "garbage\n", ""),
        (0, "12\n", ""),
        (0, "12 S extra\n", ""),
        (0, "abc S\n", ""),
        (0, "-12 S\n", ""),
        (1, "", "error: process ID list syntax error\n"),
        (1, "12 S\n", ""),
        (2, "", ""),
        (0, "12 S\n\x00\x01 \x02\n", ""),
    ],
)
def test_parse_status_garbage_is_a_parse_error(exit_code: int, stdout: str, stderr: str) -> None:
    with pytest.raises(QueueParseError):
        ShellAdapter().parse_status_output(exit_code, stdout, stderr, ["12"])


def test_native_state_table_covers_the_linux_codes() -> None:
    assert set("DIRSTtWXZ") <= set(NATIVE_STATES)
    assert NATIVE_STATES["Z"] is None
    assert NATIVE_STATES["X"] is None


def test_find_by_token_command() -> None:
    argv = ShellAdapter().find_by_token_command("7-abc")
    assert argv[0] == "ps"
    assert argv[-1] == "pid=,stat=,args="
    assert "-ww" in argv  # full command lines: a cut one could hide the token


PS_ALL = """\
    1 Ss   /sbin/init
  100 S    bash -c cd -- "$1" || exit 1 conveyor-submit /work/run submit.sh 7-abc
  101 Ss   bash submit.sh 7-abc
  102 S    /usr/bin/python3 -m conveyor.execution /work/run
  103 Z    [bash] <defunct>
  104 Zs   bash submit.sh 8-old
  105 S    bash submit.sh 7-abcdef
  106 S    grep 7-abc-and-more
"""


def test_parse_find_by_token() -> None:
    adapter = ShellAdapter()
    assert adapter.parse_find_by_token(0, PS_ALL, "", "7-abc") == "101"
    # A zombie (already exited) is not a live job; a longer token is another job.
    assert adapter.parse_find_by_token(0, PS_ALL, "", "8-old") is None
    assert adapter.parse_find_by_token(0, PS_ALL, "", "7-abcdef") == "105"
    assert adapter.parse_find_by_token(0, PS_ALL, "", "9-none") is None
    assert adapter.parse_find_by_token(0, "", "", "7-abc") is None


@pytest.mark.parametrize(
    ("exit_code", "stdout"), [(0, "garbage\n"), (0, "12\n"), (0, "x S bash\n"), (1, "")]
)
def test_parse_find_by_token_garbage(exit_code: int, stdout: str) -> None:
    with pytest.raises(QueueParseError):
        ShellAdapter().parse_find_by_token(exit_code, stdout, "", "7-abc")


def test_cancel_command_signals_the_process_group() -> None:
    assert ShellAdapter().cancel_command("4242") == ["kill", "-TERM", "--", "-4242"]
    with pytest.raises(QueueError):
        ShellAdapter().cancel_command("-1")
    with pytest.raises(QueueError):
        ShellAdapter().cancel_command("0")


def _logical_lines(text: str) -> list[str]:
    """The script's commands, as bash reads them (joining quoted newlines and ``\\``)."""
    out: list[str] = []
    pending = ""
    for line in text.splitlines(keepends=True):
        pending += line
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        if pending.endswith("\\\n"):
            continue
        out.append(pending.rstrip("\n").replace("\\\n", ""))
        pending = ""
    assert not pending
    return out
