"""Supervisord for the runner daemon: which runner processes it runs (the layout and
its programs), the configuration written for it from the package template
``templates/supervisord.conf``, where its control socket lives, and the client that
talks to it through its XML-RPC interface on that unix socket.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import xmlrpc.client
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from shlex import quote
from string import Template
from typing import Any

from conveyor.exceptions import ConveyorError, tail
from conveyor.project import Project
from conveyor.runner.runner import ALL_ROLES

__all__ = [
    "DAEMON_ENV",
    "RPC_ERRORS",
    "SOCKET_PATH_MAX",
    "START_SECONDS",
    "STOP_WAIT_SECONDS",
    "DaemonLayout",
    "Program",
    "ProgramStatus",
    "daemon_key",
    "launch_supervisord",
    "render_config",
    "socket_path",
    "supervisor_rpc",
]

#: Seconds supervisord gives a runner after SIGTERM to finish the steps in hand and
#: release its locks, before SIGKILL (a long step renews its lease meanwhile).
STOP_WAIT_SECONDS = 300
#: A runner process counts as started once it has lived this long (``startsecs``).
START_SECONDS = 2
#: ``sun_path`` holds 108 bytes, and supervisord binds ``<path>.<pid>`` before it
#: renames that to ``<path>``: longer socket paths go under /tmp.
SOCKET_PATH_MAX = 96
#: Set in the environment of the daemon's runner processes: the daemon's key.
DAEMON_ENV = "CONVEYOR_DAEMON"


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
RPC_ERRORS = (OSError, xmlrpc.client.Error, http.client.HTTPException)


@contextlib.contextmanager
def supervisor_rpc(path: Path, timeout: float = 10.0) -> Iterator[Any]:
    """The ``supervisor`` namespace of the XML-RPC interface on the socket ``path``."""
    transport = _UnixTransport(str(path), timeout)
    with xmlrpc.client.ServerProxy("http://localhost", transport=transport) as proxy:
        yield proxy.supervisor


def launch_supervisord(config_file: Path, cwd: Path, timeout: float) -> None:
    """Start supervisord on ``config_file`` in ``cwd``; ConveyorError if it does not
    start. It returns once supervisord has forked into the background."""
    # A file, not a pipe, takes its output: the daemonized child must not hold
    # our end open. The command returns once supervisord has forked.
    with tempfile.TemporaryFile() as output:
        proc = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(config_file)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
        output.seek(0)
        text = output.read().decode(errors="replace")
    if proc.returncode != 0:
        raise ConveyorError(
            f"supervisord did not start (exit {proc.returncode}): {tail(text).strip()}"
        )


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
