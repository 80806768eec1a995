"""Running one command over an SSH connection and collecting its output.

Private to :mod:`conveyor.hosts`: :meth:`SSHConnection.run
<conveyor.hosts._sshconn.SSHConnection.run>` takes a command slot and a live transport,
then hands over to :func:`run_command`, which opens a channel, sends the command line and
its stdin, and reads stdout and stderr until the exit status arrives. A watchdog closes
the channel when the command's timeout is up (paramiko's ``exec_command`` and reads would
otherwise wait forever), which becomes :class:`~conveyor.exceptions.CommandTimeoutError`;
a channel that cannot be opened or a connection lost meanwhile marks the connection broken
and becomes :class:`~conveyor.exceptions.HostError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from conveyor.exceptions import CommandTimeoutError, HostError
from conveyor.hosts._sshtools import Watchdog, describe, kill

if TYPE_CHECKING:
    import paramiko

    from conveyor.hosts._sshconn import SSHConnection

__all__ = ["collect", "run_command"]

#: How often a running command's channel is checked for output and its exit status.
_POLL_SECONDS = 0.005


def run_command(
    conn: SSHConnection,
    transport: paramiko.Transport,
    generation: int,
    command: str,
    argv: Sequence[str],
    stdin: bytes | None,
    timeout: float,
) -> tuple[int, bytes, bytes]:
    """Run a shell command line on ``transport`` (of ``conn``'s ``generation``).

    Returns (exit code, stdout, stderr). The caller holds one of ``conn``'s command slots.

    Raises
    ------
    CommandTimeoutError
        If it did not finish within ``timeout`` (its channel is closed).
    HostError
        If the connection failed before or while it ran.
    """
    import paramiko

    try:
        chan = transport.open_session(timeout=conn.settings.channel_timeout)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        conn.broken(generation, f"cannot open a channel: {describe(exc)}")
        raise HostError(
            f"{conn.label}: cannot open a channel for {list(argv)!r}: "
            f"{describe(exc, conn.settings.channel_timeout)}"
        ) from exc
    out, err = bytearray(), bytearray()
    try:
        with Watchdog(timeout, lambda: kill(chan)) as watchdog:
            try:
                chan.exec_command(command)
                if stdin:
                    chan.sendall(stdin)
                chan.shutdown_write()
                collect(chan, out, err)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if watchdog.fired.is_set():
                    raise CommandTimeoutError(argv, timeout, conn.label) from None
                conn.broken(generation, f"lost while running a command: {exc}")
                raise HostError(
                    f"{conn.label}: the connection was lost while running "
                    f"{list(argv)!r}: {describe(exc)}"
                ) from exc
        if watchdog.fired.is_set():
            raise CommandTimeoutError(argv, timeout, conn.label)
    finally:
        chan.close()
    status: int = chan.exit_status
    if status == -1 and not transport.is_active():
        # No exit status, and the connection is gone: the command's fate is unknown.
        conn.broken(generation, "the connection ended while a command ran")
        raise HostError(
            f"{conn.label}: the connection was lost while running {list(argv)!r}"
            + (f"; stderr so far: {err.decode(errors='replace')[-500:]!r}" if err else "")
        )
    return status, bytes(out), bytes(err)


def collect(chan: paramiko.Channel, out: bytearray, err: bytearray) -> None:
    """Read stdout and stderr until the command's exit status (or the channel) ends."""
    while True:
        while chan.recv_ready():
            out += chan.recv(65536)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
        if chan.exit_status_ready():
            # sshd may send the exit status before the last of the output (it reads
            # the child's pipes after the child exits): read on to end of file. The
            # reads block; the caller's watchdog closes the channel past the timeout.
            while chunk := chan.recv(65536):
                out += chunk
            while chunk := chan.recv_stderr(65536):
                err += chunk
            return
        chan.status_event.wait(_POLL_SECONDS)
