"""The sge adapter over its fixture corpus (tests/fixtures/queue/sge, see its README)."""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor.exceptions import ConfigError, QueueError, QueueParseError
from conveyor.queue import QueueState, SubmitSpec, get_adapter
from conveyor.queue._sge_directives import MAX_NAME, job_name
from conveyor.queue.sge import NATIVE_STATES, SGEAdapter

CORPUS = Path(__file__).parents[1] / "fixtures" / "queue" / "sge"
CAPTURES: dict[str, dict[str, Any]] = {
    c["name"]: c for c in json.loads((CORPUS / "captures.json").read_text())
}
TOKEN = "42-a1b2c3d4e5f6"
RUN_DIR = "/work/run dir/ab/abcdef_1"


def case(name: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one recorded command."""
    stderr = CORPUS / f"{name}.stderr"
    return (
        int(CAPTURES[name]["exit_code"]),
        (CORPUS / f"{name}.stdout").read_text(),
        stderr.read_text() if stderr.exists() else "",
    )


def adapter(**options: Any) -> SGEAdapter:
    made = get_adapter("sge", options)
    assert isinstance(made, SGEAdapter)
    return made


def spec(run_dir: str = RUN_DIR, token: str = TOKEN, **resources: Any) -> SubmitSpec:
    from conveyor.queue.resources import parse_resources

    return SubmitSpec(
        run_dir=run_dir,
        job_name=f"conveyor-{token}",
        submit_token=token,
        command=["python", "-m", "conveyor.execution", run_dir],
        resources=parse_resources(resources),
    )


def directives(options: dict[str, Any] | None = None, **resources: Any) -> list[str]:
    text = adapter(**(options or {})).render(spec(**resources))["submit.sh"]
    return [line[3:] for line in text.splitlines() if line.startswith("#$ ")]


FIXED = [
    f"-N conveyor-{TOKEN}",
    "-S /bin/bash",
    f'-wd "{RUN_DIR}"',
    f'-o "{RUN_DIR}/queue.out"',
    f'-e "{RUN_DIR}/queue.err"',
    "-j n",
]


# ----------------------------------------------------------------------------- render


def test_minimal_directives_and_script() -> None:
    text = adapter().render(spec())["submit.sh"]
    assert text.startswith("#!/bin/bash\n#$ -N ")
    assert directives() == FIXED
    assert '"$JOB_ID" >conveyor.started.tmp' in text
    assert f"# Submit token: {TOKEN}" in text


def test_every_generic_resource() -> None:
    lines = directives(
        processes=4,
        cpus_per_task=2,
        memory="4G",
        walltime="1:30:00",
        queue="all.q@vm",
        account="proj-1",
        email="a.b+c@example.org",
        array_size=3,
        extra_directives=["-l arch=lx-amd64", "#$ -notify"],
        sge={"pe": "smp", "mem_free": "1G", "R": "y", "h": ""},
    )
    assert lines == [
        *FIXED,
        "-pe smp 8",
        "-l h_rt=01:30:00",
        "-l h_vmem=512M",  # 4 GiB per node over 8 slots on that node
        "-q all.q@vm",
        "-P proj-1",
        "-M a.b+c@example.org",
        "-m ea",
        "-t 1-3",
        "-l mem_free=1G",
        "-R y",
        "-h",
        "-l arch=lx-amd64",
        "-notify",
    ]


@pytest.mark.parametrize(
    ("resources", "options", "expected"),
    [
        ({"memory_mb": 1000}, {}, ["-l h_vmem=1000M"]),
        (
            {"memory_mb": 1000, "processes": 3, "sge": {"pe": "smp"}},
            {},
            ["-pe smp 3", "-l h_vmem=334M"],
        ),
        (
            {"memory": "4G", "nodes": 2, "processes_per_node": 2, "sge": {"pe": "mpi"}},
            {"memory_resource": "mem_free"},
            ["-pe mpi 4", "-l mem_free=2048M"],
        ),
        ({"gpus": 2}, {"gpu_resource": "gpu"}, ["-l gpu=2"]),
        ({"gpus": 0}, {}, []),
        ({"sge": {"pe": "smp"}}, {}, ["-pe smp 1"]),
        ({"email": "me", "sge": {"m": "bea"}}, {}, ["-M me", "-m bea"]),
        ({"sge": {"h": "false", "notify": "yes"}}, {}, ["-notify"]),
        ({"sge": {"h": None}}, {}, ["-h"]),
    ],
)
def test_resource_mapping(
    resources: dict[str, Any], options: dict[str, Any], expected: list[str]
) -> None:
    assert directives(options, **resources) == [*FIXED, *expected]


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"processes": 2}, "set sge.pe"),
        ({"cpus_per_task": 4}, "set sge.pe"),
        ({"nodes": 2}, "slots, not nodes"),
        ({"gpus": 1}, "gpu_resource"),
        ({"qos": "high"}, "quality of service"),
        ({"queue": "all.q # x"}, "queue"),
        ({"account": "a/b"}, "account"),
        ({"email": 'a"b'}, "email"),
        ({"sge": {"pe": "smp x"}}, "sge.pe"),
        ({"sge": {"o": "/tmp/x"}}, "set by Conveyor"),
        ({"sge": {"wd": "/tmp"}}, "set by Conveyor"),
        ({"sge": {"h": "maybe"}}, "takes no value"),
        ({"sge": {"mem free": "1G"}}, "resource name"),
        ({"sge": {"mem_free": "1 G"}}, "sge.mem_free"),
        ({"sge": {"A": "it's"}}, "sge.A"),
        ({"extra_directives": ["-l a=1\n-l b=2"]}, "one line"),
    ],
)
def test_unsafe_or_impossible_requests_are_refused(resources: dict[str, Any], message: str) -> None:
    with pytest.raises(QueueError, match=message):
        adapter().render(spec(**resources))


@pytest.mark.parametrize("bad", ["#", ":", ",", "$", '"', "'", "\\", "\n", "\x7f"])
def test_run_dirs_qsub_would_misread_are_refused(bad: str) -> None:
    with pytest.raises(QueueError, match="run dir"):
        adapter().render(spec(run_dir=f"/work/a{bad}b"))
    with pytest.raises(QueueError, match="absolute"):
        adapter().render(spec(run_dir="relative/dir"))


def test_run_dir_with_spaces_and_punctuation_is_quoted() -> None:
    odd = "/work/x ;&=~()[]{}!%^+@ y"
    text = adapter().render(spec(run_dir=odd))["submit.sh"]
    assert f'#$ -wd "{odd}"\n' in text
    assert f'#$ -o "{odd}/queue.out"\n' in text


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (f"conveyor-{TOKEN}", f"conveyor-{TOKEN}"),  # the runner's name: token not doubled
        ("my job: v2/3", f"my_job__v2_3-{TOKEN}"),
        ("2nd try", f"j2nd_try-{TOKEN}"),
        ("é*?@", f"____-{TOKEN}"),
        (TOKEN, f"conveyor-{TOKEN}"),
    ],
)
def test_job_names_are_made_safe(name: str, expected: str) -> None:
    assert job_name(spec(job_name=name)) == expected


def test_long_job_names_are_cut_but_keep_the_token() -> None:
    name = job_name(spec(job_name="x" * 2000))
    assert len(name) == MAX_NAME
    assert name.endswith(f"-{TOKEN}")


def test_tokens_sge_refuses_are_refused() -> None:
    with pytest.raises(QueueError, match="':'"):
        adapter().render(spec(token="42:abc"))
    with pytest.raises(QueueError, match="submit token"):
        adapter().submit_command(spec(token="bad token"))


def test_adapter_options_are_checked() -> None:
    assert adapter().memory_resource == "h_vmem"
    with pytest.raises(ConfigError, match="memory_resource"):
        adapter(memory_resource="h vmem")
    with pytest.raises(ConfigError, match="queue_options"):
        adapter(flavor="son")


# ----------------------------------------------------------------------------- commands


def test_commands() -> None:
    a = adapter()
    assert a.submit_command(spec()) == ["qsub", "-terse", f"{RUN_DIR}/submit.sh"]
    assert a.status_command(["12", "13"]) == ["qstat", "-xml"]
    assert a.find_by_token_command(TOKEN) == ["qstat", "-xml"]
    assert a.accounting_command("12") == ["qacct", "-j", "12"]
    assert a.cancel_command("12") == ["qdel", "12"]
    assert a.hold_command("12") == ["qhold", "12"]
    assert a.release_command("12") == ["qrls", "12"]
    assert a.missing_grace.total_seconds() == 20
    for bad in ("12.1", "-u", "x", "012", ""):
        with pytest.raises(QueueError, match="job number"):
            a.cancel_command(bad)
    with pytest.raises(QueueError):
        a.status_command([])
    with pytest.raises(QueueError, match="job number"):
        a.status_command(["12", "all"])


# ----------------------------------------------------------------------------- parsers


@pytest.mark.parametrize(
    ("name", "expected"),
    [("qsub_terse", "27"), ("qsub_terse_array", "28"), ("qsub_terse_array_step", "29")],
)
def test_submit_output(name: str, expected: str) -> None:
    assert adapter().parse_submit_output(*case(name)) == expected


@pytest.mark.parametrize(
    ("name", "evidence"),
    [
        ("qsub_no_such_pe", 'parallel environment "nosuchpe" does not exist'),
        ("qsub_unknown_resource", "unknown resource"),
        ("qsub_name_with_colon", "Colon"),
        ("qsub_name_too_long", "512"),
        ("qsub_no_such_file", "missing.sh"),
        ("qsub_no_qmaster", "unable to send message to qmaster"),
    ],
)
def test_submit_failures_are_parse_errors_with_the_evidence(name: str, evidence: str) -> None:
    with pytest.raises(QueueParseError, match=evidence):
        adapter().parse_submit_output(*case(name))


IDS = [str(n) for n in range(1, 60)]
R, Q, H, S, F = (
    QueueState.RUNNING,
    QueueState.QUEUED,
    QueueState.HELD,
    QueueState.SUSPENDED,
    QueueState.FAILED,
)
MIXED = {
    "33": (F, "Eqw"),
    "34": (R, "r"),
    "35": (R, "r,qw"),
    "36": (Q, "qw"),
    "37": (H, "hqw"),
    "38": (H, "hqw"),
    "39": (H, "hqw"),
}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("qstat_empty", {}),
        ("qstat_mixed", MIXED),
        ("qstat_suspended", {**MIXED, "34": (S, "s")}),
        ("qstat_queue_suspended", {**MIXED, "34": (S, "S"), "35": (S, "S,qw")}),
        ("qstat_held_running", {**MIXED, "34": (R, "hr")}),
        ("qstat_rescheduled", {"40": (H, "hRq")}),
        ("qstat_odd_name", {"51": (H, "hqw")}),
    ],
)
def test_status(name: str, expected: dict[str, tuple[QueueState, str]]) -> None:
    jobs = adapter().parse_status_output(*case(name), IDS)
    assert {k: (v.state, v.native_state) for k, v in jobs.items()} == expected
    assert all(v.queue_id == k for k, v in jobs.items())


def test_status_keeps_only_the_asked_ids_and_gives_reasons() -> None:
    jobs = adapter().parse_status_output(*case("qstat_mixed"), ["33", "37", "999"])
    assert sorted(jobs) == ["33", "37"]
    assert jobs["33"].reason is not None
    assert "qmod -cj" in jobs["33"].reason
    assert jobs["37"].reason == "on hold"


def test_status_errors_are_parse_errors() -> None:
    with pytest.raises(QueueParseError, match="qmaster"):
        adapter().parse_status_output(*case("qstat_no_qmaster"), ["1"])
    with pytest.raises(QueueParseError, match="not <job_info>"):
        adapter().parse_status_output(0, "<queue_info/>", "", ["1"])


def test_every_letter_and_unknown_ones(caplog: pytest.LogCaptureFixture) -> None:
    _, stdout, _ = case("qstat_rescheduled")
    states = {"dr": R, "dRs": S, "Ehqw": F, "t": R, "Rq": Q, "z": QueueState.DONE, "hRwq": H}
    for native, state in states.items():
        text = stdout.replace("<state>hRq</state>", f"<state>{native}</state>")
        assert adapter().parse_status_output(0, text, "", ["40"])["40"].state is state
    assert set(NATIVE_STATES) == set("EsSTrthqwzdR")
    with caplog.at_level(logging.WARNING, logger="conveyor.queue.sge"):
        for native in ("X", "d"):
            text = stdout.replace("<state>hRq</state>", f"<state>{native}</state>")
            info = adapter().parse_status_output(0, text, "", ["40"])["40"]
            assert (info.state, info.native_state) == (QueueState.UNKNOWN, native)
    assert "unknown SGE job state 'X'" in caplog.text


def test_find_by_token() -> None:
    a = adapter()
    assert a.parse_find_by_token(*case("qstat_mixed"), "11-11a1b2c3d4e5") == "34"
    assert a.parse_find_by_token(*case("qstat_mixed"), "12-12a1b2c3d4e5") == "35"
    assert a.parse_find_by_token(*case("qstat_mixed"), "1-11a1b2c3d4e5") is None
    assert a.parse_find_by_token(*case("qstat_empty"), TOKEN) is None
    with pytest.raises(QueueParseError):
        a.parse_find_by_token(*case("qstat_no_qmaster"), TOKEN)


def test_find_by_token_adopts_the_first_of_duplicates(caplog: pytest.LogCaptureFixture) -> None:
    _, stdout, _ = case("qstat_mixed")
    text = stdout.replace("conveyor-13-13a1b2c3d4e5", "conveyor-11-11a1b2c3d4e5")
    with caplog.at_level(logging.WARNING):
        assert adapter().parse_find_by_token(0, text, "", "11-11a1b2c3d4e5") == "34"
    assert "['34', '36']" in caplog.text


@pytest.mark.parametrize(
    ("name", "state", "reason", "exit_code", "native"),
    [
        ("qacct_completed", QueueState.DONE, None, 0, "failed 0, exit_status 0"),
        ("qacct_pe", QueueState.DONE, None, 0, "failed 0, exit_status 0"),
        ("qacct_exit_code", F, "EXIT_CODE", 3, "failed 0, exit_status 3"),
        ("qacct_memory_limit", F, "EXIT_CODE", 1, "failed 0, exit_status 1"),
        (
            "qacct_timeout",
            F,
            "TIMEOUT",
            137,
            "failed 37 (qmaster enforced h_rt, h_cpu, or h_vmem limit), exit_status 137",
        ),
        ("qacct_cpu_limit", F, "TIMEOUT", 137, None),
        (
            "qacct_deleted_running",
            F,
            "CANCELLED",
            137,
            "failed 100 (assumedly after job), exit_status 137",
        ),
        ("qacct_rescheduled", F, "PREEMPTED", 0, "failed 25 (rescheduling), exit_status 0"),
        ("qacct_error_state", F, "NODE_FAIL", None, None),
        ("qacct_array", F, "EXIT_CODE", 5, "task 3: failed 0, exit_status 5 (4 tasks)"),
    ],
)
def test_accounting(
    name: str, state: QueueState, reason: str | None, exit_code: int | None, native: str | None
) -> None:
    queue_id = CAPTURES[name]["argv"][2]
    info = adapter().parse_accounting_output(*case(name), queue_id)
    assert info is not None
    assert (info.queue_id, info.state, info.reason, info.exit_code) == (
        queue_id,
        state,
        reason,
        exit_code,
    )
    if native is not None:
        assert info.native_state == native


@pytest.mark.parametrize(
    "name", ["qacct_deleted_pending", "qacct_unknown", "qacct_no_accounting_file"]
)
def test_accounting_not_known_yet_is_none(name: str) -> None:
    assert adapter().parse_accounting_output(*case(name), CAPTURES[name]["argv"][2]) is None


def test_accounting_takes_the_last_run_and_checks_the_job() -> None:
    _, failed_run, _ = case("qacct_error_state")  # job 50: failed 28, then run again
    _, good_run, _ = case("qacct_completed")
    rerun = failed_run + good_run.replace("jobnumber    41 ", "jobnumber    50 ")
    info = adapter().parse_accounting_output(0, rerun, "", "50")
    assert info is not None
    assert info.state is QueueState.DONE
    with pytest.raises(QueueParseError, match="no record of job 7"):
        adapter().parse_accounting_output(0, good_run, "", "7")
    with pytest.raises(QueueParseError, match="exited with code 2"):
        adapter().parse_accounting_output(2, "", "qacct: boom", "7")


@pytest.mark.parametrize(
    ("category", "wallclock", "reason"),
    [
        ("-l h_rt=3", "4s", "TIMEOUT"),
        ("-l h_rt=00:01:00,h_vmem=1G", "2s", "OUT_OF_MEMORY"),
        ("-l h_vmem=1G -pe smp 2", "2s", "OUT_OF_MEMORY"),
        ("-l h_rt=1:0:0,h_vmem=1G", "3600s", "TIMEOUT"),
        ("NONE", "9s", "TIMEOUT"),
        ("-l h_rt=bogus,h_vmem", "x", "OUT_OF_MEMORY"),
    ],
)
def test_limit_kills_are_timeouts_unless_memory_was_the_limit(
    category: str, wallclock: str, reason: str
) -> None:
    _, text, _ = case("qacct_timeout")
    text = text.replace("category     -l h_rt=3", f"category     {category}")
    text = text.replace("ru_wallclock 4s", f"ru_wallclock {wallclock}")
    info = adapter().parse_accounting_output(0, text, "", "43")
    assert info is not None
    assert info.reason == reason


@pytest.mark.parametrize(
    ("failed", "status", "reason", "exit_code"),
    [
        ("17  : through signal", "143", "CANCELLED", 143),
        ("100 : assumedly after job", "0", "NODE_FAIL", 0),
        ("26  : opening output file", "0", "NODE_FAIL", None),
        ("30  : application error returned", "100", "EXIT_CODE", 100),
    ],
)
def test_failed_codes(failed: str, status: str, reason: str, exit_code: int | None) -> None:
    _, text, _ = case("qacct_deleted_running")
    text = text.replace("100 : assumedly after job", failed)
    text = text.replace("exit_status  137                  (Killed)", f"exit_status  {status}")
    info = adapter().parse_accounting_output(0, text, "", "45")
    assert info is not None
    assert (info.state, info.reason, info.exit_code) == (F, reason, exit_code)


def test_unknown_failed_code_warns(caplog: pytest.LogCaptureFixture) -> None:
    _, text, _ = case("qacct_deleted_running")
    with caplog.at_level(logging.WARNING):
        info = adapter().parse_accounting_output(
            0, text.replace("100 : assumedly after job", "77 : new"), "", "45"
        )
    assert info is not None
    assert info.reason == "NODE_FAIL"
    assert "unknown SGE failed code 77" in caplog.text


# ----------------------------------------------------------------------------- fuzz


def variants(text: str, rng: random.Random) -> list[str]:
    """Truncations, garbage, shuffled and re-wrapped lines of ``text``."""
    lines = text.splitlines(keepends=True)
    found = [text[: rng.randrange(len(text) + 1)] for _ in range(6)]
    found += [text[rng.randrange(len(text) + 1) :] for _ in range(3)]
    found.append("".join(rng.sample(lines, len(lines))))
    found.append(
        "".join(line[: len(line) // 2] + "\n\t" + line[len(line) // 2 :] for line in lines)
    )
    found.append(text.replace(" ", "\n", 5))
    found.append(text.replace("<state>", "<state>\u0663").replace("jobnumber", "jobnumber ٣"))
    found += ["".join(chr(rng.randrange(1, 0x2FF)) for _ in range(200)), "\0\x7f<", "<a/>"]
    found += ["<job_info><job_list><JB_job_number>1</JB_job_number></job_list></job_info>"]
    found += ["<?xml version='1.0' encoding='UTF-16'?><job_info/>", "<" * 5000, "=" * 80]
    found += ["jobnumber 1\nfailed 99999999999999999999\nexit_status 1", "failed\n=\n"]
    return found


ParseFn = Callable[[SGEAdapter, int, str, str], object]
PARSERS: dict[str, ParseFn] = {
    "submit": lambda a, c, o, e: a.parse_submit_output(c, o, e),
    "status": lambda a, c, o, e: a.parse_status_output(c, o, e, ["1", "34", "35", "40"]),
    "find": lambda a, c, o, e: a.parse_find_by_token(c, o, e, "11-11a1b2c3d4e5"),
    "accounting": lambda a, c, o, e: a.parse_accounting_output(c, o, e, "43"),
}


@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_parsers_raise_only_parse_errors(parser: str) -> None:
    rng = random.Random(parser)
    parse = PARSERS[parser]
    assert len(CAPTURES) > 30
    for name in CAPTURES:
        exit_code, stdout, stderr = case(name)
        for text in [stdout, *variants(stdout, rng)]:
            for code in (exit_code, 0, 1, 153):
                with contextlib.suppress(QueueParseError):
                    parse(adapter(), code, text, stderr)
