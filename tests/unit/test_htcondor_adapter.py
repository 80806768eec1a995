"""The htcondor adapter over its fixture corpus (tests/fixtures/queue/htcondor, see its
README)."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor.exceptions import ConfigError, QueueError, QueueParseError
from conveyor.queue import QueueState, SubmitSpec, get_adapter
from conveyor.queue._htcondor import ATTRIBUTES, arguments
from conveyor.queue.htcondor import HTCondorAdapter
from conveyor.queue.resources import parse_resources

CORPUS = Path(__file__).parents[1] / "fixtures" / "queue" / "htcondor"
TOKEN = "42-a1b2c3d4e5f6"


def case(name: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one recorded command."""
    stderr, code = CORPUS / f"{name}.stderr", CORPUS / f"{name}.exit"
    return (
        int(code.read_text()) if code.exists() else 0,
        (CORPUS / f"{name}.stdout").read_text(),
        stderr.read_text() if stderr.exists() else "",
    )


def adapter(**options: Any) -> HTCondorAdapter:
    made = get_adapter("htcondor", options)
    assert isinstance(made, HTCondorAdapter)
    return made


def spec(run_dir: str = "/work/run dir", **resources: Any) -> SubmitSpec:
    return SubmitSpec(
        run_dir=run_dir,
        job_name=f"conveyor-{TOKEN}",
        submit_token=TOKEN,
        command=["python", "-m", "conveyor.execution", run_dir],
        resources=parse_resources(resources),
    )


def commands(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and " = " in line:
            key, value = line.split(" = ", 1)
            found[key] = value
    return found


# ----------------------------------------------------------------------------- render


def test_submit_description_and_script() -> None:
    files = adapter().render(
        spec(
            processes=2,
            cpus_per_task=3,
            memory="2G",
            gpus=1,
            walltime=90,
            account="group_physics.alice",
            email="alice@example.org",
            htcondor={"requirements": '(OpSysAndVer == "AlmaLinux9")', "+Project": '"x"'},
            extra_directives=["rank = Memory"],
        )
    )
    assert sorted(files) == ["job.sh", "job.sub"]
    text = files["job.sub"]
    assert text.splitlines()[-1] == "queue 1"
    assert commands(text) == {
        "universe": "vanilla",
        "executable": "/bin/bash",
        "arguments": "\"'/work/run dir/job.sh'\"",
        "initialdir": "/work/run dir",
        "output": "queue.out",
        "error": "queue.err",
        "log": "condor.log",
        "batch_name": f"conveyor-{TOKEN}",
        "+ConveyorToken": f'"{TOKEN}"',
        "environment": '"CONVEYOR_QUEUE_ID=$(Cluster).$(Process)"',
        "should_transfer_files": "NO",
        "request_cpus": "6",
        "request_memory": "2048",
        "request_gpus": "1",
        "accounting_group": "group_physics.alice",
        "notify_user": "alice@example.org",
        "notification": "Error",
        "+ConveyorWalltime": "90",
        "periodic_remove": (
            "(JobStatus == 2) && (time() - EnteredCurrentStatus > ConveyorWalltime)"
        ),
        "requirements": '(OpSysAndVer == "AlmaLinux9")',
        "+Project": '"x"',
        "rank": "Memory",
    }
    script = files["job.sh"]
    assert script.startswith("#!/bin/bash\n# Conveyor job:")
    assert "cd -- '/work/run dir' || exit 1" in script
    assert '"$CONVEYOR_QUEUE_ID"' in script


def test_quoting_rules() -> None:
    assert arguments(["a b", "it's", 'say "hi"']) == "\"'a b' 'it''s' 'say \"\"hi\"\"'\""
    text = adapter().render(spec(run_dir="/w/$(HOME) it's"))["job.sub"]
    assert commands(text)["initialdir"] == "/w/$(DOLLAR)(HOME) it's"
    assert commands(text)["arguments"] == "\"'/w/$(DOLLAR)(HOME) it''s/job.sh'\""
    with pytest.raises(QueueError, match="one line"):
        adapter().render(spec(run_dir="/w/a\nqueue 100"))
    with pytest.raises(QueueError, match="one line"):
        adapter().render(spec(htcondor={"requirements": "true\nqueue 9"}))
    with pytest.raises(QueueError, match="not valid"):
        adapter().render(spec(htcondor={"bad name": "1"}))


@pytest.mark.parametrize("resources", [{"nodes": 2}, {"queue": "short"}, {"qos": "high"}])
def test_what_htcondor_lacks_is_refused(resources: dict[str, Any]) -> None:
    with pytest.raises(QueueError, match=r"no (nodes|queue|qos)"):
        adapter().render(spec(**resources))


def test_array_and_spool() -> None:
    text = adapter(spool=True).render(spec(array_size=4))["job.sub"]
    assert text.splitlines()[-1] == "queue 4"
    found = commands(text)
    assert found["should_transfer_files"] == "YES"
    assert found["transfer_input_files"] == "job.sh"
    assert found["arguments"] == "\"'job.sh'\""
    assert adapter(spool=True).submit_command(spec()) == [
        "condor_submit",
        "-terse",
        "-spool",
        "/work/run dir/job.sub",
    ]
    assert adapter(spool=True).transfer_data_command("12.0") == ["condor_transfer_data", "12.0"]
    assert adapter().transfer_data_command("12.0") is None
    with pytest.raises(ConfigError):
        get_adapter("htcondor", {"spool": "yes"})


def test_commands() -> None:
    a = adapter()
    assert a.submit_command(spec()) == ["condor_submit", "-terse", "/work/run dir/job.sub"]
    assert a.status_command(["1.0", "2"]) == ["condor_q", "-af:jV", *ATTRIBUTES, "1.0", "2"]
    assert a.find_by_token_command(TOKEN) == [
        "condor_q",
        "-constraint",
        f'ConveyorToken == "{TOKEN}"',
        "-af:jV",
        *ATTRIBUTES,
    ]
    assert a.accounting_command("7.0") == [
        "condor_history",
        "-af:jV",
        *ATTRIBUTES,
        "-limit",
        "1",
        "7.0",
    ]
    assert a.accounting_command("7") == ["condor_history", "-af:jV", *ATTRIBUTES, "7"]
    assert a.cancel_command("7.0") == ["condor_rm", "7.0"]
    assert a.hold_command("7.0") == ["condor_hold", "7.0"]
    assert a.release_command("7.0") == ["condor_release", "7.0"]
    for bad in ("-all", "7.0 8.0", "owner", ""):
        with pytest.raises(QueueError):
            a.cancel_command(bad)


# ----------------------------------------------------------------------------- parse


def test_submit_output() -> None:
    assert adapter().parse_submit_output(*case("condor_submit-terse")) == "2208.0"
    assert adapter().parse_submit_output(*case("condor_submit-terse-array")) == "2220"
    with pytest.raises(QueueParseError, match="Failed to connect to local queue manager"):
        adapter().parse_submit_output(*case("condor_submit-error"))


def states(name: str, ids: list[str]) -> dict[str, tuple[Any, ...]]:
    jobs = adapter().parse_status_output(*case(name), ids)
    return {q: (i.state, i.native_state, i.reason, i.exit_code) for q, i in jobs.items()}


def test_status() -> None:
    assert states("condor_q-running", ["2208.0"]) == {
        "2208.0": (QueueState.RUNNING, "2 (Running)", None, None)
    }
    assert states("condor_q-idle", ["2209.0"])["2209.0"][0] is QueueState.QUEUED
    assert states("condor_q-empty", ["2209.0"]) == {}
    several = states("condor_q-several", ["2208.0", "2209.0", "2212.0", "2215.0", "2216.0", "9.0"])
    assert {q: s[0] for q, s in several.items()} == {
        "2208.0": QueueState.RUNNING,
        "2209.0": QueueState.QUEUED,
        "2212.0": QueueState.HELD,
        "2215.0": QueueState.SUSPENDED,
        "2216.0": QueueState.RUNNING,
    }


def test_hold_reasons() -> None:
    held = states("condor_q-held", ["2211.0", "2212.0", "2213.0", "2214.0"])
    assert {q: s[2] for q, s in held.items()} == {
        "2211.0": "submitted on hold at user's request",
        "2212.0": "via condor_hold (by user alice)",
        "2213.0": (
            "Error from slot1_3@node07.cluster.example: Failed to open "
            "'/home/alice/conveyor/runs/ab/ab12_1/queue.out' as standard output: "
            "Permission denied (errno 13)"
        ),
        "2214.0": (
            "Error from slot1_1@node07.cluster.example: memory usage exceeded "
            'request_memory\nJob in status 2 put on hold by SYSTEM_PERIODIC_HOLD due to "memory".'
        ),
    }


def test_jobs_leaving_the_queue_and_arrays() -> None:
    leaving = states("condor_q-leaving", ["2217.0", "2218.0"])
    assert leaving["2217.0"][:4] == (QueueState.DONE, "4 (Completed)", None, 0)
    assert leaving["2218.0"][0] is QueueState.FAILED
    assert leaving["2218.0"][2] == "CANCELLED"
    # a cluster id speaks for its procs: a running one wins
    assert states("condor_q-array", ["2220"])["2220"][0] is QueueState.RUNNING
    assert states("condor_q-array", ["2220.0"])["2220.0"][0] is QueueState.DONE


def test_a_schedd_that_does_not_answer_is_a_parse_error() -> None:
    with pytest.raises(QueueParseError, match="Failed to fetch ads"):
        adapter().parse_status_output(*case("condor_q-schedd-down"), ["1.0"])


def test_unknown_job_status_is_unknown_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        jobs = adapter().parse_status_output(
            0, "3.0 9 0 false 0 0 undefined undefined\n", "", ["3.0"]
        )
    assert jobs["3.0"].state is QueueState.UNKNOWN
    assert "unknown HTCondor JobStatus 9" in caplog.text


@pytest.mark.parametrize(
    ("name", "queue_id", "state", "reason", "exit_code"),
    [
        ("condor_history-completed", "2208.0", "DONE", None, 0),
        ("condor_history-failed-exit-3", "2221.0", "FAILED", "EXIT_CODE", 3),
        ("condor_history-signal", "2222.0", "FAILED", "EXIT_CODE", 137),
        ("condor_history-walltime", "2223.0", "FAILED", "TIMEOUT", None),
        ("condor_history-cancelled", "2218.0", "FAILED", "CANCELLED", None),
        ("condor_history-array", "2220", "FAILED", "EXIT_CODE", 3),
    ],
)
def test_accounting(
    name: str, queue_id: str, state: str, reason: str | None, exit_code: int | None
) -> None:
    info = adapter().parse_accounting_output(*case(name), queue_id)
    assert info is not None
    assert (info.state, info.reason, info.exit_code) == (QueueState(state), reason, exit_code)
    assert adapter().parse_accounting_output(*case("condor_history-unknown"), queue_id) is None


def test_find_by_token() -> None:
    a = adapter()
    assert a.parse_find_by_token(*case("condor_q-find-by-token"), TOKEN) == "2208.0"
    assert a.parse_find_by_token(*case("condor_q-find-by-token-cluster"), TOKEN) == "2220"
    assert a.parse_find_by_token(*case("condor_q-empty"), TOKEN) is None
    with pytest.raises(QueueParseError, match="several"):
        a.parse_find_by_token(
            0,
            "1.0 2 0 false 0 0 undefined undefined\n" * 2
            + "2.0 1 0 false 0 0 undefined undefined\n",
            "",
            TOKEN,
        )


# ----------------------------------------------------------------------------- fuzz


def variants(text: str, rng: random.Random) -> list[str]:
    lines = text.splitlines(keepends=True)
    found = [text[: rng.randrange(len(text) + 1)] for _ in range(8)]
    found.append("".join(rng.sample(lines, len(lines))))
    found.append("".join(line[: len(line) // 2] + "\n" + line[len(line) // 2 :] for line in lines))
    found.append(text.replace('"', ""))
    found.append(text.replace(" ", "\t"))
    found += ["".join(chr(rng.randrange(1, 0x2FF)) for _ in range(200)), '1.0 "' + "a" * 5000]
    found += ["1.0 1e999999 0 0 0 0 0 0", "1.0 nan", "1.0 " + "-" * 9 + " 1 1 1 1 1 1"]
    return found


PARSERS: dict[str, Callable[[HTCondorAdapter, int, str, str], object]] = {
    "submit": lambda a, c, o, e: a.parse_submit_output(c, o, e),
    "status": lambda a, c, o, e: a.parse_status_output(c, o, e, ["2208.0", "2220", "1.0"]),
    "find": lambda a, c, o, e: a.parse_find_by_token(c, o, e, TOKEN),
    "accounting": lambda a, c, o, e: a.parse_accounting_output(c, o, e, "2220"),
}


@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_parsers_raise_only_parse_errors(parser: str) -> None:
    rng = random.Random(parser)
    fixtures = sorted(CORPUS.glob("*.stdout"))
    assert len(fixtures) > 20
    for path in fixtures:
        exit_code, stdout, stderr = case(path.name[: -len(".stdout")])
        for text in [stdout, *variants(stdout or "1.0 2", rng)]:
            for code in (exit_code, 0, 1):
                with contextlib.suppress(QueueParseError):
                    PARSERS[parser](adapter(), code, text, stderr)
