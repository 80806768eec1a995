"""The schema of the SQLite file: its recorded version, its creation and its upgrade.

Every function runs on a connection inside the caller's transaction (see
:mod:`conveyor.db._sqlite_file`). The expected version and the migrations are
arguments, so the ones :mod:`conveyor.db.sqlite` holds are the ones that count.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path

from conveyor.db import _sqlite_sql as sql
from conveyor.exceptions import SchemaVersionError

__all__ = [
    "Migration",
    "create",
    "foreign_tables",
    "mismatch",
    "not_ours",
    "stored_version",
    "upgrade",
]

Migration = Callable[[sqlite3.Connection], None]


def stored_version(conn: sqlite3.Connection) -> int | None:
    """The recorded schema version; None if the file has no version."""
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if has_meta is None:
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    return None if row is None else int(row[0])


def foreign_tables(conn: sqlite3.Connection) -> list[str]:
    """The tables other than ``meta`` (and SQLite's own) in the file."""
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "AND name != 'meta'"
    )
    return [str(name) for (name,) in rows]


def create(conn: sqlite3.Connection, version: int) -> None:
    """Create every table and index that is missing, and record ``version``."""
    for statement in sql.TABLES:
        conn.execute(statement)
    for name, target in sql.INDEXES.items():
        conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {target}")
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('schema', ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (version,),
    )


def not_ours(path: Path, tables: list[str], expected: int) -> SchemaVersionError:
    """The error for a file that holds ``tables`` but no schema version."""
    return SchemaVersionError(
        f"the database {path} holds tables ({', '.join(tables)}) but no schema "
        f"version (expected {expected}); it was not written by Conveyor, or by a "
        "version too old to upgrade"
    )


def mismatch(path: Path, version: int, expected: int) -> SchemaVersionError:
    """The error for a file of schema ``version`` opened by a Conveyor of ``expected``."""
    return SchemaVersionError(
        f"the database {path} has schema version {version}, but this Conveyor "
        f"expects version {expected}; run `conveyor admin upgrade`"
    )


def upgrade(
    conn: sqlite3.Connection, path: Path, expected: int, migrations: Mapping[int, Migration]
) -> int:
    """Bring the file to version ``expected`` through ``migrations``; the version it had."""
    found = stored_version(conn)
    if found is None:
        tables = foreign_tables(conn)
        if tables:
            raise not_ours(path, tables, expected)
        create(conn, expected)
        return expected
    if found > expected:
        raise SchemaVersionError(
            f"the database {path} has schema version {found}, newer than the "
            f"version {expected} of this Conveyor: upgrade Conveyor instead"
        )
    for version in range(found, expected):
        step = migrations.get(version)
        if step is None:
            raise SchemaVersionError(
                f"the database {path} has schema version {found} and this "
                f"Conveyor cannot upgrade version {version} to {version + 1}"
            )
        step(conn)
    create(conn, expected)
    return found
