"""How an SGE job ended, from ``qacct -j ID``: records of ``key value`` lines between
lines of ``=``, one per run of each task (a rescheduled job has one per run).

The ``failed`` field says how SGE ended the job; :data:`FAILED_CODES` maps it to the
reason Conveyor records. The codes and their meanings are in sge_status(5):
https://manpages.debian.org/bookworm/gridengine-common/sge_status.5.en.html
"""

from __future__ import annotations

import logging
import re

from conveyor.exceptions import QueueParseError
from conveyor.queue.base import QueueJobInfo, QueueState

__all__ = ["FAILED_CODES", "parse_qacct"]

log = logging.getLogger(__name__)

#: qacct's ``failed`` code -> (reason, whether the job ran: if not, its exit status
#: means nothing). 0 is no failure: the exit status decides.
FAILED_CODES: dict[int, tuple[str, bool]] = {
    **{c: ("NODE_FAIL", False) for c in (1, 3, 4, 6, 7, 8, 9, 10, 11)},  # before the job
    **{c: ("NODE_FAIL", True) for c in (12, 13, 14, 15, 16)},  # after it: PE stop, epilog
    17: ("CANCELLED", True),  # through signal (possibly qdel)
    **{c: ("NODE_FAIL", False) for c in (18, 19, 20, 21)},  # shepherd died, reports lost
    24: ("PREEMPTED", True),  # migrating (checkpointing jobs)
    25: ("PREEMPTED", True),  # rescheduling (qmod -rj, reschedule_unknown)
    # opening an output file, finding the shell, changing into the working dir, AFS: the
    # job goes to state Eqw and stays queued
    **{c: ("NODE_FAIL", False) for c in (26, 27, 28, 29)},
    30: ("EXIT_CODE", True),  # "application error returned": it exited 100
    **{c: ("NODE_FAIL", False) for c in (31, 32, 33, 34, 35, 36, 38)},  # Windows, daemons
    37: ("TIMEOUT", True),  # h_rt or h_cpu; OUT_OF_MEMORY if h_vmem (see _limit_reason)
    # killed by a signal: seen for qdel (SIGKILL, exit status 137); a shepherd that died
    # without a signal exit status is a NODE_FAIL
    100: ("CANCELLED", True),
}

_SEPARATOR = re.compile(r"^=+[ \t]*$", re.MULTILINE)
# No record yet (or never: a job deleted before it ran), or no accounting file at all.
_NOT_FOUND = re.compile(r"error: job id \S+ not found|No such file or directory")


def parse_qacct(exit_code: int, stdout: str, stderr: str, queue_id: str) -> QueueJobInfo | None:
    """How job ``queue_id`` ended, from its last record per task; None while qacct
    does not know it. An array fails if a task failed: the first failed task decides."""
    if exit_code == 1 and _NOT_FOUND.search(stderr):
        return None
    if exit_code != 0:
        raise QueueParseError(
            f"qacct -j {queue_id} exited with code {exit_code}; "
            f"stderr: {_tail(stderr)!r}, stdout: {_tail(stdout)!r}"
        )
    last: dict[str, dict[str, str]] = {}
    for chunk in _SEPARATOR.split(stdout):
        if chunk.strip():
            fields = _record(chunk, stdout)
            if fields["jobnumber"] == queue_id:
                last[fields.get("taskid", "undefined")] = fields
    if not last:
        raise QueueParseError(
            f"qacct -j {queue_id} printed no record of job {queue_id}: {_tail(stdout)!r}"
        )
    infos = [(task, _ended(queue_id, fields)) for task, fields in last.items()]
    task, info = next(((t, i) for t, i in infos if i.state is QueueState.FAILED), infos[-1])
    if len(infos) > 1:
        native = f"task {task}: {info.native_state} ({len(infos)} tasks)"
        info = QueueJobInfo(queue_id, info.state, native, info.reason, info.exit_code)
    return info


def _tail(text: str) -> str:
    return text.strip()[-2000:]


def _record(chunk: str, stdout: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in chunk.strip().splitlines():
        key, _, value = line.strip().partition(" ")
        fields[key] = value.strip()
    for key in ("jobnumber", "failed", "exit_status"):
        words = fields.get(key, "").split()
        if not words or not words[0].isascii() or not words[0].isdigit():
            raise QueueParseError(
                f"qacct record without a numeric {key}: {chunk.strip()[:2000]!r} "
                f"(whole output: {_tail(stdout)!r})"
            )
    return fields


def _ended(queue_id: str, fields: dict[str, str]) -> QueueJobInfo:
    code, _, description = fields["failed"].partition(":")
    failed = int(code.split()[0])
    status = int(fields["exit_status"].split()[0])
    described = f" ({' '.join(description.split())})" if description.strip() else ""
    native = f"failed {failed}{described}, exit_status {status}"
    if failed == 0:
        if status == 0:
            return QueueJobInfo(queue_id, QueueState.DONE, native, None, 0)
        return QueueJobInfo(queue_id, QueueState.FAILED, native, "EXIT_CODE", status)
    if failed not in FAILED_CODES:
        log.warning("unknown SGE failed code %s in qacct: treated as NODE_FAIL", failed)
    reason, ran = FAILED_CODES.get(failed, ("NODE_FAIL", False))
    if failed == 100 and status <= 128:
        reason = "NODE_FAIL"
    elif failed == 37:
        reason = _limit_reason(fields)
    return QueueJobInfo(queue_id, QueueState.FAILED, native, reason, status if ran else None)


def _seconds(text: str) -> float | None:
    """SGE's time ``[[H:]M:]S``, or qacct's ``4s``/``1.939s``, in seconds."""
    total = 0.0
    for part in text.strip().removesuffix("s").split(":"):
        try:
            total = total * 60 + float(part)
        except ValueError:
            return None
    return total


def _limit_reason(fields: dict[str, str]) -> str:
    """TIMEOUT when h_rt or h_cpu was reached; else OUT_OF_MEMORY if h_vmem was asked
    for (failed 37 covers all three); TIMEOUT when the record cannot tell."""
    requests: dict[str, str] = {}
    for word in fields.get("category", "").split():
        for item in word.split(","):
            key, _, value = item.partition("=")
            requests[key] = value
    for limit, used in (("h_rt", "ru_wallclock"), ("h_cpu", "cpu")):
        wanted, spent = _seconds(requests.get(limit, "x")), _seconds(fields.get(used, "x"))
        if wanted is not None and spent is not None and spent >= wanted - 1:
            return "TIMEOUT"
    return "OUT_OF_MEMORY" if "h_vmem" in requests else "TIMEOUT"
