"""A loaded project: its settings, database, job store, and the hosts of its workers.

Everything is opened lazily, on first use, and shared by the threads of a process.
"""

from __future__ import annotations

import os
import sys
import threading
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.config import ProjectConfig, load_config, project_file
from conveyor.config.models import AnyWorkerConfig, SSHWorkerConfig
from conveyor.exceptions import ConfigError

if TYPE_CHECKING:
    from jobflow.core.store import JobStore

    from conveyor.db import Database
    from conveyor.hosts import Host
    from conveyor.queue import QueueAdapter

__all__ = ["Project", "close_projects", "forget_project", "open_project"]


class Project:
    """One project, opened from its file.

    Parameters
    ----------
    path
        The project file.
    config
        Its validated settings (read from ``path`` if not given).
    """

    def __init__(self, path: Path, config: ProjectConfig | None = None) -> None:
        self.path = path
        self.config = config or load_config(path)
        self._hosts: dict[str, Host] = {}
        self._lock = threading.RLock()
        #: Serialises use of the job store: maggma's in-memory stores are not thread-safe.
        self.jobstore_lock = threading.RLock()

    def __repr__(self) -> str:
        return f"Project({self.name!r}, path={str(self.path)!r})"

    @property
    def name(self) -> str:
        """The project's name."""
        return self.config.name

    @property
    def directory(self) -> Path:
        """The directory of the project file; relative paths in it start here."""
        return self.path.parent

    @property
    def downloads_dir(self) -> Path:
        """Where the runner keeps what it fetched from the workers' run dirs."""
        return self.directory / "downloads"

    def job_downloads(self, uuid: str, index: int) -> Path:
        """Where the runner keeps the files it fetched from one job's run dir."""
        return self.downloads_dir / uuid[:2] / f"{uuid}_{index}"

    @cached_property
    def db(self) -> Database:
        """The job database (opened on first use)."""
        from conveyor.db import open_database

        return open_database(self.database_url, self.config.database.name)

    @property
    def database_url(self) -> str:
        """The database URL, a relative sqlite path made absolute from the project dir
        (so every process finds the same file, whatever its working directory)."""
        url = self.config.database.url
        prefix = "sqlite://"
        rest = url[len(prefix) :]
        if url.startswith(prefix) and rest and not rest.startswith(("/", "~")):
            return f"{prefix}{self.directory / rest}"
        return url

    @cached_property
    def jobstore(self) -> JobStore:
        """The jobflow JobStore for outputs, connected on first use."""
        from jobflow.core.store import JobStore

        # JobStore.from_dict_spec finds store classes among imported Store subclasses.
        import conveyor.stores  # noqa: F401

        spec: dict[str, Any] = {"docs_store": self._store_spec(self.config.jobstore.docs_store)}
        if self.config.jobstore.additional_stores:
            spec["additional_stores"] = {
                name: self._store_spec(info)
                for name, info in self.config.jobstore.additional_stores.items()
            }
        try:
            store = JobStore.from_dict_spec(spec)
        except Exception as exc:
            raise ConfigError(f"jobstore of project {self.name!r} is invalid: {exc}") from exc
        store.connect()
        return store

    def _store_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A store spec whose relative ``path`` (SqliteStore, JSONStore) starts at the
        project dir."""
        path = spec.get("path")
        if isinstance(path, str) and not Path(path).expanduser().is_absolute():
            return {**spec, "path": str(self.directory / path)}
        return spec

    def worker(self, name: str) -> AnyWorkerConfig:
        """The settings of one worker; ConfigError naming the known ones otherwise."""
        try:
            return self.config.workers[name]
        except KeyError:
            known = ", ".join(self.config.workers)
            raise ConfigError(
                f"project {self.name!r} has no worker {name!r} (workers: {known})"
            ) from None

    def work_dir(self, worker: str) -> str:
        """The worker's work dir, absolute (relative ones start at the project dir)."""
        path = Path(self.worker(worker).work_dir).expanduser()
        return str(path if path.is_absolute() else self.directory / path)

    def python(self, worker: str) -> str:
        """The Python that runs jobs on the worker: its ``python`` setting; by default the
        runner's own for a local worker, ``python3`` on a remote one."""
        config = self.worker(worker)
        if isinstance(config, SSHWorkerConfig):
            return config.python or "python3"
        return config.python or sys.executable

    def host(self, worker: str) -> Host:
        """The host of a worker, shared by every thread of the process."""
        with self._lock:
            host = self._hosts.get(worker)
            if host is None:
                config = self.worker(worker)
                if isinstance(config, SSHWorkerConfig):
                    from conveyor.hosts.ssh import SSHHost

                    # One connection per (host, port, user), shared through the pool.
                    host = SSHHost.from_config(worker, config)
                else:
                    from conveyor.hosts import LocalHost

                    host = LocalHost(name=f"local:{worker}", root=self.work_dir(worker))
                self._hosts[worker] = host
            return host

    def adapter(self, worker: str) -> QueueAdapter:
        """The queue adapter of a worker, with its ``queue_options``."""
        from conveyor.queue import get_adapter

        config = self.worker(worker)
        return get_adapter(config.queue, config.queue_options)

    def close(self) -> None:
        """Close the hosts (an SSH host gives its connection back to the pool, which
        closes it when no worker uses it any more), the job store and the database."""
        with self._lock:
            for host in self._hosts.values():
                host.close()
            self._hosts.clear()
            if "jobstore" in self.__dict__:
                self.__dict__.pop("jobstore").close()
            if "db" in self.__dict__:
                self.__dict__.pop("db").close()


_projects: dict[Path, Project] = {}
_projects_lock = threading.Lock()


def open_project(project: str | os.PathLike[str] | Project | None = None) -> Project:
    """Open a project by name or path (default: ``CONVEYOR_PROJECT`` or ``default``).

    The same file gives the same :class:`Project` object within a process, so the
    API, the runner and the CLI share one database connection and job store.
    """
    if isinstance(project, Project):
        return project
    path = project_file(project)
    with _projects_lock:
        found = _projects.get(path)
        if found is None:
            found = _projects[path] = Project(path)
        return found


def forget_project(path: Path) -> None:
    """Drop a project from this process's cache (after closing it)."""
    with _projects_lock:
        _projects.pop(path, None)


def close_projects() -> None:
    """Close and forget every project opened in this process (tests use this)."""
    with _projects_lock:
        for project in _projects.values():
            project.close()
        _projects.clear()
