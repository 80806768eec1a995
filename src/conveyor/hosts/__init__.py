"""Hosts: where commands run and files live (this machine, or a cluster over SSH).

``SSHHost`` and ``HostPool`` load fabric and paramiko, so they are imported on first
use: a runner with only local workers never pays for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.hosts.base import CommandResult, Host, is_within
from conveyor.hosts.local import LocalHost

if TYPE_CHECKING:
    from conveyor.hosts.pool import HostPool, default_pool
    from conveyor.hosts.ssh import HostKeyError, SSHAuthError, SSHHost

__all__ = [
    "CommandResult",
    "Host",
    "HostKeyError",
    "HostPool",
    "LocalHost",
    "SSHAuthError",
    "SSHHost",
    "default_pool",
    "is_within",
]

_LAZY = {
    "SSHHost": "conveyor.hosts.ssh",
    "HostKeyError": "conveyor.hosts.ssh",
    "SSHAuthError": "conveyor.hosts.ssh",
    "HostPool": "conveyor.hosts.pool",
    "default_pool": "conveyor.hosts.pool",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
