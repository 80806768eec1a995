"""Finding, reading, validating and writing project files.

A project is named on the command line (``--project``), by ``CONVEYOR_PROJECT``, or is
``default``. A name stands for ``$CONVEYOR_HOME/projects/NAME/project.yaml``
(``CONVEYOR_HOME`` defaults to ``~/.conveyor``); anything that looks like a path is
used as the project file itself. Nothing is read at import time.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from conveyor.config.models import ProjectConfig
from conveyor.exceptions import ConfigError

__all__ = [
    "DEFAULT_PROJECT",
    "conveyor_home",
    "format_validation_error",
    "init_project",
    "load_config",
    "project_file",
]

DEFAULT_PROJECT = "default"
PROJECT_FILE = "project.yaml"
_SUFFIXES = (".yaml", ".yml", ".json", ".toml")


def conveyor_home() -> Path:
    """Where named projects live: ``$CONVEYOR_HOME`` or ``~/.conveyor``."""
    return Path(os.environ.get("CONVEYOR_HOME") or Path.home() / ".conveyor")


def project_file(project: str | os.PathLike[str] | None = None) -> Path:
    """The project file that ``project`` (a name or a path) stands for."""
    value = os.fspath(project) if project is not None else None
    value = value or os.environ.get("CONVEYOR_PROJECT") or DEFAULT_PROJECT
    path = Path(value).expanduser()
    if path.is_dir():
        return (path / PROJECT_FILE).resolve()
    if path.suffix in _SUFFIXES or os.sep in value or path.is_file():
        return path.resolve()
    return conveyor_home() / "projects" / value / PROJECT_FILE


def _read(path: Path) -> Any:
    text = path.read_text()
    try:
        if path.suffix == ".json":
            return json.loads(text)
        if path.suffix == ".toml":
            return tomllib.loads(text)
        return yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} is not valid {path.suffix.lstrip('.')}: {exc}") from exc


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: the field's dotted path, what is wrong and the fix."""
    lines = [f"{source} has {exc.error_count()} problem(s):"]
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "(top level)"
        kind = error["type"]
        if kind == "extra_forbidden":
            field = str(error["loc"][-1])
            known = _known_fields(error["loc"][:-1])
            close = difflib.get_close_matches(field, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(known)}"
            lines.append(f"  {location}: unknown field; {hint}")
        elif kind == "missing":
            lines.append(f"  {location}: required field is missing; add it")
        else:
            lines.append(f"  {location}: {error['msg']}")
    return "\n".join(lines)


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed at ``loc`` (best effort, for suggestions)."""
    from conveyor.config.models import LocalWorkerConfig, SSHWorkerConfig

    kinds: dict[str, Any] = {"local": LocalWorkerConfig, "ssh": SSHWorkerConfig}
    model: Any = ProjectConfig
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        if model is ProjectConfig and part == "workers":
            model = LocalWorkerConfig
            if parts:
                parts.pop(0)  # the worker's name
            # discriminated unions put the type tag in the location
            if parts and parts[0] in kinds:
                model = kinds[parts.pop(0)]
            continue
        field = getattr(model, "model_fields", {}).get(part)
        annotation = getattr(field, "annotation", None)
        if annotation is None or not hasattr(annotation, "model_fields"):
            return []
        model = annotation
    return sorted(getattr(model, "model_fields", {}))


def load_config(path: Path) -> ProjectConfig:
    """Read and validate a project file.

    Raises
    ------
    ConfigError
        If the file is missing (says how to create one) or invalid (names each field).
    """
    if not path.is_file():
        raise ConfigError(
            f"no project file at {path}; create one with 'conveyor project init' "
            "or choose another with --project / CONVEYOR_PROJECT"
        )
    data = _read(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, not {type(data).__name__}")
    try:
        return ProjectConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from exc


def default_config(name: str, directory: Path) -> dict[str, Any]:
    """The settings of a fresh project: one local worker running jobs as processes.

    Jobs and outputs live in SQLite files in the project directory (``directory``,
    absolute): a daemon, the CLI and several runners on this machine share them, and
    no server is needed.
    """
    outputs = str(directory / "outputs.db")
    return {
        "name": name,
        "database": {"url": f"sqlite://{directory / 'conveyor.db'}"},
        "jobstore": {
            "docs_store": {"type": "SqliteStore", "path": outputs, "collection_name": "outputs"},
            "additional_stores": {
                "data": {"type": "SqliteStore", "path": outputs, "collection_name": "blobs"}
            },
        },
        "workers": {
            "local": {
                "type": "local",
                "work_dir": str(directory / "work"),
                "queue": "shell",
            }
        },
        "runner": {},
    }


def init_project(
    name: str = DEFAULT_PROJECT,
    directory: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    settings: dict[str, Any] | None = None,
) -> Path:
    """Write a working project file and return its path.

    Parameters
    ----------
    name
        Project name; also the directory name under ``$CONVEYOR_HOME/projects``.
    directory
        Where to put the project instead.
    force
        Overwrite an existing project file.
    settings
        Settings to merge over the defaults (top-level keys replace).
    """
    folder = Path(directory) if directory else conveyor_home() / "projects" / name
    folder = folder.expanduser().resolve()
    path = folder / PROJECT_FILE
    if path.exists() and not force:
        raise ConfigError(f"a project already exists at {path}; pass --force to overwrite it")
    data = {**default_config(name, folder), **(settings or {})}
    ProjectConfig.model_validate(data)  # never write a file we would refuse to read
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Conveyor project file: see docs/configuration.md for every setting.\n"
        + yaml.safe_dump(data, sort_keys=False)
    )
    return path
