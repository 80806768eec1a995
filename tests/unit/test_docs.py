"""The configuration reference documents every field of the project file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from conveyor.config.models import (
    DatabaseConfig,
    JobStoreConfig,
    LocalWorkerConfig,
    ProjectConfig,
    RunnerConfig,
    SSHWorkerConfig,
)
from conveyor.queue.resources import Resources

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


@pytest.mark.parametrize(
    "model",
    [
        ProjectConfig,
        DatabaseConfig,
        JobStoreConfig,
        LocalWorkerConfig,
        SSHWorkerConfig,
        RunnerConfig,
        Resources,
    ],
)
def test_every_field_is_in_the_configuration_reference(model: type[BaseModel]) -> None:
    text = DOCS.read_text()
    missing = [name for name in model.model_fields if f"`{name}`" not in text]
    assert not missing, f"docs/configuration.md does not describe {missing} of {model.__name__}"


@pytest.mark.parametrize(
    "model",
    [
        ProjectConfig,
        DatabaseConfig,
        JobStoreConfig,
        LocalWorkerConfig,
        SSHWorkerConfig,
        RunnerConfig,
    ],
)
def test_every_field_has_a_description(model: type[BaseModel]) -> None:
    assert all(field.description for field in model.model_fields.values())
