"""Storage: the :class:`Database` interface and :func:`open_database` to get a backend."""

from __future__ import annotations

from conveyor.db.base import Database, FlowFilter, JobFilter
from conveyor.exceptions import ConfigError

__all__ = ["Database", "FlowFilter", "JobFilter", "open_database"]

_MONGO_SCHEMES = ("mongodb://", "mongodb+srv://", "mongomock://")
_SQLITE_SCHEME = "sqlite://"


def open_database(url: str, name: str = "conveyor", *, check_schema: bool = True) -> Database:
    """Open the database at ``url``, choosing the backend by the URL's scheme.

    Parameters
    ----------
    url
        ``mongodb://...`` or ``mongodb+srv://...`` for MongoDB, ``mongomock://NAME`` for
        an in-memory database shared within the process, ``sqlite:///PATH`` for the
        embedded backend.
    name
        The database name when the URL does not give one (MongoDB only).
    check_schema
        Refuse a database of another schema version (off only to upgrade it).

    Raises
    ------
    ConfigError
        If the scheme is unknown or its backend is not available.
    SchemaVersionError
        If the database was written by another schema version.
    """
    if url.startswith(_MONGO_SCHEMES):
        from conveyor.db.mongo import MongoDatabase

        return MongoDatabase(url, name, check_schema=check_schema)
    if url.startswith(_SQLITE_SCHEME):
        from conveyor.db.sqlite import SqliteDatabase

        return SqliteDatabase(url, check_schema=check_schema)
    schemes = ", ".join((*_MONGO_SCHEMES, _SQLITE_SCHEME))
    scheme, sep, rest = url.partition("://")
    shown = f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if "@" in rest else url  # no password
    raise ConfigError(f"unknown database URL {shown!r}: it must start with one of {schemes}")
