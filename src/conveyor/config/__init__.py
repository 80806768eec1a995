"""Project configuration: the models of the project file and how it is found and read."""

from conveyor.config.loading import (
    DEFAULT_PROJECT,
    conveyor_home,
    init_project,
    load_config,
    project_file,
)
from conveyor.config.models import (
    DatabaseConfig,
    JobStoreConfig,
    LocalWorkerConfig,
    ProjectConfig,
    RunnerConfig,
    WorkerConfig,
)

__all__ = [
    "DEFAULT_PROJECT",
    "DatabaseConfig",
    "JobStoreConfig",
    "LocalWorkerConfig",
    "ProjectConfig",
    "RunnerConfig",
    "WorkerConfig",
    "conveyor_home",
    "init_project",
    "load_config",
    "project_file",
]
