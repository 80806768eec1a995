"""The ``htcondor`` adapter: ``condor_submit``, ``condor_q``, ``condor_history``,
``condor_rm``, ``condor_hold``, ``condor_release`` (and ``condor_transfer_data``).

Two files go into the run dir: ``job.sh``, the common job script
(:func:`~conveyor.queue.script.render_script`) without directives, and ``job.sub``, the
submit description that runs it with ``/bin/bash`` in the vanilla universe (see
:func:`conveyor.queue._htcondor.submit_description`): the run dir as ``initialdir``,
``queue.out``/``queue.err`` and the event log ``condor.log`` in it, ``request_cpus``/
``request_memory``/``request_gpus``, ``accounting_group``, ``notify_user``, the submit
token as the ClassAd attribute ``+ConveyorToken`` and in ``batch_name``, the walltime as
``+ConveyorWalltime`` enforced by ``periodic_remove``, ``htcondor: {command: value}`` as
submit commands, ``extra_directives`` verbatim, and ``queue N`` (``array_size``).

Commands (one status command per poll for all jobs)::

    submit      condor_submit -terse [-spool] RUN_DIR/job.sub     -> "C.P - C.P"
    status      condor_q -af:jV ATTRIBUTES ID...                  (ids: C.P, or C)
    find        condor_q -constraint 'ConveyorToken == "TOKEN"' -af:jV ATTRIBUTES
    accounting  condor_history -af:jV ATTRIBUTES [-limit 1] ID
    cancel      condor_rm ID;   hold: condor_hold ID;   release: condor_release ID
    spool only  condor_transfer_data ID  (:meth:`HTCondorAdapter.transfer_data_command`)

where ATTRIBUTES are JobStatus ExitCode ExitBySignal ExitSignal HoldReasonCode
HoldReason RemoveReason. ``-af:jV`` prints the job id, then each value as in the job's
ClassAd (strings quoted, ``undefined`` for a missing one), so reasons with spaces parse
unambiguously. condor_q prints nothing for ids it does not know. A job removed by
``periodic_remove`` has a RemoveReason quoting the expression, which names
``ConveyorWalltime``: that is TIMEOUT; any other removal (``condor_rm``) is CANCELLED.
``periodic_remove`` is evaluated every ``PERIODIC_EXPR_INTERVAL`` (60 s by default), so
the walltime is enforced to within about a minute.

With ``spool: true`` (a schedd that shares no filesystem with the worker) the job is
submitted with ``-spool``: the schedd keeps its input, ``job.sh``, and its output
(queue.out, queue.err) until ``condor_transfer_data ID`` fetches them into the run dir;
the runner has to run :meth:`HTCondorAdapter.transfer_data_command` once the job has
completed, before it reads the run dir. The payload itself still runs in the run dir,
so the execute machines must see it.

Tested against outputs in the formats of HTCondor's manual, and fake ``condor_*``
commands; see ``tests/fixtures/queue/htcondor/README.md`` and ``docs/queues.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from conveyor.exceptions import ConfigError, QueueError, QueueParseError
from conveyor.queue import _htcondor
from conveyor.queue._htcondor import ATTRIBUTES, NATIVE_STATES, TOKEN_ATTRIBUTE
from conveyor.queue.base import QueueAdapter, QueueJobInfo, SubmitSpec
from conveyor.queue.script import absolute_run_dir, render_script, valid_token

__all__ = ["ATTRIBUTES", "NATIVE_STATES", "HTCondorAdapter"]


class HTCondorAdapter(QueueAdapter):
    """Jobs submitted with ``condor_submit``; the queue id is ``cluster.proc`` (or the
    cluster, for a submission that queued several procs).

    Parameters
    ----------
    spool
        Submit with ``-spool`` and fetch the output with ``condor_transfer_data``.
    """

    name = "htcondor"
    script_name = "job.sub"
    #: A job that leaves the queue reaches the history file within moments.
    missing_grace = timedelta(seconds=5)

    def __init__(self, spool: bool = False) -> None:
        if not isinstance(spool, bool):
            raise ConfigError(f"htcondor spool must be true or false, not {spool!r}")
        self.spool = spool

    def render(self, spec: SubmitSpec) -> dict[str, str]:
        """``job.sub`` (the submit description) and ``job.sh`` (the job script)."""
        script = render_script(spec, adapter=self.name, queue_id="$CONVEYOR_QUEUE_ID")
        return {
            self.script_name: _htcondor.submit_description(spec, self.name, self.spool),
            _htcondor.WRAPPER: script,
        }

    def submit_command(self, spec: SubmitSpec) -> list[str]:
        """``condor_submit -terse [-spool] RUN_DIR/job.sub``."""
        run_dir = absolute_run_dir(spec.run_dir)
        valid_token(spec.submit_token)
        spool = ["-spool"] if self.spool else []
        return ["condor_submit", "-terse", *spool, f"{run_dir.rstrip('/')}/{self.script_name}"]

    def parse_submit_output(self, exit_code: int, stdout: str, stderr: str) -> str:
        """``C.P`` from ``C.P - C.P`` (``C`` when several procs were queued)."""
        return _htcondor.submitted_id(exit_code, stdout, stderr)

    def status_command(self, queue_ids: Sequence[str]) -> list[str]:
        """``condor_q -af:jV ATTRIBUTES ID...``."""
        if not queue_ids:
            raise QueueError("no queue ids to ask about")
        ids = [_htcondor.valid_id(q) for q in queue_ids]
        return ["condor_q", "-af:jV", *ATTRIBUTES, *ids]

    def parse_status_output(
        self, exit_code: int, stdout: str, stderr: str, queue_ids: Sequence[str]
    ) -> dict[str, QueueJobInfo]:
        """The asked-about jobs condor_q lists (removed and completed ones as FAILED or
        DONE: they are leaving the queue)."""
        return _htcondor.infos(_htcondor.parse_rows(exit_code, stdout, stderr), queue_ids)

    def find_by_token_command(self, token: str) -> list[str]:
        """``condor_q -constraint 'ConveyorToken == "TOKEN"' -af:jV ATTRIBUTES``."""
        constraint = f'{TOKEN_ATTRIBUTE} == "{valid_token(token)}"'
        return ["condor_q", "-constraint", constraint, "-af:jV", *ATTRIBUTES]

    def parse_find_by_token(
        self, exit_code: int, stdout: str, stderr: str, token: str
    ) -> str | None:
        """The job with the token: ``C.P``, or ``C`` if the cluster has several procs."""
        rows = _htcondor.parse_rows(exit_code, stdout, stderr)
        clusters = sorted({proc_id.split(".", 1)[0] for proc_id, _ in rows}, key=int)
        if not clusters:
            return None
        if len(clusters) > 1:
            raise QueueParseError(
                f"token {token} names several HTCondor clusters {clusters}: "
                f"{_htcondor.evidence(exit_code, stdout, stderr)}"
            )
        return rows[0][0] if len(rows) == 1 else clusters[0]

    def accounting_command(self, queue_id: str) -> list[str] | None:
        """``condor_history -af:jV ATTRIBUTES [-limit 1] ID``."""
        limit = ["-limit", "1"] if "." in _htcondor.valid_id(queue_id) else []
        return ["condor_history", "-af:jV", *ATTRIBUTES, *limit, queue_id]

    def parse_accounting_output(
        self, exit_code: int, stdout: str, stderr: str, queue_id: str
    ) -> QueueJobInfo | None:
        """How the job ended, if the history has it."""
        rows = _htcondor.parse_rows(exit_code, stdout, stderr)
        return _htcondor.infos(rows, [queue_id]).get(queue_id)

    def cancel_command(self, queue_id: str) -> list[str]:
        """``condor_rm ID``."""
        return ["condor_rm", _htcondor.valid_id(queue_id)]

    def hold_command(self, queue_id: str) -> list[str]:
        """``condor_hold ID``."""
        return ["condor_hold", _htcondor.valid_id(queue_id)]

    def release_command(self, queue_id: str) -> list[str]:
        """``condor_release ID``."""
        return ["condor_release", _htcondor.valid_id(queue_id)]

    def transfer_data_command(self, queue_id: str) -> list[str] | None:
        """``condor_transfer_data ID`` in spool mode (run it once the job completed,
        before reading the run dir); None otherwise."""
        if not self.spool:
            return None
        return ["condor_transfer_data", _htcondor.valid_id(queue_id)]
