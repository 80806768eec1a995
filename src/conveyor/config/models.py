"""The project file, as pydantic models: every field described, unknown keys refused."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "DatabaseConfig",
    "JobStoreConfig",
    "LocalWorkerConfig",
    "ProjectConfig",
    "RunnerConfig",
    "WorkerConfig",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class DatabaseConfig(_Strict):
    """Where jobs, flows and locks are stored."""

    url: str = Field(
        "mongomock://",
        description=(
            "Database URL. 'sqlite:///ABSOLUTE/PATH.db' (add '?timeout=SECONDS' to change "
            "how long a write waits for another process, default 30): the embedded "
            "default that 'conveyor project init' writes, one file that a daemon, the CLI "
            "and several runners on one machine share, no server needed. "
            "'mongodb://host:port/dbname' (or 'mongodb+srv://...'): MongoDB, for "
            "deployments whose runners are on several machines. 'mongomock://': an "
            "in-memory database that lives only as long as the process (tests, "
            "single-process runs); the default when a project file gives no URL."
        ),
    )
    name: str = Field("conveyor", description="Database name, when the URL does not give one.")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        schemes = ("mongodb://", "mongodb+srv://", "mongomock://", "sqlite://")
        if not url.startswith(schemes):
            raise ValueError(f"unknown database URL {url!r}: use one of {', '.join(schemes)}")
        return url


class JobStoreConfig(_Strict):
    """The jobflow JobStore that receives job outputs."""

    docs_store: dict[str, Any] = Field(
        default_factory=lambda: {"type": "MemoryStore"},
        description=(
            "A maggma store spec for the outputs, as jobflow's JobStore.from_dict_spec "
            "takes it. {'type': 'SqliteStore', 'path': '/ABSOLUTE/PATH/outputs.db', "
            "'collection_name': 'outputs'}: the embedded default that 'conveyor project "
            "init' writes, which several processes on one machine write and read at once. "
            "{'type': 'MongoStore', 'database': ..., 'collection_name': ...}: MongoDB, for "
            "runners on several machines. {'type': 'MemoryStore'}: outputs that live only "
            "as long as the process; the default when a project file gives no docs_store."
        ),
    )
    additional_stores: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Named maggma store specs for large data (jobflow's additional stores).",
    )


class LocalWorkerConfig(_Strict):
    """A worker on the machine the runner runs on."""

    type: Literal["local"] = Field("local", description="Runs jobs on this machine.")
    work_dir: str = Field(
        description="Directory under which each job gets its own run dir (created if missing)."
    )
    queue: Literal["shell", "slurm", "pbs", "sge", "htcondor"] = Field(
        "shell",
        description=(
            "Queue system: 'shell' runs each job as a background process; 'slurm', "
            "'pbs', 'sge' and 'htcondor' submit to that scheduler."
        ),
    )
    queue_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Options for the queue adapter (see its docs), e.g. {sacct: [-c]}.",
    )
    missing_grace: float | None = Field(
        None,
        ge=0,
        description=(
            "Seconds a job may be missing from the queue's listing before its accounting "
            "decides how it ended; default: the queue adapter's own."
        ),
    )
    python: str | None = Field(
        None,
        description="Python that runs jobs on the worker; default: the runner's own Python.",
    )
    pre_run: str | None = Field(
        None, description="Shell lines run before each job (module loads, env activation)."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables set for every job."
    )
    resources: dict[str, Any] = Field(
        default_factory=dict, description="Default resources of this worker's jobs."
    )
    max_jobs: int | None = Field(
        None, ge=1, description="At most this many jobs submitted at once; unlimited if unset."
    )
    poll_interval: float = Field(
        0.1, gt=0, description="Seconds between two status checks of this worker's jobs."
    )
    command_timeout: float = Field(
        60.0, gt=0, description="Seconds before a queue command on this worker is abandoned."
    )


#: Every worker kind; the ``type`` field picks one (later: ssh).
WorkerConfig = Annotated[LocalWorkerConfig, Field(discriminator="type")]


class RunnerConfig(_Strict):
    """How runner processes behave."""

    lease_seconds: float = Field(
        120.0,
        gt=0,
        description="Length of a lock lease; a crashed runner's jobs are free after this.",
    )
    retry_delays: list[float] = Field(
        default_factory=lambda: [30.0, 300.0, 1200.0],
        description="Seconds to wait before the 2nd, 3rd... attempt of a failed step.",
    )
    max_step_attempts: int = Field(
        3, ge=1, description="Attempts of one step before the job goes to REMOTE_ERROR."
    )
    max_threads: int = Field(
        4, ge=1, description="Steps on different jobs run concurrently in this many threads."
    )
    heartbeat_interval: float = Field(
        10.0, gt=0, description="Seconds between two heartbeats of a runner process."
    )
    idle_sleep: float = Field(
        0.05,
        gt=0,
        description="Longest pause of the runner loop when there is nothing to do.",
    )

    @field_validator("retry_delays")
    @classmethod
    def _non_negative(cls, delays: list[float]) -> list[float]:
        if not delays or any(d < 0 for d in delays):
            raise ValueError("retry_delays needs at least one delay, none negative")
        return delays


class ProjectConfig(_Strict):
    """One Conveyor project: its database, job store, workers and runner settings."""

    name: str = Field(description="Project name (letters, digits, '-', '_').")
    database: DatabaseConfig = Field(
        default_factory=DatabaseConfig, description="Where jobs, flows and locks live."
    )
    jobstore: JobStoreConfig = Field(
        default_factory=JobStoreConfig, description="Where job outputs go."
    )
    workers: dict[str, WorkerConfig] = Field(
        description="Workers by name; a job without a worker goes to the first one."
    )
    runner: RunnerConfig = Field(
        default_factory=RunnerConfig, description="Runner process settings."
    )

    @field_validator("name")
    @classmethod
    def _simple_name(cls, name: str) -> str:
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            raise ValueError(f"project name {name!r} may hold only letters, digits, '-', '_'")
        return name

    @model_validator(mode="after")
    def _some_worker(self) -> ProjectConfig:
        if not self.workers:
            raise ValueError("a project needs at least one worker under 'workers'")
        return self

    @property
    def default_worker(self) -> str:
        """The worker of jobs that name none: the first one in the file."""
        return next(iter(self.workers))
