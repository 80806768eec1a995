"""Logging in over a freshly opened SSH connection, and explaining why a login failed.

Private to :mod:`conveyor.hosts`: :class:`~conveyor.hosts._sshconn.SSHConnection` opens
each jump host and then the target through :func:`login`. It opens the fabric connection;
a changed host key becomes :class:`~conveyor.hosts._sshsetup.HostKeyError`, and a refused
login either falls back to an interactive password / one-time-code login on the terminal
(when the worker allows prompting) or becomes :class:`~conveyor.hosts._sshsetup.SSHAuthError`
with a hint at what to check. Errors of the network or the key exchange pass unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.hosts._sshsetup import (
    ConnectionSettings,
    HostKeyError,
    SSHAuthError,
    can_prompt,
    terminal_prompt,
)

if TYPE_CHECKING:
    from fabric import Connection

__all__ = ["login"]


def login(conn: Connection, settings: ConnectionSettings) -> None:
    """Open ``conn``; fall back to an interactive login on a terminal if allowed."""
    import paramiko

    label = f"{conn.user}@{conn.host}:{conn.port}"
    try:
        conn.open()
        return
    except paramiko.BadHostKeyException as exc:
        raise HostKeyError(
            f"the host key of {label} CHANGED ({exc.key.get_name()} "
            f"{exc.key.fingerprint}, expected {exc.expected_key.fingerprint}): this "
            "can be an attack. If the host was reinstalled, remove its old entry with "
            f"`ssh-keygen -R {exc.hostname}` and add the new key after checking it"
        ) from exc
    except paramiko.SSHException as exc:
        transport = conn.client.get_transport()
        in_login = transport is not None and transport.active and not transport.authenticated
        if not isinstance(exc, paramiko.AuthenticationException) and not in_login:
            raise  # the network or the key exchange, not the login
        if not (can_prompt(settings) and transport is not None and transport.active):
            hint = (
                " (an interactive login needs 'interactive: true' and a runner started "
                "in the foreground)"
                if not can_prompt(settings)
                else ""
            )
            if "No authentication methods" in str(exc):
                reason = "no key to offer (identity_file, IdentityFile, the agent, ~/.ssh): "
            elif not isinstance(exc, paramiko.AuthenticationException):
                reason = "a key could not be read (wrong passphrase?): "
            else:
                reason = ""
            raise SSHAuthError(
                f"cannot log in to {label}: {reason}{exc}. Check the user, the key "
                "(identity_file, the agent, passphrase_env) and that its public key is "
                f"in ~/.ssh/authorized_keys on the host{hint}"
            ) from exc
        prompt = terminal_prompt(label)
        try:
            try:
                transport.auth_interactive(str(conn.user), prompt)
            except paramiko.BadAuthenticationType as bad:
                if "password" not in bad.allowed_types:
                    raise
                (password,) = prompt("", "", [("Password:", False)])
                transport.auth_password(str(conn.user), password)
        except paramiko.SSHException as again:
            raise SSHAuthError(f"cannot log in to {label}: {again}") from again
        if not transport.is_authenticated():
            raise SSHAuthError(
                f"cannot log in to {label}: the host wants more than a password and a one-time code"
            ) from exc
        conn.transport = transport
