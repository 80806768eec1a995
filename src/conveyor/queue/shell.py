"""The ``shell`` adapter: each job is a background process on the worker, no queue manager.

The submit command starts ``bash submit.sh TOKEN`` in the run dir, detached in a session
of its own (``setsid``, from util-linux), and prints its pid: that pid is the queue id,
and also the id of the job's process group, so that cancelling signals the payload and
everything it started. The token on the command line makes the job findable in ``ps``.
The script writes its pid to ``conveyor.started`` and the payload's exit code to
``conveyor.exit``; once ``ps`` no longer lists the pid, that file decides.

Like every adapter this module does no I/O: it renders text, builds argument lists and
parses output.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from conveyor.exceptions import QueueError, QueueParseError
from conveyor.queue.base import (
    EXIT_CODE_FILE,
    STARTED_FILE,
    STDERR_FILE,
    STDOUT_FILE,
    QueueAdapter,
    QueueJobInfo,
    QueueState,
    SubmitSpec,
)
from conveyor.queue.script import absolute_run_dir, render_script, valid_token

__all__ = ["NATIVE_STATES", "ShellAdapter"]

log = logging.getLogger(__name__)

#: The first letter of ``ps``'s STAT field, mapped to a queue state; ``None`` means the
#: process is gone (a zombie waits only to be reaped: its exit code file is written).
#: See PROCESS STATE CODES in ``man ps``: https://man7.org/linux/man-pages/man1/ps.1.html
NATIVE_STATES: dict[str, QueueState | None] = {
    "D": QueueState.RUNNING,  # uninterruptible sleep (usually I/O)
    "I": QueueState.RUNNING,  # idle kernel thread (BSD: sleeping for over 20 s)
    "R": QueueState.RUNNING,  # running or runnable
    "S": QueueState.RUNNING,  # interruptible sleep
    "U": QueueState.RUNNING,  # BSD: uninterruptible wait
    "W": QueueState.RUNNING,  # paging (not valid since Linux 2.6)
    "T": QueueState.SUSPENDED,  # stopped by a job control signal
    "t": QueueState.SUSPENDED,  # stopped by a debugger during tracing
    "X": None,  # dead
    "Z": None,  # zombie: terminated, not yet reaped by its parent
}

#: Runs in ``bash -c``; values arrive only as positional parameters: $1 the run dir,
#: $2 the script, $3 the token. The payload gets a session (and process group) of its
#: own whose id is its pid, and keeps no file descriptor of the submitting command, so
#: that this command returns at once and nobody has to wait for the job.
SUBMIT_PROGRAM = (
    'cd -- "$1" || exit 1\n'
    f'nohup setsid bash "$2" "$3" >{STDOUT_FILE} 2>{STDERR_FILE} </dev/null &\n'
    'echo "$!"\n'
)
#: ``$0`` of the submit program, so it can be told apart from the job in ``ps``.
SUBMIT_ARGV0 = "conveyor-submit"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
_PID = re.compile(r"[1-9][0-9]*")
_EXIT_TMP = f"{EXIT_CODE_FILE}.tmp"
_STARTED_TMP = f"{STARTED_FILE}.tmp"


class ShellAdapter(QueueAdapter):
    """Jobs as detached background processes; the pid is the queue id.

    Resources are ignored: there is no queue manager to enforce them.
    """

    name = "shell"

    def render(self, spec: SubmitSpec) -> dict[str, str]:
        """The bash script, run as ``bash submit.sh TOKEN``; its pid is the queue id."""
        return {self.script_name: render_script(spec, adapter=self.name, queue_id="$$")}

    def submit_command(self, spec: SubmitSpec) -> list[str]:
        """``bash -c SUBMIT_PROGRAM conveyor-submit RUN_DIR submit.sh TOKEN``."""
        run_dir = absolute_run_dir(spec.run_dir)
        token = valid_token(spec.submit_token)
        return ["bash", "-c", SUBMIT_PROGRAM, SUBMIT_ARGV0, run_dir, self.script_name, token]

    def parse_submit_output(self, exit_code: int, stdout: str, stderr: str) -> str:
        """The pid the submit program printed (on its last line: a login shell may chat)."""
        if exit_code != 0:
            raise QueueParseError(
                f"shell submit exited with code {exit_code}; stderr: {stderr.strip()!r}, "
                f"stdout: {stdout.strip()!r}"
            )
        lines = stdout.strip().splitlines()
        pid = lines[-1].strip() if lines else ""
        if not _PID.fullmatch(pid):
            raise QueueParseError(
                f"shell submit (exit code {exit_code}) printed no pid on its last line; "
                f"stdout: {stdout.strip()!r}, stderr: {stderr.strip()!r}"
            )
        return pid

    def status_command(self, queue_ids: Sequence[str]) -> list[str]:
        """``ps -o pid=,stat= -p PID,PID...``."""
        if not queue_ids:
            raise QueueError("no queue ids to ask about")
        return ["ps", "-o", "pid=,stat=", "-p", ",".join(_valid_pid(q) for q in queue_ids)]

    def parse_status_output(
        self, exit_code: int, stdout: str, stderr: str, queue_ids: Sequence[str]
    ) -> dict[str, QueueJobInfo]:
        """Processes still alive among ``queue_ids``; zombies count as gone.

        ``ps`` exits with code 1 and says nothing when none of the pids exists.
        """
        if exit_code not in (0, 1) or (exit_code == 1 and (stderr.strip() or stdout.strip())):
            raise QueueParseError(
                f"ps exited with code {exit_code}; stderr: {stderr.strip()!r}, "
                f"stdout: {stdout.strip()!r}"
            )
        wanted = set(queue_ids)
        jobs: dict[str, QueueJobInfo] = {}
        for line in stdout.splitlines():
            if not line.strip():
                continue
            pid, stat = _pid_and_stat(line, stdout)
            state = _state(stat)
            if pid in wanted and state is not None:
                jobs[pid] = QueueJobInfo(queue_id=pid, state=state, native_state=stat)
        return jobs

    def find_by_token_command(self, token: str) -> list[str]:
        """Every process with its state and full command line (``-ww``: never cut)."""
        return ["ps", "-ww", "-eo", "pid=,stat=,args="]

    def parse_find_by_token(
        self, exit_code: int, stdout: str, stderr: str, token: str
    ) -> str | None:
        """The pid of the live job started with ``token``, if any.

        The submit program's own ``bash -c`` carries the token too while it runs; it is
        recognised by its ``$0`` and skipped.
        """
        if exit_code != 0:
            raise QueueParseError(
                f"ps exited with code {exit_code}; stderr: {stderr.strip()!r}, "
                f"stdout: {stdout.strip()[-2000:]!r}"
            )
        for line in stdout.splitlines():
            if not line.strip():
                continue
            fields = line.split(None, 2)
            pid, stat = _pid_and_stat(" ".join(fields[:2]), line)
            words = fields[2].split() if len(fields) > 2 else []
            if token in words and SUBMIT_ARGV0 not in words and _state(stat) is not None:
                return pid
        return None

    def cancel_command(self, queue_id: str) -> list[str]:
        """``kill -TERM -- -PGID``: the job's whole process group (its pgid is its pid)."""
        return ["kill", "-TERM", "--", f"-{_valid_pid(queue_id)}"]


def _pid_and_stat(line: str, output: str) -> tuple[str, str]:
    fields = line.split()
    if len(fields) != 2 or not _PID.fullmatch(fields[0]) or not fields[1].isprintable():
        raise QueueParseError(
            f"cannot parse ps line {line!r} (expected 'PID STAT'); whole output: "
            f"{output.strip()[-2000:]!r}"
        )
    return fields[0], fields[1]


def _state(stat: str) -> QueueState | None:
    code = stat[0]
    if code not in NATIVE_STATES:
        log.warning("unknown ps process state %r: treated as %s", stat, QueueState.UNKNOWN)
        return QueueState.UNKNOWN
    return NATIVE_STATES[code]


def _valid_pid(queue_id: str) -> str:
    if not _PID.fullmatch(queue_id):
        raise QueueError(f"shell queue id {queue_id!r} is not a pid")
    return queue_id
