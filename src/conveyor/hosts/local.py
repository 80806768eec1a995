"""``LocalHost``: the machine the runner itself runs on.

Commands run as subprocesses without a shell; files are plain files. Missing files
raise :class:`FileNotFoundError` (callers test for it); any other failure to move a file
becomes a :class:`~conveyor.exceptions.HostError` naming the operation and the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress

from conveyor.exceptions import CommandTimeoutError, HostError
from conveyor.hosts.base import CommandResult, Host, is_within

__all__ = ["LocalHost"]


class LocalHost(Host):
    """Run commands and keep files on this machine.

    Parameters
    ----------
    name
        A label for messages.
    root
        The worker's work dir; :meth:`rmtree` refuses anything outside it, also when a
        symbolic link would lead outside.
    """

    def __init__(self, name: str = "localhost", *, root: str | os.PathLike[str]) -> None:
        super().__init__(name, os.path.abspath(os.fspath(root)))

    def execute(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
    ) -> CommandResult:
        """Run ``argv`` (no shell) and wait for it; see :meth:`Host.execute`.

        ``env`` is added to this process's environment. Output that is not valid UTF-8
        is decoded with replacement characters.
        """
        args = list(argv)
        if not args:
            raise HostError(f"cannot run an empty command on {self.name}")
        try:
            proc = subprocess.run(
                args,
                cwd=cwd,
                env={**os.environ, **env} if env else None,
                input=stdin,
                capture_output=True,
                text=True,
                encoding="utf-8",
                errors="replace",
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandTimeoutError(args, exc.timeout, self.name) from None
        except OSError as exc:
            where = f" in {cwd!r}" if cwd is not None else ""
            raise HostError(f"could not start {args!r} on {self.name}{where}: {exc}") from exc
        return CommandResult(args, proc.returncode, proc.stdout, proc.stderr, self.name)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write ``path`` atomically: a temporary file in the same dir, then a rename."""
        directory, base = os.path.split(os.path.abspath(path))
        tmp = os.path.join(directory, f".{base}.{uuid.uuid4().hex}.tmp")
        with self._errors("write", path):
            # O_EXCL: never write through someone else's file; 0o666 lets the umask decide.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except BaseException:
                with suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise

    def read_bytes(self, path: str) -> bytes:
        """Read a whole file; :class:`FileNotFoundError` if it is missing."""
        with self._errors("read", path), open(path, "rb") as fh:
            return fh.read()

    def put(self, local: str, remote: str) -> None:
        """Copy a local file to ``remote``."""
        with self._errors("copy to", remote):
            shutil.copyfile(local, remote)

    def get(self, remote: str, local: str) -> None:
        """Copy ``remote`` to a local path; :class:`FileNotFoundError` if it is missing."""
        with self._errors("copy from", remote):
            shutil.copyfile(remote, local)

    def mkdir(self, path: str) -> None:
        """Create a directory and its parents; fine if it exists."""
        with self._errors("create directory", path):
            os.makedirs(path, exist_ok=True)

    def exists(self, path: str) -> bool:
        """Whether a file or directory exists (a dangling symlink does not)."""
        return os.path.exists(path)

    def listdir(self, path: str) -> list[str]:
        """Names in a directory, sorted."""
        with self._errors("list", path):
            return sorted(os.listdir(path))

    def remove(self, path: str) -> None:
        """Remove one file; fine if it is missing."""
        with self._errors("remove", path), suppress(FileNotFoundError):
            os.unlink(path)

    def _rmtree(self, path: str) -> None:
        """Remove a tree whose real path is inside the real root; fine if it is missing.

        The base class checked ``path`` lexically; here symbolic links are resolved too,
        so that ``root/link -> /elsewhere`` is refused rather than followed.
        """
        real = os.path.realpath(path)
        real_root = os.path.realpath(self.root)
        if not is_within(real, real_root):
            raise HostError(
                f"refusing to remove {path!r} on {self.name}: it resolves to {real!r}, "
                f"outside the worker's work dir {real_root!r}"
            )
        if not os.path.lexists(path):
            return
        if os.path.islink(path):
            raise HostError(
                f"refusing to remove {path!r} on {self.name}: it is a symbolic link, "
                "not a directory"
            )
        with self._errors("remove tree", path):
            shutil.rmtree(path)

    @contextmanager
    def _errors(self, action: str, path: str) -> Iterator[None]:
        """Turn an OSError other than a missing file into a HostError naming the path."""
        try:
            yield
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise HostError(f"could not {action} {path!r} on {self.name}: {exc}") from exc
