"""Fixtures shared by every tier (the CI rule for skips lives in services.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.project import Project
from conveyor.testing import temp_project


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    """A fresh project (in-memory database, local worker under tmp_path), current."""
    with temp_project(tmp_path / "project") as proj:
        yield proj
