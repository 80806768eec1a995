"""The runner daemon: the runner processes of one project, supervised by supervisord.

``conveyor runner start`` writes ``<project dir>/daemon/supervisord.conf`` from the
package template ``templates/supervisord.conf`` and starts supervisord on it.
Supervisord starts the runner processes (each one ``conveyor runner run`` with its
roles), starts again any that dies, and is driven through its XML-RPC interface on a
unix socket. Everything the daemon writes stays in that folder::

    daemon/supervisord.conf   the configuration (rewritten at every start)
    daemon/layout.json        the programs asked for; ``restart`` reuses them
    daemon/supervisord.pid    supervisord's pid while it runs
    daemon/supervisord.log    supervisord's own log
    daemon/logs/NAME_NN.log   the log of each runner process
    daemon/supervisor.sock    the control socket (under /tmp if this path is too long)

Whether a process lives is read from the state field of ``/proc/PID/stat``, never from
``kill -0``: an exited process stays a zombie until it is reaped, which on some
machines (a slow init, a container) takes seconds, and ``kill -0`` calls a zombie alive.

This module is the :class:`Daemon`; the /proc checks are in :mod:`conveyor.runner.procfs`,
the layout, configuration and socket client in :mod:`conveyor.runner.supervisor`, the
reading of logs in :mod:`conveyor.runner.daemon_logs`; it re-exports their public names.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from conveyor.db.base import JobFilter
from conveyor.exceptions import ConveyorError, DatabaseError
from conveyor.models import RunnerDoc, utcnow
from conveyor.project import Project, open_project
from conveyor.runner.daemon_logs import Position as Position
from conveyor.runner.daemon_logs import follow_files, last_lines
from conveyor.runner.procfs import POLL_SECONDS as POLL_SECONDS
from conveyor.runner.procfs import (
    children,
    cmdline,
    environ,
    live_pids,
    pid_alive,
    process_state,
    same_process,
    wait_dead,
)
from conveyor.runner.supervisor import DAEMON_ENV as DAEMON_ENV
from conveyor.runner.supervisor import (
    RPC_ERRORS,
    DaemonLayout,
    Program,
    ProgramStatus,
    daemon_key,
    launch_supervisord,
    render_config,
    socket_path,
    supervisor_rpc,
)
from conveyor.runner.supervisor import SOCKET_PATH_MAX as SOCKET_PATH_MAX
from conveyor.runner.supervisor import START_SECONDS as START_SECONDS
from conveyor.runner.supervisor import STOP_WAIT_SECONDS as STOP_WAIT_SECONDS

__all__ = [
    "Daemon",
    "DaemonLayout",
    "DaemonStatus",
    "Program",
    "ProgramStatus",
    "RunnerStatus",
    "daemon_key",
    "follow_files",
    "last_lines",
    "pid_alive",
    "process_state",
    "render_config",
    "runner_id_for",
    "runner_status",
    "socket_path",
]

#: How long ``start`` waits for every runner process to be RUNNING.
START_TIMEOUT = 60.0
#: A registration without a heartbeat for this many heartbeat intervals is stale.
STALE_HEARTBEATS = 3


# --- runner registrations ------------------------------------------------------------


@dataclass(frozen=True)
class RunnerStatus:
    """A runner's registration, and whether it is ``live``, ``stale``, ``stopped``
    (it recorded its exit) or ``dead`` (on this host, and its process is gone)."""

    doc: RunnerDoc
    status: str

    @property
    def live(self) -> bool:
        """Whether the runner is running and heartbeating."""
        return self.status == "live"

    def to_json(self) -> dict[str, Any]:
        """The registration with ``status`` and ``live``, as plain JSON values."""
        return {**self.doc.model_dump(mode="json"), "status": self.status, "live": self.live}


def runner_status(
    doc: RunnerDoc, *, heartbeat_interval: float, now: datetime, hostname: str
) -> RunnerStatus:
    """Classify one registration; a runner of this host is also looked up in /proc."""
    if doc.stopped_at is not None:
        return RunnerStatus(doc, "stopped")
    if doc.hostname == hostname and not same_process(doc.pid, doc.started_at):
        return RunnerStatus(doc, "dead")
    if now - doc.heartbeat_at > timedelta(seconds=STALE_HEARTBEATS * heartbeat_interval):
        return RunnerStatus(doc, "stale")
    return RunnerStatus(doc, "live")


def runner_id_for(name: str) -> str:
    """The runner id of a supervised process: host, program process name, pid."""
    return f"{socket.gethostname()}-{name}-{os.getpid()}"


# --- the daemon -------------------------------------------------------------------


@dataclass(frozen=True)
class DaemonStatus:
    """The daemon of a project and the runners registered in its database."""

    project: str
    running: bool
    pid: int | None
    config: str
    programs: list[ProgramStatus]
    runners: list[RunnerStatus]
    heartbeat_interval: float
    #: What could not be read (supervisord unreachable, a database error).
    problems: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "daemon": {"running": self.running, "pid": self.pid, "config": self.config},
            "programs": [p.to_json() for p in self.programs],
            "runners": [r.to_json() for r in self.runners],
            "heartbeat_interval": self.heartbeat_interval,
            "problems": self.problems,
        }


class Daemon:
    """The supervised runner processes of one project, kept in ``<project dir>/daemon``.

    Parameters
    ----------
    project
        The project (name, path or object); default: the current one.
    """

    def __init__(self, project: str | os.PathLike[str] | Project | None = None) -> None:
        self.project = open_project(project)
        self.directory = self.project.directory / "daemon"
        self.config_file = self.directory / "supervisord.conf"
        self.pid_file = self.directory / "supervisord.pid"
        self.layout_file = self.directory / "layout.json"
        self.log_dir = self.directory / "logs"
        self.socket = socket_path(self.directory)

    # --- questions ---------------------------------------------------------------

    def supervisord_pid(self) -> int | None:
        """The pid of this project's live supervisord; None if there is none.

        The pid file says first; a stale one (its process gone, a zombie, or the pid
        now another program's) is removed. A supervisord whose pid file is missing
        (not written yet, or deleted) is found in /proc by its command line.
        """
        try:
            text = self.pid_file.read_text().strip()
        except FileNotFoundError:
            text = ""
        if text:  # empty while supervisord writes it
            pid = int(text) if text.isdigit() else 0
            if self._is_supervisord(pid):
                return pid
            self.pid_file.unlink(missing_ok=True)
        return next((pid for pid in live_pids() if self._is_supervisord(pid)), None)

    def _is_supervisord(self, pid: int) -> bool:
        argv = cmdline(pid) if pid > 0 and pid_alive(pid) else []
        return any("supervisord" in arg for arg in argv[:3]) and str(self.config_file) in argv

    def layout(self) -> DaemonLayout:
        """The layout of the last start (the default one if none)."""
        try:
            return DaemonLayout(**json.loads(self.layout_file.read_text()))
        except (OSError, ValueError, TypeError):  # none yet, or not ours to trust
            return DaemonLayout()

    def programs(self) -> list[ProgramStatus]:
        """The runner processes supervisord runs; ConveyorError if it does not answer."""
        layout = self.layout()
        try:
            with self._rpc() as rpc:
                infos: list[dict[str, Any]] = rpc.getAllProcessInfo()
        except RPC_ERRORS as exc:
            raise ConveyorError(f"supervisord does not answer on {self.socket}: {exc}") from exc
        return [
            ProgramStatus(
                name=info["name"],
                group=info["group"],
                state=info["statename"],
                pid=info["pid"] or None,
                roles=layout.roles_of(info["group"]),
                started_at=datetime.fromtimestamp(info["start"], UTC) if info["start"] else None,
                description=info["description"],
                log=info["stdout_logfile"],
            )
            for info in infos
        ]

    def runners(self) -> list[RunnerStatus]:
        """Every runner registered in the project's database, on any host."""
        interval = self.project.config.runner.heartbeat_interval
        now, host = utcnow(), socket.gethostname()
        return [
            runner_status(doc, heartbeat_interval=interval, now=now, hostname=host)
            for doc in self.project.db.list_runners()
        ]

    def status(self) -> DaemonStatus:
        """supervisord's processes and the database's runner registrations."""
        pid = self.supervisord_pid()
        problems: list[str] = []
        programs: list[ProgramStatus] = []
        if pid is not None:
            try:
                programs = self.programs()
            except ConveyorError as exc:
                problems.append(str(exc))
        else:
            strays = self._stray_runners()
            if strays:
                problems.append(
                    f"runner processes {strays} run without their supervisord; "
                    "'conveyor runner stop' ends them"
                )
        runners: list[RunnerStatus] = []
        try:
            runners = self.runners()
        except DatabaseError as exc:
            problems.append(f"cannot list the runners in the database: {exc}")
        return DaemonStatus(
            project=self.project.name,
            running=pid is not None,
            pid=pid,
            config=str(self.config_file),
            programs=programs,
            runners=runners,
            heartbeat_interval=self.project.config.runner.heartbeat_interval,
            problems=problems,
        )

    # --- actions -----------------------------------------------------------------

    def start(self, layout: DaemonLayout | None = None, *, timeout: float = START_TIMEOUT) -> int:
        """Write the configuration, start supervisord and wait until every runner
        process is RUNNING and registered in the database; supervisord's pid.
        ConveyorError if it already runs."""
        with self._control_lock():
            return self._start(layout or DaemonLayout(), timeout)

    def stop(self, *, wait: bool = False, timeout: float | None = None) -> list[int]:
        """Ask every runner process to finish its steps in hand and exit (SIGTERM),
        then supervisord to exit; the pids asked (supervisord's first), none if
        nothing ran. Runner processes left by a killed supervisord are asked too.

        With ``wait``, return only once every one of them is gone and no job is locked
        by them; ConveyorError after ``timeout`` seconds (default: the grace period of
        a runner plus 30 s).
        """
        with self._control_lock():
            return self._stop(wait, STOP_WAIT_SECONDS + 30.0 if timeout is None else timeout)

    def restart(self, layout: DaemonLayout | None = None, *, timeout: float | None = None) -> int:
        """``stop --wait``, then ``start`` (with the last layout unless given one)."""
        with self._control_lock():
            layout = layout or self.layout()
            self._stop(True, STOP_WAIT_SECONDS + 30.0 if timeout is None else timeout)
            return self._start(layout, START_TIMEOUT)

    def kill(self) -> list[int]:
        """SIGKILL supervisord and every runner process of this daemon at once (their
        leases then expire); the pids killed."""
        killed: list[int] = []
        with self._control_lock():
            for _ in range(3):  # again, for a runner spawned while we looked
                pid = self.supervisord_pid()
                targets = [pid, *children(pid)] if pid is not None else []
                targets += [p for p in self._stray_runners() if p not in targets]
                if not targets:
                    break
                for target in targets:  # supervisord first, so it starts nothing new
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(target, signal.SIGKILL)
                killed += targets
                left = wait_dead(targets, 10.0)
                if left:
                    raise ConveyorError(f"processes {left} are still alive after SIGKILL")
            self.pid_file.unlink(missing_ok=True)
            self.socket.unlink(missing_ok=True)
        return killed

    # --- logs --------------------------------------------------------------------

    def log_files(self, program: str | None = None) -> list[Path]:
        """The runner logs (all, or one program's: ``transfer`` or ``transfer_01``);
        ``supervisord`` names supervisord's own log."""
        if program == "supervisord":
            return [self.directory / "supervisord.log"]
        files = sorted(self.log_dir.glob("*.log"))
        if program is not None:
            files = [f for f in files if f.stem == program or f.stem.startswith(program + "_")]
            if not files:
                known = sorted({f.stem for f in self.log_dir.glob("*.log")} | {"supervisord"})
                raise ConveyorError(
                    f"no log of {program!r} in {self.log_dir}; there are: {', '.join(known)}"
                )
        return files

    # --- inner workings ----------------------------------------------------------

    @contextlib.contextmanager
    def _rpc(self, timeout: float = 10.0) -> Iterator[Any]:
        with supervisor_rpc(self.socket, timeout) as rpc:
            yield rpc

    @contextlib.contextmanager
    def _control_lock(self, timeout: float = 10.0) -> Iterator[None]:
        """One start/stop/kill at a time per project (a file lock; supervisord and the
        runners do not inherit it, since subprocesses close other descriptors)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "control.lock"
        with path.open("a") as handle:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ConveyorError(
                            f"another command is starting or stopping the daemon of project "
                            f"{self.project.name!r} (it holds {path}); try again later"
                        ) from None
                    time.sleep(POLL_SECONDS)
            yield

    def _start(self, layout: DaemonLayout, timeout: float) -> int:
        if self.project.database_url.startswith("mongomock://"):
            raise ConveyorError(
                f"project {self.project.name!r} keeps its jobs in memory (mongomock://), "
                "which other processes cannot see: give it a sqlite:// or mongodb:// database"
            )
        pid = self.supervisord_pid()
        if pid is not None:
            raise ConveyorError(
                f"the runner daemon of project {self.project.name!r} is already running "
                f"(pid {pid}); see 'conveyor runner status', or 'conveyor runner restart'"
            )
        strays = self._stray_runners()
        if strays:
            raise ConveyorError(
                f"runner processes {strays} of an earlier daemon of project "
                f"{self.project.name!r} still run without their supervisord; end them with "
                "'conveyor runner stop --wait' (or 'kill') first"
            )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(render_config(self.project, layout, self.directory))
        self.layout_file.write_text(json.dumps(layout.to_json()) + "\n")
        self.socket.unlink(missing_ok=True)  # left by a killed supervisord
        launch_supervisord(self.config_file, self.project.directory, timeout)
        return self._wait_running(timeout)

    def _wait_running(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            pid = self.supervisord_pid()
            programs: list[ProgramStatus] = []
            if pid is not None:
                with contextlib.suppress(ConveyorError):
                    programs = self.programs()
            running = bool(programs) and all(p.state == "RUNNING" for p in programs)
            if pid is not None and running and self._registered({p.pid or 0 for p in programs}):
                return pid
            fatal = next((p for p in programs if p.state == "FATAL"), None)
            if fatal is not None:
                self._stop(True, 30.0)
                log = Path(fatal.log)
                text = "".join(last_lines(log, 20)[0]) if log.exists() else "(no log)"
                raise ConveyorError(
                    f"runner process {fatal.name} exits at once ({fatal.description}), so "
                    f"the daemon was stopped; the end of {log}:\n{text.rstrip()}"
                )
            if time.monotonic() > deadline:
                states = ", ".join(f"{p.name} {p.state}" for p in programs) or "no answer"
                what = "registered in the database" if running else "RUNNING"
                raise ConveyorError(
                    f"the runner processes are not all {what} after {timeout:g} s ({states}); "
                    "supervisord keeps trying: see 'conveyor runner status' and 'logs'"
                )
            time.sleep(POLL_SECONDS)

    def _registered(self, pids: set[int]) -> bool:
        """Whether each of these processes of this host has registered as a runner."""
        host = socket.gethostname()
        try:
            docs = self.project.db.list_runners()
        except DatabaseError:
            return False
        return pids <= {d.pid for d in docs if d.hostname == host and d.stopped_at is None}

    def _stop(self, wait: bool, timeout: float) -> list[int]:
        pid = self.supervisord_pid()
        marked = self._stray_runners()
        # Looked up after the marked ones, so that a runner spawned meanwhile counts as
        # supervisord's: a second SIGTERM would make it exit at once.
        supervised = set(children(pid)) if pid is not None else set()
        if pid is not None:
            try:
                supervised |= {p.pid for p in self.programs() if p.pid}
                with self._rpc() as rpc:
                    rpc.shutdown()  # SIGTERM to every runner, then supervisord exits
            except (ConveyorError, *RPC_ERRORS):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)  # the same, asked by signal
        for orphan in set(marked) - supervised:  # their supervisord is gone
            with contextlib.suppress(ProcessLookupError):
                os.kill(orphan, signal.SIGTERM)
        pids = ([pid] if pid is not None else []) + sorted(supervised | set(marked))
        if wait and pids:
            self._wait_stopped(pids, timeout)
        return pids

    def _wait_stopped(self, pids: list[int], timeout: float) -> None:
        host = socket.gethostname()
        try:
            owners = {
                doc.runner_id
                for doc in self.project.db.list_runners()
                if doc.hostname == host and doc.pid in pids
            }
        except DatabaseError:
            owners = set()  # the processes are still waited for
        deadline = time.monotonic() + timeout
        while True:
            alive = [p for p in pids if pid_alive(p)]
            locked: list[int] = []
            if not alive and owners:
                with contextlib.suppress(DatabaseError):
                    locked = [
                        doc.db_id
                        for doc in self.project.db.find_jobs(JobFilter(locked=True))
                        if doc.lock.owner in owners
                    ]
            if not alive and not locked:
                self.pid_file.unlink(missing_ok=True)
                return
            if time.monotonic() > deadline:
                what = f"processes {alive} still alive" if alive else f"jobs {locked} locked"
                raise ConveyorError(
                    f"the daemon of project {self.project.name!r} did not stop within "
                    f"{timeout:g} s: {what}; 'conveyor runner kill' ends it at once"
                )
            time.sleep(POLL_SECONDS)

    def _stray_runners(self) -> list[int]:
        """Live runner processes of this daemon, found by the mark in their environment
        (so also those whose supervisord died)."""
        mark = f"{DAEMON_ENV}={daemon_key(self.directory)}".encode()
        return [pid for pid in live_pids() if mark in environ(pid)]
