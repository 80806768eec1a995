"""PBS helpers: the state and exit-status tables, the directives and the qstat parsers.

Split from :mod:`conveyor.queue.pbs` to keep the adapter readable; nothing here does I/O.

Job states, from the PBS Professional Reference Guide ("Job States") and the Torque
Administrator Guide (``qstat``):
https://help.altair.com/2024.1.0/PBS%20Professional/PBSReferenceGuide2024.1.pdf and
http://docs.adaptivecomputing.com/torque/6-1-2/adminGuide/torque.htm#topics/torque/commands/qstat.htm
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from base64 import b32encode
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from conveyor.exceptions import QueueError, QueueParseError
from conveyor.queue.base import STDERR_FILE, STDOUT_FILE, QueueJobInfo, QueueState, SubmitSpec
from conveyor.queue.resources import Resources, format_hms
from conveyor.queue.script import valid_token

log = logging.getLogger("conveyor.queue.pbs")

Flavor = Literal["pro", "torque"]

#: ``job_state`` letters of both flavours. ``None``: the job has finished; its exit
#: status (and, on PBS Pro, its substate) decides between DONE and FAILED.
NATIVE_STATES: dict[str, QueueState | None] = {
    "B": QueueState.RUNNING,  # Pro: an array job has begun (some subjobs run)
    "C": None,  # Torque: completed (kept for keep_completed seconds)
    "E": QueueState.RUNNING,  # exiting after having run (epilogue, stage-out)
    "F": None,  # Pro: finished (a history job, with qstat -x)
    "H": QueueState.HELD,  # held by a user, an operator or the system
    "M": QueueState.QUEUED,  # Pro: moved to another server (history)
    "Q": QueueState.QUEUED,  # queued, eligible to run or be routed
    "R": QueueState.RUNNING,  # running
    "S": QueueState.SUSPENDED,  # suspended by the server (preemption, admin)
    "T": QueueState.QUEUED,  # in transit to a new location
    "U": QueueState.SUSPENDED,  # Pro: suspended while its workstation is busy
    "W": QueueState.QUEUED,  # waiting for its execution time (-a) or a stage-in
    "X": None,  # Pro: a finished (expired) subjob of an array
}

#: Negative ``Exit_status`` values of PBS Pro (``JOB_EXEC_*`` in openpbs's
#: src/include/job.h; the Admin Guide's table "Job Exit Status Codes").
PRO_EXIT_REASONS: dict[int, str] = {
    # launch failures: the job never ran properly on its node(s)
    **dict.fromkeys(
        [-1, -2, -3, -4, -5, -6, -7, -10, -13, -14, -20, -21, -22, -23, -30], "NODE_FAIL"
    ),
    -11: "PREEMPTED",  # JOB_EXEC_RERUN
    -12: "PREEMPTED",  # JOB_EXEC_CHKP: checkpointed and killed
    -15: "PREEMPTED",  # JOB_EXEC_QUERST: requeued for restart from checkpoint
    -16: "PREEMPTED",  # JOB_EXEC_FAILHOOK_RERUN
    -18: "PREEMPTED",  # JOB_EXEC_HOOK_RERUN
    -17: "CANCELLED",  # JOB_EXEC_FAILHOOK_DELETE: a hook rejected the job
    -19: "CANCELLED",  # JOB_EXEC_HOOK_DELETE
    -24: "EXIT_CODE",  # JOB_EXEC_KILL_NCPUS_BURST: used more cpus than asked
    -25: "EXIT_CODE",  # JOB_EXEC_KILL_NCPUS_SUM
    -26: "OUT_OF_MEMORY",  # JOB_EXEC_KILL_VMEM
    -27: "OUT_OF_MEMORY",  # JOB_EXEC_KILL_MEM
    -28: "TIMEOUT",  # JOB_EXEC_KILL_CPUT
    -29: "TIMEOUT",  # JOB_EXEC_KILL_WALLTIME
}
#: Negative ``exit_status`` values of Torque (Admin Guide 6.1, "Job Exit Status").
TORQUE_EXIT_REASONS: dict[int, str] = {
    **dict.fromkeys([-1, -2, -3, -4, -5, -6, -7, -8, -9, -13, -14], "NODE_FAIL"),
    -10: "OUT_OF_MEMORY",  # JOB_EXEC_OVERLIMIT_MEM (before 4.2: any limit)
    -11: "TIMEOUT",  # JOB_EXEC_OVERLIMIT_WT
    -12: "TIMEOUT",  # JOB_EXEC_OVERLIMIT_CPUT
}
#: PBS Pro substate of a finished job that was deleted (``JOB_SUBSTATE_TERMINATED``).
SUBSTATE_TERMINATED = 91
#: Job names may be this long (Torque's documented limit is 15 characters).
NAME_LIMIT: dict[str, int] = {"pro": 236, "torque": 15}

#: A job id as qsub prints it: ``123``, ``123.server``, ``123[].server`` (Pro array),
#: ``123[4].server`` (a subjob); Torque ``123[]`` too.
JOB_ID = re.compile(r"[0-9]+(?:\[[0-9]*\])?(?:\.[A-Za-z0-9_.-]+)?")
_VALUE = re.compile(r"[A-Za-z0-9_.:+=@%/,-]+")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_NAME_OK = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
#: What qstat says of an id it does not know, or (Pro, without -x) of a finished job.
_GONE = re.compile(
    r"^qstat: (?:Unknown Job Id(?: Error)? \S+|\S+ Job has finished, use -x or -H.*)\s*$"
)


def evidence(exit_code: int, stdout: str, stderr: str) -> str:
    """The command's exit code and output tails, for error messages."""
    return (
        f"exit code {exit_code}, stderr: {stderr.strip()[-1000:]!r}, "
        f"stdout: {stdout.strip()[-2000:]!r}"
    )


def valid_id(queue_id: str) -> str:
    """``queue_id`` if it is a PBS job id; QueueError otherwise."""
    if not JOB_ID.fullmatch(queue_id):
        raise QueueError(f"pbs queue id {queue_id!r} is not a PBS job id")
    return queue_id


def id_key(queue_id: str) -> str:
    """The sequence number (with any array brackets): ``123[]`` for ``123[].server``.

    qstat may print ``123.server.domain`` for a job qsub called ``123.server``; one
    worker talks to one server, so the sequence number identifies the job.
    """
    return queue_id.split(".", 1)[0]


def job_name(token: str, flavor: Flavor) -> str:
    """The job name that carries ``token``: ``conveyor-TOKEN``, or where that is too
    long (Torque's 15 characters) ``cv`` and 13 characters of the token's SHA-256."""
    name = f"conveyor-{valid_token(token)}"
    if len(name) <= NAME_LIMIT[flavor] and _NAME_OK.fullmatch(name):
        return name
    digest = b32encode(hashlib.sha256(token.encode()).digest()).decode().lower()
    return "cv" + digest[: NAME_LIMIT[flavor] - 2]


def value(field: str, text: str) -> str:
    """``text`` if qsub reads it back as one word; QueueError naming ``field`` otherwise.

    A directive line is split on white space by qsub, not by a shell: quotes would be
    kept, and ``#`` or a newline would end or break the line.
    """
    if not _VALUE.fullmatch(text):
        raise QueueError(
            f"pbs {field} {text!r} must be letters, digits and '_.:+=@%/,-' only "
            "(no spaces, quotes, '#' or newlines)"
        )
    return text


def _chunk(r: Resources) -> tuple[int, int | None, int | None]:
    """(nodes, processes per node, cpus per node) of the generic resources."""
    ppn = r.processes_per_node
    nodes = r.nodes or (math.ceil(r.processes / ppn) if r.processes and ppn else 1)
    if ppn is None and r.processes:
        ppn = math.ceil(r.processes / nodes)
    cpus = (ppn or 1) * (r.cpus_per_task or 1) if ppn or r.cpus_per_task else None
    return nodes, ppn, cpus


def _resource_lines(r: Resources, flavor: Flavor) -> list[str]:
    lines: list[str] = []
    sized = (r.nodes, r.processes, r.processes_per_node, r.cpus_per_task, r.gpus, r.memory_mb)
    if any(v for v in sized):
        nodes, ppn, cpus = _chunk(r)
        if flavor == "pro":
            parts = [str(nodes)]
            parts += [f"ncpus={cpus}"] if cpus else []
            parts += [f"mpiprocs={ppn}"] if ppn else []
            parts += [f"ompthreads={r.cpus_per_task}"] if r.cpus_per_task else []
            parts += [f"mem={r.memory_mb}mb"] if r.memory_mb else []
            parts += [f"ngpus={r.gpus}"] if r.gpus else []
            lines.append(f"-l select={':'.join(parts)}")
        else:
            spec = f"nodes={nodes}" + (f":ppn={cpus}" if cpus else "")
            spec += f":gpus={r.gpus}" if r.gpus else ""
            lines.append(f"-l {spec}")
            if r.memory_mb:  # Torque's mem is the whole job's memory
                lines.append(f"-l mem={r.memory_mb * nodes}mb")
    if r.walltime:
        lines.append(f"-l walltime={format_hms(r.walltime)}")
    return lines


def directives(spec: SubmitSpec, flavor: Flavor) -> list[str]:
    """The ``#PBS`` lines of a job script (without the ``#PBS`` prefix).

    stdout and stderr go to ``queue.out``/``queue.err`` given relative: qsub resolves
    them against its working directory, which is the run dir, so no path (with its
    spaces or colons, which PBS would take for a host name) goes into a directive.
    """
    r = spec.resources
    token = valid_token(spec.submit_token)
    if r.qos:
        raise QueueError("the pbs adapter has no qos; ask for it under pbs: {...} if needed")
    lines = [
        f"-N {job_name(token, flavor)}",
        "-S /bin/bash",
        f"-o {STDOUT_FILE}",
        f"-e {STDERR_FILE}",
        f"-v CONVEYOR_TOKEN={token}",
    ]
    if r.queue:
        lines.append(f"-q {value('queue', r.queue)}")
    if r.account:
        lines.append(f"-A {value('account', r.account)}")
    if r.email:
        lines.append(f"-M {value('email', r.email)}")
    lines += _resource_lines(r, flavor)
    if r.array_size and r.array_size > 1:
        lines.append(f"{'-J' if flavor == 'pro' else '-t'} 0-{r.array_size - 1}")
    for key, val in r.pbs.items():
        if not _KEY.fullmatch(key):
            raise QueueError(f"pbs resource name {key!r} is not a PBS resource name")
        lines.append(f"-l {key}={value(f'resource {key}', val)}")
    return lines


def extra_lines(spec: SubmitSpec) -> list[str]:
    """``extra_directives``, verbatim, each one line."""
    for line in spec.resources.extra_directives:
        if "\n" in line or "\r" in line or "\0" in line:
            raise QueueError(f"extra directive {line!r} must be a single line")
    return list(spec.resources.extra_directives)


# ----------------------------------------------------------------------------- parsing


def check_errors(exit_code: int, stdout: str, stderr: str) -> None:
    """Raise unless the command succeeded or failed only over unknown/finished ids.

    qstat exits with 153 (PBSE_UNKJOBID) or 35 (PBSE_HISTJOBID) and one stderr line per
    such id, and still prints the jobs it knows. Debian's Torque-style wrapper over
    SLURM exits 153 and prints nothing at all when it knows none of the ids.
    """
    if exit_code == 0:
        return
    lines = [line for line in stderr.splitlines() if line.strip()]
    if lines and all(_GONE.match(line) for line in lines):
        return
    if not lines and exit_code == 153 and not stdout.strip():
        return
    raise QueueParseError(f"qstat failed: {evidence(exit_code, stdout, stderr)}")


def json_jobs(exit_code: int, stdout: str, stderr: str) -> dict[str, dict[str, Any]]:
    """The ``Jobs`` of ``qstat -f -F json`` (PBS Pro), by job id."""
    check_errors(exit_code, stdout, stderr)
    if not stdout.strip():
        return {}
    try:
        # strict=False: PBS copies control characters of job attributes (a tab in a
        # job name, say) into its JSON strings without escaping them.
        data = json.loads(stdout, strict=False)
    except (ValueError, RecursionError) as exc:
        raise QueueParseError(
            f"qstat -F json printed invalid JSON ({exc}): {evidence(exit_code, stdout, stderr)}"
        ) from exc
    jobs = data.get("Jobs", {}) if isinstance(data, dict) else None
    if not isinstance(jobs, dict) or not all(isinstance(j, dict) for j in jobs.values()):
        raise QueueParseError(
            f"qstat -F json printed no 'Jobs' object: {evidence(exit_code, stdout, stderr)}"
        )
    return {str(k): v for k, v in jobs.items()}


_JOB_HEADER = re.compile(r"^Job Id:\s*(\S+)\s*$")
_ATTRIBUTE = re.compile(r"^([ \t]+)([A-Za-z_][A-Za-z0-9_.]*) = ?(.*)$")


def _blocks(stdout: str) -> Iterator[tuple[str, list[str]]]:
    job_id: str | None = None
    lines: list[str] = []
    for line in stdout.splitlines():
        header = _JOB_HEADER.match(line)
        if header:
            if job_id is not None:
                yield job_id, lines
            job_id, lines = header.group(1), []
        elif line.strip():
            if job_id is None:
                raise QueueParseError(f"qstat -f line {line!r} comes before any 'Job Id:'")
            lines.append(line)
    if job_id is not None:
        yield job_id, lines


def text_jobs(exit_code: int, stdout: str, stderr: str) -> dict[str, dict[str, str]]:
    """The jobs of ``qstat -f`` in text (Torque), by job id, attributes by name.

    Torque indents attributes by four spaces and wraps long values onto continuation
    lines that start with a tab; Debian's wrapper over SLURM indents attributes by a
    tab and never wraps. So a tab-led line continues the previous value when the block
    indents attributes with spaces, and is an attribute otherwise.
    """
    check_errors(exit_code, stdout, stderr)
    jobs: dict[str, dict[str, str]] = {}
    for job_id, lines in _blocks(stdout):
        attrs: dict[str, str] = {}
        last: str | None = None
        spaces = bool(lines) and lines[0].startswith(" ")
        for line in lines:
            match = _ATTRIBUTE.match(line)
            continuation = line.startswith("\t") and spaces
            if match and not continuation:
                last = match.group(2)
                attrs[last] = match.group(3).rstrip()
            elif last is not None and line[:1] in ("\t", " "):
                attrs[last] += line.strip()
            else:
                raise QueueParseError(
                    f"cannot parse qstat -f line {line!r} of job {job_id}: "
                    f"{evidence(exit_code, stdout, stderr)}"
                )
        jobs[job_id] = attrs
    return jobs


def _int(raw: Any, what: str) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        return int(str(raw).strip())
    except ValueError:
        raise QueueParseError(f"{what} {raw!r} is not an integer") from None


def _seconds(raw: Any) -> int | None:
    parts = str(raw or "").strip().split(":")
    if not all(p.isdigit() for p in parts) or len(parts) > 3:
        return None
    total = 0
    for part in parts:
        total = total * 60 + int(part)
    return total


def _used(attrs: Mapping[str, Any], group: str, key: str) -> Any:
    """``resources_used.walltime`` (text) or ``resources_used: {walltime}`` (JSON)."""
    nested = attrs.get(group)
    if isinstance(nested, Mapping):
        return nested.get(key)
    return attrs.get(f"{group}.{key}")


def _signal_reason(attrs: Mapping[str, Any]) -> str:
    """Why PBS killed a job by a signal: past its walltime, or deleted (or preempted)."""
    used = _seconds(_used(attrs, "resources_used", "walltime"))
    limit = _seconds(_used(attrs, "Resource_List", "walltime"))
    if used is not None and limit and used >= limit:
        return "TIMEOUT"
    return "CANCELLED"


def job_info(queue_id: str, attrs: Mapping[str, Any], flavor: Flavor, output: str) -> QueueJobInfo:
    """One job's state, reason and exit code from its qstat attributes."""
    letter = str(attrs.get("job_state", "")).strip()
    if not letter:
        raise QueueParseError(f"qstat shows job {queue_id} without a job_state: {output[-2000:]!r}")
    comment = attrs.get("comment")
    reason = str(comment) if comment not in (None, "") else None
    if letter not in NATIVE_STATES:
        log.warning("unknown PBS job state %r of job %s: treated as UNKNOWN", letter, queue_id)
        return QueueJobInfo(queue_id, QueueState.UNKNOWN, letter, reason)
    state = NATIVE_STATES[letter]
    if state is not None:
        return QueueJobInfo(queue_id, state, letter, reason)
    exit_key = "Exit_status" if flavor == "pro" else "exit_status"
    code = _int(attrs.get(exit_key, attrs.get(exit_key.lower())), exit_key)
    substate = _int(attrs.get("substate"), "substate")
    native = letter if substate is None else f"{letter} substate {substate}"
    if code is not None:
        native += f" {exit_key}={code}"
    table = PRO_EXIT_REASONS if flavor == "pro" else TORQUE_EXIT_REASONS
    failure: str | None
    if flavor == "pro" and substate == SUBSTATE_TERMINATED:
        failure = "CANCELLED"
    elif code is None or code == 0:
        failure = None
    elif code < 0:
        failure = table.get(code, "NODE_FAIL")
    elif code > 256:  # the job's shell was killed by signal code - 256
        failure = _signal_reason(attrs)
    else:
        failure = "EXIT_CODE"
    exit_code = code if code is not None and 0 <= code <= 255 else None
    if failure is None:
        return QueueJobInfo(queue_id, QueueState.DONE, native, reason, exit_code)
    return QueueJobInfo(queue_id, QueueState.FAILED, native, failure, exit_code)


def matching(
    jobs: Mapping[str, Mapping[str, Any]], queue_ids: Sequence[str]
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(requested id, attributes) of each listed job that was asked about."""
    wanted = {id_key(q): q for q in queue_ids}
    for job_id, attrs in jobs.items():
        requested = wanted.get(id_key(job_id))
        if requested is not None:
            yield requested, attrs
