"""The ``slurm`` adapter: ``sbatch``, ``squeue``, ``sacct``, ``scancel``, ``scontrol``.

The script is the common job script (:func:`~conveyor.queue.script.render_script`) with
``#SBATCH`` directives: the job name ``<resources.job_name or "conveyor">-<token>`` (the
submit token in the name makes a submission findable after a crash), stdout and stderr
to ``queue.out``/``queue.err`` in the run dir, the run dir as working directory, and the
generic resources in SLURM's syntax (see :mod:`conveyor.queue._slurm` for the mapping
and the quoting of directive values).

Commands (formats fixed so the parsers know what they read)::

    submit      sbatch --parsable --chdir=RUN_DIR RUN_DIR/submit.sh      -> "ID" or "ID;cluster"
    status      squeue --noheader --jobs=ID,ID --format=%i|%T|%r         (one per poll)
    find        squeue --noheader --me --states=all --format=%i|%T|%j
    accounting  sacct [sacct_args] --noheader --parsable2 --jobs=ID
                      --format=JobID,State,ExitCode,DerivedExitCode,Reason
    cancel      scancel ID;   hold / release: scontrol hold|release ID

``squeue`` lists pending, running and completing jobs only; a finished job drops out of
its listing (and one it no longer knows at all makes it exit 1 with "Invalid job id
specified", which is an empty answer, not an error). ``sacct`` then tells how the job
ended. Without slurmdbd, ``sacct`` works on a cluster with ``JobCompType=jobcomp/filetxt``
through its ``-c`` option: give the worker ``queue_options: {sacct_args: ["-c"]}``.

Tested against SLURM 22.05.8 (Debian 12's slurm-wlm), with slurmdbd and with
jobcomp/filetxt; the outputs it parses are recorded in ``tests/fixtures/queue/slurm``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from conveyor.exceptions import ConfigError, QueueError, QueueParseError
from conveyor.queue import _slurm
from conveyor.queue.base import QueueAdapter, QueueJobInfo, QueueState, SubmitSpec
from conveyor.queue.script import absolute_run_dir, render_script, valid_token

__all__ = ["NATIVE_STATES", "REASONS", "SlurmAdapter"]

log = logging.getLogger(__name__)

#: SLURM's long state names (squeue ``%T``, sacct ``State``) mapped to queue states; see
#: JOB STATE CODES in https://slurm.schedmd.com/squeue.html and .../sacct.html. A PENDING
#: job whose reason starts with ``JobHeld`` (JobHeldUser, JobHeldAdmin) is HELD.
NATIVE_STATES: dict[str, QueueState] = {
    "PENDING": QueueState.QUEUED,  # PD: waiting for resources, priority, a dependency...
    "CONFIGURING": QueueState.QUEUED,  # CF: allocated, nodes still booting
    "REQUEUED": QueueState.QUEUED,  # RQ: requeued, will be pending again
    "REQUEUE_FED": QueueState.QUEUED,  # RF: requeued by a federation
    "REQUEUE_HOLD": QueueState.HELD,  # RH: requeued and held
    "SPECIAL_EXIT": QueueState.HELD,  # SE: requeued in a held state after a special exit
    "RESV_DEL_HOLD": QueueState.HELD,  # RD: held because its reservation was deleted
    "RUNNING": QueueState.RUNNING,  # R
    "COMPLETING": QueueState.RUNNING,  # CG: finished, epilog or cleanup still running
    "SIGNALING": QueueState.RUNNING,  # SI: being signalled
    "STAGE_OUT": QueueState.RUNNING,  # SO: staging out data
    "RESIZING": QueueState.RUNNING,  # RS: changing size
    "SUSPENDED": QueueState.SUSPENDED,  # S: suspended by an administrator or preemption
    "STOPPED": QueueState.SUSPENDED,  # ST: SIGSTOPped, keeps its allocation
    "COMPLETED": QueueState.DONE,  # CD: every process exited 0
    "FAILED": QueueState.FAILED,  # F: non-zero exit code or other failure
    "TIMEOUT": QueueState.FAILED,  # TO: reached its time limit
    "DEADLINE": QueueState.FAILED,  # DL: reached its --deadline
    "OUT_OF_MEMORY": QueueState.FAILED,  # OOM: exceeded its memory
    "NODE_FAIL": QueueState.FAILED,  # NF: a node of the allocation failed
    "BOOT_FAIL": QueueState.FAILED,  # BF: a node failed to boot
    "CANCELLED": QueueState.FAILED,  # CA: scancel, by the user or an administrator
    "REVOKED": QueueState.FAILED,  # RV: a federation ran the job on another cluster
    "PREEMPTED": QueueState.FAILED,  # PR: preempted (and not requeued)
}

#: The failure reason recorded for each failed state.
REASONS: dict[str, str] = {
    "FAILED": "EXIT_CODE",
    "TIMEOUT": "TIMEOUT",
    "DEADLINE": "TIMEOUT",
    "OUT_OF_MEMORY": "OUT_OF_MEMORY",
    "NODE_FAIL": "NODE_FAIL",
    "BOOT_FAIL": "NODE_FAIL",
    "CANCELLED": "CANCELLED",
    "REVOKED": "CANCELLED",
    "PREEMPTED": "PREEMPTED",
}

#: ``squeue --format`` of the status command: job id, long state name, reason.
STATUS_FORMAT = "%i|%T|%r"
#: ``squeue --format`` of the find command: the job name last, as it may hold ``|``.
FIND_FORMAT = "%i|%T|%j"
#: ``sacct --format`` of the accounting command.
SACCT_FORMAT = "JobID,State,ExitCode,DerivedExitCode,Reason"
#: What squeue says of ids it does not know (all of them): nothing left to report.
_UNKNOWN_IDS = "Invalid job id specified"
#: What sacct says on a cluster without accounting storage.
_NO_ACCOUNTING = "accounting storage is disabled"

#: Which of several lines of one array job speaks for it: a live task wins.
_PRECEDENCE = [
    QueueState.RUNNING,
    QueueState.SUSPENDED,
    QueueState.QUEUED,
    QueueState.HELD,
    QueueState.UNKNOWN,
    QueueState.FAILED,
    QueueState.DONE,
]


class SlurmAdapter(QueueAdapter):
    """Jobs submitted with ``sbatch``; the queue id is SLURM's job id.

    Parameters
    ----------
    sacct_args
        Extra arguments for ``sacct``, placed before the adapter's own: ``["-c"]`` reads
        the job completion log (``JobCompType=jobcomp/filetxt``) on a cluster without
        slurmdbd; ``["--clusters=NAME"]`` for a federation.
    """

    name = "slurm"
    #: slurmctld can be slow to answer, or briefly forget a job, on a busy cluster.
    missing_grace = timedelta(seconds=10)

    def __init__(self, sacct_args: Sequence[str] = ()) -> None:
        if isinstance(sacct_args, str) or not all(isinstance(a, str) for a in sacct_args):
            raise ConfigError(f"slurm sacct_args must be a list of strings, not {sacct_args!r}")
        self.sacct_args = list(sacct_args)

    def render(self, spec: SubmitSpec) -> dict[str, str]:
        """The batch script: ``#SBATCH`` directives, then the common body."""
        directives = [f"#SBATCH {d}" for d in _slurm.directives(spec)]
        # An array task records the array's id: that is what sbatch printed.
        queue_id = "${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}"
        text = render_script(spec, adapter=self.name, directives=directives, queue_id=queue_id)
        return {self.script_name: text}

    def submit_command(self, spec: SubmitSpec) -> list[str]:
        """``sbatch --parsable --chdir=RUN_DIR RUN_DIR/submit.sh``."""
        run_dir = absolute_run_dir(spec.run_dir)
        valid_token(spec.submit_token)
        script = f"{run_dir.rstrip('/')}/{self.script_name}"
        return ["sbatch", "--parsable", f"--chdir={run_dir}", script]

    def parse_submit_output(self, exit_code: int, stdout: str, stderr: str) -> str:
        """The job id ``sbatch --parsable`` printed (``ID`` or ``ID;cluster``)."""
        lines = stdout.strip().splitlines()
        queue_id = lines[-1].strip().split(";", 1)[0] if lines else ""
        if exit_code != 0 or not _slurm.JOB_ID.fullmatch(queue_id):
            raise QueueParseError(
                f"sbatch exited with code {exit_code} and printed no job id; "
                f"{_slurm.evidence(stdout, stderr)}"
            )
        return queue_id

    def status_command(self, queue_ids: Sequence[str]) -> list[str]:
        """``squeue --noheader --jobs=ID,... --format=%i|%T|%r``."""
        if not queue_ids:
            raise QueueError("no queue ids to ask about")
        jobs = ",".join(_slurm.valid_id(q) for q in queue_ids)
        return ["squeue", "--noheader", f"--jobs={jobs}", f"--format={STATUS_FORMAT}"]

    def parse_status_output(
        self, exit_code: int, stdout: str, stderr: str, queue_ids: Sequence[str]
    ) -> dict[str, QueueJobInfo]:
        """The jobs squeue still lists, by the id asked about.

        An array job's tasks (``123_4``, ``123_[5-9]``) all speak for ``123``: while one
        task is pending or running, so is the array.
        """
        if exit_code != 0:
            if exit_code == 1 and _UNKNOWN_IDS in stderr and not stdout.strip():
                return {}
            raise QueueParseError(
                f"squeue exited with code {exit_code}; {_slurm.evidence(stdout, stderr)}"
            )
        wanted = set(queue_ids)
        jobs: dict[str, QueueJobInfo] = {}
        for line in stdout.splitlines():
            if not line.strip():
                continue
            job_id, native, reason = _slurm.fields(line, 3, stdout, stderr, exit_code)
            key = job_id if job_id in wanted else _slurm.base_id(job_id)
            if key not in wanted:
                continue
            info = _info(key, native, reason)
            known = jobs.get(key)
            if known is None or _PRECEDENCE.index(info.state) < _PRECEDENCE.index(known.state):
                jobs[key] = info
        return jobs

    def find_by_token_command(self, token: str) -> list[str]:
        """Every job of this user that slurmctld still knows, finished ones too."""
        valid_token(token)
        return ["squeue", "--noheader", "--me", "--states=all", f"--format={FIND_FORMAT}"]

    def parse_find_by_token(
        self, exit_code: int, stdout: str, stderr: str, token: str
    ) -> str | None:
        """The id of the job whose name ends with ``-TOKEN`` (the array's id for a task)."""
        if exit_code != 0:
            raise QueueParseError(
                f"squeue exited with code {exit_code}; {_slurm.evidence(stdout, stderr)}"
            )
        found: list[str] = []
        for line in stdout.splitlines():
            if not line.strip():
                continue
            job_id, _state, name = _slurm.fields(line, 3, stdout, stderr, exit_code)
            if name == token or name.endswith(f"-{token}"):
                found.append(_slurm.base_id(job_id))
        if len(set(found)) > 1:
            log.warning("several SLURM jobs carry token %s: %s; adopting the first", token, found)
        return found[0] if found else None

    def accounting_command(self, queue_id: str) -> list[str]:
        """``sacct [sacct_args] --noheader --parsable2 --jobs=ID --format=...``."""
        return [
            "sacct",
            *self.sacct_args,
            "--noheader",
            "--parsable2",
            f"--jobs={_slurm.valid_id(queue_id)}",
            f"--format={SACCT_FORMAT}",
        ]

    def parse_accounting_output(
        self, exit_code: int, stdout: str, stderr: str, queue_id: str
    ) -> QueueJobInfo | None:
        """How the job ended, from its allocation line (not its ``.batch``/``.extern``
        steps); None if sacct does not know the job or the cluster keeps no accounting.

        An array's tasks are combined as in :meth:`parse_status_output`; a step that ran
        out of memory names the reason when the allocation says only FAILED.
        """
        if exit_code != 0:
            if _NO_ACCOUNTING in stderr + stdout:
                log.warning(
                    "sacct: SLURM accounting storage is disabled; the exit code file alone "
                    "decides how job %s ended (with jobcomp/filetxt, set the worker's "
                    "queue_options: {sacct_args: ['-c']})",
                    queue_id,
                )
                return None
            raise QueueParseError(
                f"sacct exited with code {exit_code}; {_slurm.evidence(stdout, stderr)}"
            )
        best: QueueJobInfo | None = None
        out_of_memory = False
        for line in stdout.splitlines():
            if not line.strip():
                continue
            job_id, state, code, _derived, reason = _slurm.fields(
                line, 5, stdout, stderr, exit_code
            )
            allocation, _, step = job_id.partition(".")
            if _slurm.base_id(allocation) != queue_id and allocation != queue_id:
                continue
            native = _slurm.state_word(state, line)
            if step:
                out_of_memory |= native == "OUT_OF_MEMORY"
                continue
            info = _info(queue_id, native, reason, state, _slurm.exit_status(code, line))
            if best is None or _PRECEDENCE.index(info.state) < _PRECEDENCE.index(best.state):
                best = info
        if best is not None and out_of_memory and best.reason == REASONS["FAILED"]:
            best = QueueJobInfo(
                best.queue_id, best.state, best.native_state, "OUT_OF_MEMORY", best.exit_code
            )
        return best

    def cancel_command(self, queue_id: str) -> list[str]:
        """``scancel ID``."""
        return ["scancel", _slurm.valid_id(queue_id)]

    def hold_command(self, queue_id: str) -> list[str]:
        """``scontrol hold ID``: a pending job stays pending until released."""
        return ["scontrol", "hold", _slurm.valid_id(queue_id)]

    def release_command(self, queue_id: str) -> list[str]:
        """``scontrol release ID``."""
        return ["scontrol", "release", _slurm.valid_id(queue_id)]


def _info(
    queue_id: str,
    native: str,
    reason: str,
    shown: str | None = None,
    exit_code: int | None = None,
) -> QueueJobInfo:
    """A job's state from SLURM's state name; for a failed job the reason is ours
    (TIMEOUT, CANCELLED ...), for one still in the queue SLURM's own (``JobHeldUser``)."""
    said = None if reason in ("", "None") else reason
    state = NATIVE_STATES.get(native)
    if state is None:
        log.warning("unknown SLURM job state %r (job %s): treated as UNKNOWN", native, queue_id)
        return QueueJobInfo(queue_id, QueueState.UNKNOWN, shown or native, said, exit_code)
    if state is QueueState.QUEUED and reason.startswith("JobHeld"):
        state = QueueState.HELD
    if state is QueueState.FAILED:
        why = REASONS.get(native)
    else:
        # What a finished job once waited for (sacct keeps it) is no news.
        why = None if state is QueueState.DONE else said
    return QueueJobInfo(queue_id, state, shown or native, why, exit_code)
