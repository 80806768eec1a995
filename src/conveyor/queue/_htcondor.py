"""HTCondor helpers: the JobStatus table, the submit description and the ``-af:jV`` parser.

Split from :mod:`conveyor.queue.htcondor` to keep the adapter readable; no I/O here.

JobStatus codes, from the manual's job ClassAd attributes ("JobStatus"):
https://htcondor.readthedocs.io/en/latest/classad-attributes/job-classad-attributes.html

Submit description quoting (the manual's condor_submit page, "Submit Description File
Commands"): a command is ``name = value``, the value being the rest of the line with
surrounding white space removed; ``$(NAME)`` is a macro everywhere, so a literal ``$``
is written ``$(DOLLAR)``; a line ending in ``\\`` continues on the next one, so values
are refused if they hold a newline or end in a backslash. In the "new" syntax of
``arguments`` and ``environment`` the whole value is in double quotes, a literal double
quote is doubled, an argument with spaces is put in single quotes, and a single quote
inside it is doubled. ClassAd string literals (``+ConveyorToken = "..."``) escape ``"``
and ``\\`` with a backslash.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from conveyor.exceptions import QueueError, QueueParseError
from conveyor.queue.base import STDERR_FILE, STDOUT_FILE, QueueJobInfo, QueueState, SubmitSpec
from conveyor.queue.script import absolute_run_dir, comment, valid_token

log = logging.getLogger("conveyor.queue.htcondor")

#: JobStatus codes. ``None``: the job left (removed or completed); how is decided by
#: :func:`job_info` from ExitCode, ExitBySignal and RemoveReason.
NATIVE_STATES: dict[int, tuple[str, QueueState | None]] = {
    1: ("Idle", QueueState.QUEUED),
    2: ("Running", QueueState.RUNNING),
    3: ("Removed", None),
    4: ("Completed", None),
    5: ("Held", QueueState.HELD),
    6: ("Transferring Output", QueueState.RUNNING),
    7: ("Suspended", QueueState.SUSPENDED),
}

#: The attributes the status and accounting commands print, in this order.
ATTRIBUTES = (
    "JobStatus",
    "ExitCode",
    "ExitBySignal",
    "ExitSignal",
    "HoldReasonCode",
    "HoldReason",
    "RemoveReason",
)
#: The job ClassAd attribute holding the submit token, and the one holding the walltime
#: that ``periodic_remove`` enforces: a RemoveReason quoting the expression names it.
TOKEN_ATTRIBUTE = "ConveyorToken"
WALLTIME_ATTRIBUTE = "ConveyorWalltime"
PERIODIC_REMOVE = f"(JobStatus == 2) && (time() - EnteredCurrentStatus > {WALLTIME_ATTRIBUTE})"
#: The wrapper script, and the job's event log, in the run dir.
WRAPPER = "job.sh"
EVENT_LOG = "condor.log"

JOB_ID = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_PROC_ID = re.compile(r"([0-9]+)\.([0-9]+)")
_TERSE = re.compile(r"^\s*([0-9]+)\.([0-9]+) - ([0-9]+)\.([0-9]+)\s*$")
_COMMAND = re.compile(r"\+?[A-Za-z_][A-Za-z0-9_.]*")
_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|[^\s"]+)')
_WORD = r'(?:"(?:[^"\\]|\\.)*"|[^\s"]+)'
#: A whole line: words separated by white space (unambiguous, so no backtracking blowup).
_LINE = re.compile(rf"\s*{_WORD}(?:\s+{_WORD})*\s*")
_NUMBER = re.compile(r"[-+]?[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"'}
#: Which of several procs of one cluster speaks for it: a live one wins.
_PRECEDENCE = [
    QueueState.RUNNING,
    QueueState.SUSPENDED,
    QueueState.QUEUED,
    QueueState.HELD,
    QueueState.UNKNOWN,
    QueueState.FAILED,
    QueueState.DONE,
]


def evidence(exit_code: int, stdout: str, stderr: str) -> str:
    """The command's exit code and output tails, for error messages."""
    return (
        f"exit code {exit_code}, stderr: {stderr.strip()[-1000:]!r}, "
        f"stdout: {stdout.strip()[-2000:]!r}"
    )


def valid_id(queue_id: str) -> str:
    """``queue_id`` if it is ``cluster`` or ``cluster.proc``; QueueError otherwise."""
    if not JOB_ID.fullmatch(queue_id):
        raise QueueError(f"htcondor queue id {queue_id!r} is not CLUSTER or CLUSTER.PROC")
    return queue_id


def submit_value(field: str, text: str) -> str:
    """``text`` as a submit command value: ``$`` escaped, newlines refused."""
    if any(c in text for c in "\n\r\0") or text.endswith("\\") or text != text.strip():
        raise QueueError(
            f"htcondor {field} {text!r} must be one line, without surrounding white space "
            "or a trailing backslash"
        )
    return text.replace("$", "$(DOLLAR)")


def arguments(args: Sequence[str]) -> str:
    """``args`` in the new ``arguments`` syntax (each argument single-quoted)."""
    words = " ".join("'" + a.replace("'", "''") + "'" for a in args)
    return submit_value("arguments", '"' + words.replace('"', '""') + '"')


def _lines(spec: SubmitSpec, spool: bool) -> list[str]:
    r = spec.resources
    run_dir = absolute_run_dir(spec.run_dir).rstrip("/") or "/"
    token = valid_token(spec.submit_token)
    for field, given in (("nodes", r.nodes and r.nodes > 1), ("queue", r.queue), ("qos", r.qos)):
        if given:
            raise QueueError(
                f"the htcondor adapter has no {field} (a vanilla universe job runs on one "
                "machine, in no named queue); use htcondor: {...} submit commands instead"
            )
    wrapper = WRAPPER if spool else f"{run_dir}/{WRAPPER}"
    lines = [
        "universe = vanilla",
        "executable = /bin/bash",
        f"arguments = {arguments([wrapper])}",
        f"initialdir = {submit_value('run dir', run_dir)}",
        f"output = {STDOUT_FILE}",
        f"error = {STDERR_FILE}",
        f"log = {EVENT_LOG}",
        f"batch_name = conveyor-{token}",
        f'+{TOKEN_ATTRIBUTE} = "{token}"',
        # Macros expand at submit time: the script learns its own id from this.
        'environment = "CONVEYOR_QUEUE_ID=$(Cluster).$(Process)"',
    ]
    if spool:
        lines += [
            "should_transfer_files = YES",
            "when_to_transfer_output = ON_EXIT",
            f"transfer_input_files = {WRAPPER}",
        ]
    else:  # the script runs in the run dir, so only machines sharing it will do
        lines.append("should_transfer_files = NO")
    cpus = (r.processes or r.processes_per_node or 1) * (r.cpus_per_task or 1)
    if cpus > 1 or r.cpus_per_task or r.processes:
        lines.append(f"request_cpus = {cpus}")
    if r.memory_mb:
        lines.append(f"request_memory = {r.memory_mb}")
    if r.gpus:
        lines.append(f"request_gpus = {r.gpus}")
    if r.account:
        lines.append(f"accounting_group = {submit_value('account', r.account)}")
    if r.email:
        lines += [f"notify_user = {submit_value('email', r.email)}", "notification = Error"]
    if r.walltime:
        lines += [f"+{WALLTIME_ATTRIBUTE} = {r.walltime}", f"periodic_remove = {PERIODIC_REMOVE}"]
    for key, val in r.htcondor.items():
        if not _COMMAND.fullmatch(key):
            raise QueueError(f"htcondor submit command name {key!r} is not valid")
        if any(c in val for c in "\n\r\0"):
            raise QueueError(f"htcondor submit command {key} = {val!r} must be one line")
        lines.append(f"{key} = {val}")
    for line in r.extra_directives:
        if any(c in line for c in "\n\r\0"):
            raise QueueError(f"extra directive {line!r} must be a single line")
        lines.append(line)
    lines.append(f"queue {r.array_size or 1}")
    return lines


def submit_description(spec: SubmitSpec, adapter: str, spool: bool) -> str:
    """The whole ``job.sub``."""
    header = [
        f"# Conveyor job: {comment(spec.job_name)}",
        f"# Submit token: {valid_token(spec.submit_token)}",
        f"# Written by conveyor's {adapter} adapter.",
    ]
    return "\n".join([*header, *_lines(spec, spool)]) + "\n"


def submitted_id(exit_code: int, stdout: str, stderr: str) -> str:
    """``C.P`` from ``condor_submit -terse``'s ``C.P - C.Q``; ``C`` if several procs."""
    for line in reversed(stdout.splitlines()):
        match = _TERSE.match(line)
        if match and exit_code == 0:
            cluster, first, last_cluster, last = match.groups()
            if cluster != last_cluster:
                break
            return f"{cluster}.{first}" if first == last else cluster
    raise QueueParseError(f"condor_submit printed no job id: {evidence(exit_code, stdout, stderr)}")


def _literal(word: str) -> Any:
    if word.startswith('"'):
        if len(word) < 2 or not word.endswith('"'):
            raise ValueError(f"unterminated string {word!r}")
        return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), word[1:-1])
    lower = word.lower()
    if lower in ("undefined", "error"):
        return None
    if lower in ("true", "false"):
        return lower == "true"
    if _NUMBER.fullmatch(word):
        return float(word) if any(c in word for c in ".eE") else int(word)
    raise ValueError(f"unexpected value {word!r}")


def parse_rows(
    exit_code: int, stdout: str, stderr: str, attributes: Sequence[str] = ATTRIBUTES
) -> list[tuple[str, dict[str, Any]]]:
    """The ``(cluster.proc, {attribute: value})`` rows of ``-af:jV ATTRIBUTES``."""
    if exit_code != 0:
        raise QueueParseError(f"the command failed: {evidence(exit_code, stdout, stderr)}")
    rows: list[tuple[str, dict[str, Any]]] = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        words = _TOKEN.findall(line)
        try:
            if not _LINE.fullmatch(line) or not words:
                raise ValueError("stray characters")
            if not _PROC_ID.fullmatch(words[0]) or len(words) != len(attributes) + 1:
                raise ValueError(f"expected a job id and {len(attributes)} values")
            values = [_literal(w) for w in words[1:]]
        except ValueError as exc:
            raise QueueParseError(
                f"cannot parse line {line!r} ({exc}): {evidence(exit_code, stdout, stderr)}"
            ) from None
        rows.append((words[0], dict(zip(attributes, values, strict=True))))
    return rows


def _int(values: Mapping[str, Any], key: str) -> int | None:
    raw = values.get(key)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        return None
    return int(raw)


def job_info(queue_id: str, values: Mapping[str, Any]) -> QueueJobInfo:
    """One job's state, reason and exit code from its ClassAd values."""
    status = _int(values, "JobStatus")
    if status not in NATIVE_STATES:
        log.warning("unknown HTCondor JobStatus %r of job %s: treated as UNKNOWN", status, queue_id)
        return QueueJobInfo(queue_id, QueueState.UNKNOWN, str(status))
    name, state = NATIVE_STATES[status]
    native = f"{status} ({name})"
    if state is QueueState.HELD:
        reason = values.get("HoldReason")
        return QueueJobInfo(queue_id, state, native, str(reason) if reason else None)
    if state is not None:
        return QueueJobInfo(queue_id, state, native)
    if status == 3:
        why = str(values.get("RemoveReason") or "")
        failure = "TIMEOUT" if WALLTIME_ATTRIBUTE in why else "CANCELLED"
        return QueueJobInfo(queue_id, QueueState.FAILED, f"{native}: {why}", failure)
    if values.get("ExitBySignal") is True:
        signal = _int(values, "ExitSignal")
        code = 128 + signal if signal is not None else None
        return QueueJobInfo(queue_id, QueueState.FAILED, f"{native} by signal", "EXIT_CODE", code)
    code = _int(values, "ExitCode")
    if code:
        return QueueJobInfo(queue_id, QueueState.FAILED, native, "EXIT_CODE", code)
    return QueueJobInfo(queue_id, QueueState.DONE, native, None, code)


def infos(
    rows: Sequence[tuple[str, Mapping[str, Any]]], queue_ids: Sequence[str]
) -> dict[str, QueueJobInfo]:
    """The asked-about jobs among ``rows``; a cluster id speaks for all its procs."""
    found: dict[str, QueueJobInfo] = {}
    wanted = set(queue_ids)
    for proc_id, values in rows:
        cluster = proc_id.split(".", 1)[0]
        key = proc_id if proc_id in wanted else cluster if cluster in wanted else None
        if key is None:
            continue
        info = job_info(key, values)
        known = found.get(key)
        if known is None or _PRECEDENCE.index(info.state) < _PRECEDENCE.index(known.state):
            found[key] = info
    return found
