"""Hosts: where commands run and files live (this machine, or a cluster over SSH)."""

from conveyor.hosts.base import CommandResult, Host, is_within
from conveyor.hosts.local import LocalHost

__all__ = ["CommandResult", "Host", "LocalHost", "is_within"]
