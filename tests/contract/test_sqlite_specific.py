"""What only the sqlite backend has: query plans, the file, its schema version, its errors.

Every query the runner and the CLI issue is run through ``EXPLAIN QUERY PLAN``: each
must find its rows through an index, never by reading the whole jobs table. The
queries come from :mod:`conveyor.db._sqlite_sql`, the same builders the backend runs.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from conveyor.db import JobFilter, open_database
from conveyor.db import _sqlite_sql as sql
from conveyor.db import sqlite as sqlite_backend
from conveyor.db.base import SCHEMA_VERSION
from conveyor.db.sqlite import SqliteDatabase, parse_sqlite_url
from conveyor.exceptions import ConfigError, DatabaseError, SchemaVersionError
from conveyor.models import FlowDoc, JobDoc, utcnow
from conveyor.states import ACTIVE_STATES, QUEUED_STATES, RUNNABLE_STATES, JobState, transition

S = JobState
LEASE = timedelta(minutes=5)
NOW = utcnow()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path}/conveyor.db"


@pytest.fixture
def db(url: str) -> Iterator[SqliteDatabase]:
    database = SqliteDatabase(url)
    yield database
    database.close()


def raw(path: Path) -> sqlite3.Connection:
    """A connection of our own, beside the backend's."""
    return sqlite3.connect(path, isolation_level=None)


def add_flow(db: SqliteDatabase, count: int = 1, **fields: object) -> list[JobDoc]:
    flow_uuid = uuid.uuid4().hex
    first = db.next_db_ids(count)
    jobs = [
        JobDoc(
            db_id=first + i,
            uuid=uuid.uuid4().hex,
            flow_uuid=flow_uuid,
            state=S.READY,
            job={},
            worker="local",
            **fields,  # type: ignore[arg-type]
        )
        for i in range(count)
    ]
    db.insert_flow(FlowDoc(uuid=flow_uuid, job_uuids=[j.uuid for j in jobs]), jobs)
    return jobs


# --- query plans -----------------------------------------------------------------------

FILTERS: dict[str, JobFilter] = {
    "db_ids": JobFilter(db_ids=[1, 2]),
    "uuids": JobFilter(uuids=["a", "b"]),
    "flow_uuids": JobFilter(flow_uuids=["f"]),
    "states": JobFilter(states=[S.READY, S.RUNNING]),
    "workers": JobFilter(workers=["local"]),
    "locked": JobFilter(locked=True, now=NOW),
    "unlocked": JobFilter(locked=False, now=NOW),
    "updated_after": JobFilter(updated_after=NOW),
    "updated_before": JobFilter(updated_before=NOW),
    "updated_between": JobFilter(updated_after=NOW - LEASE, updated_before=NOW),
    # The runner's own: its poll, and the count of its active jobs.
    "poll": JobFilter(states=list(QUEUED_STATES), workers=["local"], locked=False, now=NOW),
    "poll one job": JobFilter(
        states=list(QUEUED_STATES), workers=["local"], locked=False, now=NOW, db_ids=[7]
    ),
    "active": JobFilter(states=list(ACTIVE_STATES), workers=["local", "remote"]),
    "active in flows": JobFilter(states=list(ACTIVE_STATES), workers=["local"], flow_uuids=["f"]),
    "flow and state": JobFilter(flow_uuids=["f"], states=[S.COMPLETED]),
    "many flows": JobFilter(flow_uuids=[f"f{i}" for i in range(1000)]),
}

QUERIES: dict[str, sql.Query] = {
    "get_job": sql.get_job(1),
    "get_job_by_uuid (latest)": sql.job_by_uuid("a", None),
    "get_job_by_uuid (index)": sql.job_by_uuid("a", 2),
    "lock_job": sql.lock_job(1, None, NOW),
    "lock_job in states": sql.lock_job(1, list(RUNNABLE_STATES), NOW),
    "fenced write": sql.owned_job(1, "lock", S.READY),
    "update_job": sql.updatable_job(1, S.READY, NOW),
    "find_flows by state": sql.find_flows(None, ["RUNNING"], 20, True),
    "find_flows by uuid": sql.find_flows(["a"], None, 0, False),
    "count_jobs": sql.count_jobs(JobFilter()),
    "count_jobs_by_state": sql.count_jobs_by_state(JobFilter()),
    "unlock_jobs": sql.unlock_candidates(JobFilter()),
}
for _name, _flt in FILTERS.items():
    QUERIES[f"find_jobs {_name}"] = sql.find_jobs(_flt, 0, False)
    QUERIES[f"find_jobs {_name}, newest 20"] = sql.find_jobs(_flt, 20, True)
    QUERIES[f"count_jobs {_name}"] = sql.count_jobs(_flt)
    QUERIES[f"count_jobs_by_state {_name}"] = sql.count_jobs_by_state(_flt)
    QUERIES[f"unlock_jobs {_name}"] = sql.unlock_candidates(_flt)
for _i, _query in enumerate(sql.lock_candidates(RUNNABLE_STATES, None, NOW)):
    QUERIES[f"lock_next_job #{_i}"] = _query
for _i, _query in enumerate(sql.lock_candidates(RUNNABLE_STATES, ["local", "remote"], NOW)):
    QUERIES[f"lock_next_job for workers #{_i}"] = _query


def plan(db: SqliteDatabase, query: sql.Query) -> list[str]:
    with db.file.read() as conn:
        rows = conn.execute(f"EXPLAIN QUERY PLAN {query.sql}", query.params).fetchall()
    return [str(row[3]) for row in rows]


def full_scans(steps: list[str]) -> list[str]:
    """Steps that read a whole table: a scan, unless of an index that has every column
    the query needs (``SCAN jobs USING INDEX`` still reads every row of the table)."""
    return [
        step
        for step in steps
        if step.startswith(("SCAN jobs", "SCAN flows", "SCAN runners"))
        and "COVERING INDEX" not in step
    ]


@pytest.mark.parametrize("name", list(QUERIES))
def test_every_query_uses_an_index(db: SqliteDatabase, name: str) -> None:
    steps = plan(db, QUERIES[name])
    assert full_scans(steps) == [], f"{name}: {QUERIES[name].sql}\nplan: {steps}"


def test_lock_next_job_walks_the_index_in_lock_order(db: SqliteDatabase) -> None:
    # No sort of the candidates: SQLite stops at the first free job in the index.
    for query in [
        *sql.lock_candidates([S.READY], None, NOW),
        *sql.lock_candidates([S.READY], ["local"], NOW),
    ]:
        steps = plan(db, query)
        assert len(steps) == 1, steps
        assert "USING COVERING INDEX" in steps[0]


def test_an_unfiltered_listing_reads_only_its_limit(db: SqliteDatabase) -> None:
    # A plain listing walks the table in the listing's order (jobs by their primary
    # key, flows by an index) and stops at the limit: nothing is sorted.
    for newest_first in (True, False):
        query = sql.find_jobs(JobFilter(), 20, newest_first)
        assert query.sql.endswith("LIMIT ?")
        assert plan(db, query) == ["SCAN jobs"]
        flows = sql.find_flows(None, None, 20, newest_first)
        assert plan(db, flows) == ["SCAN flows USING INDEX flows_created"]


def test_a_filtered_listing_sorts_ids_not_documents(db: SqliteDatabase) -> None:
    # The ids are sorted in an index; only the first `limit` documents are read.
    steps = plan(db, sql.find_jobs(JobFilter(states=[S.COMPLETED]), 20, True))
    assert steps[0] == "SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)"
    assert any("COVERING INDEX jobs_state_order" in step for step in steps)


# --- the file ----------------------------------------------------------------------------


def test_the_file_is_in_wal_mode(db: SqliteDatabase) -> None:
    with raw(db.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def test_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_sqlite_url("sqlite:///abs/olute.db") == (Path("/abs/olute.db"), 30.0)
    assert parse_sqlite_url("sqlite:////abs/olute.db") == (Path("/abs/olute.db"), 30.0)
    assert parse_sqlite_url("sqlite://rel/ative.db?timeout=2.5") == (
        tmp_path / "rel" / "ative.db",
        2.5,
    )
    for bad in (
        "sqlite://",
        "sqlite://:memory:",
        "sqlite:///x.db?timeout=-1",
        "sqlite:///x.db?timeout=soon",
        "sqlite:///x.db?mode=ro",
    ):
        with pytest.raises(ConfigError):
            parse_sqlite_url(bad)


def test_relative_url_and_missing_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    database = open_database("sqlite://deep/er/conveyor.db")
    try:
        assert isinstance(database, SqliteDatabase)
        assert database.path == tmp_path / "deep" / "er" / "conveyor.db"
        assert database.path.is_file()
    finally:
        database.close()


def test_columns_follow_the_document(db: SqliteDatabase) -> None:
    [job] = add_flow(db, priority=4)
    locked = db.lock_job(job.db_id, "r1", LEASE, now=NOW)
    assert locked is not None
    assert locked.lock.id is not None
    update = transition(S.READY, S.CHECKED_OUT, by="r1", now=NOW, extra={"priority": 7})
    assert db.release_job_lock(job.db_id, locked.lock.id, update, free_at=NOW + LEASE)
    with raw(db.path) as conn:
        row = conn.execute(
            "SELECT state, priority, lock_id, lock_expires, updated_at FROM jobs WHERE db_id = ?",
            (job.db_id,),
        ).fetchone()
    conn.close()
    assert row == ("CHECKED_OUT", 7, None, sql.to_us(NOW + LEASE), sql.to_us(NOW))


def test_close_closes_every_connection(db: SqliteDatabase) -> None:
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to list open files")
    [job] = add_flow(db)
    start = threading.Barrier(6)

    def use() -> None:
        start.wait()
        for _ in range(20):
            db.get_job(job.db_id)
            db.lock_job(job.db_id, "r", timedelta(0))

    threads = [threading.Thread(target=use) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    def open_files() -> list[str]:
        fds = Path("/proc/self/fd")
        links = []
        for fd in fds.iterdir():
            try:
                links.append(os.readlink(fd))
            except OSError:  # closed while we looked
                continue
        return [link for link in links if link.startswith(str(db.path))]

    assert open_files()
    db.close()
    assert open_files() == []
    with pytest.raises(DatabaseError, match="closed"):
        db.get_job(job.db_id)


# --- schema version ----------------------------------------------------------------------


def test_the_schema_version_is_in_the_file(db: SqliteDatabase) -> None:
    with raw(db.path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (
            SCHEMA_VERSION,
        )
    conn.close()


def test_an_old_database_is_refused_then_upgraded(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = SqliteDatabase(url)
    [job] = add_flow(old)
    old.close()
    # This Conveyor is one version ahead, and knows how to get there.
    new = SCHEMA_VERSION + 1

    def migrate(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE jobs ADD COLUMN note TEXT")

    monkeypatch.setattr(sqlite_backend, "SCHEMA_VERSION", new)
    monkeypatch.setitem(sqlite_backend.MIGRATIONS, SCHEMA_VERSION, migrate)
    with pytest.raises(SchemaVersionError) as info:
        SqliteDatabase(url)
    message = str(info.value)
    assert f"version {SCHEMA_VERSION}," in message
    assert f"expects version {new}" in message
    assert "conveyor admin upgrade" in message
    assert str(parse_sqlite_url(url)[0]) in message

    upgrading = SqliteDatabase(url, check_schema=False)
    try:
        assert upgrading.upgrade() == SCHEMA_VERSION
        assert upgrading.upgrade() == new  # a second upgrade has nothing to do
    finally:
        upgrading.close()
    upgraded = SqliteDatabase(url)
    try:
        assert upgraded.schema_version() == new
        assert upgraded.get_job(job.db_id) == job
        with upgraded.file.read() as conn:
            columns = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
        assert "note" in columns
    finally:
        upgraded.close()


def test_upgrade_refuses_a_newer_database_and_a_missing_step(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    SqliteDatabase(url).close()
    path, _ = parse_sqlite_url(url)
    with raw(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION + 1,))
    conn.close()
    newer = SqliteDatabase(url, check_schema=False)
    try:
        with pytest.raises(SchemaVersionError, match="upgrade Conveyor"):
            newer.upgrade()
        # No step from version N+1 to N+2 is known.
        monkeypatch.setattr(sqlite_backend, "SCHEMA_VERSION", SCHEMA_VERSION + 2)
        with pytest.raises(SchemaVersionError, match="cannot upgrade version"):
            newer.upgrade()
    finally:
        newer.close()


def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with raw(path) as conn:
        conn.execute("CREATE TABLE things (x)")
    conn.close()
    with pytest.raises(SchemaVersionError, match=r"not written by Conveyor"):
        SqliteDatabase(f"sqlite://{path}")


# --- errors ------------------------------------------------------------------------------


def test_a_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.db"
    path.write_bytes(b"this is not a database, it is a shopping list\n" * 200)
    with pytest.raises(DatabaseError) as info:
        SqliteDatabase(f"sqlite://{path}")
    assert str(path) in str(info.value)
    assert "corrupt" in str(info.value)


def test_a_lock_held_past_the_timeout_is_a_clear_transient_error(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.db"
    db = SqliteDatabase(f"sqlite://{path}?timeout=0.2")
    other = raw(path)
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(DatabaseError) as info:
            db.next_db_ids(1)
        assert time.monotonic() - started < 5
        message = str(info.value)
        assert "locked" in message
        assert str(path) in message
        assert "timeout" in message
        assert db.get_flow("nope") is None  # readers never wait in WAL mode
        other.execute("ROLLBACK")
        assert db.next_db_ids(1) == 1  # transient: it works once the other lets go
    finally:
        other.close()
        db.close()


def test_a_full_disk_is_a_clear_error(db: SqliteDatabase) -> None:
    # SQLite's page cap stands in for the disk: the pool's only connection is capped.
    with db.file.read() as conn:
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(DatabaseError) as info:
        add_flow(db, 1, resources={"blob": "x" * 100_000})
    assert "disk is full" in str(info.value)
    assert str(db.path) in str(info.value)
    with db.file.read() as conn:
        conn.execute("PRAGMA max_page_count = 1073741823")
    assert len(add_flow(db, 1, resources={"blob": "x" * 100_000})) == 1


def test_errors_name_the_file_and_the_cause(db: SqliteDatabase) -> None:
    cases: dict[str, Callable[[], sqlite3.Error]] = {
        "disk I/O error": lambda: sqlite3.OperationalError("disk I/O error"),
        "is read-only": lambda: sqlite3.OperationalError("attempt to write a readonly database"),
        "corrupt": lambda: sqlite3.DatabaseError("database disk image is malformed"),
    }
    for expected, make in cases.items():
        exc = make()
        if expected == "is read-only":
            exc.sqlite_errorname = "SQLITE_READONLY"  # type: ignore[attr-defined]
        message = str(db.file.error(exc))
        assert expected in message
        assert str(db.path) in message
