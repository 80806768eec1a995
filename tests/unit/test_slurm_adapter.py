"""The slurm adapter's pure functions, over outputs recorded from a real SLURM 22.05.

The corpus (``tests/fixtures/queue/slurm``, provenance in its README) was recorded with
the adapter's own commands; ``manifest.json`` lists each capture's argv and exit code.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conveyor.exceptions import ConfigError, QueueError, QueueParseError
from conveyor.queue import QueueJobInfo, QueueState, SubmitSpec, adapter_class, get_adapter
from conveyor.queue.base import STDERR_FILE, STDOUT_FILE
from conveyor.queue.resources import parse_resources
from conveyor.queue.slurm import NATIVE_STATES, REASONS, SlurmAdapter

CORPUS = Path(__file__).parents[1] / "fixtures" / "queue" / "slurm"
TOKEN = "7-0123456789ab"
RUN_DIR = "/work/ab/abcd_1"


@dataclass(frozen=True)
class Capture:
    name: str
    kind: str
    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str
    params: dict[str, Any]


def load_corpus() -> dict[str, Capture]:
    captures = {}
    for entry in json.loads((CORPUS / "manifest.json").read_text()):
        err = CORPUS / f"{entry['name']}.stderr"
        params = {k: v for k, v in entry.items() if k not in ("name", "kind", "argv", "exit_code")}
        captures[entry["name"]] = Capture(
            entry["name"],
            entry["kind"],
            entry["argv"],
            entry["exit_code"],
            (CORPUS / f"{entry['name']}.stdout").read_text(),
            err.read_text() if err.exists() else "",
            params,
        )
    return captures


CAPTURES = load_corpus()


def adapter_for(capture: Capture) -> SlurmAdapter:
    return SlurmAdapter(sacct_args=["-c"] if "-c" in capture.argv else [])


def spec(**resources: Any) -> SubmitSpec:
    return SubmitSpec(
        run_dir=RUN_DIR,
        job_name="add",
        submit_token=TOKEN,
        command=["/usr/bin/python3", "-m", "conveyor.execution", RUN_DIR],
        resources=parse_resources(resources),
    )


def directives(**resources: Any) -> list[str]:
    text = SlurmAdapter().render(spec(**resources))["submit.sh"]
    return [line[len("#SBATCH ") :] for line in text.splitlines() if line.startswith("#SBATCH ")]


def sbatch_words(option: str) -> list[str]:
    """What sbatch makes of the text after ``#SBATCH``: blanks split words, double or
    single quotes group, a backslash escapes the next character, an unquoted ``#`` ends
    the line (checked against sbatch 22.05 by hand: see the README)."""
    words: list[str] = []
    word, quote, escaped, started = [], "", False, False
    for char in option:
        if escaped:
            word.append(char)
            escaped = False
        elif char == "\\":
            escaped = started = True
        elif quote:
            if char == quote:
                quote = ""
            else:
                word.append(char)
        elif char in "\"'":
            quote, started = char, True
        elif char == "#":
            break
        elif char.isspace():
            if word or started:
                words.append("".join(word))
            word, started = [], False
        else:
            word.append(char)
            started = True
    if word or started:
        words.append("".join(word))
    return words


# --- registry and options ---------------------------------------------------------------


def test_registry_and_defaults() -> None:
    assert adapter_class("slurm") is SlurmAdapter
    adapter = get_adapter("slurm")
    assert isinstance(adapter, SlurmAdapter)
    assert adapter.name == "slurm"
    assert adapter.script_name == "submit.sh"
    assert adapter.missing_grace.total_seconds() == 10
    assert adapter.sacct_args == []


def test_sacct_args_option() -> None:
    adapter = get_adapter("slurm", {"sacct_args": ["-c"]})
    assert isinstance(adapter, SlurmAdapter)
    assert adapter.accounting_command("12")[:2] == ["sacct", "-c"]
    for bad in ("-c", ["-c", 3]):
        with pytest.raises(ConfigError, match="sacct_args"):
            get_adapter("slurm", {"sacct_args": bad})
    with pytest.raises(ConfigError, match="queue_options for 'slurm'"):
        get_adapter("slurm", {"sacct": ["-c"]})


# --- the script -------------------------------------------------------------------------


def test_script_header_and_body() -> None:
    text = SlurmAdapter().render(spec())["submit.sh"]
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert lines[1:5] == [
        f"#SBATCH --job-name=conveyor-{TOKEN}",
        f"#SBATCH --output={RUN_DIR}/{STDOUT_FILE}",
        f"#SBATCH --error={RUN_DIR}/{STDERR_FILE}",
        f"#SBATCH --chdir={RUN_DIR}",
    ]
    # sbatch reads directives up to the first command: all of them come first.
    first_command = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    assert all(not line.startswith("#SBATCH") for line in lines[first_command:])
    # An array task records the array's id, which is what sbatch printed.
    assert '"${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}"' in text
    assert f"/usr/bin/python3 -m conveyor.execution {RUN_DIR}" in lines


def test_every_generic_resource() -> None:
    assert directives(
        nodes=2,
        processes=16,
        processes_per_node=8,
        cpus_per_task=2,
        gpus=4,
        memory="8G",
        walltime="1-02:03:04",
        queue="gpu",
        account="proj-42",
        qos="high",
        job_name="relax",
        email="me@example.org",
        array_size=5,
    ) == [
        f"--job-name=relax-{TOKEN}",
        f"--output={RUN_DIR}/queue.out",
        f"--error={RUN_DIR}/queue.err",
        f"--chdir={RUN_DIR}",
        "--nodes=2",
        "--ntasks=16",
        "--ntasks-per-node=8",
        "--cpus-per-task=2",
        "--gpus-per-node=4",
        "--mem=8192M",
        "--time=1-02:03:04",
        "--partition=gpu",
        "--account=proj-42",
        "--qos=high",
        "--mail-user=me@example.org",
        "--mail-type=FAIL",
        "--array=0-4",
        "--open-mode=append",
    ]


@pytest.mark.parametrize(
    ("walltime", "option"),
    [(30, "00:00:30"), (60, "00:01:00"), (3600, "01:00:00"), (86399, "23:59:59"),
     (86400, "1-00:00:00"), (8 * 86400 + 5, "8-00:00:05")],
)  # fmt: skip
def test_walltime_formats(walltime: int, option: str) -> None:
    assert f"--time={option}" in directives(walltime=walltime)


def test_zero_gpus_asks_for_none() -> None:
    assert not [d for d in directives(gpus=0) if "gpu" in d]


def test_job_name_is_made_safe_and_keeps_the_token() -> None:
    name = directives(job_name="my job; $(rm) | x\ty")[0]
    assert name == f"--job-name=my_job____rm____x_y-{TOKEN}"


def test_system_passthrough_and_flags() -> None:
    found = directives(
        slurm={
            "constraint": "haswell|knl",
            "--begin": "now+60",
            "exclusive": "",
            "requeue": "True",
            "no_requeue": "false",
            "mail_type": "END,FAIL",
        }
    )
    assert found[-5:] == [
        '--constraint="haswell|knl"',
        "--begin=now+60",
        "--exclusive",
        "--requeue",
        "--mail-type=END,FAIL",
    ]


@pytest.mark.parametrize("key", ["bad key", "-x", "a=b", "", "a\nb", "é"])
def test_passthrough_keys_must_be_option_names(key: str) -> None:
    with pytest.raises(QueueError, match="sbatch long option"):
        directives(slurm={key: "1"})


def test_extra_directives_verbatim() -> None:
    found = directives(extra_directives=["--exclusive", "#SBATCH --comment=hi there"])
    assert found[-2:] == ["--exclusive", "--comment=hi there"]
    for bad in ["--a\n--b", "", "#SBATCH ", "--x\r"]:
        with pytest.raises(QueueError, match="extra directive"):
            directives(extra_directives=[bad])


HOSTILE = [
    "with space",
    'double "quotes"',
    "it's",
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    "a; b",
    "hash # not a comment",
    "back\\slash",
    "trailing\\",
    "%j and %%",
    "",
]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("field", ["queue", "account", "qos", "email", "passthrough"])
def test_directive_values_reach_sbatch_intact(field: str, value: str) -> None:
    resources = {"slurm": {"comment": value}} if field == "passthrough" else {field: value}
    option = {"queue": "partition", "email": "mail-user", "passthrough": "comment"}.get(
        field, field
    )
    if field == "passthrough" and value == "":
        pytest.skip("an empty passthrough value is a flag")
    line = next(d for d in directives(**resources) if d.startswith(f"--{option}"))
    assert sbatch_words(line) == [f"--{option}={value}"]


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "tab\tin", "nul\0"])
def test_control_characters_in_values_are_refused(value: str) -> None:
    with pytest.raises(QueueError, match="control character"):
        directives(queue=value)


@pytest.mark.parametrize("name", ["with space", "it's", '"q"', "$(x)", "100%", "a#b", "\\"])
def test_run_dir_in_directives(name: str) -> None:
    run_dir = f"/work/{name}/run"
    s = SubmitSpec(run_dir=run_dir, job_name="j", submit_token=TOKEN, command=["true"])
    text = SlurmAdapter().render(s)["submit.sh"]
    found = [line[len("#SBATCH ") :] for line in text.splitlines() if line.startswith("#SBATCH")]
    # sbatch expands %-patterns in --output/--error only: '%%' there is a literal '%'.
    escaped = run_dir.replace("%", "%%")
    assert sbatch_words(found[1]) == [f"--output={escaped}/queue.out"]
    assert sbatch_words(found[2]) == [f"--error={escaped}/queue.err"]
    assert sbatch_words(found[3]) == [f"--chdir={run_dir}"]
    assert SlurmAdapter().submit_command(s) == [
        "sbatch",
        "--parsable",
        f"--chdir={run_dir}",
        f"{run_dir}/submit.sh",
    ]


def test_run_dir_with_a_newline_is_refused() -> None:
    s = SubmitSpec(run_dir="/work/a\nb", job_name="j", submit_token=TOKEN, command=["true"])
    with pytest.raises(QueueError, match="run dir"):
        SlurmAdapter().render(s)


def test_commands() -> None:
    adapter = SlurmAdapter()
    assert adapter.submit_command(spec()) == [
        "sbatch",
        "--parsable",
        f"--chdir={RUN_DIR}",
        f"{RUN_DIR}/submit.sh",
    ]
    assert adapter.status_command(["1", "22_3"]) == [
        "squeue",
        "--noheader",
        "--jobs=1,22_3",
        "--format=%i|%T|%r",
    ]
    assert adapter.find_by_token_command(TOKEN) == [
        "squeue",
        "--noheader",
        "--me",
        "--states=all",
        "--format=%i|%T|%j",
    ]
    assert adapter.cancel_command("5") == ["scancel", "5"]
    assert adapter.hold_command("5") == ["scontrol", "hold", "5"]
    assert adapter.release_command("5") == ["scontrol", "release", "5"]
    assert adapter.accounting_command("5") == [
        "sacct",
        "--noheader",
        "--parsable2",
        "--jobs=5",
        "--format=JobID,State,ExitCode,DerivedExitCode,Reason",
    ]


@pytest.mark.parametrize("bad", ["", "abc", "1;2", "--all", "-1", "1 2", "01", "1_[2-3]"])
def test_bad_ids_are_refused_by_every_command(bad: str) -> None:
    adapter = SlurmAdapter()
    for build in (
        adapter.cancel_command,
        adapter.hold_command,
        adapter.release_command,
        adapter.accounting_command,
    ):
        with pytest.raises(QueueError, match="SLURM job id"):
            build(bad)
    with pytest.raises(QueueError, match="SLURM job id"):
        adapter.status_command(["1", bad])
    with pytest.raises(QueueError):
        adapter.status_command([])


# --- the recorded corpus ----------------------------------------------------------------


def test_the_corpus_was_recorded_with_these_very_commands() -> None:
    for c in CAPTURES.values():
        adapter = adapter_for(c)
        if c.kind == "status":
            assert adapter.status_command(c.params["queue_ids"]) == c.argv, c.name
        elif c.kind == "accounting":
            assert adapter.accounting_command(c.params["queue_id"]) == c.argv, c.name
        elif c.kind == "find":
            assert adapter.find_by_token_command("x-1") == c.argv, c.name
        else:
            assert c.argv[:2] == ["sbatch", "--parsable"], c.name


def status(name: str) -> dict[str, tuple[QueueState, str, str | None]]:
    c = CAPTURES[name]
    infos = SlurmAdapter().parse_status_output(
        c.exit_code, c.stdout, c.stderr, c.params["queue_ids"]
    )
    for key, info in infos.items():
        assert key == info.queue_id
        assert info.exit_code is None
    return {k: (i.state, i.native_state, i.reason) for k, i in infos.items()}


R, Q, H, S = QueueState.RUNNING, QueueState.QUEUED, QueueState.HELD, QueueState.SUSPENDED


def test_status_of_one_poll_over_many_jobs() -> None:
    ids = CAPTURES["status_mixed"].params["queue_ids"]
    done, failed, running, pending, held, held_admin, array, suspended, long = ids
    assert status("status_mixed") == {
        running: (R, "RUNNING", None),
        pending: (Q, "PENDING", "BeginTime"),
        held: (H, "PENDING", "JobHeldUser"),
        held_admin: (H, "PENDING", "JobHeldAdmin"),
        array: (R, "RUNNING", None),  # tasks running while others wait
        suspended: (R, "RUNNING", None),
        long: (R, "RUNNING", None),
    }
    assert done not in status("status_mixed")
    assert failed not in status("status_mixed")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("status_running", [(R, "RUNNING", None)]),
        ("status_pending", [(Q, "PENDING", "BeginTime")]),
        ("status_held", [(H, "PENDING", "JobHeldAdmin"), (H, "PENDING", "JobHeldUser")]),
        ("status_array", [(R, "RUNNING", None)]),
        ("status_array_task", [(R, "RUNNING", None)]),
        ("status_suspended", [(S, "SUSPENDED", None)]),
        ("status_unknown_and_running", [(R, "RUNNING", None)]),
        ("status_finished", []),
        ("status_empty_queue", []),
        ("status_unknown", []),
    ],
)
def test_status_captures(name: str, expected: list[tuple[QueueState, str, str | None]]) -> None:
    assert sorted(status(name).values()) == sorted(expected)


def test_unknown_ids_are_an_empty_answer_but_a_dead_controller_is_an_error() -> None:
    c = CAPTURES["status_unknown"]
    assert c.exit_code == 1
    assert "Invalid job id specified" in c.stderr
    c = CAPTURES["status_controller_down"]
    with pytest.raises(QueueParseError, match="Unable to contact slurm controller"):
        SlurmAdapter().parse_status_output(c.exit_code, c.stdout, c.stderr, ["1"])


def test_array_aggregation_prefers_live_tasks() -> None:
    out = "8_[2-3%2]|PENDING|JobArrayTaskLimit\n8_1|RUNNING|None\n9_[0-1]|PENDING|JobHeldUser\n"
    infos = SlurmAdapter().parse_status_output(0, out, "", ["8", "9"])
    assert infos["8"].state is R
    assert infos["9"] == QueueJobInfo("9", H, "PENDING", "JobHeldUser")


@pytest.mark.parametrize(
    ("native", "reason", "state"),
    [
        ("COMPLETING", "None", R),
        ("CONFIGURING", "None", Q),
        ("REQUEUED", "None", Q),
        ("REQUEUE_HOLD", "JobHeldAdmin", H),
        ("SPECIAL_EXIT", "None", H),
        ("STOPPED", "None", S),
        ("SIGNALING", "None", R),
        ("PENDING", "Dependency", Q),
        ("COMPLETED", "None", QueueState.DONE),
        ("TIMEOUT", "None", QueueState.FAILED),
    ],
)
def test_other_states(native: str, reason: str, state: QueueState) -> None:
    infos = SlurmAdapter().parse_status_output(0, f"12|{native}|{reason}\n", "", ["12"])
    assert infos["12"].state is state
    assert infos["12"].native_state == native


def test_het_job_components_speak_for_the_job() -> None:
    out = "40+0|RUNNING|None\n40+1|PENDING|Resources\n"
    assert SlurmAdapter().parse_status_output(0, out, "", ["40"])["40"].state is R


def test_unknown_state_is_unknown_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="conveyor.queue.slurm"):
        infos = SlurmAdapter().parse_status_output(0, "12|WEIRD_NEW|Why\n", "", ["12"])
    assert infos["12"] == QueueJobInfo("12", QueueState.UNKNOWN, "WEIRD_NEW", "Why")
    assert "unknown SLURM job state 'WEIRD_NEW'" in caplog.text


def test_state_table_covers_the_manual() -> None:
    # JOB STATE CODES of squeue(1) and sacct(1), SLURM 22.05.
    codes = {
        *("BOOT_FAIL", "CANCELLED", "COMPLETED", "CONFIGURING", "COMPLETING", "DEADLINE"),
        *("FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PENDING", "PREEMPTED", "RUNNING"),
        *("RESV_DEL_HOLD", "REQUEUE_FED", "REQUEUE_HOLD", "REQUEUED", "RESIZING", "REVOKED"),
        *("SIGNALING", "SPECIAL_EXIT", "STAGE_OUT", "STOPPED", "SUSPENDED", "TIMEOUT"),
    }
    assert set(NATIVE_STATES) == codes
    failed = {k for k, v in NATIVE_STATES.items() if v is QueueState.FAILED}
    assert failed == set(REASONS)
    assert set(REASONS.values()) <= {
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "CANCELLED",
        "PREEMPTED",
        "EXIT_CODE",
    }


def test_submit_output() -> None:
    c = CAPTURES["submit_ok"]
    assert SlurmAdapter().parse_submit_output(c.exit_code, c.stdout, c.stderr) == c.stdout.strip()
    assert SlurmAdapter().parse_submit_output(0, "123;cluster2\n", "") == "123"
    assert SlurmAdapter().parse_submit_output(0, "42\n", "sbatch: warning: x\n") == "42"
    c = CAPTURES["submit_bad_partition"]
    with pytest.raises(QueueParseError, match="Invalid partition name specified"):
        SlurmAdapter().parse_submit_output(c.exit_code, c.stdout, c.stderr)
    for out in ["", "Submitted batch job 12", "abc", "12 13"]:
        with pytest.raises(QueueParseError, match="no job id"):
            SlurmAdapter().parse_submit_output(0, out, "")


def test_find_by_token() -> None:
    c = CAPTURES["find_all"]
    adapter = SlurmAdapter()
    for key, token in c.params["tokens"].items():
        found = adapter.parse_find_by_token(c.exit_code, c.stdout, c.stderr, token)
        assert found == c.params["jobs"][key], key
    assert adapter.parse_find_by_token(c.exit_code, c.stdout, c.stderr, "9-000000000000") is None
    # A name with blanks and '|' (someone else's job) is read to the end of the line.
    assert adapter.parse_find_by_token(0, c.stdout, "", "with pipe") is None
    assert adapter.parse_find_by_token(0, "11|RUNNING|odd | with-x-1\n", "", "x-1") == "11"
    c = CAPTURES["find_controller_down"]
    with pytest.raises(QueueParseError, match="Unable to contact"):
        adapter.parse_find_by_token(c.exit_code, c.stdout, c.stderr, "x-1")
    assert adapter.parse_find_by_token(0, "", "", "x-1") is None


def test_find_by_token_with_two_jobs_adopts_the_first(caplog: pytest.LogCaptureFixture) -> None:
    out = "5|RUNNING|conveyor-x-1\n6|PENDING|conveyor-x-1\n"
    with caplog.at_level(logging.WARNING):
        assert SlurmAdapter().parse_find_by_token(0, out, "", "x-1") == "5"
    assert "several SLURM jobs carry token x-1" in caplog.text


F, D = QueueState.FAILED, QueueState.DONE


@pytest.mark.parametrize(
    ("what", "state", "reason", "exit_code"),
    [
        ("completed", D, None, 0),
        ("failed", F, "EXIT_CODE", 3),
        ("timeout", F, "TIMEOUT", 0),
        ("cancelled_running", F, "CANCELLED", 0),
        ("cancelled_pending", F, "CANCELLED", 0),
        ("cancelled_suspended", F, "CANCELLED", 0),
        ("cancelled_held", F, "CANCELLED", 0),
        ("released", D, None, 0),
        ("array", D, None, 0),
        ("node_fail", F, "NODE_FAIL", 0),
        ("out_of_memory", F, "OUT_OF_MEMORY", None),  # ExitCode 0:125 is no real signal
    ],
)
@pytest.mark.parametrize("prefix", ["sacct", "sacct_c"])
def test_accounting(
    prefix: str, what: str, state: QueueState, reason: str | None, exit_code: int | None
) -> None:
    c = CAPTURES[f"{prefix}_{what}"]
    info = adapter_for(c).parse_accounting_output(
        c.exit_code, c.stdout, c.stderr, c.params["queue_id"]
    )
    assert info is not None
    assert (info.queue_id, info.state, info.reason, info.exit_code) == (
        c.params["queue_id"],
        state,
        reason,
        exit_code,
    )
    # The allocation line decides, not the .batch step (which says FAILED or CANCELLED).
    assert info.native_state == c.stdout.splitlines()[0].split("|")[1]


@pytest.mark.parametrize("name", ["sacct_unknown", "sacct_c_unknown", "sacct_disabled"])
def test_accounting_that_knows_nothing(name: str, caplog: pytest.LogCaptureFixture) -> None:
    c = CAPTURES[name]
    with caplog.at_level(logging.WARNING):
        assert adapter_for(c).parse_accounting_output(c.exit_code, c.stdout, c.stderr, "1") is None
    if name == "sacct_disabled":
        assert "sacct_args" in caplog.text


def test_accounting_other_cases() -> None:
    adapter = SlurmAdapter()
    # A preempted job (no recording: preemption needs a second partition and priorities).
    out = "77|PREEMPTED|0:15|0:0|None\n77.batch|CANCELLED|0:15||\n"
    info = adapter.parse_accounting_output(0, out, "", "77")
    assert info == QueueJobInfo("77", F, "PREEMPTED", "PREEMPTED", 143)
    # An OOM kill seen only in a step still names the reason.
    out = "78|FAILED|0:9|0:0|None\n78.batch|OUT_OF_MEMORY|0:125||\n78.extern|COMPLETED|0:0||\n"
    info = adapter.parse_accounting_output(0, out, "", "78")
    assert info is not None
    assert (info.state, info.reason, info.exit_code) == (F, "OUT_OF_MEMORY", 137)
    # One failed task fails the array.
    out = "9_0|COMPLETED|0:0|0:0|None\n9_1|FAILED|2:0|0:0|None\n"
    info = adapter.parse_accounting_output(0, out, "", "9")
    assert info is not None
    assert (info.state, info.reason, info.exit_code) == (F, "EXIT_CODE", 2)
    # Other jobs' lines are not this job's.
    assert adapter.parse_accounting_output(0, "90|FAILED|1:0|0:0|None\n", "", "9") is None
    # A still-running job: its state, no reason.
    info = adapter.parse_accounting_output(0, "9|RUNNING|0:0|0:0|None\n", "", "9")
    assert info == QueueJobInfo("9", R, "RUNNING", None, 0)
    with pytest.raises(QueueParseError, match="sacct exited with code 1"):
        adapter.parse_accounting_output(1, "", "sacct: error: Problem talking to the database", "9")


def test_accounting_with_a_corrupt_jobcomp_state() -> None:
    # jobcomp/filetxt splits records at blanks: a job named "a b" lost its state field.
    with pytest.raises(QueueParseError, match="no SLURM job state"):
        SlurmAdapter().parse_accounting_output(0, "4||0:0|0:0|\n", "", "4")


# --- nothing but QueueParseError, whatever the output -------------------------------------


def mutations(text: str, rng: random.Random) -> list[str]:
    lines = text.splitlines(keepends=True)
    out = [
        text[: rng.randrange(len(text) + 1)],
        text[rng.randrange(len(text) + 1) :],
        text.replace("|", "", 1),
        text.replace("|", "||", 1),
        text.replace("|", "\n", 1),
        text.replace(":", "", 1),
        text.replace("_", "", 1),
        re.sub(r"\d", "x", text, count=1),
        "".join(lines[::-1]),
        "".join(rng.sample(lines, len(lines))),
        "\n".join(line[: max(1, len(line) // 2)] for line in lines),
        text + "garbage line\n",
        text + "\x00\xff\ufffd\n",
        "   " + text,
        text.upper(),
        text.lower(),
        "".join(rng.choice("|:_[]%0123456789ABC \n.+-") for _ in range(rng.randrange(80))),
    ]
    if text:
        chars = list(text)
        for _ in range(3):
            chars[rng.randrange(len(chars))] = rng.choice("|:_\n\t x9[]")
        out.append("".join(chars))
    return out


def only_parse_errors(call: Any) -> Any:
    try:
        return call()
    except QueueParseError:
        return None


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_garbage_variants_raise_only_queue_parse_errors(name: str) -> None:
    c = CAPTURES[name]
    rng = random.Random(name)
    adapter = adapter_for(c)
    ids = c.params.get("queue_ids") or [c.params.get("queue_id") or "1"]
    for text in mutations(c.stdout, rng) + mutations(c.stderr, rng):
        for code in (c.exit_code, 0, 1, 2, -9, 255):
            for stdout, stderr in ((text, c.stderr), (c.stdout, text), (text, text)):
                result = only_parse_errors(
                    lambda: adapter.parse_status_output(code, stdout, stderr, ids)  # noqa: B023
                )
                if result is not None:
                    assert isinstance(result, dict)
                    assert set(result) <= set(ids)
                    assert all(isinstance(v, QueueJobInfo) for v in result.values())
                result = only_parse_errors(
                    lambda: adapter.parse_accounting_output(code, stdout, stderr, ids[0])  # noqa: B023
                )
                assert result is None or isinstance(result, QueueJobInfo)
                result = only_parse_errors(
                    lambda: adapter.parse_find_by_token(code, stdout, stderr, TOKEN)  # noqa: B023
                )
                assert result is None or isinstance(result, str)
                result = only_parse_errors(
                    lambda: adapter.parse_submit_output(code, stdout, stderr)  # noqa: B023
                )
                assert result is None or isinstance(result, str)
