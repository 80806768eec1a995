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
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from shlex import quote
from string import Template
from typing import Any

from conveyor.db.base import JobFilter
from conveyor.exceptions import ConveyorError, DatabaseError, tail
from conveyor.models import RunnerDoc, utcnow
from conveyor.project import Project, open_project
from conveyor.runner.runner import ALL_ROLES

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

#: Seconds supervisord gives a runner after SIGTERM to finish the steps in hand and
#: release its locks, before SIGKILL (a long step renews its lease meanwhile).
STOP_WAIT_SECONDS = 300
#: How long ``start`` waits for every runner process to be RUNNING.
START_TIMEOUT = 60.0
#: A runner process counts as started once it has lived this long (``startsecs``).
START_SECONDS = 2
#: A registration without a heartbeat for this many heartbeat intervals is stale.
STALE_HEARTBEATS = 3
#: ``sun_path`` holds 108 bytes, and supervisord binds ``<path>.<pid>`` before it
#: renames that to ``<path>``: longer socket paths go under /tmp.
SOCKET_PATH_MAX = 96
#: Set in the environment of the daemon's runner processes: the daemon's key.
DAEMON_ENV = "CONVEYOR_DAEMON"
#: How often a wait looks again.
POLL_SECONDS = 0.1
#: A process that started this much later than its registration is another process
#: that got the registered pid.
_PID_REUSE_SLACK = timedelta(seconds=5)


# --- processes, read from /proc -------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name; None if no such pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name, in parentheses, may itself hold spaces and parentheses.
    return raw[raw.rindex(b")") + 2 :].decode().split()


def process_state(pid: int) -> str | None:
    """The state letter of a process (``R``, ``S``, ``D``, ``Z``...), None if none."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process: a zombie (``Z``) or dead one (``X``) is not."""
    state = process_state(pid)
    return state is not None and state not in ("Z", "X")


def _process_started_at(pid: int) -> datetime | None:
    fields = _stat_fields(pid)
    if fields is None:
        return None
    try:
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration):
        return None
    ticks = int(fields[19])  # field 22 of stat(5): start time in clock ticks after boot
    return datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"), UTC)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone, or another user's
        return []


def _live_pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and pid_alive(int(entry.name)):
            yield int(entry.name)


def _children(pid: int) -> list[int]:
    found = []
    for child in _live_pids():
        fields = _stat_fields(child)
        if fields is not None and fields[1] == str(pid):
            found.append(child)
    return found


def _wait_dead(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive; the ones still alive at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if pid_alive(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(POLL_SECONDS)


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
    if doc.hostname == hostname and not _same_process(doc.pid, doc.started_at):
        return RunnerStatus(doc, "dead")
    if now - doc.heartbeat_at > timedelta(seconds=STALE_HEARTBEATS * heartbeat_interval):
        return RunnerStatus(doc, "stale")
    return RunnerStatus(doc, "live")


def _same_process(pid: int, registered_at: datetime) -> bool:
    """Whether ``pid`` lives and is the process that registered at ``registered_at``
    (not a later one that was given the same pid)."""
    if not pid_alive(pid):
        return False
    began = _process_started_at(pid)
    return began is None or began <= registered_at + _PID_REUSE_SLACK


def runner_id_for(name: str) -> str:
    """The runner id of a supervised process: host, program process name, pid."""
    return f"{socket.gethostname()}-{name}-{os.getpid()}"


# --- layout and configuration --------------------------------------------------------


@dataclass(frozen=True)
class Program:
    """One supervisord program: ``numprocs`` runner processes with the same roles."""

    name: str
    roles: tuple[str, ...]
    numprocs: int = 1


@dataclass(frozen=True)
class DaemonLayout:
    """Which runner processes the daemon runs.

    By default one process takes every role. ``split`` runs one process per role
    (checkout, transfer, queue, complete), with ``transfer`` and ``complete``
    processes for the two roles that move data.
    """

    split: bool = False
    transfer: int = 1
    complete: int = 1

    def __post_init__(self) -> None:
        if self.transfer < 1 or self.complete < 1:
            raise ConveyorError("the daemon needs at least 1 transfer and 1 complete process")
        if not self.split and (self.transfer, self.complete) != (1, 1):
            raise ConveyorError("--transfer and --complete set process counts for --split")

    def programs(self) -> list[Program]:
        """The supervisord programs of this layout."""
        if not self.split:
            return [Program("runner", ALL_ROLES)]
        counts = {"transfer": self.transfer, "complete": self.complete}
        return [Program(role, (role,), counts.get(role, 1)) for role in ALL_ROLES]

    def roles_of(self, group: str) -> tuple[str, ...]:
        """The roles of the processes of one program."""
        return next((p.roles for p in self.programs() if p.name == group), ())

    def to_json(self) -> dict[str, Any]:
        return {"split": self.split, "transfer": self.transfer, "complete": self.complete}


def daemon_key(directory: Path) -> str:
    """A short key for the daemon kept in ``directory`` (and this user)."""
    return hashlib.sha256(f"{os.getuid()}:{directory}".encode()).hexdigest()[:16]


def socket_path(directory: Path) -> Path:
    """The control socket: in ``directory``, or under /tmp if that path is too long."""
    path = directory / "supervisor.sock"
    if len(os.fsencode(path)) <= SOCKET_PATH_MAX:
        return path
    return Path("/tmp") / f"conveyor-{daemon_key(directory)}.sock"


def _value(text: str | os.PathLike[str]) -> str:
    """A value for supervisord's configuration: ``%`` escaped (supervisord expands
    ``%(name)s``); refused if the ini parser would cut or split it."""
    text = os.fspath(text)
    if "\n" in text or "\r" in text or " ;" in text or " #" in text or text != text.strip():
        raise ConveyorError(
            f"{text!r} cannot go into supervisord's configuration (a line break, "
            "surrounding spaces, or ' ;' / ' #', which start a comment); move the project"
        )
    return text.replace("%", "%%")


def _command(argv: Sequence[str]) -> str:
    return " ".join(_value(quote(arg)) for arg in argv)


def render_config(
    project: Project,
    layout: DaemonLayout,
    directory: Path,
    *,
    python: str = sys.executable,
    stop_wait: int = STOP_WAIT_SECONDS,
) -> str:
    """The supervisord configuration of a project's daemon kept in ``directory``."""
    if "%" in str(directory):  # supervisord expands a program's log path twice
        raise ConveyorError(
            f"supervisord cannot keep logs under {directory}, a path with '%'; move the project"
        )
    log_dir = _value(directory / "logs")
    sections = []
    for program in layout.programs():
        argv = [python, "-m", "conveyor.cli", "--project", str(project.path), "runner", "run"]
        argv += ["--roles", ",".join(program.roles)]
        name = "%(program_name)s_%(process_num)02d"  # expanded by supervisord
        options = {
            "command": f"{_command(argv)} --name {name}",
            "process_name": name,
            "numprocs": str(program.numprocs),
            "directory": _value(project.directory),
            "autostart": "true",
            "autorestart": "true",
            "startsecs": str(START_SECONDS),
            "startretries": "3",
            # Only the runner gets SIGTERM: the commands of its step in hand must end.
            "stopsignal": "TERM",
            "stopwaitsecs": str(stop_wait),
            "stopasgroup": "false",
            "killasgroup": "true",
            "redirect_stderr": "true",
            "stdout_logfile": f"{log_dir}/{name}.log",
            "stdout_logfile_maxbytes": "10MB",
            "stdout_logfile_backups": "3",
            # The mark by which stop and kill find runners whose supervisord died.
            "environment": f'PYTHONUNBUFFERED="1",{DAEMON_ENV}="{daemon_key(directory)}"',
        }
        lines = [f"\n; {program.numprocs} process(es) with roles {', '.join(program.roles)}"]
        lines.append(f"[program:{program.name}]")
        lines += [f"{key} = {value}" for key, value in options.items()]
        sections.append("\n".join(lines))
    template = resources.files("conveyor.runner").joinpath("templates/supervisord.conf")
    return Template(template.read_text()).substitute(
        project_name=project.name,
        project_file=_value(project.path),
        socket=_value(socket_path(directory)),
        daemon_dir=_value(directory),
        log_dir=log_dir,
        project_dir=_value(project.directory),
        identifier=_value(f"conveyor-{project.name}"),
        programs="\n".join(sections),
    )


# --- supervisord's XML-RPC interface over its unix socket ----------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._path = path
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        connection = self._connection[1]
        if connection is None:
            connection = _UnixConnection(self._path, self._timeout)
            self._connection = ("localhost", connection)
        return connection


#: What talking to supervisord may raise: no socket, refused, a fault, a bad reply.
_RPC_ERRORS = (OSError, xmlrpc.client.Error, http.client.HTTPException)


# --- the daemon -------------------------------------------------------------------


@dataclass(frozen=True)
class ProgramStatus:
    """One supervised runner process, as supervisord sees it."""

    name: str
    group: str
    #: supervisord's state: STARTING, RUNNING, BACKOFF, STOPPING, STOPPED, EXITED, FATAL.
    state: str
    pid: int | None
    roles: tuple[str, ...]
    started_at: datetime | None
    description: str
    log: str

    def to_json(self) -> dict[str, Any]:
        started = self.started_at.isoformat() if self.started_at else None
        return {**asdict(self), "roles": list(self.roles), "started_at": started}


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
        return next((pid for pid in _live_pids() if self._is_supervisord(pid)), None)

    def _is_supervisord(self, pid: int) -> bool:
        argv = _cmdline(pid) if pid > 0 and pid_alive(pid) else []
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
        except _RPC_ERRORS as exc:
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
                targets = [pid, *_children(pid)] if pid is not None else []
                targets += [p for p in self._stray_runners() if p not in targets]
                if not targets:
                    break
                for target in targets:  # supervisord first, so it starts nothing new
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(target, signal.SIGKILL)
                killed += targets
                left = _wait_dead(targets, 10.0)
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
        transport = _UnixTransport(str(self.socket), timeout)
        with xmlrpc.client.ServerProxy("http://localhost", transport=transport) as proxy:
            yield proxy.supervisor

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
        # A file, not a pipe, takes its output: the daemonized child must not hold
        # our end open. The command returns once supervisord has forked.
        with tempfile.TemporaryFile() as output:
            proc = subprocess.run(
                [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.project.directory,
                timeout=timeout,
                check=False,
            )
            output.seek(0)
            text = output.read().decode(errors="replace")
        if proc.returncode != 0:
            raise ConveyorError(
                f"supervisord did not start (exit {proc.returncode}): {tail(text).strip()}"
            )
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
        supervised = set(_children(pid)) if pid is not None else set()
        if pid is not None:
            try:
                supervised |= {p.pid for p in self.programs() if p.pid}
                with self._rpc() as rpc:
                    rpc.shutdown()  # SIGTERM to every runner, then supervisord exits
            except (ConveyorError, *_RPC_ERRORS):
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
        return [pid for pid in _live_pids() if mark in _environ(pid)]


# --- reading logs ----------------------------------------------------------------


#: Where the reading of a file ended: its inode and the offset.
Position = tuple[int, int]


def last_lines(path: Path, count: int) -> tuple[list[str], Position]:
    """The last ``count`` lines of a file (all of them if ``count`` is 0), and where
    the reading ended, for :func:`follow_files` to go on from there."""
    with path.open("rb") as handle:
        raw = handle.readlines() if count == 0 else list(deque(handle, maxlen=count))
        end = (os.fstat(handle.fileno()).st_ino, handle.tell())
    return [line.decode(errors="replace") for line in raw], end


def follow_files(
    paths: Callable[[], list[Path]],
    write: Callable[[str], None],
    *,
    since: Mapping[Path, Position] | None = None,
    stop: Callable[[], bool] = lambda: False,
    interval: float = 0.2,
) -> None:
    """Write what is appended to the files (``tail -f``), until ``stop()`` is true.

    Each file is followed from its position in ``since`` (default: its end now); a
    file not there is read from its start. ``paths`` is asked again at every look, so
    new logs join in; a file that was rotated or truncated is read again from its
    start. With several files, a ``==> file <==`` line says whose text follows.
    """
    seen: dict[Path, Position] = {}
    if since is not None:
        seen.update(since)
    else:
        for path in paths():
            with contextlib.suppress(OSError):
                info = path.stat()
                seen[path] = (info.st_ino, info.st_size)
    current: Path | None = None
    while not stop():
        files = paths()
        for path in files:
            try:
                info = path.stat()
            except OSError:
                continue
            inode, offset = seen.get(path, (info.st_ino, 0))
            if inode != info.st_ino or info.st_size < offset:
                offset = 0
            if info.st_size == offset:
                continue
            with path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read()
            seen[path] = (info.st_ino, offset + len(data))
            if len(files) > 1 and path != current:
                write(f"\n==> {path} <==\n")
            current = path
            write(data.decode(errors="replace"))
        time.sleep(interval)
