"""The ``sge`` adapter: Son of Grid Engine (and its kin: Sun/Oracle/Univa Grid Engine).

Commands (tested against SGE 8.1.9, Debian 12's gridengine-* packages):

* submit: ``qsub -terse RUN_DIR/submit.sh``; it prints the id (``27``), or for an array
  ``28.1-4:1``, whose id is ``28``. The script's ``#$`` directives are built by
  :mod:`conveyor.queue._sge_directives` (the resource mapping is documented there).
* status: one plain ``qstat -xml`` per poll: it lists the current user's jobs, pending
  and running (array tasks one entry each, pending ranges as one); the jobs asked
  about are picked out. A job in error state (``Eqw``: it could not start) is FAILED,
  as sge_status(5) has it, though SGE keeps it queued until ``qdel`` (or ``qmod -cj``
  after a fix). Finding a submission by its token reads the same listing: the job name
  (``JB_name``) ends with ``-TOKEN``.
* accounting: ``qacct -j ID``, one record per run of each task; the last one per task
  counts. Its ``failed`` code says how SGE ended the job (:data:`FAILED_CODES`). What
  was seen on a real SGE: at h_rt (or h_cpu) execd sends SIGKILL, no warning signal
  unless s_rt is set, and records ``failed 37``, ``exit_status 137``; qdel sends
  SIGKILL too and records ``failed 100``, ``exit_status 137`` — as does a kill -9 from
  anyone else: 8.1.9's accounting keeps no "deleted by". A job deleted before it
  started leaves no record. An h_vmem overrun is an allocation failure inside the
  payload (setrlimit), an ordinary non-zero exit. qacct answers ``error: job id N not
  found`` (exit code 1) until qmaster writes the record: by default up to
  ``flush_time`` (15 s) after the job leaves qstat, immediately with
  ``reporting_params accounting_flush_time=00:00:00``. Hence ``missing_grace`` 20 s.
* cancel ``qdel ID``, hold ``qhold ID`` (a user hold), release ``qrls ID``.

Like every adapter this module does no I/O.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from datetime import timedelta

from conveyor.exceptions import ConfigError, QueueError, QueueParseError
from conveyor.queue._sge_accounting import FAILED_CODES, parse_qacct
from conveyor.queue._sge_directives import directives, sge_token
from conveyor.queue.base import QueueAdapter, QueueJobInfo, QueueState, SubmitSpec
from conveyor.queue.script import absolute_run_dir, render_script

__all__ = ["FAILED_CODES", "NATIVE_STATES", "SGEAdapter"]

log = logging.getLogger(__name__)

#: The letters of a job's state in qstat; a state combines them (``hqw``, ``Eqw``,
#: ``dr``, ``hRq``) and the first letter of this table found in it decides.
#: qstat(1): https://manpages.debian.org/bookworm/gridengine-client/qstat.1.en.html
#: sge_status(5): https://manpages.debian.org/bookworm/gridengine-common/sge_status.5.en.html
NATIVE_STATES: dict[str, QueueState | None] = {
    "E": QueueState.FAILED,  # error: could not start (qstat -j ID says why; qmod -cj clears)
    "s": QueueState.SUSPENDED,  # suspended with qmod -sj
    "S": QueueState.SUSPENDED,  # its queue is suspended
    "T": QueueState.SUSPENDED,  # a suspend threshold of its queue was exceeded
    "r": QueueState.RUNNING,  # running ("hr": a hold on a running job waits for a rerun)
    "t": QueueState.RUNNING,  # being transferred to its execution host
    "h": QueueState.HELD,  # qhold, qsub -h, or waiting for -hold_jid jobs
    "q": QueueState.QUEUED,  # queued
    "w": QueueState.QUEUED,  # waiting
    "z": QueueState.DONE,  # zombie: finished (qstat -s z only)
    "d": None,  # qdel was used, deletion in progress: the other letters decide
    "R": None,  # restarted (rescheduled, migrated): the other letters decide
}
_REASONS = {
    "E": "error state: qstat -j ID says why, qmod -cj ID clears it",
    "h": "on hold",
    "s": "suspended (qmod -sj)",
    "S": "its queue is suspended",
    "T": "suspend threshold of its queue exceeded",
    "d": "being deleted",
}
_ID = re.compile(r"[1-9][0-9]*")
_SUBMITTED = re.compile(r"([1-9][0-9]*)(?:\.[0-9]+-[0-9]+:[0-9]+)?")
_PRECEDENCE = (
    QueueState.RUNNING,
    QueueState.SUSPENDED,
    QueueState.QUEUED,
    QueueState.HELD,
    QueueState.UNKNOWN,
    QueueState.FAILED,
    QueueState.DONE,
)


class SGEAdapter(QueueAdapter):
    """Son of Grid Engine: qsub -terse, qstat -xml, qacct -j, qdel, qhold, qrls.

    Parameters
    ----------
    memory_resource
        The complex that limits memory per slot (``h_vmem``; ``mem_free``, ``h_rss``
        ... on clusters configured so).
    gpu_resource
        The complex that counts GPUs on this cluster (e.g. ``gpu``); without it a job
        asking for GPUs is refused.
    """

    name = "sge"
    missing_grace = timedelta(seconds=20)

    def __init__(self, memory_resource: str = "h_vmem", gpu_resource: str | None = None) -> None:
        for option, value in (("memory_resource", memory_resource), ("gpu_resource", gpu_resource)):
            if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", value):
                raise ConfigError(f"sge queue option {option}={value!r} is not a complex name")
        self.memory_resource = memory_resource
        self.gpu_resource = gpu_resource

    def render(self, spec: SubmitSpec) -> dict[str, str]:
        """The job script: ``#$`` directives, then the common body."""
        lines = directives(
            spec, memory_resource=self.memory_resource, gpu_resource=self.gpu_resource
        )
        text = render_script(spec, adapter=self.name, directives=lines, queue_id="$JOB_ID")
        return {self.script_name: text}

    def submit_command(self, spec: SubmitSpec) -> list[str]:
        """``qsub -terse RUN_DIR/submit.sh``."""
        run_dir = absolute_run_dir(spec.run_dir).rstrip("/")
        sge_token(spec.submit_token)
        return ["qsub", "-terse", f"{run_dir}/{self.script_name}"]

    def parse_submit_output(self, exit_code: int, stdout: str, stderr: str) -> str:
        """The job id qsub printed (``ID`` or, for an array, ``ID.FIRST-LAST:STEP``)."""
        lines = stdout.strip().splitlines()
        match = _SUBMITTED.fullmatch(lines[-1].strip()) if lines else None
        if exit_code != 0 or match is None:
            raise QueueParseError(
                f"qsub exited with code {exit_code} without a job id; "
                f"stderr: {_tail(stderr)!r}, stdout: {_tail(stdout)!r}"
            )
        return match.group(1)

    def status_command(self, queue_ids: Sequence[str]) -> list[str]:
        """``qstat -xml``: all of the user's jobs, in one call."""
        if not queue_ids:
            raise QueueError("no queue ids to ask about")
        for queue_id in queue_ids:
            _valid_id(queue_id)
        return ["qstat", "-xml"]

    def parse_status_output(
        self, exit_code: int, stdout: str, stderr: str, queue_ids: Sequence[str]
    ) -> dict[str, QueueJobInfo]:
        """The jobs among ``queue_ids`` that qstat lists; an array's tasks are summed up:
        running if one runs, then suspended, queued, held, failed."""
        wanted = set(queue_ids)
        states: dict[str, list[str]] = {}
        for number, _name, state in _job_lists("qstat -xml", exit_code, stdout, stderr):
            if number in wanted and state not in states.setdefault(number, []):
                states[number].append(state)
        return {number: _info(number, found) for number, found in states.items()}

    def find_by_token_command(self, token: str) -> list[str]:
        """``qstat -xml``: the user's jobs with their names."""
        sge_token(token)
        return ["qstat", "-xml"]

    def parse_find_by_token(
        self, exit_code: int, stdout: str, stderr: str, token: str
    ) -> str | None:
        """The id of the queued or running job whose name ends with ``-TOKEN``."""
        found = sorted(
            {
                number
                for number, name, _state in _job_lists("qstat -xml", exit_code, stdout, stderr)
                if name == token or name.endswith(f"-{token}")
            },
            key=int,
        )
        if len(found) > 1:
            log.warning("SGE jobs %s carry submit token %s; adopting %s", found, token, found[0])
        return found[0] if found else None

    def accounting_command(self, queue_id: str) -> list[str]:
        """``qacct -j ID``."""
        return ["qacct", "-j", _valid_id(queue_id)]

    def parse_accounting_output(
        self, exit_code: int, stdout: str, stderr: str, queue_id: str
    ) -> QueueJobInfo | None:
        """How the job ended (see :mod:`conveyor.queue._sge_accounting`); None while qacct
        does not know it (not yet written, or the job never ran)."""
        return parse_qacct(exit_code, stdout, stderr, queue_id)

    def cancel_command(self, queue_id: str) -> list[str]:
        """``qdel ID``."""
        return ["qdel", _valid_id(queue_id)]

    def hold_command(self, queue_id: str) -> list[str]:
        """``qhold ID``: a user hold (a running job keeps running)."""
        return ["qhold", _valid_id(queue_id)]

    def release_command(self, queue_id: str) -> list[str]:
        """``qrls ID``."""
        return ["qrls", _valid_id(queue_id)]


def _valid_id(queue_id: str) -> str:
    if not _ID.fullmatch(queue_id):
        raise QueueError(f"SGE job id {queue_id!r} is not a job number")
    return queue_id


def _tail(text: str) -> str:
    return text.strip()[-2000:]


def _job_lists(
    command: str, exit_code: int, stdout: str, stderr: str
) -> list[tuple[str, str, str]]:
    """(job number, name, state) of every ``job_list`` in qstat's XML."""
    if exit_code != 0:
        raise QueueParseError(
            f"{command} exited with code {exit_code}; stderr: {_tail(stderr)!r}, "
            f"stdout: {_tail(stdout)!r}"
        )
    try:
        root = ElementTree.fromstring(stdout)
    except (ElementTree.ParseError, ValueError) as exc:
        raise QueueParseError(f"{command} printed no valid XML ({exc}): {_tail(stdout)!r}") from exc
    if root.tag != "job_info":
        raise QueueParseError(f"{command} printed <{root.tag}>, not <job_info>: {_tail(stdout)!r}")
    jobs = []
    for entry in root.iter("job_list"):
        number, name, state = (
            (entry.findtext(tag) or "").strip() for tag in ("JB_job_number", "JB_name", "state")
        )
        if not _ID.fullmatch(number) or not state.isalpha():
            raise QueueParseError(
                f"{command}: a job_list without a job number or state "
                f"(number {number!r}, state {state!r}): {_tail(stdout)!r}"
            )
        jobs.append((number, name, state))
    return jobs


def _state(state: str) -> QueueState:
    unknown = [letter for letter in state if letter not in NATIVE_STATES]
    decided = [s for letter, s in NATIVE_STATES.items() if s is not None and letter in state]
    if unknown or not decided:
        log.warning("unknown SGE job state %r: treated as %s", state, QueueState.UNKNOWN)
        return QueueState.UNKNOWN
    return decided[0]


def _info(number: str, states: list[str]) -> QueueJobInfo:
    mapped = {native: _state(native) for native in states}
    state = min(mapped.values(), key=_PRECEDENCE.index)
    deciding = next(native for native, s in mapped.items() if s is state)
    reason = next((r for letter, r in _REASONS.items() if letter in deciding), None)
    return QueueJobInfo(number, state, ",".join(states), reason)
