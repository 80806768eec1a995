"""Processes, read from /proc: whether one lives, its state, start time, command line
and environment, its children, and every live process, for the runner daemon to find
and wait for its supervisord and runner processes. Whether a process lives is read from
the state field of ``/proc/PID/stat``, never from ``kill -0``: an exited process stays a
zombie until it is reaped, which on some machines (a slow init, a container) takes
seconds, and ``kill -0`` calls a zombie alive.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

__all__ = [
    "POLL_SECONDS",
    "children",
    "cmdline",
    "environ",
    "live_pids",
    "pid_alive",
    "process_started_at",
    "process_state",
    "same_process",
    "stat_fields",
    "wait_dead",
]

#: How often a wait looks again.
POLL_SECONDS = 0.1
#: A process that started this much later than its registration is another process
#: that got the registered pid.
_PID_REUSE_SLACK = timedelta(seconds=5)


def stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name; None if no such pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name, in parentheses, may itself hold spaces and parentheses.
    return raw[raw.rindex(b")") + 2 :].decode().split()


def process_state(pid: int) -> str | None:
    """The state letter of a process (``R``, ``S``, ``D``, ``Z``...), None if none."""
    fields = stat_fields(pid)
    return fields[0] if fields else None


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process: a zombie (``Z``) or dead one (``X``) is not."""
    state = process_state(pid)
    return state is not None and state not in ("Z", "X")


def process_started_at(pid: int) -> datetime | None:
    fields = stat_fields(pid)
    if fields is None:
        return None
    try:
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration):
        return None
    ticks = int(fields[19])  # field 22 of stat(5): start time in clock ticks after boot
    return datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"), UTC)


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone, or another user's
        return []


def live_pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and pid_alive(int(entry.name)):
            yield int(entry.name)


def children(pid: int) -> list[int]:
    found = []
    for child in live_pids():
        fields = stat_fields(child)
        if fields is not None and fields[1] == str(pid):
            found.append(child)
    return found


def wait_dead(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive; the ones still alive at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if pid_alive(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(POLL_SECONDS)


def same_process(pid: int, registered_at: datetime) -> bool:
    """Whether ``pid`` lives and is the process that registered at ``registered_at``
    (not a later one that was given the same pid)."""
    if not pid_alive(pid):
        return False
    began = process_started_at(pid)
    return began is None or began <= registered_at + _PID_REUSE_SLACK
