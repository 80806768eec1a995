"""The pbs adapter over its fixture corpus (tests/fixtures/queue/pbs, see its README)."""

from __future__ import annotations

import contextlib
import logging
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor.exceptions import ConfigError, QueueError, QueueParseError
from conveyor.queue import QueueState, SubmitSpec, get_adapter
from conveyor.queue._pbs import job_name
from conveyor.queue.pbs import PBSAdapter
from conveyor.queue.resources import parse_resources

CORPUS = Path(__file__).parents[1] / "fixtures" / "queue" / "pbs"
TOKEN = "42-a1b2c3d4e5f6"


def case(flavor_dir: str, name: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one recorded command."""
    base = CORPUS / flavor_dir / name
    stderr = base.with_name(f"{name}.stderr")
    code = base.with_name(f"{name}.exit")
    return (
        int(code.read_text()) if code.exists() else 0,
        base.with_name(f"{name}.stdout").read_text(),
        stderr.read_text() if stderr.exists() else "",
    )


def adapter(flavor: str) -> PBSAdapter:
    made = get_adapter("pbs", {"flavor": flavor})
    assert isinstance(made, PBSAdapter)
    return made


def spec(run_dir: str = "/work/run dir", **resources: Any) -> SubmitSpec:
    return SubmitSpec(
        run_dir=run_dir,
        job_name=f"conveyor-{TOKEN}",
        submit_token=TOKEN,
        command=["python", "-m", "conveyor.execution", run_dir],
        resources=parse_resources(resources),
    )


def directives(flavor: str, **resources: Any) -> list[str]:
    text = adapter(flavor).render(spec(**resources))["submit.sh"]
    return [line[5:] for line in text.splitlines() if line.startswith("#PBS ")]


# ----------------------------------------------------------------------------- render


def test_default_flavor_is_pro_and_unknown_flavor_is_refused() -> None:
    assert PBSAdapter().flavor == "pro"
    with pytest.raises(ConfigError, match="flavor"):
        get_adapter("pbs", {"flavor": "lsf"})


def test_pro_directives() -> None:
    lines = directives(
        "pro",
        nodes=2,
        processes_per_node=4,
        cpus_per_task=2,
        memory="4G",
        gpus=1,
        walltime="1:30:00",
        queue="workq",
        account="proj-1",
        email="a.b+c@example.org",
        array_size=3,
        pbs={"place": "scatter:excl"},
        extra_directives=["#PBS -W umask=022"],
    )
    assert lines == [
        f"-N conveyor-{TOKEN}",
        "-S /bin/bash",
        "-o queue.out",
        "-e queue.err",
        f"-v CONVEYOR_TOKEN={TOKEN}",
        "-q workq",
        "-A proj-1",
        "-M a.b+c@example.org",
        "-l select=2:ncpus=8:mpiprocs=4:ompthreads=2:mem=4096mb:ngpus=1",
        "-l walltime=01:30:00",
        "-J 0-2",
        "-l place=scatter:excl",
        "-W umask=022",
    ]


def test_torque_directives_and_short_name() -> None:
    lines = directives("torque", processes=8, processes_per_node=4, memory_mb=1000, walltime=90)
    name = job_name(TOKEN, "torque")
    assert lines[0] == f"-N {name}"
    assert len(name) == 15
    assert re.fullmatch(r"cv[a-z2-7]{13}", name)
    assert job_name(TOKEN, "torque") == name  # a function of the token alone
    assert job_name("42-a1b2c3d4e5f7", "torque") != name
    assert "-l nodes=2:ppn=4" in lines
    assert "-l mem=2000mb" in lines  # Torque's mem is the whole job's
    assert "-l walltime=00:01:30" in lines


def test_the_script_runs_the_payload_in_the_run_dir() -> None:
    text = adapter("pro").render(spec())["submit.sh"]
    assert text.startswith("#!/bin/bash\n#PBS -N ")
    assert "cd -- '/work/run dir' || exit 1" in text
    assert '"$PBS_JOBID"' in text
    # no path goes into a directive: qsub resolves -o/-e against the run dir
    assert "run dir" not in "\n".join(line for line in text.splitlines() if line[:4] == "#PBS")


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"queue": "work q"}, "queue"),
        ({"account": "a#b"}, "account"),
        ({"email": "x\n#PBS -l x=1"}, "email"),
        ({"qos": "high"}, "qos"),
        ({"pbs": {"bad key": "1"}}, "bad key"),
        ({"pbs": {"place": "a b"}}, "place"),
        ({"extra_directives": ["#PBS -N x\n#PBS -q y"]}, "single line"),
    ],
)
def test_unsafe_values_are_refused(resources: dict[str, Any], message: str) -> None:
    with pytest.raises(QueueError, match=message):
        adapter("pro").render(spec(**resources))


def test_commands() -> None:
    pro, torque = adapter("pro"), adapter("torque")
    assert pro.submit_command(spec()) == ["qsub", "/work/run dir/submit.sh"]
    assert pro.status_command(["1.s", "2.s"]) == ["qstat", "-f", "-F", "json", "1.s", "2.s"]
    assert torque.status_command(["1.s"]) == ["qstat", "-f", "1.s"]
    assert pro.accounting_command("1.s") == ["qstat", "-x", "-f", "-F", "json", "1.s"]
    assert torque.accounting_command("1.s") == ["qstat", "-f", "1.s"]
    assert pro.find_by_token_command(TOKEN) == ["qselect", "-x", "-N", f"conveyor-{TOKEN}"]
    assert torque.find_by_token_command(TOKEN) == ["qselect", "-N", job_name(TOKEN, "torque")]
    assert pro.cancel_command("7[].s") == ["qdel", "7[].s"]
    assert pro.hold_command("7.s") == ["qhold", "7.s"]
    assert pro.release_command("7.s") == ["qrls", "7.s"]
    for bad in ("7; rm -rf /", "-x", ""):
        with pytest.raises(QueueError):
            pro.cancel_command(bad)
    with pytest.raises(QueueError):
        pro.status_command([])


# ----------------------------------------------------------------------------- submit


@pytest.mark.parametrize(
    ("where", "name", "expected"),
    [
        ("pro", "qsub", "1201.pbs01"),
        ("pro", "qsub-array", "1210[].pbs01"),
        ("torque", "qsub", "4807.torque01"),
        ("torque", "qsub-array", "4814[].torque01"),
        ("torque-wrapper", "qsub", "13"),
        ("torque-wrapper", "qsub-hold", "16"),
    ],
)
def test_submit_output(where: str, name: str, expected: str) -> None:
    assert adapter("pro").parse_submit_output(*case(where, name)) == expected


def test_submit_failure_is_a_parse_error_with_the_evidence() -> None:
    with pytest.raises(QueueParseError, match="Unknown queue") as info:
        adapter("pro").parse_submit_output(*case("pro", "qsub-unknown-queue"))
    assert "170" in str(info.value)


# ----------------------------------------------------------------------------- status


def status(where: str, name: str, ids: list[str], flavor: str = "pro") -> dict[str, Any]:
    exit_code, stdout, stderr = case(where, name)
    jobs = adapter(flavor).parse_status_output(exit_code, stdout, stderr, ids)
    return {q: (i.state, i.native_state, i.reason, i.exit_code) for q, i in jobs.items()}


def test_pro_status() -> None:
    assert status("pro", "qstat-f-F-json-running", ["1201.pbs01"]) == {
        "1201.pbs01": (
            QueueState.RUNNING,
            "R",
            "Job run at Tue Nov 17 at 10:02 on (node07:ncpus=4:mem=4194304kb)",
            None,
        )
    }
    queued = status("pro", "qstat-f-F-json-queued", ["1202.pbs01"])["1202.pbs01"]
    assert queued[:2] == (QueueState.QUEUED, "Q")
    assert "Insufficient amount of resource" in queued[2]
    held = status("pro", "qstat-f-F-json-held", ["1203.pbs01", "1204.pbs01"])
    assert held["1203.pbs01"][:3] == (QueueState.HELD, "H", None)
    assert held["1204.pbs01"][:3] == (
        QueueState.HELD,
        "H",
        "job held, too many failed attempts to run",
    )
    array = status("pro", "qstat-f-F-json-array", ["1210[].pbs01"])
    assert array["1210[].pbs01"][:2] == (QueueState.RUNNING, "B")


def test_pro_status_of_several_jobs_by_sequence_number() -> None:
    jobs = status("pro", "qstat-f-F-json-several", ["1201", "1202.pbs01", "1203.other", "1300"])
    assert {q: s[0] for q, s in jobs.items()} == {
        "1201": QueueState.RUNNING,
        "1202.pbs01": QueueState.QUEUED,
        "1203.other": QueueState.HELD,
    }


@pytest.mark.parametrize(
    ("name", "ids", "expected"),
    [
        ("qstat-f-F-json-one-unknown", ["1201.pbs01", "9999.pbs01"], ["1201.pbs01"]),
        ("qstat-f-F-json-unknown-only", ["9999.pbs01"], []),
        ("qstat-f-F-json-finished-without-x", ["1201.pbs01"], []),
        ("qstat-f-F-json-empty-queue", ["1201.pbs01"], []),
    ],
)
def test_pro_unknown_and_finished_ids_are_left_out(
    name: str, ids: list[str], expected: list[str]
) -> None:
    assert sorted(status("pro", name, ids)) == expected


def test_other_qstat_errors_are_parse_errors() -> None:
    with pytest.raises(QueueParseError, match="Connection refused"):
        adapter("pro").parse_status_output(
            2, "", "Connection refused\nqstat: cannot connect to server pbs01 (errno=111)\n", ["1"]
        )
    with pytest.raises(QueueParseError, match="153"):
        adapter("torque").parse_status_output(153, "garbage\n", "", ["1"])


def test_torque_status_with_wrapped_lines() -> None:
    exit_code, stdout, stderr = case("torque", "qstat-f-running")
    from conveyor.queue._pbs import text_jobs

    (attrs,) = text_jobs(exit_code, stdout, stderr).values()
    assert attrs["Error_Path"].endswith("/0f9c2e1a-7b4d-4c55-9d0e-8a1b2c3d4e5f_1/queue.err")
    assert "\t" not in attrs["Error_Path"]
    assert "CONVEYOR_TOKEN=7-0f1e2d3c4b5a," in attrs["Variable_List"]
    assert attrs["Variable_List"].endswith("PBS_O_WORKDIR=" + attrs["Error_Path"][24:-10])
    assert status("torque", "qstat-f-running", ["4807.torque01"], "torque") == {
        "4807.torque01": (QueueState.RUNNING, "R", None, None)
    }
    several = status("torque", "qstat-f-several", ["4807", "4808", "4809"], "torque")
    assert [s[0] for s in several.values()] == [
        QueueState.RUNNING,
        QueueState.QUEUED,
        QueueState.HELD,
    ]
    assert status("torque", "qstat-f-array", ["4814[1].torque01"], "torque")["4814[1].torque01"][
        0
    ] == (QueueState.RUNNING)
    one = status("torque", "qstat-f-one-unknown", ["4807.torque01", "9999.torque01"], "torque")
    assert list(one) == ["4807.torque01"]
    assert status("torque", "qstat-f-unknown-only", ["9999.torque01"], "torque") == {}


def test_captured_torque_wrapper_outputs() -> None:
    """Real captures from Debian's slurm-wlm-torque qstat over SLURM 22.05."""
    jobs = status("torque-wrapper", "qstat-f-all-states", [str(i) for i in range(13, 21)], "torque")
    assert {q: s[:2] for q, s in jobs.items()} == {
        "13": (QueueState.DONE, "C"),  # completed
        "14": (QueueState.DONE, "C"),  # exit 3: the wrapper shows no exit status
        "15": (QueueState.DONE, "C"),  # walltime
        "16": (QueueState.DONE, "C"),  # held, released, then done
        "17": (QueueState.DONE, "C"),  # array tasks
        "18": (QueueState.DONE, "C"),
        "19": (QueueState.DONE, "C"),
        "20": (QueueState.DONE, "C"),  # qdel
    }
    assert status("torque-wrapper", "qstat-f-running", ["15"], "torque")["15"][0] is (
        QueueState.RUNNING
    )
    # held jobs are pending to SLURM: the wrapper shows Q, not H
    assert status("torque-wrapper", "qstat-f-held-pending", ["16"], "torque")["16"][1] == "Q"
    assert status("torque-wrapper", "qstat-f-unknown-id", ["99999"], "torque") == {}
    mixed = status("torque-wrapper", "qstat-f-several-one-unknown", ["14", "99999", "15"], "torque")
    assert sorted(mixed) == ["14", "15"]
    name = "conveyor-sleeper-with-a-very-long-name-42-a1b2c3d4e5f6"
    _, stdout, _ = case("torque-wrapper", "qstat-f-running")
    assert f"Job_Name = {name}\n" in stdout  # -f prints the whole name ...
    _, brief, _ = case("torque-wrapper", "qstat-default-truncated")
    assert name not in brief  # ... the default listing cuts it
    assert name[:16] in brief


def test_unknown_state_is_unknown_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    exit_code, stdout, stderr = case("pro", "qstat-f-F-json-running")
    with caplog.at_level(logging.WARNING):
        jobs = adapter("pro").parse_status_output(
            exit_code, stdout.replace('"job_state":"R"', '"job_state":"Z"'), stderr, ["1201.pbs01"]
        )
    assert jobs["1201.pbs01"].state is QueueState.UNKNOWN
    assert "unknown PBS job state 'Z'" in caplog.text


# ----------------------------------------------------------------------------- accounting


@pytest.mark.parametrize(
    ("where", "name", "queue_id", "state", "reason", "exit_code"),
    [
        ("pro", "qstat-x-f-F-json-completed", "1201.pbs01", "DONE", None, 0),
        ("pro", "qstat-x-f-F-json-failed-exit-3", "1205.pbs01", "FAILED", "EXIT_CODE", 3),
        ("pro", "qstat-x-f-F-json-walltime", "1206.pbs01", "FAILED", "TIMEOUT", None),
        ("pro", "qstat-x-f-F-json-walltime-signal", "1207.pbs01", "FAILED", "TIMEOUT", None),
        ("pro", "qstat-x-f-F-json-memory", "1208.pbs01", "FAILED", "OUT_OF_MEMORY", None),
        ("pro", "qstat-x-f-F-json-deleted", "1209.pbs01", "FAILED", "CANCELLED", None),
        ("pro", "qstat-x-f-F-json-deleted-while-queued", "1211", "FAILED", "CANCELLED", None),
        ("pro", "qstat-x-f-F-json-launch-failure", "1212.pbs01", "FAILED", "NODE_FAIL", None),
        ("torque", "qstat-f-completed", "4807.torque01", "DONE", None, 0),
        ("torque", "qstat-f-failed-exit-3", "4810.torque01", "FAILED", "EXIT_CODE", 3),
        ("torque", "qstat-f-walltime", "4811.torque01", "FAILED", "TIMEOUT", None),
        ("torque", "qstat-f-memory", "4812.torque01", "FAILED", "OUT_OF_MEMORY", None),
        ("torque", "qstat-f-deleted", "4813.torque01", "FAILED", "CANCELLED", None),
        ("torque-wrapper", "qstat-f-completed", "13", "DONE", None, None),
    ],
)
def test_accounting(
    where: str, name: str, queue_id: str, state: str, reason: str | None, exit_code: int | None
) -> None:
    flavor = "pro" if where == "pro" else "torque"
    info = adapter(flavor).parse_accounting_output(*case(where, name), queue_id)
    assert info is not None
    failure = info.reason if info.state is QueueState.FAILED else None  # DONE: the comment
    assert (info.state, failure, info.exit_code) == (QueueState(state), reason, exit_code)
    assert info.native_state


def test_accounting_of_an_unknown_job_is_none() -> None:
    found = adapter("pro").parse_accounting_output(*case("pro", "qstat-f-F-json-unknown-only"), "9")
    assert found is None


# ----------------------------------------------------------------------------- find


def test_find_by_token() -> None:
    pro = adapter("pro")
    assert pro.parse_find_by_token(*case("pro", "qselect"), TOKEN) == "1201.pbs01"
    assert pro.parse_find_by_token(*case("pro", "qselect-none"), TOKEN) is None
    assert adapter("torque").parse_find_by_token(*case("torque", "qselect"), TOKEN) == (
        "4807.torque01"
    )
    with pytest.raises(QueueParseError):
        pro.parse_find_by_token(1, "", "qselect: cannot connect to server", TOKEN)


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
    found.append(text.replace(" = ", "="))
    found.append(text.replace("\t", "    ").replace("    ", "\t"))
    found += ["".join(chr(rng.randrange(1, 0x2FF)) for _ in range(200)), "\0\x7f{[", "{}", "[]"]
    found += ['{"Jobs": []}', '{"Jobs": {"1": 3}}', '{"Jobs": {"1": {"job_state": []}}}']
    found += ['{"Jobs": {"1": {"job_state": "F", "Exit_status": "x"}}}', "[" * 5000]
    return found


ParseFn = Callable[[PBSAdapter, int, str, str], object]
PARSERS: dict[str, ParseFn] = {
    "submit": lambda a, c, o, e: a.parse_submit_output(c, o, e),
    "status": lambda a, c, o, e: a.parse_status_output(c, o, e, ["1", "1201.pbs01", "13"]),
    "find": lambda a, c, o, e: a.parse_find_by_token(c, o, e, TOKEN),
    "accounting": lambda a, c, o, e: a.parse_accounting_output(c, o, e, "1201.pbs01"),
}


@pytest.mark.parametrize("flavor", ["pro", "torque"])
@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_parsers_raise_only_parse_errors(flavor: str, parser: str) -> None:
    rng = random.Random(f"{flavor}-{parser}")
    parse = PARSERS[parser]
    fixtures = sorted(CORPUS.glob("*/*.stdout"))
    assert len(fixtures) > 40
    for path in fixtures:
        exit_code, stdout, stderr = case(path.parent.name, path.name[: -len(".stdout")])
        for text in [stdout, *variants(stdout, rng)]:
            for code in (exit_code, 0, 1, 153):
                with contextlib.suppress(QueueParseError):
                    parse(adapter(flavor), code, text, stderr)
