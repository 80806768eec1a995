"""Project files: finding, loading, validating, and the errors that name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conveyor.config import init_project, load_config, project_file
from conveyor.exceptions import ConfigError
from conveyor.project import open_project


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def minimal(tmp_path: Path) -> dict[str, object]:
    return {"name": "p", "workers": {"w": {"type": "local", "work_dir": str(tmp_path)}}}


def test_init_writes_a_project_that_loads_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = init_project("demo", tmp_path / "demo")
    config = load_config(path)
    assert config.name == "demo"
    assert config.default_worker == "local"
    assert config.workers["local"].work_dir == str((tmp_path / "demo" / "work").resolve())
    with pytest.raises(ConfigError, match="--force"):
        init_project("demo", tmp_path / "demo")
    init_project("demo", tmp_path / "demo", force=True)


def test_names_resolve_under_conveyor_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CONVEYOR_PROJECT", raising=False)
    expected = tmp_path / "home" / "projects" / "default" / "project.yaml"
    assert project_file() == expected
    monkeypatch.setenv("CONVEYOR_PROJECT", "other")
    assert project_file() == tmp_path / "home" / "projects" / "other" / "project.yaml"
    assert project_file(str(tmp_path / "x.yaml")) == tmp_path / "x.yaml"
    assert project_file(tmp_path) == tmp_path / "project.yaml"


def test_a_missing_project_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="conveyor project init"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_field_suggests_the_close_match(tmp_path: Path) -> None:
    data = minimal(tmp_path)
    data["runner"] = {"lease_second": 10}
    with pytest.raises(
        ConfigError, match=r"runner\.lease_second: unknown field; did you mean 'lease_seconds'"
    ):
        load_config(write(tmp_path / "p.yaml", data))


def test_unknown_worker_field_suggests_the_close_match(tmp_path: Path) -> None:
    data = minimal(tmp_path)
    data["workers"]["w"]["workdir"] = "/x"  # type: ignore[index]
    with pytest.raises(ConfigError, match="did you mean 'work_dir'"):
        load_config(write(tmp_path / "p.yaml", data))


def test_missing_field_and_bad_values_name_the_field(tmp_path: Path) -> None:
    data = {"name": "p", "workers": {"w": {"type": "local"}}}
    with pytest.raises(
        ConfigError, match=r"workers\.w\.local\.work_dir: required field is missing"
    ):
        load_config(write(tmp_path / "p.yaml", data))
    data = minimal(tmp_path)
    data["database"] = {"url": "postgres://x"}
    with pytest.raises(ConfigError, match="unknown database URL"):
        load_config(write(tmp_path / "p.yaml", data))
    data = minimal(tmp_path)
    data["runner"] = {"max_step_attempts": 0}
    with pytest.raises(ConfigError, match=r"runner\.max_step_attempts"):
        load_config(write(tmp_path / "p.yaml", data))


def test_invalid_yaml_and_non_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid yaml"):
        load_config(bad)
    bad.write_text("- a list")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_json_and_toml_project_files(tmp_path: Path) -> None:
    import json

    (tmp_path / "p.json").write_text(json.dumps(minimal(tmp_path)))
    assert load_config(tmp_path / "p.json").name == "p"
    (tmp_path / "p.toml").write_text(
        f'name = "t"\n[workers.w]\ntype = "local"\nwork_dir = "{tmp_path}"\n'
    )
    assert load_config(tmp_path / "p.toml").name == "t"


def test_unknown_worker_is_named_with_the_known_ones(tmp_path: Path) -> None:
    project = open_project(init_project("x", tmp_path / "x"))
    with pytest.raises(ConfigError, match=r"no worker 'gpu' \(workers: local\)"):
        project.worker("gpu")


def test_relative_work_dir_starts_at_the_project_dir(tmp_path: Path) -> None:
    data = minimal(tmp_path)
    data["workers"] = {"w": {"type": "local", "work_dir": "runs"}}
    path = write(tmp_path / "rel.yaml", data)
    assert open_project(path).work_dir("w") == str(tmp_path / "runs")


def test_relative_database_and_store_paths_start_at_the_project_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = minimal(tmp_path)
    data["database"] = {"url": "sqlite://state/conveyor.db"}
    data["jobstore"] = {"docs_store": {"type": "SqliteStore", "path": "state/outputs.db"}}
    (tmp_path / "state").mkdir()
    path = write(tmp_path / "rel-db.yaml", data)
    monkeypatch.chdir("/")
    project = open_project(path)
    assert project.database_url == f"sqlite://{tmp_path}/state/conveyor.db"
    assert project.db.count_jobs() == 0
    assert project.jobstore.count() == 0
    project.close()
    assert (tmp_path / "state" / "conveyor.db").exists()
    assert (tmp_path / "state" / "outputs.db").exists()
