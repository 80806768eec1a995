"""The jobflow job behind ``submit_command``: run an argv (no shell) in the run dir.

The command's output goes to ``command.out`` and ``command.err`` in the current
directory (the run dir on the worker); the job's output keeps their tails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, cast

from jobflow.core.job import job

from conveyor.execution.argv import STDERR_NAME, STDOUT_NAME, CommandFailedError, run_argv

if TYPE_CHECKING:
    from jobflow.core.job import Job

__all__ = ["STDERR_NAME", "STDOUT_NAME", "CommandFailedError", "run_command"]

_P = ParamSpec("_P")


def _typed_job(function: Callable[_P, Any]) -> Callable[_P, Job]:
    """``jobflow.job`` with a precise type: calling the result makes a Job."""
    return cast("Callable[_P, Job]", job(function))


@_typed_job
def run_command(argv: list[str], check: bool = True, tail_chars: int = 4000) -> dict[str, Any]:
    """Run ``argv`` without a shell in the current directory and wait for it.

    Parameters
    ----------
    argv
        The program and its arguments.
    check
        Raise :class:`CommandFailedError` if the exit code is not 0.
    tail_chars
        How many characters of the end of stdout and stderr the output keeps.

    Returns
    -------
    dict
        ``{"argv", "exit_code", "stdout_tail", "stderr_tail"}``.
    """
    return run_argv(argv, check=check, tail_chars=tail_chars)
