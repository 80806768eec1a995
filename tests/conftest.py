"""Fixtures shared by every tier: throwaway projects, and the CI rule for skips."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from conveyor.project import Project
from conveyor.testing import temp_project

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_missing(reason: str) -> NoReturn:
    """Skip a test whose real service is missing, but fail it in CI (CI=true), where the
    project's own scripts install every service."""
    if IN_CI:
        pytest.fail(f"CI=true and a required service is missing: {reason}")
    pytest.skip(reason)


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    """A fresh project (in-memory database, local worker under tmp_path), current."""
    with temp_project(tmp_path / "project") as proj:
        yield proj
