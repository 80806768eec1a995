"""``SSHHost``: a worker's machine reached over SSH (fabric / paramiko).

Commands are argument lists, quoted once, here, with :func:`shlex.join`, and run by the
remote login shell (which must be POSIX: bash, sh, zsh, ksh). Files move over the
connection's one SFTP session. Every worker on the same (host, port, user) shares one
connection from the :mod:`~conveyor.hosts.pool`; see :mod:`conveyor.hosts._sshconn` for
its timeouts, keepalive, reconnection backoff and host-key checks.

Missing files raise :class:`FileNotFoundError`, as on :class:`~conveyor.hosts.LocalHost`;
any other failure becomes a :class:`~conveyor.exceptions.HostError` that names the host.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import shlex
import stat
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor.exceptions import HostError
from conveyor.hosts._sshconn import (
    ConnectionSettings,
    HostKeyError,
    SSHAuthError,
    SSHConnection,
    SSHStats,
)
from conveyor.hosts.base import CommandResult, Host, is_within

if TYPE_CHECKING:
    import paramiko

    from conveyor.config.models import SSHWorkerConfig
    from conveyor.hosts.pool import HostPool

__all__ = ["HostKeyError", "SSHAuthError", "SSHHost", "SSHStats", "command_line"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_T = TypeVar("_T")


def command_line(
    argv: Sequence[str], *, cwd: str | None = None, env: Mapping[str, str] | None = None
) -> str:
    """The one shell line that runs ``argv`` on the remote side, every value quoted.

    ``cd -- CWD && export NAME=VALUE && exec ARGV...``: the program replaces the login
    shell, so a signal reaches it, and no argument is ever parsed by a shell.
    """
    args = [str(a) for a in argv]
    if not args:
        raise HostError("cannot run an empty command")
    if args[0].startswith("-"):
        raise HostError(f"program name {args[0]!r} may not start with '-'")
    parts = []
    if cwd is not None:
        parts.append(f"cd -- {shlex.quote(cwd)}")
    for name, value in (env or {}).items():
        if not _IDENTIFIER.fullmatch(name):
            raise HostError(f"environment variable name {name!r} is not a valid identifier")
        parts.append(f"export {name}={shlex.quote(value)}")
    parts.append(f"exec {shlex.join(args)}")
    return " && ".join(parts)


class SSHHost(Host):
    """Run commands and keep files on a remote machine, for one worker.

    Parameters
    ----------
    name
        A label for messages (the worker's name).
    root
        The worker's work dir on the remote machine (absolute): :meth:`rmtree` refuses
        anything outside it, also through symbolic links.
    connection
        The shared connection to the machine.
    command_timeout
        Timeout of a command whose caller gives none.
    release
        Called once by :meth:`close` (the pool's bookkeeping).
    """

    def __init__(
        self,
        name: str,
        *,
        root: str,
        connection: SSHConnection,
        command_timeout: float = 60.0,
        release: Callable[[], None] | None = None,
    ) -> None:
        if not root.startswith("/"):
            raise HostError(f"work dir {root!r} of {name} must be an absolute remote path")
        super().__init__(name, posixpath.normpath(root))
        self.connection = connection
        self.command_timeout = command_timeout
        #: What this worker sent over the connection (the connection counts for all).
        self.stats = SSHStats()
        self._release = release
        self._closed = False

    @classmethod
    def from_config(
        cls, worker: str, config: SSHWorkerConfig, *, pool: HostPool | None = None
    ) -> SSHHost:
        """The host of an ``ssh`` worker, on the pool's shared connection to its machine."""
        from conveyor.hosts.pool import default_pool

        pool = pool or default_pool()
        connection = pool.acquire(ConnectionSettings.from_worker(config))
        return cls(
            f"{worker} ({connection.label})",
            root=config.work_dir,
            connection=connection,
            command_timeout=config.command_timeout,
            release=lambda: pool.release(connection),
        )

    def __repr__(self) -> str:
        return f"SSHHost({self.name!r}, root={self.root!r})"

    def _count(self, name: str, count: int = 1, program: str | None = None) -> None:
        self.stats.add(name, count, program=program)
        self.connection.stats.add(name, count, program=program)

    # --- commands --------------------------------------------------------------------

    def execute(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
    ) -> CommandResult:
        """Run ``argv`` on the host and wait for it; see :meth:`Host.execute`.

        ``timeout`` defaults to the worker's ``command_timeout``: no command waits
        forever. ``env`` is added to the login environment.
        """
        args = [str(a) for a in argv]
        line = command_line(args, cwd=cwd, env=env)
        limit = self.command_timeout if timeout is None else timeout
        self._count("commands", program=posixpath.basename(args[0]))
        code, out, err = self.connection.run(
            line, args, stdin.encode() if stdin is not None else None, limit
        )
        return CommandResult(
            args,
            code,
            out.decode("utf-8", errors="replace"),
            err.decode("utf-8", errors="replace"),
            self.name,
        )

    # --- files -----------------------------------------------------------------------

    @contextmanager
    def _sftp(self, action: str, path: str) -> Iterator[paramiko.SFTPClient]:
        """The SFTP session, with file errors named: missing files stay FileNotFoundError."""
        with self.connection.sftp(f"{action} {path!r}") as sftp:
            try:
                yield sftp
            except TimeoutError:
                raise  # the connection's business: it drops the session
            except OSError as exc:
                raise self._file_error(action, path, exc) from exc

    def _file_error(self, action: str, path: str, exc: OSError) -> Exception:
        """A missing file as FileNotFoundError, anything else as HostError; both name
        the path and the host."""
        if isinstance(exc, FileNotFoundError) and exc.filename == path:
            return exc
        if exc.errno == errno.ENOENT:
            return FileNotFoundError(
                errno.ENOENT, f"No such file or directory on {self.name}", path
            )
        return HostError(f"could not {action} {path!r} on {self.name}: {exc}")

    def _write(self, sftp: paramiko.SFTPClient, path: str, data: bytes) -> None:
        directory, base = posixpath.split(path)
        tmp = posixpath.join(directory, f".{base}.{uuid.uuid4().hex}.tmp")
        try:
            with sftp.open(tmp, "wbx") as fh:
                fh.set_pipelined(True)
                fh.write(data)
            sftp.posix_rename(tmp, path)
        except BaseException:
            with suppress(Exception):
                sftp.remove(tmp)
            raise

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write ``path`` atomically: a temporary file beside it, then a rename."""
        with self._sftp("write", path) as sftp:
            self._count("uploads")
            self._write(sftp, path, data)

    def write_files(self, files: Mapping[str, bytes]) -> None:
        """Write several files atomically, in one go over the one SFTP session."""
        if not files:
            return
        first = next(iter(files))
        with self._sftp("write", first) as sftp:
            for path, data in files.items():
                self._count("uploads")
                try:
                    self._write(sftp, path, data)
                except TimeoutError:
                    raise
                except OSError as exc:
                    raise self._file_error("write", path, exc) from exc

    def read_bytes(self, path: str) -> bytes:
        """Read a whole file; :class:`FileNotFoundError` if it is missing."""
        with self._sftp("read", path) as sftp:
            self._count("downloads")
            with sftp.open(path, "rb") as fh:
                fh.prefetch()
                data: bytes = fh.read()
                return data

    def put(self, local: str, remote: str) -> None:
        """Copy a local file to ``remote`` (atomically, as :meth:`write_bytes`)."""
        with open(local, "rb") as fh:
            data = fh.read()
        with self._sftp("copy to", remote) as sftp:
            self._count("uploads")
            self._write(sftp, remote, data)

    def get(self, remote: str, local: str) -> None:
        """Copy ``remote`` to a local path; :class:`FileNotFoundError` if it is missing.

        The local file is replaced only once the whole content has arrived.
        """
        data = self._get_bytes(remote)
        tmp = f"{local}.{uuid.uuid4().hex}.part"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, local)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _get_bytes(self, remote: str) -> bytes:
        with self._sftp("copy from", remote) as sftp:
            self._count("downloads")
            with sftp.open(remote, "rb") as fh:
                fh.prefetch()
                data: bytes = fh.read()
                return data

    def mkdir(self, path: str) -> None:
        """Create a directory and its parents; fine if it exists."""
        with self._sftp("create directory", path) as sftp:
            self._mkdir(sftp, posixpath.normpath(path))

    def _mkdir(self, sftp: paramiko.SFTPClient, path: str) -> None:
        # Try the directory itself first: one request when only the leaf is new.
        self._count("file_ops")
        try:
            sftp.mkdir(path)
            return
        except FileNotFoundError:
            parent = posixpath.dirname(path)
            if parent == path:
                raise
            self._mkdir(sftp, parent)
            self._count("file_ops")
            try:
                sftp.mkdir(path)
                return
            except OSError:
                pass  # made meanwhile by someone else? the stat below decides
        except OSError:
            pass  # SFTP says only "Failure" when it exists: the stat below decides
        self._count("file_ops")
        mode = sftp.stat(path).st_mode
        if mode is None or not stat.S_ISDIR(mode):
            raise HostError(f"cannot create directory {path!r} on {self.name}: a file is there")

    def exists(self, path: str) -> bool:
        """Whether a file or directory exists (a dangling symlink does not)."""
        with self._sftp("check", path) as sftp:
            self._count("file_ops")
            try:
                sftp.stat(path)
            except FileNotFoundError:
                return False
            return True

    def listdir(self, path: str) -> list[str]:
        """Names in a directory, sorted."""
        with self._sftp("list", path) as sftp:
            self._count("file_ops")
            return sorted(sftp.listdir(path))

    def remove(self, path: str) -> None:
        """Remove one file; fine if it is missing."""
        with self._sftp("remove", path) as sftp:
            self._count("file_ops")
            with suppress(FileNotFoundError):
                sftp.remove(path)

    def _rmtree(self, path: str) -> None:
        """Remove a tree whose real path is inside the real work dir; fine if missing.

        The base class checked ``path`` lexically; here the host resolves symbolic
        links, so ``work_dir/link -> /elsewhere`` is refused rather than followed, and
        ``path`` itself must not be a link.
        """
        with self._sftp("remove tree", path) as sftp:
            self._count("file_ops", 3)
            try:
                mode = sftp.lstat(path).st_mode
            except FileNotFoundError:
                return
            real = sftp.normalize(path)
            real_root = sftp.normalize(self.root)
        if mode is not None and stat.S_ISLNK(mode):
            raise HostError(
                f"refusing to remove {path!r} on {self.name}: it is a symbolic link, "
                "not a directory"
            )
        if not is_within(real, real_root):
            raise HostError(
                f"refusing to remove {path!r} on {self.name}: it resolves to {real!r}, "
                f"outside the worker's work dir {real_root!r}"
            )
        # rm -r never follows symbolic links inside the tree.
        self.execute(["rm", "-rf", "--", real]).check()

    def close(self) -> None:
        """Give the shared connection back to the pool (closed when nobody uses it)."""
        if self._closed:
            return
        self._closed = True
        if self._release is not None:
            self._release()

    def info(self) -> dict[str, Any]:
        """This worker's counters and the shared connection's, for benchmarks."""
        return {"worker": self.stats.snapshot(), "connection": self.connection.stats.snapshot()}
