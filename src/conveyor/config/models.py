"""The project file, as pydantic models: every field described, unknown keys refused."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "AnyWorkerConfig",
    "DatabaseConfig",
    "JobStoreConfig",
    "LocalWorkerConfig",
    "ProjectConfig",
    "RunnerConfig",
    "SSHWorkerConfig",
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


class _WorkerBase(_Strict):
    """Settings every worker has, whatever machine it runs on."""

    type: str = Field(description="The kind of worker: 'local' or 'ssh'.")
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


class LocalWorkerConfig(_WorkerBase):
    """A worker on the machine the runner runs on."""

    type: Literal["local"] = Field("local", description="Runs jobs on this machine.")


class SSHWorkerConfig(_WorkerBase):
    """A worker on another machine (a cluster's login node), reached over SSH.

    Every worker on the same host, port and user shares one connection. Settings that
    bound that connection (timeouts, limits) come from the first worker that opens it;
    the smallest ``max_concurrent_commands`` among them applies.
    """

    type: Literal["ssh"] = Field(description="Runs jobs on another machine, over SSH.")
    host: str = Field(
        description=(
            "Host name, address or ~/.ssh/config alias of the machine (its HostName, "
            "User, Port, IdentityFile and ProxyJump apply unless set here)."
        )
    )
    user: str | None = Field(
        None, description="Login name; default: ~/.ssh/config's User, else the local user."
    )
    port: int | None = Field(
        None, ge=1, le=65535, description="SSH port; default: ~/.ssh/config's Port, else 22."
    )
    python: str = Field(
        "python3",
        description=(
            "Python on the worker that runs 'python -m conveyor.execution' (it needs "
            "'pip install conveyor-runner' there): a name on the remote PATH or a path."
        ),
    )
    poll_interval: float = Field(
        30.0, gt=0, description="Seconds between two status checks of this worker's jobs."
    )
    identity_file: list[str] = Field(
        default_factory=list,
        description=(
            "Private key files to offer, in order (as ssh's -i), besides ~/.ssh/config's "
            "IdentityFile and the agent's keys."
        ),
    )
    passphrase_env: str | None = Field(
        None,
        description=(
            "Name of the environment variable that holds the passphrase of an encrypted "
            "key; the passphrase itself never goes in the project file."
        ),
    )
    jump_hosts: list[str] | None = Field(
        None,
        description=(
            "Jump hosts to go through, first hop first, each '[user@]host[:port]' (as "
            "ssh's -J); overrides ~/.ssh/config's ProxyJump. [] connects directly."
        ),
    )
    ssh_config: str | None = Field(
        "~/.ssh/config",
        description="OpenSSH client config file to honour; null ignores every ssh config file.",
    )
    known_hosts: str = Field(
        "~/.ssh/known_hosts",
        description=(
            "known_hosts file whose keys identify the hosts (/etc/ssh/ssh_known_hosts is "
            "read too); new keys accepted with accept_new_host_keys are added here."
        ),
    )
    accept_new_host_keys: bool = Field(
        False,
        description=(
            "Accept and record the key of a host not in known_hosts (ssh's "
            "StrictHostKeyChecking=accept-new); a changed key is always refused."
        ),
    )
    allow_agent: bool = Field(True, description="Offer the keys of a running ssh-agent.")
    look_for_keys: bool = Field(
        True, description="Offer the default keys in ~/.ssh (id_ed25519, id_rsa, ...)."
    )
    interactive: bool = Field(
        False,
        description=(
            "Allow a password / one-time-code login answered on the terminal, for a "
            "runner started in the foreground; the connection is then kept and reused."
        ),
    )
    connect_timeout: float = Field(
        10.0, gt=0, description="Seconds to set up a connection (TCP, banner, login)."
    )
    channel_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds to open a channel (a command or the SFTP session) on a connection.",
    )
    transfer_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds a file transfer may wait for the host to answer one request.",
    )
    keepalive_interval: float = Field(
        15.0,
        ge=0,
        description=(
            "Seconds between keepalive messages on an idle connection (ssh's "
            "ServerAliveInterval); 0 sends none."
        ),
    )
    keepalive_count_max: int = Field(
        3,
        ge=1,
        description=(
            "Unanswered keepalive intervals after which the connection counts as dead and "
            "is reopened (ssh's ServerAliveCountMax)."
        ),
    )
    reconnect_delays: list[float] = Field(
        default_factory=lambda: [1.0, 5.0, 15.0, 30.0],
        description=(
            "After the 1st, 2nd... failed connection attempt in a row, refuse to try again "
            "for this many seconds (the last delay repeats); meanwhile calls fail at once."
        ),
    )
    min_connect_interval: float = Field(
        1.0, ge=0, description="Least number of seconds between two new connections to the host."
    )
    max_concurrent_commands: int = Field(
        8,
        ge=1,
        description="Commands run at once on the host, over every worker sharing it.",
    )

    @field_validator("work_dir")
    @classmethod
    def _absolute_work_dir(cls, work_dir: str) -> str:
        if not work_dir.startswith("/"):
            raise ValueError(
                f"work_dir {work_dir!r} of an ssh worker must be an absolute path on the "
                "remote host (its home is not known before connecting), e.g. "
                "/home/USER/conveyor"
            )
        return work_dir

    @field_validator("identity_file", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("reconnect_delays")
    @classmethod
    def _delays(cls, delays: list[float]) -> list[float]:
        if not delays or any(d < 0 for d in delays):
            raise ValueError("reconnect_delays needs at least one delay, none negative")
        return delays

    @field_validator("passphrase_env")
    @classmethod
    def _env_name(cls, name: str | None) -> str | None:
        if name is not None and not (name and all(c.isalnum() or c == "_" for c in name)):
            raise ValueError(
                f"passphrase_env {name!r} must be the NAME of an environment variable "
                "(letters, digits, '_'), not the passphrase"
            )
        return name


#: Every worker kind; the ``type`` field picks one.
WorkerConfig = Annotated[LocalWorkerConfig | SSHWorkerConfig, Field(discriminator="type")]
#: A worker's settings, whichever kind.
AnyWorkerConfig = LocalWorkerConfig | SSHWorkerConfig


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
