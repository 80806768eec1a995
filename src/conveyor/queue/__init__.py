"""Queue adapters: pure functions that build queue commands and parse their output."""

from __future__ import annotations

import difflib

from conveyor.exceptions import ConfigError
from conveyor.queue.base import QueueAdapter, QueueJobInfo, QueueState, SubmitSpec
from conveyor.queue.shell import ShellAdapter

__all__ = [
    "ADAPTERS",
    "QueueAdapter",
    "QueueJobInfo",
    "QueueState",
    "ShellAdapter",
    "SubmitSpec",
    "get_adapter",
]

#: Adapters by the name a worker's ``queue:`` setting uses.
ADAPTERS: dict[str, type[QueueAdapter]] = {"shell": ShellAdapter}


def get_adapter(name: str) -> QueueAdapter:
    """A new adapter for the queue system ``name``.

    Raises
    ------
    ConfigError
        If no adapter has that name; the message lists the known ones and suggests the
        closest.
    """
    adapter = ADAPTERS.get(name)
    if adapter is None:
        close = difflib.get_close_matches(name, ADAPTERS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = ", ".join(sorted(ADAPTERS))
        raise ConfigError(f"unknown queue system {name!r} (known: {known}){hint}")
    return adapter()
