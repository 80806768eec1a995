"""One SQLite file shared by several processes: connections, transactions, errors.

Used by the sqlite backend (:mod:`conveyor.db.sqlite`) and by the job store of
outputs (:mod:`conveyor.stores`).

* WAL mode: readers never wait, and one writer at a time holds the write lock.
* Every write, and every read-modify-write, runs in one ``BEGIN IMMEDIATE``
  transaction, which takes the write lock before it reads: a select-then-update in it
  is atomic across threads and processes. Threads of one process queue on a mutex
  before they ask SQLite, so they do not spin in SQLite's busy handler against each
  other; processes wait for each other up to the busy timeout.
* A small pool of connections: a call takes one, uses it and puts it back. Threads
  that come and go (each runner session starts a new thread pool) leave no
  connections behind; :meth:`SqliteFile.close` closes them all.
* SQLite errors become :class:`~conveyor.exceptions.DatabaseError` naming the file and
  the cause: a lock held past the busy timeout, a full disk, an I/O error, a corrupt
  file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from conveyor.exceptions import ConfigError, DatabaseError

__all__ = ["DEFAULT_TIMEOUT", "SqliteFile", "parse_sqlite_url"]

#: Seconds a write waits for another process's transaction before it fails.
DEFAULT_TIMEOUT = 30.0


def parse_sqlite_url(url: str) -> tuple[Path, float]:
    """The file and busy timeout of ``sqlite:///ABSOLUTE/PATH`` (or ``sqlite:////...``)
    or ``sqlite://RELATIVE/PATH`` (relative to the current directory), with an optional
    ``?timeout=SECONDS``."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigError(f"SqliteDatabase cannot open {url!r}: not a sqlite:// URL")
    path = unquote(parts.netloc + parts.path)
    if not path or path == ":memory:":
        raise ConfigError(
            f"database URL {url!r} names no file: use sqlite:///ABSOLUTE/PATH.db "
            "(mongomock:// is the in-memory database)"
        )
    if path.startswith("/"):
        path = "/" + path.lstrip("/")  # sqlite:////abs/path too (SQLAlchemy spells it so)
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"timeout"})
    if unknown:
        raise ConfigError(f"database URL {url!r}: unknown option(s) {unknown}; known: timeout")
    timeout = DEFAULT_TIMEOUT
    if "timeout" in query:
        try:
            timeout = float(query["timeout"][-1])
        except ValueError:
            timeout = -1.0
        if not timeout >= 0:
            raise ConfigError(
                f"database URL {url!r}: timeout must be a number of seconds, at least 0"
            )
    return Path(path).expanduser().absolute(), timeout


class SqliteFile:
    """Pooled connections to one SQLite file in WAL mode.

    Parameters
    ----------
    path
        The file; it and its directory are created if missing.
    timeout
        Seconds a write waits for the write lock (SQLite's busy timeout).
    timeout_hint
        Where the user sets ``timeout``, for the message of a locked database.
    """

    def __init__(
        self, path: Path, timeout: float = DEFAULT_TIMEOUT, timeout_hint: str = ""
    ) -> None:
        self.path = path
        self.timeout = timeout
        self._timeout_hint = timeout_hint or "the timeout setting"
        self._guard = threading.Lock()
        #: Held around every write transaction: threads of this process take turns here.
        self._writer = threading.Lock()
        #: Connections not in use; one in use goes back here, or is closed if we are.
        self._idle: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(f"cannot create the directory of {self.path}: {exc}") from exc
        try:
            with self.read() as conn:
                # WAL is a property of the file: once set, it stays.
                conn.execute("PRAGMA journal_mode = WAL").fetchone()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA synchronous = NORMAL")  # durable at each checkpoint, in WAL
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._guard:
            if self._closed:
                raise DatabaseError(f"the database {self.path} is closed")
            if self._pid != os.getpid():
                # A forked child must not use its parent's connections (SQLite forbids
                # it): forget them, unclosed, and open its own.
                self._idle, self._pid = [], os.getpid()
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            with self.translated():
                conn = self._connect()
        try:
            yield conn
        finally:
            with suppress(sqlite3.Error):
                if conn.in_transaction:  # an error cut the transaction short
                    conn.rollback()
            with self._guard:
                if self._closed:
                    conn.close()
                else:
                    self._idle.append(conn)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads; each statement sees one consistent snapshot."""
        with self._connection() as conn, self.translated():
            yield conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside ``BEGIN IMMEDIATE``, committed if the block succeeds."""
        if not self._writer.acquire(timeout=self.timeout):
            raise DatabaseError(self.locked_message())
        try:
            with self._connection() as conn, self.translated():
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")  # on an error, _connection rolls back
        finally:
            self._writer.release()

    def close(self) -> None:
        """Close every connection (one in use when its call ends); later calls raise
        DatabaseError."""
        with self._guard:
            self._closed = True
            if self._pid == os.getpid():
                for conn in self._idle:
                    conn.close()
            self._idle.clear()

    # --- errors ----------------------------------------------------------------------

    def locked_message(self) -> str:
        return (
            f"the database {self.path} is locked: another process (or thread) held it longer "
            f"than the busy timeout of {self.timeout:g} s; raise it with {self._timeout_hint}"
        )

    @contextmanager
    def translated(self) -> Iterator[None]:
        """Raise SQLite errors as :class:`DatabaseError` (see :meth:`error`)."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self.error(exc) from exc

    def error(self, exc: sqlite3.Error) -> DatabaseError:
        """``exc`` as a DatabaseError that names the file, the cause and what to do."""
        name = getattr(exc, "sqlite_errorname", "") or ""
        text = str(exc)
        where = self.path
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "is locked" in text:
            return DatabaseError(f"{self.locked_message()} ({text})")
        if name.startswith("SQLITE_FULL") or "is full" in text:
            return DatabaseError(f"cannot write the database {where}: the disk is full ({text})")
        if name.startswith("SQLITE_IOERR") or "I/O error" in text:
            return DatabaseError(
                f"cannot read or write the database {where}: disk I/O error ({text})"
            )
        if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")) or "malformed" in text:
            return DatabaseError(
                f"the database file {where} is corrupt or not a database ({text}); restore it "
                "from a backup, or move it away to start an empty one"
            )
        if name.startswith("SQLITE_CANTOPEN"):
            return DatabaseError(
                f"cannot open the database file {where} ({text}); check that it and its "
                "directory exist and are writable"
            )
        if name.startswith("SQLITE_READONLY"):
            return DatabaseError(f"the database file {where} is read-only ({text})")
        return DatabaseError(f"the database {where} failed: {text}")
