"""The host pool: one SSH connection per (host, port, user), shared by every worker on it.

Workers are matched after ~/.ssh/config is applied, so an alias and the host's real
name share a connection. The first worker to ask sets the connection's timeouts; the
smallest ``max_concurrent_commands`` among the workers is kept. A connection is closed
when the last worker using it lets go (:meth:`HostPool.release`).

One process-wide pool (:func:`default_pool`) serves every project a process opens.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from conveyor.hosts._sshconn import (
    ConnectionSettings,
    SSHConnection,
    SSHTarget,
    resolve_target,
)

__all__ = ["HostPool", "default_pool"]

log = logging.getLogger(__name__)


class HostPool:
    """Shared SSH connections, keyed by (host, port, user), counted by their users."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: dict[tuple[str, int, str], SSHConnection] = {}
        self._users: dict[tuple[str, int, str], int] = {}

    def acquire(self, settings: ConnectionSettings) -> SSHConnection:
        """The connection for ``settings``' target (made if new; opened on first use)."""
        target: SSHTarget = resolve_target(settings)
        with self._lock:
            connection = self._connections.get(target.key)
            if connection is None:
                connection = SSHConnection(target, settings)
                self._connections[target.key] = connection
                self._users[target.key] = 0
            else:
                # The smallest limit asked for by any worker on the host applies.
                connection.limit_commands(settings.max_concurrent_commands)
            self._users[target.key] += 1
            return connection

    def release(self, connection: SSHConnection) -> None:
        """One user fewer; the last one closes the connection."""
        key = connection.target.key
        with self._lock:
            if self._connections.get(key) is not connection:
                return
            self._users[key] -= 1
            if self._users[key] > 0:
                return
            del self._connections[key]
            del self._users[key]
        connection.close()

    def connections(self) -> list[SSHConnection]:
        """The connections in the pool now."""
        with self._lock:
            return list(self._connections.values())

    def stats(self) -> dict[str, dict[str, Any]]:
        """Counters per connection, by ``user@host:port``."""
        return {c.label: c.stats.snapshot() for c in self.connections()}

    def close(self) -> None:
        """Close every connection (the pool stays usable)."""
        with self._lock:
            connections = list(self._connections.values())
            self._connections.clear()
            self._users.clear()
        for connection in connections:
            connection.close()


_default: HostPool | None = None
_default_lock = threading.Lock()


def default_pool() -> HostPool:
    """The process-wide pool (made on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = HostPool()
        return _default
