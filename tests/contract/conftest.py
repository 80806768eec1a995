"""Fixtures of the storage contract suite: one fresh database per test and per backend.

A backend is a :class:`Backend`: how to make a URL to an empty store, how to drop it,
and how to write another schema version behind the backend's back. Adding a backend is
one entry in :data:`BACKENDS`.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import pymongo
import pytest

from conveyor.db import Database, open_database
from conveyor.db.mongo import MongoDatabase, forget_mongomock
from conveyor.db.sqlite import parse_sqlite_url
from conveyor.models import FlowDoc, JobDoc
from conveyor.states import JobState

MONGODB_URI_VAR = "CONVEYOR_TEST_MONGODB_URI"


@dataclass(frozen=True)
class Backend:
    """How the contract suite gets a fresh, empty store of one kind."""

    #: A URL to a new, empty store (``tmp_path`` is the test's own directory).
    new_url: Callable[[Path], str]
    #: Remove everything ``new_url`` made.
    drop: Callable[[str], None]
    #: Record another schema version in the store, as an older Conveyor would have.
    set_schema_version: Callable[[str, int], None]


def _mongomock_set_version(url: str, version: int) -> None:
    db = MongoDatabase(url)
    db.mongo["meta"].update_one({"_id": "schema"}, {"$set": {"version": version}})
    db.close()


MONGOMOCK = Backend(
    new_url=lambda _tmp: f"mongomock://test-{uuid.uuid4().hex}",
    drop=forget_mongomock,
    set_schema_version=_mongomock_set_version,
)


def _mongodb_new_url(_tmp: Path) -> str:
    # The test's own database: the URI with its path replaced by a unique name.
    parts = urlsplit(os.environ[MONGODB_URI_VAR])
    return urlunsplit(parts._replace(path=f"/conveyor-test-{uuid.uuid4().hex[:12]}"))


def _mongodb_client(url: str) -> pymongo.MongoClient[dict[str, Any]]:
    return pymongo.MongoClient(url, tz_aware=True)


def _mongodb_drop(url: str) -> None:
    with _mongodb_client(url) as client:
        client.drop_database(client.get_default_database().name)


def _mongodb_set_version(url: str, version: int) -> None:
    with _mongodb_client(url) as client:
        meta = client.get_default_database()["meta"]
        meta.update_one({"_id": "schema"}, {"$set": {"version": version}})


MONGODB = Backend(
    new_url=_mongodb_new_url, drop=_mongodb_drop, set_schema_version=_mongodb_set_version
)


def _sqlite_set_version(url: str, version: int) -> None:
    path, _ = parse_sqlite_url(url)
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (version,))
    finally:
        conn.close()


SQLITE = Backend(
    new_url=lambda tmp: f"sqlite://{tmp}/conveyor.db",
    drop=lambda _url: None,  # the file lives in the test's tmp_path
    set_schema_version=_sqlite_set_version,
)

BACKENDS = [
    pytest.param(SQLITE, id="sqlite"),
    pytest.param(MONGOMOCK, id="mongomock"),
    pytest.param(
        MONGODB,
        id="mongodb",
        marks=[
            pytest.mark.mongodb,
            pytest.mark.skipif(
                not os.environ.get(MONGODB_URI_VAR),
                reason=f"set {MONGODB_URI_VAR} to run against a real MongoDB",
            ),
        ],
    ),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """The backend under test."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def database_url(backend: Backend, tmp_path: Path) -> Iterator[str]:
    """The URL of a new, empty store, dropped after the test."""
    url = backend.new_url(tmp_path)
    yield url
    backend.drop(url)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """An open database on a new, empty store."""
    db = open_database(database_url)
    yield db
    db.close()


# --- document factories ----------------------------------------------------------------


class FlowFactory(Protocol):
    def __call__(
        self,
        jobs: int | Sequence[Mapping[str, Any]] = 1,
        *,
        insert: bool = True,
        **common: Any,
    ) -> tuple[FlowDoc, list[JobDoc]]: ...


def job_doc(db_id: int, flow_uuid: str, **fields: Any) -> JobDoc:
    """A READY job on worker ``local`` with fresh uuid; ``fields`` override anything."""
    values: dict[str, Any] = {
        "db_id": db_id,
        "uuid": uuid.uuid4().hex,
        "flow_uuid": flow_uuid,
        "name": f"job-{db_id}",
        "state": JobState.READY,
        "job": {"function": "add", "args": [db_id, 1]},
        "worker": "local",
    }
    values.update(fields)
    return JobDoc(**values)


@pytest.fixture
def make_flow(database: Database) -> FlowFactory:
    """Build (and by default insert) a flow with jobs, db ids taken from ``database``.

    ``jobs`` is a number of jobs or one mapping of field overrides per job; ``common``
    overrides apply to every job.
    """

    def make(
        jobs: int | Sequence[Mapping[str, Any]] = 1,
        *,
        insert: bool = True,
        **common: Any,
    ) -> tuple[FlowDoc, list[JobDoc]]:
        specs = [{} for _ in range(jobs)] if isinstance(jobs, int) else list(jobs)
        flow_uuid = uuid.uuid4().hex
        first = database.next_db_ids(len(specs)) if specs else 0
        docs = [job_doc(first + i, flow_uuid, **{**common, **spec}) for i, spec in enumerate(specs)]
        flow = FlowDoc(uuid=flow_uuid, name="flow", job_uuids=[doc.uuid for doc in docs])
        if insert:
            database.insert_flow(flow, docs)
        return flow, docs

    return make


class JobFactory(Protocol):
    def __call__(self, flow_uuid: str, **fields: Any) -> JobDoc: ...


@pytest.fixture
def make_job(database: Database) -> JobFactory:
    """Build (not insert) one job of ``flow_uuid`` with a db id taken from ``database``."""

    def make(flow_uuid: str, **fields: Any) -> JobDoc:
        return job_doc(database.next_db_ids(1), flow_uuid, **fields)

    return make
