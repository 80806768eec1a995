"""Helpers of the ``slurm`` adapter: ``#SBATCH`` directives and the small parsers its
output needs. Pure functions, no I/O.

Directives: https://slurm.schedmd.com/sbatch.html.
"""

from __future__ import annotations

import re

from conveyor.exceptions import QueueError, QueueParseError, tail
from conveyor.queue.base import STDERR_FILE, STDOUT_FILE, SubmitSpec
from conveyor.queue.resources import format_hms
from conveyor.queue.script import absolute_run_dir, valid_token

__all__ = [
    "JOB_ID",
    "base_id",
    "directive_value",
    "directives",
    "evidence",
    "exit_status",
    "fields",
    "state_word",
    "valid_id",
]

#: A job id as sbatch prints it, optionally an array task or a het job component.
JOB_ID = re.compile(r"[1-9][0-9]*(?:[_+][0-9]+)?")
#: A job id as squeue/sacct list it: ``123``, ``123_4``, ``123_[5-9%2]``, ``123+1``.
_LISTED_ID = re.compile(r"([1-9][0-9]*)(?:_(?:[0-9]+|\[[0-9,\-%]+\])|\+[0-9]+)?")
_STATE = re.compile(r"[A-Z][A-Z_]*")
_EXIT = re.compile(r"(-?[0-9]+):([0-9]+)")
#: Directive values that need no quotes.
_PLAIN = re.compile(r"[A-Za-z0-9._,:=+/@%-]+")
#: Characters kept in a job name; others become ``_``. SLURM takes any name, but its
#: job completion log (jobcomp/filetxt) splits records at blanks, and names are shown in
#: ``|``-separated listings.
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
#: Keys of ``slurm:`` passthrough options.
_OPTION = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def evidence(stdout: str, stderr: str) -> str:
    """The tails of a command's output, for an error message."""
    return f"stderr: {tail(stderr.strip())!r}, stdout: {tail(stdout.strip())!r}"


def valid_id(queue_id: str) -> str:
    """``queue_id`` if it is a SLURM job id; QueueError otherwise."""
    if not JOB_ID.fullmatch(queue_id):
        raise QueueError(f"SLURM job id {queue_id!r} is not a number (or NUMBER_TASK)")
    return queue_id


def base_id(job_id: str) -> str:
    """The job id an array task or het job component belongs to (``123_4`` → ``123``);
    ``job_id`` itself when it is no such thing."""
    match = _LISTED_ID.fullmatch(job_id)
    return match.group(1) if match else job_id


def fields(line: str, count: int, stdout: str, stderr: str, exit_code: int) -> list[str]:
    """``line`` split at ``|`` into ``count`` fields (the last may hold ``|``), with a
    listed job id first; QueueParseError otherwise."""
    parts = line.strip().split("|", count - 1)
    if len(parts) != count or not _LISTED_ID.fullmatch(parts[0].split(".", 1)[0]):
        raise QueueParseError(
            f"cannot parse SLURM output line {line!r} (expected {count} '|'-separated "
            f"fields, a job id first); exit code {exit_code}, {evidence(stdout, stderr)}"
        )
    return parts


def state_word(state: str, line: str) -> str:
    """The state name in ``State`` (sacct writes ``CANCELLED by 1000``)."""
    word = state.split(" ", 1)[0]
    if not _STATE.fullmatch(word):
        raise QueueParseError(f"no SLURM job state in {state!r} (line {line!r})")
    return word


def exit_status(text: str, line: str) -> int | None:
    """sacct's ``ExitCode`` ``CODE:SIGNAL`` as one number: the code, or 128 + the signal
    that killed the job (as a shell reports it); None if empty or not a real signal
    (SLURM writes ``0:125`` for a job killed for its memory)."""
    if not text:
        return None
    match = _EXIT.fullmatch(text)
    if not match:
        raise QueueParseError(f"cannot parse SLURM exit code {text!r} (line {line!r})")
    code, signal = int(match.group(1)), int(match.group(2))
    if code or not signal:
        return code
    return 128 + signal if signal < 65 else None


def directive_value(value: str, field: str) -> str:
    """``value`` as sbatch reads it from an ``#SBATCH`` line.

    sbatch splits directive lines at blanks, honours double quotes and backslash
    escapes, and ends the line at an unquoted ``#``: a value that is not plain goes in
    double quotes with ``\\`` and ``"`` escaped. Control characters (a newline would end
    the directive) are refused, naming ``field``.
    """
    if any(not c.isprintable() for c in value):
        raise QueueError(f"{field} {value!r} holds a newline or control character")
    if _PLAIN.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _path(run_dir: str, name: str) -> str:
    # sbatch expands %j, %A... in --output/--error file names: %% is a literal %.
    return f"{run_dir.rstrip('/')}/{name}".replace("%", "%%")


def _time(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    return f"{days}-{format_hms(rest)}" if days else format_hms(rest)


def directives(spec: SubmitSpec) -> list[str]:
    """The sbatch options of a job, each to follow ``#SBATCH `` on a line of its own."""
    run_dir = absolute_run_dir(spec.run_dir)
    token = valid_token(spec.submit_token)
    res = spec.resources
    q = directive_value
    name = _NAME_UNSAFE.sub("_", res.job_name or "conveyor")
    lines = [
        f"--job-name={name}-{token}",
        f"--output={q(_path(run_dir, STDOUT_FILE), 'run dir')}",
        f"--error={q(_path(run_dir, STDERR_FILE), 'run dir')}",
        f"--chdir={q(run_dir, 'run dir')}",
    ]
    numbers = [
        ("nodes", res.nodes),
        ("ntasks", res.processes),
        ("ntasks-per-node", res.processes_per_node),
        ("cpus-per-task", res.cpus_per_task),
        ("gpus-per-node", res.gpus or None),
    ]
    lines += [f"--{option}={value}" for option, value in numbers if value is not None]
    if res.memory_mb is not None:
        lines.append(f"--mem={res.memory_mb}M")
    if res.walltime is not None:
        lines.append(f"--time={_time(res.walltime)}")
    texts = [("partition", res.queue), ("account", res.account), ("qos", res.qos)]
    lines += [f"--{option}={q(value, option)}" for option, value in texts if value is not None]
    if res.email is not None:
        lines += [f"--mail-user={q(res.email, 'email')}", "--mail-type=FAIL"]
    if res.array_size is not None:
        # Every task writes to the same queue.out/queue.err: append, never truncate.
        lines += [f"--array=0-{res.array_size - 1}", "--open-mode=append"]
    for key, value in res.slurm.items():
        option = key.removeprefix("--")
        if not _OPTION.fullmatch(option):
            raise QueueError(f"slurm option {key!r} is not an sbatch long option name")
        option = option.replace("_", "-")
        # YAML's `exclusive: true` arrives as "True": a flag; `requeue: false`: left out.
        if value.lower() in ("false", "no"):
            continue
        if value.lower() in ("", "true", "yes"):
            lines.append(f"--{option}")
        else:
            lines.append(f"--{option}={q(value, f'slurm.{key}')}")
    for extra in res.extra_directives:
        text = extra.strip(" ").removeprefix("#SBATCH").strip(" ")
        if not text or any(not c.isprintable() for c in extra):
            raise QueueError(f"extra directive {extra!r} is empty or holds a control character")
        lines.append(text)
    return lines
