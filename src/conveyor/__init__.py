"""Conveyor: run jobflow workflows on the local machine and on HPC clusters.

The public API is imported lazily, so that ``python -m conveyor.execution`` on a worker
loads only what it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from conveyor._version import __version__

if TYPE_CHECKING:
    from conveyor.project import Project, open_project
    from conveyor.runner import Runner
    from conveyor.states import FlowState, JobState
    from conveyor.submit import submit_command, submit_flow

__all__ = [
    "FlowState",
    "JobState",
    "Project",
    "Runner",
    "__version__",
    "open_project",
    "submit_command",
    "submit_flow",
]

_LAZY = {
    "FlowState": "conveyor.states",
    "JobState": "conveyor.states",
    "Project": "conveyor.project",
    "open_project": "conveyor.project",
    "Runner": "conveyor.runner",
    "submit_command": "conveyor.submit",
    "submit_flow": "conveyor.submit",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
