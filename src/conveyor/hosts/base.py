"""The ``Host`` interface: run argument lists and move files on a worker machine.

A host never sees a shell string: commands are argument lists. A host that must go
through a shell (SSH) quotes them once, at its boundary, with ``shlex.join``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from conveyor.exceptions import CommandError, HostError

__all__ = ["CommandResult", "Host", "is_within"]


@dataclass(frozen=True)
class CommandResult:
    """What a command did: its argv, exit code and decoded output."""

    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str
    host: str = ""

    @property
    def ok(self) -> bool:
        """Whether the command exited with code 0."""
        return self.exit_code == 0

    def check(self) -> CommandResult:
        """Return self, or raise :class:`CommandError` with the evidence if it failed."""
        if self.exit_code != 0:
            raise CommandError(self.argv, self.exit_code, self.stdout, self.stderr, self.host)
        return self


def is_within(path: str, root: str) -> bool:
    """Whether ``path`` lies strictly inside ``root`` (lexically, after normalising)."""
    p = PurePosixPath(_normalise(path))
    r = PurePosixPath(_normalise(root))
    return p != r and r in p.parents


def _normalise(path: str) -> str:
    parts: list[str] = []
    for part in PurePosixPath(path).parts:
        if part == "..":
            if len(parts) > 1:
                parts.pop()
        elif part != ".":
            parts.append(part)
    return str(PurePosixPath(*parts)) if parts else "."


class Host(ABC):
    """A machine that runs commands and stores files for a worker.

    Parameters
    ----------
    name
        A label for messages (the worker's host name).
    root
        The worker's work dir: :meth:`rmtree` refuses anything outside it.
    """

    def __init__(self, name: str, root: str) -> None:
        self.name = name
        self.root = root

    @abstractmethod
    def execute(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
    ) -> CommandResult:
        """Run ``argv`` and wait for it; a non-zero exit is a result, not an error.

        Raises
        ------
        CommandTimeoutError
            If it does not finish within ``timeout`` seconds (it is killed).
        HostError
            If the command could not be started at all.
        """

    @abstractmethod
    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a whole file atomically (readers see the old or the new content)."""

    @abstractmethod
    def read_bytes(self, path: str) -> bytes:
        """Read a whole file; :class:`FileNotFoundError` if it is missing."""

    @abstractmethod
    def put(self, local: str, remote: str) -> None:
        """Copy a local file to the host."""

    @abstractmethod
    def get(self, remote: str, local: str) -> None:
        """Copy a file from the host to a local path."""

    @abstractmethod
    def mkdir(self, path: str) -> None:
        """Create a directory and its parents; fine if it exists."""

    @abstractmethod
    def exists(self, path: str) -> bool:
        """Whether a file or directory exists."""

    @abstractmethod
    def listdir(self, path: str) -> list[str]:
        """Names in a directory, sorted."""

    @abstractmethod
    def remove(self, path: str) -> None:
        """Remove one file; fine if it is missing."""

    @abstractmethod
    def _rmtree(self, path: str) -> None:
        """Remove a directory tree (called only for paths inside the root)."""

    def rmtree(self, path: str) -> None:
        """Remove a directory tree inside the worker's work dir, and nothing else."""
        if not is_within(path, self.root):
            raise HostError(
                f"refusing to remove {path!r} on {self.name}: it is not inside the "
                f"worker's work dir {self.root!r}"
            )
        self._rmtree(path)

    def write_files(self, files: Mapping[str, bytes]) -> None:
        """Write several files; hosts with a per-transfer cost batch them."""
        for path, data in files.items():
            self.write_bytes(path, data)

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to close by default
        """Release connections."""
