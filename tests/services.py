"""The CI rule for tests that need a real service: skip on a user's machine, fail in CI."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_missing(reason: str) -> NoReturn:
    """Skip a test whose real service is missing, but fail it in CI (CI=true), where the
    project's own scripts install every service."""
    if IN_CI:
        pytest.fail(f"CI=true and a required service is missing: {reason}")
    pytest.skip(reason)
