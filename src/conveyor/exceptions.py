"""The one exception tree of Conveyor.

::

    ConveyorError
    ├── ConfigError                 a project file or setting is wrong (names field and fix)
    ├── InvalidTransitionError      a state change not in the transition table
    ├── DatabaseError               the storage backend failed
    │   ├── SchemaVersionError      the database was written by another schema version
    │   └── NotFoundError           no job / flow with that id
    ├── LockError                   a lock could not be taken, renewed or released
    │   └── LockLostError           our lease was taken over (fencing refused the update)
    ├── StepError                   a runner step failed
    │   ├── TransientStepError      worth retrying with backoff
    │   └── PermanentStepError      retrying cannot help; straight to REMOTE_ERROR
    ├── HostError                   running a command or moving a file on a worker failed
    │   ├── CommandError            a command ran and exited non-zero (carries argv, code, output)
    │   └── CommandTimeoutError     a command did not finish in time
    ├── QueueError                  the queue adapter could not build or parse something
    │   └── QueueParseError         a queue command's output could not be parsed
    ├── RunnerTimeoutError          run_one_job / run_all_jobs ran out of time
    ├── WaitTimeoutError            api.wait / wait_flow: the jobs did not get there in time
    └── CommandFailedError          a command job's program failed (in conveyor.execution.argv,
                                    so the worker side imports nothing heavy)

Every message carries its evidence: the command, exit code and output, or the lock id
and its age.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CommandError",
    "CommandTimeoutError",
    "ConfigError",
    "ConveyorError",
    "DatabaseError",
    "HostError",
    "InvalidTransitionError",
    "LockError",
    "LockLostError",
    "NotFoundError",
    "PermanentStepError",
    "QueueError",
    "QueueParseError",
    "RunnerTimeoutError",
    "SchemaVersionError",
    "StepError",
    "TransientStepError",
    "WaitTimeoutError",
]

#: How much of a command's output an error message keeps (the tail).
OUTPUT_TAIL_CHARS = 2000


def tail(text: str | None, limit: int = OUTPUT_TAIL_CHARS) -> str:
    """The last ``limit`` characters of ``text`` (all of it if shorter)."""
    if not text:
        return ""
    return text if len(text) <= limit else "..." + text[-limit:]


class ConveyorError(Exception):
    """Base class of every error Conveyor raises on purpose."""


class ConfigError(ConveyorError):
    """A project file or setting is invalid; the message names the field and the fix."""


class InvalidTransitionError(ConveyorError):
    """A state change that the transition table does not allow."""


class DatabaseError(ConveyorError):
    """The storage backend failed."""


class SchemaVersionError(DatabaseError):
    """The database holds another schema version than this Conveyor understands."""


class NotFoundError(DatabaseError):
    """No job or flow matches the given id."""


class LockError(ConveyorError):
    """A lock could not be taken, renewed or released."""


class LockLostError(LockError):
    """Our lease on a document was taken over; the step's result was dropped."""


class StepError(ConveyorError):
    """A runner step failed."""

    #: Whether retrying the step later can help.
    transient: bool = True


class TransientStepError(StepError):
    """A step failed in a way that a later attempt may not (network, busy queue...)."""

    transient = True


class PermanentStepError(StepError):
    """A step failed in a way no retry can fix (bad script, missing file...)."""

    transient = False


class HostError(ConveyorError):
    """Running a command or transferring a file on a worker failed."""


class CommandError(HostError):
    """A command ran and exited with a non-zero code."""

    def __init__(
        self,
        argv: Sequence[str],
        exit_code: int,
        stdout: str = "",
        stderr: str = "",
        host: str = "",
    ) -> None:
        self.argv = list(argv)
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        self.host = host
        where = f" on {host}" if host else ""
        message = f"command {self.argv!r}{where} exited with code {exit_code}"
        if stderr.strip():
            message += f"\nstderr: {tail(stderr.strip())}"
        if stdout.strip():
            message += f"\nstdout: {tail(stdout.strip())}"
        super().__init__(message)


class CommandTimeoutError(HostError):
    """A command did not finish within its timeout."""

    def __init__(self, argv: Sequence[str], timeout: float, host: str = "") -> None:
        self.argv = list(argv)
        self.timeout = timeout
        self.host = host
        where = f" on {host}" if host else ""
        super().__init__(f"command {self.argv!r}{where} did not finish within {timeout:g} s")


class QueueError(ConveyorError):
    """The queue adapter could not build a command or a script."""


class QueueParseError(QueueError):
    """A queue command's output could not be understood."""


class RunnerTimeoutError(ConveyorError):
    """The runner did not bring the job(s) to the target state in time."""


class WaitTimeoutError(ConveyorError):
    """The jobs or the flow did not reach what ``api.wait``/``wait_flow`` waited for."""
