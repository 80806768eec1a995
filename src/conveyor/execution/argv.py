"""Run an argv without a shell and keep the tails of its output: the light core of
command jobs, used by the jobflow job in :mod:`conveyor.execution.command` and by the
execution module's fast path, which skips importing jobflow for command jobs.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from typing import Any

from conveyor.exceptions import ConveyorError

__all__ = ["STDERR_NAME", "STDOUT_NAME", "CommandFailedError", "run_argv"]

STDOUT_NAME = "command.out"
STDERR_NAME = "command.err"


class CommandFailedError(ConveyorError):
    """The command of a command job could not start, or exited non-zero with ``check``."""

    def __init__(self, argv: Sequence[str], exit_code: int | None, stderr_tail: str) -> None:
        self.argv = list(argv)
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        if exit_code is None:
            message = f"command {self.argv!r} could not be started: {stderr_tail}"
        else:
            message = f"command {self.argv!r} exited with code {exit_code}"
            if stderr_tail.strip():
                message += f"\nstderr (tail):\n{stderr_tail}"
        super().__init__(message)


def run_argv(argv: Sequence[str], *, check: bool = True, tail_chars: int = 4000) -> dict[str, Any]:
    """Run ``argv`` in the current directory, output to ``command.out``/``command.err``.

    Returns ``{"argv", "exit_code", "stdout_tail", "stderr_tail"}``; with ``check``, a
    non-zero exit raises :class:`CommandFailedError` carrying the code and stderr tail.
    """
    argv = [str(arg) for arg in argv]
    with open(STDOUT_NAME, "wb") as out, open(STDERR_NAME, "wb") as err:
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        except OSError as exc:
            raise CommandFailedError(argv, None, str(exc)) from exc
    result: dict[str, Any] = {
        "argv": argv,
        "exit_code": proc.returncode,
        "stdout_tail": _tail(STDOUT_NAME, tail_chars),
        "stderr_tail": _tail(STDERR_NAME, tail_chars),
    }
    if check and proc.returncode != 0:
        raise CommandFailedError(argv, proc.returncode, result["stderr_tail"])
    return result


def _tail(path: str, chars: int) -> str:
    """The last ``chars`` characters of a file (undecodable bytes replaced)."""
    if chars <= 0:
        return ""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        # A UTF-8 character has at most 4 bytes: this many bytes hold enough characters.
        fh.seek(max(0, size - 4 * chars - 3))
        text = fh.read().decode("utf-8", errors="replace")
    return text[-chars:]
