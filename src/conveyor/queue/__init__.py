"""Queue adapters: pure functions that build queue commands and parse their output."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from typing import Any

from conveyor.exceptions import ConfigError
from conveyor.queue.base import QueueAdapter, QueueJobInfo, QueueState, SubmitSpec

__all__ = [
    "ADAPTERS",
    "QueueAdapter",
    "QueueJobInfo",
    "QueueState",
    "SubmitSpec",
    "adapter_class",
    "get_adapter",
]

#: Adapters by the name a worker's ``queue:`` setting uses: module and class, imported
#: on first use.
ADAPTERS: dict[str, str] = {
    "shell": "conveyor.queue.shell:ShellAdapter",
    "slurm": "conveyor.queue.slurm:SlurmAdapter",
    "pbs": "conveyor.queue.pbs:PBSAdapter",
    "sge": "conveyor.queue.sge:SGEAdapter",
    "htcondor": "conveyor.queue.htcondor:HTCondorAdapter",
}


def adapter_class(name: str) -> type[QueueAdapter]:
    """The adapter class for the queue system ``name``.

    Raises
    ------
    ConfigError
        If no adapter has that name; the message lists the known ones and suggests the
        closest.
    """
    target = ADAPTERS.get(name)
    if target is None:
        close = difflib.get_close_matches(name, ADAPTERS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = ", ".join(sorted(ADAPTERS))
        raise ConfigError(f"unknown queue system {name!r} (known: {known}){hint}")
    module_name, class_name = target.split(":")
    cls: type[QueueAdapter] = getattr(importlib.import_module(module_name), class_name)
    return cls


def get_adapter(name: str, options: Mapping[str, Any] | None = None) -> QueueAdapter:
    """A new adapter for the queue system ``name`` (see :func:`adapter_class`), with the
    worker's ``queue_options``; an option the adapter does not take is a ConfigError."""
    cls = adapter_class(name)
    try:
        return cls(**dict(options or {}))
    except TypeError as exc:
        raise ConfigError(f"queue_options for {name!r}: {exc}") from exc
