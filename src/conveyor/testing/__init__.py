"""Helpers for users' own tests: example jobs and throwaway projects.

>>> from conveyor.testing import temp_project
>>> with temp_project(tmp_path) as project:   # doctest: +SKIP
...     submit_flow(flow, project=project)
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from conveyor.config import init_project
from conveyor.project import Project, open_project

__all__ = ["make_project", "temp_project"]


def make_project(
    directory: str | os.PathLike[str],
    *,
    name: str = "test",
    settings: dict[str, Any] | None = None,
) -> Project:
    """Write and open a throwaway project in ``directory``.

    It has one local worker whose work dir is inside ``directory``, an in-memory
    database of its own and an in-memory job store, and quick retries (0.1 s) so
    error paths can be exercised fast. ``settings`` replace top-level sections.
    """
    folder = Path(directory)
    defaults: dict[str, Any] = {
        "database": {"url": f"mongomock://{name}-{uuid.uuid4().hex[:8]}"},
        "runner": {"retry_delays": [0.1], "heartbeat_interval": 1.0},
    }
    path = init_project(name, folder, force=True, settings={**defaults, **(settings or {})})
    return open_project(path)


@contextlib.contextmanager
def temp_project(
    directory: str | os.PathLike[str],
    *,
    name: str = "test",
    settings: dict[str, Any] | None = None,
) -> Iterator[Project]:
    """A throwaway project that is also the current one (``CONVEYOR_PROJECT``) inside
    the ``with`` block; it is closed and the previous setting restored afterwards."""
    project = make_project(directory, name=name, settings=settings)
    previous = os.environ.get("CONVEYOR_PROJECT")
    os.environ["CONVEYOR_PROJECT"] = str(project.path)
    try:
        yield project
    finally:
        if previous is None:
            os.environ.pop("CONVEYOR_PROJECT", None)
        else:
            os.environ["CONVEYOR_PROJECT"] = previous
        project.close()
        from conveyor import project as project_module

        project_module.forget_project(project.path)
