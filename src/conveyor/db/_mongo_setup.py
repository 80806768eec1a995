"""Opening a MongoDB database: URLs, in-process mongomock servers, schema and indexes.

The helpers of :mod:`conveyor.db.mongo` that run before (or instead of) any job or
flow operation. Schema checks take the expected version as an argument, so the
backend module's :data:`~conveyor.db.base.SCHEMA_VERSION` stays the one that counts.
"""

from __future__ import annotations

import threading
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import mongomock
from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database as PyMongoDatabase
from pymongo.errors import DuplicateKeyError

from conveyor.db._mongo_query import EXPIRES, Raw
from conveyor.exceptions import SchemaVersionError

__all__ = [
    "check_schema_version",
    "create_indexes",
    "forget_mongomock",
    "mock_server",
    "redact",
    "upgrade_schema",
]

#: In-process mongomock servers by URL netloc, each with the lock that serialises it.
_MOCK_SERVERS: dict[str, tuple[Any, threading.RLock]] = {}
_MOCK_SERVERS_GUARD = threading.Lock()


def mock_server(netloc: str) -> tuple[Any, threading.RLock]:
    """The in-process mongomock server of ``netloc`` and its lock, created if missing."""
    with _MOCK_SERVERS_GUARD:
        if netloc not in _MOCK_SERVERS:
            _MOCK_SERVERS[netloc] = (mongomock.MongoClient(tz_aware=True), threading.RLock())
        return _MOCK_SERVERS[netloc]


def forget_mongomock(url: str) -> None:
    """Drop the in-process server of a ``mongomock://`` URL, and all its data.

    Databases still open on it keep working on the old data; a new open starts empty.
    """
    with _MOCK_SERVERS_GUARD:
        _MOCK_SERVERS.pop(urlsplit(url).netloc, None)


def redact(url: str) -> str:
    """``url`` without its password, for error messages."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    user, _, hosts = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.split(':')[0]}:***@{hosts}"))


def check_schema_version(db: PyMongoDatabase[Raw], expected: int) -> None:
    """Refuse a database of another schema version; record ``expected`` in an empty one."""
    meta = db["meta"]
    found = meta.find_one({"_id": "schema"})
    if found is None:
        if db["jobs"].find_one({}) is not None or db["flows"].find_one({}) is not None:
            raise SchemaVersionError(
                f"the database {db.name!r} holds jobs or flows but no schema "
                f"version (expected {expected}); it was not written by Conveyor, "
                "or by a version too old to upgrade"
            )
        with suppress(DuplicateKeyError):  # another process initialised it first
            meta.insert_one({"_id": "schema", "version": expected})
        found = meta.find_one({"_id": "schema"})
    version = found["version"] if found else None
    if version != expected:
        raise SchemaVersionError(
            f"the database {db.name!r} has schema version {version}, but this "
            f"Conveyor expects version {expected}; run `conveyor admin upgrade`"
        )


def upgrade_schema(db: PyMongoDatabase[Raw], expected: int) -> int:
    """Bring the database to version ``expected``; the version it had.

    There is one schema version so far: an empty database is initialised, a
    current one is left alone, a newer one is refused.
    """
    found = db["meta"].find_one({"_id": "schema"})
    if found is None:
        check_schema_version(db, expected)  # initialises an empty database, refuses a foreign one
        return expected
    version = int(found["version"])
    if version > expected:
        raise SchemaVersionError(
            f"the database {db.name!r} has schema version {version}, newer "
            f"than the version {expected} of this Conveyor: upgrade Conveyor"
        )
    if version < expected:  # pragma: no cover - no older version exists yet
        raise SchemaVersionError(f"no migration from schema version {version} to {expected}")
    return version


def create_indexes(db: PyMongoDatabase[Raw]) -> None:
    """Create every index the backend's queries rely on (a no-op when they exist)."""
    jobs, flows, runners = db["jobs"], db["flows"], db["runners"]
    jobs.create_index([("uuid", ASCENDING), ("index", ASCENDING)], unique=True)
    jobs.create_index("db_id", unique=True)
    # lock_next_job: equality on state (and worker), sort on priority then db_id,
    # range on lock.expires_at (equality, sort, range).
    lock_order = [("priority", DESCENDING), ("db_id", ASCENDING), (EXPIRES, ASCENDING)]
    jobs.create_index([("state", ASCENDING), *lock_order])
    jobs.create_index([("worker", ASCENDING), ("state", ASCENDING), *lock_order])
    jobs.create_index(EXPIRES)
    jobs.create_index("flow_uuid")
    jobs.create_index("updated_at")
    flows.create_index("uuid", unique=True)
    flows.create_index([("state", ASCENDING), ("created_at", ASCENDING)])
    flows.create_index("created_at")
    runners.create_index("runner_id", unique=True)
    runners.create_index("started_at")
