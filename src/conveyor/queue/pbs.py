"""The ``pbs`` adapter: PBS Professional / OpenPBS (``flavor: pro``) and Torque
(``flavor: torque``), with ``qsub``, ``qstat``, ``qselect``, ``qdel``, ``qhold``, ``qrls``.

The script is the common job script (:func:`~conveyor.queue.script.render_script`) with
``#PBS`` directives (see :func:`conveyor.queue._pbs.directives` for the mapping of the
generic resources: ``-l select=N:ncpus=..:mpiprocs=..:mem=..mb:ngpus=..`` on Pro,
``-l nodes=N:ppn=..`` and ``-l mem`` on Torque, ``-l walltime``, ``-q``, ``-A``, ``-M``,
``-J``/``-t`` for arrays, ``pbs: {key: value}`` as ``-l key=value``).

The submit token: the job name is ``conveyor-TOKEN`` on Pro (names may be 236
characters long) and, on Torque, whose documented limit is 15 characters,
``cv`` + 13 characters of the token's SHA-256 (65 bits: two tokens never share a name
in practice). The name is a function of the token alone, so a retried submission finds
its job with ``qselect -N NAME``. The token itself also travels in the job's
environment (``-v CONVEYOR_TOKEN=TOKEN``), where ``qstat -f`` shows it.

Commands (one status command per poll for all jobs)::

    submit      qsub RUN_DIR/submit.sh                  -> "123.server" (Pro, Torque)
    status      pro:    qstat -f -F json ID...          torque: qstat -f ID...
    find        pro:    qselect -x -N NAME              torque: qselect -N NAME
    accounting  pro:    qstat -x -f -F json ID          torque: qstat -f ID
    cancel      qdel ID;   hold: qhold ID;   release: qrls ID

qstat reports ids it does not know (and, on Pro without ``-x``, finished jobs) on
stderr and exits non-zero, while still printing the jobs it knows: those are parsed,
the others left out. A finished job's ``Exit_status`` (Pro, from the history that
``qstat -x`` reads: the server needs ``job_history_enable``) or ``exit_status`` (Torque,
while it keeps completed jobs: ``keep_completed``) tells how it ended: the negative
``JOB_EXEC_*`` codes name walltime (TIMEOUT) and memory (OUT_OF_MEMORY) kills and
launch failures (NODE_FAIL); a value above 256 is a kill by signal (TIMEOUT when the
walltime used reached the limit, CANCELLED otherwise); a deleted job (Pro substate 91)
is CANCELLED.

Tested against: Torque-format outputs captured from Debian's slurm-wlm-torque qstat/qsub
wrappers over a real SLURM, and PBS Pro / Torque outputs in their documented formats;
see ``tests/fixtures/queue/pbs/README.md`` and ``docs/queues.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from conveyor.exceptions import ConfigError, QueueError, QueueParseError
from conveyor.queue import _pbs
from conveyor.queue._pbs import NATIVE_STATES, PRO_EXIT_REASONS, TORQUE_EXIT_REASONS, Flavor
from conveyor.queue.base import QueueAdapter, QueueJobInfo, SubmitSpec
from conveyor.queue.script import absolute_run_dir, render_script, valid_token

__all__ = ["NATIVE_STATES", "PRO_EXIT_REASONS", "TORQUE_EXIT_REASONS", "PBSAdapter"]

log = logging.getLogger(__name__)


class PBSAdapter(QueueAdapter):
    """Jobs submitted with ``qsub``; the queue id is what qsub printed.

    Parameters
    ----------
    flavor
        ``"pro"`` (PBS Professional, OpenPBS: ``qstat -F json``, history with
        ``qstat -x``) or ``"torque"`` (Torque: ``qstat -f`` text, 15-character names).
    """

    name = "pbs"
    #: A finished job moves to the history (Pro) or to state C (Torque) within a
    #: scheduler cycle; give the server that long before asking how it ended.
    missing_grace = timedelta(seconds=5)

    def __init__(self, flavor: str = "pro") -> None:
        if flavor not in ("pro", "torque"):
            raise ConfigError(f"pbs flavor must be 'pro' or 'torque', not {flavor!r}")
        self.flavor: Flavor = "pro" if flavor == "pro" else "torque"

    def render(self, spec: SubmitSpec) -> dict[str, str]:
        """The job script: ``#PBS`` directives, then the common body."""
        lines = [f"#PBS {d}" for d in _pbs.directives(spec, self.flavor)]
        lines += _pbs.extra_lines(spec)
        # Debian's Torque-style wrapper over SLURM does not set PBS_JOBID.
        queue_id = "$PBS_JOBID" if self.flavor == "pro" else "${PBS_JOBID:-$SLURM_JOB_ID}"
        text = render_script(spec, adapter=self.name, directives=lines, queue_id=queue_id)
        return {self.script_name: text}

    def submit_command(self, spec: SubmitSpec) -> list[str]:
        """``qsub RUN_DIR/submit.sh`` (run in the run dir: -o/-e are relative to it)."""
        run_dir = absolute_run_dir(spec.run_dir)
        valid_token(spec.submit_token)
        return ["qsub", f"{run_dir.rstrip('/')}/{self.script_name}"]

    def parse_submit_output(self, exit_code: int, stdout: str, stderr: str) -> str:
        """The job id qsub printed on its last line."""
        lines = stdout.strip().splitlines()
        queue_id = lines[-1].strip() if lines else ""
        if exit_code != 0 or not _pbs.JOB_ID.fullmatch(queue_id):
            raise QueueParseError(
                f"qsub printed no job id: {_pbs.evidence(exit_code, stdout, stderr)}"
            )
        return queue_id

    def status_command(self, queue_ids: Sequence[str]) -> list[str]:
        """``qstat -f -F json ID...`` (Pro) or ``qstat -f ID...`` (Torque)."""
        if not queue_ids:
            raise QueueError("no queue ids to ask about")
        ids = [_pbs.valid_id(q) for q in queue_ids]
        return ["qstat", "-f", *self._json(), *ids]

    def parse_status_output(
        self, exit_code: int, stdout: str, stderr: str, queue_ids: Sequence[str]
    ) -> dict[str, QueueJobInfo]:
        """The jobs qstat lists among ``queue_ids``, under the ids they were asked by."""
        return {
            queue_id: _pbs.job_info(queue_id, attrs, self.flavor, stdout)
            for queue_id, attrs in _pbs.matching(self._jobs(exit_code, stdout, stderr), queue_ids)
        }

    def find_by_token_command(self, token: str) -> list[str]:
        """``qselect [-x] -N NAME``: the ids of the jobs with the token's name."""
        history = ["-x"] if self.flavor == "pro" else []
        return ["qselect", *history, "-N", _pbs.job_name(token, self.flavor)]

    def parse_find_by_token(
        self, exit_code: int, stdout: str, stderr: str, token: str
    ) -> str | None:
        """The job qselect found, if any (the first, with a warning, if several)."""
        ids = [line.strip() for line in stdout.splitlines() if line.strip()]
        if exit_code != 0 or not all(_pbs.JOB_ID.fullmatch(i) for i in ids):
            raise QueueParseError(f"qselect failed: {_pbs.evidence(exit_code, stdout, stderr)}")
        if len(ids) > 1:
            log.warning("token %s names several PBS jobs %s: adopting %s", token, ids, ids[0])
        return ids[0] if ids else None

    def accounting_command(self, queue_id: str) -> list[str] | None:
        """``qstat -x -f -F json ID`` (Pro history) or ``qstat -f ID`` (Torque)."""
        history = ["-x"] if self.flavor == "pro" else []
        return ["qstat", *history, "-f", *self._json(), _pbs.valid_id(queue_id)]

    def parse_accounting_output(
        self, exit_code: int, stdout: str, stderr: str, queue_id: str
    ) -> QueueJobInfo | None:
        """How the job ended, if qstat still knows it."""
        jobs = dict(_pbs.matching(self._jobs(exit_code, stdout, stderr), [queue_id]))
        if queue_id not in jobs:
            return None
        return _pbs.job_info(queue_id, jobs[queue_id], self.flavor, stdout)

    def cancel_command(self, queue_id: str) -> list[str]:
        """``qdel ID``."""
        return ["qdel", _pbs.valid_id(queue_id)]

    def hold_command(self, queue_id: str) -> list[str]:
        """``qhold ID`` (a user hold)."""
        return ["qhold", _pbs.valid_id(queue_id)]

    def release_command(self, queue_id: str) -> list[str]:
        """``qrls ID``."""
        return ["qrls", _pbs.valid_id(queue_id)]

    def _json(self) -> list[str]:
        return ["-F", "json"] if self.flavor == "pro" else []

    def _jobs(self, exit_code: int, stdout: str, stderr: str) -> Mapping[str, Mapping[str, Any]]:
        if self.flavor == "pro":
            return _pbs.json_jobs(exit_code, stdout, stderr)
        return _pbs.text_jobs(exit_code, stdout, stderr)
