"""Reading the runner daemon's logs: the last lines of a log file, and following
several log files as they grow (``tail -f``), across rotation and truncation, for
``conveyor runner logs`` and for the reports of a runner process that exits at once.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["Position", "follow_files", "last_lines"]


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
