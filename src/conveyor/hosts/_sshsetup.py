"""Who and where an SSH connection logs in to, and how: settings, ~/.ssh/config,
host-key checks and interactive prompts. Private to :mod:`conveyor.hosts`; no network.
"""

from __future__ import annotations

import getpass
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor.exceptions import ConfigError

if TYPE_CHECKING:
    import paramiko

    from conveyor.config.models import SSHWorkerConfig

__all__ = [
    "ConnectionSettings",
    "HostKeyError",
    "SSHAuthError",
    "SSHTarget",
    "can_prompt",
    "fabric_config",
    "resolve_target",
    "terminal_prompt",
    "transport_class",
]

log = logging.getLogger(__name__)

#: Prompts for interactive logins come one at a time, whichever host asks.
_PROMPT_LOCK = threading.Lock()


class HostKeyError(ConfigError):
    """The host's key is unknown or changed; the message says how to fix it.

    A configuration problem, not a transient one: no retry changes a host key.
    """


class SSHAuthError(ConfigError):
    """Logging in failed: no key, passphrase or interactive answer was accepted."""


@dataclass(frozen=True)
class ConnectionSettings:
    """How to reach and log in to one host, and how long to wait for it."""

    host: str
    user: str | None = None
    port: int | None = None
    identity_file: tuple[str, ...] = ()
    passphrase_env: str | None = None
    jump_hosts: tuple[str, ...] | None = None
    ssh_config: str | None = "~/.ssh/config"
    known_hosts: str = "~/.ssh/known_hosts"
    accept_new_host_keys: bool = False
    allow_agent: bool = True
    look_for_keys: bool = True
    interactive: bool = False
    connect_timeout: float = 10.0
    channel_timeout: float = 10.0
    transfer_timeout: float = 60.0
    command_timeout: float = 60.0
    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3
    reconnect_delays: tuple[float, ...] = (1.0, 5.0, 15.0, 30.0)
    min_connect_interval: float = 1.0
    max_concurrent_commands: int = 8

    @classmethod
    def from_worker(cls, config: SSHWorkerConfig) -> ConnectionSettings:
        """The settings of an ``ssh`` worker's connection."""
        return cls(
            host=config.host,
            user=config.user,
            port=config.port,
            identity_file=tuple(config.identity_file),
            passphrase_env=config.passphrase_env,
            jump_hosts=None if config.jump_hosts is None else tuple(config.jump_hosts),
            ssh_config=config.ssh_config,
            known_hosts=config.known_hosts,
            accept_new_host_keys=config.accept_new_host_keys,
            allow_agent=config.allow_agent,
            look_for_keys=config.look_for_keys,
            interactive=config.interactive,
            connect_timeout=config.connect_timeout,
            channel_timeout=config.channel_timeout,
            transfer_timeout=config.transfer_timeout,
            command_timeout=config.command_timeout,
            keepalive_interval=config.keepalive_interval,
            keepalive_count_max=config.keepalive_count_max,
            reconnect_delays=tuple(config.reconnect_delays),
            min_connect_interval=config.min_connect_interval,
            max_concurrent_commands=config.max_concurrent_commands,
        )


@dataclass(frozen=True)
class SSHTarget:
    """Where a connection goes once ~/.ssh/config is applied: the pool's key."""

    hostname: str
    port: int
    user: str
    #: The ~/.ssh/config entries that apply to the host (lower-case keys).
    ssh_options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> tuple[str, int, str]:
        """(host, port, user): one connection per key."""
        return (self.hostname, self.port, self.user)

    @property
    def label(self) -> str:
        """``user@host:port``, for messages."""
        return f"{self.user}@{self.hostname}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The host's name as known_hosts files write it."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def _ssh_config_object(path: str | None) -> paramiko.SSHConfig:
    """The parsed OpenSSH client config (empty if not used or absent)."""
    import paramiko

    if path is None:
        return paramiko.SSHConfig()
    full = os.path.expanduser(path)
    if not os.path.exists(full):
        if path == "~/.ssh/config":
            return paramiko.SSHConfig()
        raise ConfigError(f"ssh_config {path!r} does not exist; fix the path or set it to null")
    try:
        return paramiko.SSHConfig.from_path(full)
    except Exception as exc:
        raise ConfigError(f"cannot read ssh_config {full}: {exc}") from exc


def fabric_config(settings: ConnectionSettings) -> Any:
    from fabric import Config

    return Config(ssh_config=_ssh_config_object(settings.ssh_config))


def resolve_target(settings: ConnectionSettings) -> SSHTarget:
    """Apply ~/.ssh/config (HostName, Port, User) to the worker's host; no network."""
    from fabric import Connection

    conn = Connection(
        settings.host,
        user=settings.user,
        port=settings.port,
        config=fabric_config(settings),
        gateway=False,
    )
    return SSHTarget(str(conn.host), int(conn.port), str(conn.user), dict(conn.ssh_config))


class _HostKeyPolicy:
    """Refuse unknown host keys, or accept and record them if the worker says so."""

    def __init__(self, settings: ConnectionSettings, label: str) -> None:
        self.settings = settings
        self.label = label

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: Any) -> None:
        fingerprint = key.fingerprint if hasattr(key, "fingerprint") else key.get_name()
        known = os.path.expanduser(self.settings.known_hosts)
        if not self.settings.accept_new_host_keys:
            host, _, port = hostname.strip("[").partition("]:")
            scan = f"ssh-keyscan {'-p ' + port + ' ' if port else ''}{host}"
            raise HostKeyError(
                f"the host key of {hostname} ({key.get_name()} {fingerprint}) is unknown: "
                f"it is in neither {known} nor /etc/ssh/ssh_known_hosts. Check the "
                f"fingerprint with the host's admins, then add it with `{scan} >> {known}` "
                "(or log in once with ssh), or set 'accept_new_host_keys: true' on the "
                "worker to accept and record it on first connection"
            )
        client.get_host_keys().add(hostname, key.get_name(), key)
        directory = os.path.dirname(known)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(known, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        log.warning(
            "%s: accepted the new host key of %s (%s %s) and added it to %s",
            self.label,
            hostname,
            key.get_name(),
            fingerprint,
            known,
        )


def terminal_prompt(label: str) -> Callable[[str, str, Sequence[tuple[str, bool]]], list[str]]:
    """A keyboard-interactive handler that asks on this process's terminal."""

    def handler(title: str, instructions: str, prompts: Sequence[tuple[str, bool]]) -> list[str]:
        with _PROMPT_LOCK:
            if title or instructions:
                print(f"[{label}] {title} {instructions}".rstrip(), file=sys.stderr)
            answers = []
            for prompt, echo in prompts:
                text = f"[{label}] {prompt.strip() or 'Answer:'} "
                answers.append(input(text) if echo else getpass.getpass(text))
            return answers

    return handler


def can_prompt(settings: ConnectionSettings) -> bool:
    return settings.interactive and sys.stdin is not None and sys.stdin.isatty()


def transport_class(prompt: Callable[..., list[str]] | None, label: str) -> type[Any]:
    """A Transport whose two-factor fallback asks on the terminal, or refuses."""
    import paramiko

    class _Transport(paramiko.Transport):  # type: ignore[misc]
        def auth_interactive_dumb(
            self, username: str, handler: Any = None, submethods: str = ""
        ) -> list[str]:
            if prompt is None:
                raise paramiko.AuthenticationException(
                    f"{label} asks for a password or one-time code after the key: set "
                    "'interactive: true' on the worker and start the runner in the "
                    "foreground, on a terminal"
                )
            result: list[str] = self.auth_interactive(username, prompt, submethods)
            return result

    return _Transport
