"""Small parts of an SSH connection: counters, failure descriptions, and bounding the
calls paramiko would otherwise wait on forever. Private to :mod:`conveyor.hosts`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import paramiko

__all__ = ["SSHStats", "Watchdog", "describe", "kill"]

log = logging.getLogger(__name__)


class SSHStats:
    """Counters of what went over a connection (thread-safe), for tests and benchmarks.

    ``commands``: remote commands run (one channel each); ``uploads`` / ``downloads``:
    whole files written / read over SFTP; ``file_ops``: other SFTP requests (stat,
    mkdir, listdir, remove, rename); ``connections``: SSH connections opened;
    ``sftp_sessions``: SFTP sessions opened; ``connect_failures``: failed attempts;
    ``programs``: commands by program name (``argv[0]``).
    """

    _FIELDS = (
        "connections",
        "connect_failures",
        "sftp_sessions",
        "commands",
        "uploads",
        "downloads",
        "file_ops",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._programs: Counter[str] = Counter()

    def add(self, name: str, count: int = 1, *, program: str | None = None) -> None:
        """Count ``count`` more of ``name`` (one of the fields above)."""
        with self._lock:
            self._counts[name] += count
            if program is not None:
                self._programs[program] += count

    def snapshot(self) -> dict[str, Any]:
        """The counters now, as a plain dict (``programs`` a dict of its own)."""
        with self._lock:
            data: dict[str, Any] = {name: self._counts[name] for name in self._FIELDS}
            data["programs"] = dict(self._programs)
        return data

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._counts[name]


def describe(exc: BaseException, timeout: float | None = None) -> str:
    """A short, plain reason for a connection failure."""
    from paramiko.ssh_exception import NoValidConnectionsError

    if isinstance(exc, NoValidConnectionsError):
        reasons = sorted({os.strerror(e.errno) if e.errno else str(e) for e in exc.errors.values()})
        return "; ".join(reasons) or str(exc)
    if isinstance(exc, socket.gaierror):
        return f"unknown host name ({exc.strerror})"
    if isinstance(exc, TimeoutError | socket.timeout):
        limit = f" within {timeout:g} s" if timeout is not None else ""
        return f"no answer{limit} (the host is silent or unreachable)"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def kill(chan: paramiko.Channel) -> None:
    """Send SIGKILL to the channel's process (RFC 4254 "signal", OpenSSH 7.9+), close it.

    Without a terminal, closing a channel alone leaves the remote command running.
    """
    from paramiko.common import cMSG_CHANNEL_REQUEST
    from paramiko.message import Message

    if not chan.closed:
        message = Message()
        message.add_byte(cMSG_CHANNEL_REQUEST)
        message.add_int(chan.remote_chanid)
        message.add_string("signal")
        message.add_boolean(False)
        message.add_string("KILL")
        chan.transport._send_user_message(message)
    chan.close()


class Watchdog:
    """Calls ``action`` if not cancelled within ``seconds``; remembers that it fired."""

    def __init__(self, seconds: float, action: Callable[[], None]) -> None:
        self.fired = threading.Event()
        self._action = action
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired.set()
        try:
            self._action()
        except Exception:  # closing an already broken channel may fail; nothing to do
            log.debug("watchdog action failed", exc_info=True)

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
