"""The ``#$`` directive lines of an SGE job script, every value checked.

qsub parses these lines itself, not a shell, and with rules found by trying them on
SGE 8.1.9: double quotes group words (a path with spaces works quoted) and are
removed, single quotes are removed too, ``#`` ends the line even inside quotes, and
in ``-o``/``-e`` paths ``:`` separates a host name, ``,`` separates a list and
``$NAME`` is expanded. Values that could be misread are refused with a QueueError
naming the field; job names are sanitised instead, since Conveyor makes them up.

Resources (see :class:`~conveyor.queue.resources.Resources`):

* processes x cpus_per_task slots: ``-pe PE SLOTS``; more than one slot needs a
  parallel environment, ``sge: {pe: NAME}`` (SGE has no other way to give a job
  several slots). SGE counts slots, not nodes: the parallel environment's allocation
  rule decides how they spread.
* memory_mb is memory per node; SGE's memory limits (h_vmem, the default; the
  adapter's ``memory_resource`` option picks another, e.g. mem_free) count per slot,
  so the request is memory_mb divided by the slots on a node (processes_per_node x
  cpus_per_task, else all the job's slots), rounded up, in MiB (``M``: SGE's binary
  megabyte). h_vmem limits virtual memory: a payload that maps more than it uses needs
  more than it uses.
* walltime: ``-l h_rt=HH:MM:SS``; queue: ``-q``; account: ``-P`` (project); email:
  ``-M`` with ``-m ea`` (mail at end or abort) unless ``sge: {m: ...}`` says otherwise;
  array_size: ``-t 1-N``; gpus: ``-l GPU_RESOURCE=N`` with the adapter's
  ``gpu_resource`` option (SGE has no standard GPU resource); qos: SGE has none.
* ``sge:`` passthrough: a key that is a qsub option (:data:`VALUE_OPTIONS`,
  :data:`FLAG_OPTIONS`) becomes ``-KEY VALUE``, or ``-KEY`` for a flag whose value is
  "", true, yes or none (YAML's ``h:`` alone); any other key is a resource request,
  ``-l KEY=VALUE``.
* extra_directives: each item a line as given, ``#$ `` prepended if missing.
"""

from __future__ import annotations

import math
import re

from conveyor.exceptions import QueueError
from conveyor.queue.base import STDERR_FILE, STDOUT_FILE, SubmitSpec
from conveyor.queue.resources import Resources, format_hms
from conveyor.queue.script import absolute_run_dir, valid_token

__all__ = [
    "FLAG_OPTIONS",
    "MAX_NAME",
    "RESERVED_OPTIONS",
    "VALUE_OPTIONS",
    "directives",
    "job_name",
    "sge_token",
    "slots",
]

#: qsub refuses longer job names ("job name too long, maximum allowed length is 512").
MAX_NAME = 512
#: qsub options an ``sge:`` key may name, each taking one value (see qsub(1)).
VALUE_OPTIONS = frozenset(
    {"a", "ac", "ar", "A", "binding", "c", "ckpt", "dc", "dl", "hold_jid", "hold_jid_ad"}
    | {"js", "l", "m", "masterq", "M", "now", "p", "P", "q", "R", "r", "sc", "tc", "v", "w"}
)
#: qsub options without a value.
FLAG_OPTIONS = frozenset({"h", "hard", "soft", "notify", "V"})
#: Options the adapter sets itself, or that would break the submission.
RESERVED_OPTIONS = frozenset(
    {"N", "S", "wd", "cwd", "o", "e", "j", "t", "terse", "b", "sync", "verify", "shell"}
    | {"clear", "C", "i", "@"}
)

_NAME_CHAR = re.compile(r"[A-Za-z0-9_.+=-]")
# One word of printable ASCII that qsub's directive parser keeps as it is.
_WORD = re.compile(r"[!$%&()*+,\-./0-9:;<=>?@A-Z\[\]^_a-z{|}~]+")
# SGE's "name" (sge_types(5)): no / : @ \ * ? either.
_NAME = re.compile(r"[!$%&()+,\-.0-9;<=>A-Z\[\]^_a-z{|}~]+")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_PATH_BAD = re.compile(r"[\"'\\#:,$]|[^ -~]")
# "none": YAML's ``h:`` with nothing after it, stringified by the resources model.
_TRUE, _FALSE = ("", "none", "true", "yes", "y", "1"), ("false", "no", "n", "0")


def sge_token(token: str) -> str:
    """``token`` if it can end an SGE job name (a valid token without ':')."""
    valid_token(token)
    if ":" in token:
        raise QueueError(f"submit token {token!r}: SGE refuses ':' in job names")
    return token


def job_name(spec: SubmitSpec) -> str:
    """The ``-N`` name: the job's name made safe for SGE, then ``-TOKEN``.

    Characters SGE (or its directive parser) would refuse become '_', a leading digit
    gets a 'j' before it, and the name is cut to fit 512 characters — never the token,
    which :meth:`~conveyor.queue.sge.SGEAdapter.parse_find_by_token` looks for.
    """
    token = sge_token(spec.submit_token)
    base = spec.resources.job_name or spec.job_name or "conveyor"
    base = "".join(c if _NAME_CHAR.fullmatch(c) else "_" for c in base)
    if base == token or base.endswith(f"-{token}"):
        base = base[: -len(token)].rstrip("-") or "conveyor"
    if base[0].isdigit():
        base = f"j{base}"
    return f"{base[: MAX_NAME - len(token) - 1]}-{token}"


def _checked(field: str, value: str, pattern: re.Pattern[str], what: str) -> str:
    if not pattern.fullmatch(value):
        raise QueueError(f"SGE {field} {value!r} must be {what}")
    return value


def _word(field: str, value: str) -> str:
    return _checked(
        field,
        value,
        _WORD,
        "one word of printable ASCII without quotes, backslashes or '#' "
        "(qsub's directive parser would change it)",
    )


def _name(field: str, value: str) -> str:
    return _checked(
        field, value, _NAME, "an SGE name: printable ASCII without spaces, quotes or /:@\\*?#"
    )


def _path(run_dir: str) -> str:
    bad = _PATH_BAD.search(absolute_run_dir(run_dir))
    if bad:
        raise QueueError(
            f"run dir {run_dir!r}: SGE would misread {bad.group()!r} in a directive "
            "(qsub strips quotes and backslashes, '#' starts a comment, ':' names a host, "
            "',' separates paths, '$' expands a variable); choose a work_dir without it"
        )
    return run_dir.rstrip("/") or "/"


def slots(resources: Resources) -> tuple[int, int]:
    """The job's slots and the slots on one node."""
    per_task = resources.cpus_per_task or 1
    if resources.processes:
        tasks = resources.processes
    elif resources.processes_per_node:
        tasks = resources.processes_per_node * (resources.nodes or 1)
    elif resources.nodes and resources.nodes > 1:
        raise QueueError(
            "SGE allocates slots, not nodes: ask for processes (and processes_per_node), "
            "with sge.pe naming a parallel environment whose allocation rule spreads them"
        )
    else:
        tasks = 1
    on_node = resources.processes_per_node * per_task if resources.processes_per_node else None
    total = tasks * per_task
    return total, on_node or total


def _passthrough(options: dict[str, str]) -> list[str]:
    lines: list[str] = []
    for key, value in options.items():
        if key in RESERVED_OPTIONS:
            raise QueueError(
                f"sge.{key}: -{key} is set by Conveyor's SGE adapter (job name, shell, run "
                "dir, output files, arrays); use the generic resource instead"
            )
        if key in FLAG_OPTIONS:
            if value.strip().lower() in _TRUE:
                lines.append(f"-{key}")
            elif value.strip().lower() not in _FALSE:
                raise QueueError(f"sge.{key}: -{key} takes no value; give '' or true")
        elif key in VALUE_OPTIONS:
            lines.append(f"-{key} {_word(f'sge.{key}', value)}")
        else:
            _checked(f"sge key {key!r}", key, _KEY, "a resource name (letters, digits, _ . -)")
            lines.append(f"-l {key}={_word(f'sge.{key}', value)}")
    return lines


def _extra(item: str) -> str:
    if any(not c.isprintable() for c in item):
        raise QueueError(f"extra directive {item!r} must be one line of printable characters")
    line = item.strip()
    return line if line.startswith("#$") else f"#$ {line}"


def directives(
    spec: SubmitSpec, *, memory_resource: str = "h_vmem", gpu_resource: str | None = None
) -> list[str]:
    """The ``#$`` lines for ``spec`` (see the module docstring for the mapping)."""
    res = spec.resources
    run_dir = _path(spec.run_dir)
    lines = [
        f"-N {job_name(spec)}",
        "-S /bin/bash",
        f'-wd "{run_dir}"',
        f'-o "{run_dir}/{STDOUT_FILE}"',
        f'-e "{run_dir}/{STDERR_FILE}"',
        "-j n",
    ]
    options = dict(res.sge)
    pe = options.pop("pe", None)
    total, on_node = slots(res)
    if pe is not None:
        lines.append(f"-pe {_name('sge.pe', pe)} {total}")
    elif total > 1:
        raise QueueError(
            f"the job asks for {total} slots (processes x cpus_per_task); SGE gives several "
            "slots only through a parallel environment: set sge.pe (qconf -spl lists them)"
        )
    if res.walltime is not None:
        lines.append(f"-l h_rt={format_hms(res.walltime)}")
    if res.memory_mb is not None:
        lines.append(f"-l {memory_resource}={math.ceil(res.memory_mb / on_node)}M")
    if res.gpus:
        if gpu_resource is None:
            raise QueueError(
                "SGE has no standard GPU resource: set the worker's queue_options "
                "{gpu_resource: NAME} to your cluster's (qconf -sc lists them), or use sge:"
            )
        lines.append(f"-l {gpu_resource}={res.gpus}")
    if res.queue is not None:
        lines.append(f"-q {_word('queue', res.queue)}")
    if res.account is not None:
        lines.append(f"-P {_name('account (project)', res.account)}")
    if res.qos is not None:
        raise QueueError("SGE has no quality of service (qos); use sge: options instead")
    if res.email is not None:
        lines.append(f"-M {_word('email', res.email)}")
        if "m" not in options:
            lines.append("-m ea")
    if res.array_size is not None:
        lines.append(f"-t 1-{res.array_size}")
    lines += _passthrough(options)
    return [f"#$ {line}" for line in lines] + [_extra(d) for d in res.extra_directives]
