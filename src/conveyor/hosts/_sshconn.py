"""One SSH connection to one (host, port, user), shared by every worker on it.

Private to :mod:`conveyor.hosts`: :class:`~conveyor.hosts.ssh.SSHHost` runs commands and
moves files through an :class:`SSHConnection`, and :mod:`conveyor.hosts.pool` keeps one
per target. What it guarantees:

* **bounded**: connecting (TCP, banner, key exchange, login) waits at most
  ``connect_timeout`` per phase, opening a channel ``channel_timeout``, a command its own
  timeout, an SFTP request ``transfer_timeout``. paramiko waits forever in a few places
  (``exec_command``, ``invoke_subsystem``): a watchdog closes the channel when time is up.
* **dead connections noticed**: keepalive messages plus ``TCP_USER_TIMEOUT`` make the
  kernel drop a connection to a silent host; a channel that cannot be opened, or a
  transfer that gets no answer, marks it broken too. The next call reconnects.
* **gentle**: at most ``max_concurrent_commands`` channels at once, at least
  ``min_connect_interval`` between two new connections, and after a failed connection
  attempt no new one for ``reconnect_delays[n]`` seconds: calls meanwhile fail at once
  with the last error, so a dead host costs its timeouts once, not once per job.
* **strict about host keys**: unknown keys are refused unless the worker accepts new ones
  (then they are recorded in its known_hosts); a changed key is always refused.

This module keeps the connection's lifecycle (connecting, the reconnection
backoff, keepalive, the SFTP session); logging in is in :mod:`conveyor.hosts._sshlogin`,
running a command and collecting its output in :mod:`conveyor.hosts._sshexec`, and the
counters, watchdog and failure descriptions in :mod:`conveyor.hosts._sshtools`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import ConfigError, HostError
from conveyor.hosts._sshexec import run_command
from conveyor.hosts._sshlogin import login
from conveyor.hosts._sshsetup import (
    ConnectionSettings,
    HostKeyError,
    SSHAuthError,
    SSHTarget,
    _HostKeyPolicy,
    can_prompt,
    fabric_config,
    resolve_target,
    terminal_prompt,
    transport_class,
)
from conveyor.hosts._sshtools import SSHStats, Watchdog, describe

if TYPE_CHECKING:
    import paramiko
    from fabric import Connection


__all__ = [
    "ConnectionSettings",
    "HostKeyError",
    "SSHAuthError",
    "SSHConnection",
    "SSHStats",
    "SSHTarget",
    "describe",
    "resolve_target",
]

log = logging.getLogger(__name__)


class SSHConnection:
    """One SSH connection (reopened as needed) to one target, shared by threads.

    Parameters
    ----------
    target
        Where it goes (see :func:`resolve_target`).
    settings
        How to log in and how long to wait.
    """

    def __init__(self, target: SSHTarget, settings: ConnectionSettings) -> None:
        self.target = target
        self.settings = settings
        self.label = target.label
        self.stats = SSHStats()
        self._slots = threading.BoundedSemaphore(settings.max_concurrent_commands)
        self._state_lock = threading.Lock()
        self._connect_lock = threading.Lock()
        self._sftp_lock = threading.Lock()
        self._conn: Connection | None = None
        self._hops: list[Connection] = []
        self._sftp: paramiko.SFTPClient | None = None
        self._generation = 0
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        self._last_exc: BaseException | None = None
        self._last_connect = -1e9
        self._closed = False

    def __repr__(self) -> str:
        return f"SSHConnection({self.label!r})"

    def limit_commands(self, limit: int) -> None:
        """Lower the number of commands run at once (never raise it).

        Commands running now finish under the old limit; new ones wait for the new one.
        """
        with self._state_lock:
            if limit >= self.settings.max_concurrent_commands:
                return
            self.settings = dataclasses.replace(self.settings, max_concurrent_commands=limit)
            self._slots = threading.BoundedSemaphore(limit)

    # --- connecting ------------------------------------------------------------------

    def _live(self) -> tuple[paramiko.Transport, int] | None:
        with self._state_lock:
            conn = self._conn
            transport = conn.transport if conn is not None else None
            if transport is not None and transport.is_active() and transport.is_authenticated():
                return transport, self._generation
            return None

    def _check_backoff(self) -> None:
        with self._state_lock:
            wait = self._retry_at - time.monotonic()
            if wait > 0 and isinstance(self._last_exc, ConfigError):
                # A refused key or login stays a configuration error: not retried.
                raise type(self._last_exc)(str(self._last_exc))
            if wait > 0:
                raise HostError(
                    f"{self.label} is unreachable: {self._last_error} (after "
                    f"{self._failures} failed attempt(s) in a row; next attempt in {wait:.1f} s)"
                )

    def transport(self) -> tuple[paramiko.Transport, int]:
        """A live, logged-in transport and its generation; connects if needed.

        Raises
        ------
        HostError
            If the host cannot be reached (or was not, moments ago: see the backoff).
        HostKeyError, SSHAuthError, ConfigError
            If the host key or the login is refused, or a setting is wrong.
        """
        if self._closed:
            raise HostError(f"the connection to {self.label} was closed")
        live = self._live()
        if live is not None:
            return live
        self._check_backoff()
        budget = 3 * self.settings.connect_timeout + self.settings.min_connect_interval
        if not self._connect_lock.acquire(timeout=budget):
            raise HostError(f"{self.label}: another thread has been connecting for {budget:g} s")
        try:
            live = self._live()
            if live is not None:
                return live
            self._check_backoff()
            pause = self._last_connect + self.settings.min_connect_interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            self._last_connect = time.monotonic()
            return self._connect()
        finally:
            self._connect_lock.release()

    def _connect(self) -> tuple[paramiko.Transport, int]:
        started = time.monotonic()
        try:
            conn, hops = self._open()
        except Exception as exc:
            self._failed(exc)
            if isinstance(exc, ConfigError):
                raise
            raise HostError(
                f"cannot connect to {self.label}: {describe(exc, self.settings.connect_timeout)}"
            ) from exc
        transport = conn.transport
        assert transport is not None
        self._tune(transport)
        with self._state_lock:
            old, old_hops = self._conn, self._hops
            self._conn, self._hops = conn, hops
            self._generation += 1
            self._failures = 0
            self._retry_at = 0.0
            self._last_error = ""
            generation = self._generation
        self._close_quietly(old, old_hops)
        self.stats.add("connections")
        log.info("connected to %s in %.2f s", self.label, time.monotonic() - started)
        return transport, generation

    def _failed(self, exc: BaseException) -> None:
        self.stats.add("connect_failures")
        with self._state_lock:
            self._failures += 1
            delays = self.settings.reconnect_delays
            delay = delays[min(self._failures, len(delays)) - 1]
            self._retry_at = time.monotonic() + delay
            self._last_error = describe(exc, self.settings.connect_timeout)
            self._last_exc = exc
            failures = self._failures
        log.warning(
            "cannot connect to %s (attempt %s in a row): %s; next attempt in %g s at the earliest",
            self.label,
            failures,
            self._last_error,
            delay,
        )

    def _connect_kwargs(self, interactive: bool) -> dict[str, Any]:
        s = self.settings
        kwargs: dict[str, Any] = {
            "allow_agent": s.allow_agent,
            "look_for_keys": s.look_for_keys,
            "banner_timeout": s.connect_timeout,
            # a person typing a password and a code needs longer than a server does
            "auth_timeout": max(s.connect_timeout, 120.0) if interactive else s.connect_timeout,
            "channel_timeout": s.channel_timeout,
        }
        if s.identity_file:
            kwargs["key_filename"] = [os.path.expanduser(p) for p in s.identity_file]
        if s.passphrase_env:
            passphrase = os.environ.get(s.passphrase_env)
            if passphrase is None:
                raise ConfigError(
                    f"{self.label}: the environment variable {s.passphrase_env} "
                    "(passphrase_env) is not set; export it with the key's passphrase "
                    "before starting the runner"
                )
            kwargs["passphrase"] = passphrase
        return kwargs

    def _new_connection(
        self, host: str, *, user: str | None, port: int | None, config: Any, gateway: Any
    ) -> Connection:
        import paramiko
        from fabric import Connection

        interactive = can_prompt(self.settings)
        conn = Connection(
            host,
            user=user,
            port=port,
            config=config,
            gateway=gateway,
            connect_kwargs=self._connect_kwargs(interactive),
        )
        # fabric truncates connect_timeout to whole seconds (0.5 -> no timeout at all)
        conn.connect_timeout = self.settings.connect_timeout
        label = f"{conn.user}@{conn.host}:{conn.port}"
        prompt = terminal_prompt(label) if interactive else None
        conn.connect_kwargs["transport_factory"] = transport_class(prompt, label)
        client = conn.client
        for path in ("/etc/ssh/ssh_known_hosts", "~/.ssh/known_hosts", self.settings.known_hosts):
            full = os.path.expanduser(path)
            if os.path.isfile(full):
                try:
                    client.load_system_host_keys(full)
                except (OSError, paramiko.SSHException) as exc:
                    raise ConfigError(f"cannot read known_hosts file {full}: {exc}") from exc
        client.set_missing_host_key_policy(_HostKeyPolicy(self.settings, label))
        return conn

    def _hop_list(self) -> list[str]:
        if self.settings.jump_hosts is not None:
            return list(self.settings.jump_hosts)
        jump = str(self.target.ssh_options.get("proxyjump", "")).strip()
        if not jump or jump.lower() == "none":
            return []
        return [hop.strip() for hop in jump.split(",") if hop.strip()]

    def _open(self) -> tuple[Connection, list[Connection]]:
        """Open the connection, through the jump hosts if any; log in."""
        config = fabric_config(self.settings)
        hops: list[Connection] = []
        gateway: Any = False
        for hop in self._hop_list():
            user, _, rest = hop.rpartition("@")
            host, _, port = rest.partition(":")
            conn = self._new_connection(
                host,
                user=user or None,
                port=int(port) if port else None,
                config=config,
                gateway=gateway,
            )
            hops.append(conn)
            gateway = conn
        if not hops and "proxycommand" in self.target.ssh_options:
            gateway = str(self.target.ssh_options["proxycommand"])
        conn = self._new_connection(
            self.settings.host,
            user=self.settings.user,
            port=self.settings.port,
            config=config,
            gateway=gateway,
        )
        try:
            for hop in hops:
                if not hop.is_connected:
                    login(hop, self.settings)
            login(conn, self.settings)
        except BaseException:
            self._close_quietly(conn, hops)
            raise
        return conn, hops

    def _tune(self, transport: paramiko.Transport) -> None:
        """Keepalive, and let the kernel drop the connection to a silent host."""
        s = self.settings
        if s.keepalive_interval <= 0:
            return
        transport.set_keepalive(max(1, round(s.keepalive_interval)))
        sock = transport.sock
        if isinstance(sock, socket.socket) and hasattr(socket, "TCP_USER_TIMEOUT"):
            ms = int(s.keepalive_interval * s.keepalive_count_max * 1000)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, ms)
            except OSError as exc:  # not Linux, or not TCP: keepalive and timeouts remain
                log.debug("%s: TCP_USER_TIMEOUT not set: %s", self.label, exc)

    def broken(self, generation: int, reason: str) -> None:
        """Drop the connection of ``generation`` (if still current): it is dead."""
        with self._state_lock:
            if generation != self._generation or self._conn is None:
                return
            conn, hops = self._conn, self._hops
            self._conn, self._hops = None, []
            sftp, self._sftp = self._sftp, None
        log.warning("%s: dropping the connection: %s", self.label, reason)
        if sftp is not None:
            try:
                sftp.get_channel().close()
            except Exception:
                log.debug("closing the SFTP channel failed", exc_info=True)
        self._close_quietly(conn, hops)

    @staticmethod
    def _close_quietly(conn: Connection | None, hops: Sequence[Connection]) -> None:
        for item in [conn, *reversed(hops)]:
            if item is None:
                continue
            try:
                item.client.close()
            except Exception:
                log.debug("closing a connection failed", exc_info=True)

    def close(self) -> None:
        """Close the connection for good."""
        self._closed = True
        with self._state_lock:
            conn, hops = self._conn, self._hops
            self._conn, self._hops, self._sftp = None, [], None
        self._close_quietly(conn, hops)

    # --- commands --------------------------------------------------------------------

    @contextmanager
    def _slot(self, wait: float, what: str) -> Iterator[None]:
        slots = self._slots  # the one to give back, even if the limit changes meanwhile
        if not slots.acquire(timeout=max(0.0, wait)):
            raise HostError(
                f"{self.label}: all {self.settings.max_concurrent_commands} command slots "
                f"stayed busy for {wait:g} s; {what} was not started"
            )
        try:
            yield
        finally:
            slots.release()

    def run(
        self, command: str, argv: Sequence[str], stdin: bytes | None, timeout: float
    ) -> tuple[int, bytes, bytes]:
        """Run a shell command line; (exit code, stdout, stderr).

        Raises
        ------
        CommandTimeoutError
            If it did not finish within ``timeout`` (its channel is closed).
        HostError
            If the connection failed before or while it ran.
        """
        with self._slot(timeout, f"command {list(argv)!r}"):
            transport, generation = self.transport()
            return run_command(self, transport, generation, command, argv, stdin, timeout)

    # --- SFTP ------------------------------------------------------------------------

    @contextmanager
    def sftp(self, what: str) -> Iterator[paramiko.SFTPClient]:
        """The connection's one SFTP session, for the calling thread alone meanwhile.

        Errors of the session itself (no answer, connection lost) drop the connection
        and become :class:`HostError`; file errors (``OSError`` with an errno) pass.
        """
        import paramiko

        wait = self.settings.transfer_timeout
        if not self._sftp_lock.acquire(timeout=wait):
            raise HostError(f"{self.label}: the SFTP session stayed busy for {wait:g} s; {what}")
        generation = -1
        try:
            transport, generation = self.transport()
            sftp = self._sftp_session(transport, generation)
            yield sftp
        except (paramiko.SSHException, EOFError, TimeoutError) as exc:
            reason = describe(exc, self.settings.transfer_timeout)
            self.broken(generation, f"SFTP failed: {reason}")
            raise HostError(f"{self.label}: {what} failed: {reason}") from exc
        finally:
            self._sftp_lock.release()

    def _sftp_session(self, transport: paramiko.Transport, generation: int) -> paramiko.SFTPClient:
        import paramiko

        with self._state_lock:
            sftp = self._sftp if self._generation == generation else None
        if sftp is not None and not sftp.get_channel().closed:
            return sftp
        try:
            chan = transport.open_session(timeout=self.settings.channel_timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise paramiko.SSHException(f"cannot open the SFTP channel: {describe(exc)}") from exc
        with Watchdog(self.settings.channel_timeout, chan.close) as watchdog:
            try:
                chan.invoke_subsystem("sftp")
                sftp = paramiko.SFTPClient(chan)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if watchdog.fired.is_set():
                    raise TimeoutError("starting the SFTP subsystem") from exc
                raise
        chan.settimeout(self.settings.transfer_timeout)
        with self._state_lock:
            self._sftp = sftp
        self.stats.add("sftp_sessions")
        return sftp
