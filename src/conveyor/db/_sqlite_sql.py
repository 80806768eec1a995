"""The SQL of the sqlite backend: its schema, the queries it issues, the row codec.

Pure functions, no I/O: what :mod:`conveyor.db.sqlite` sends to SQLite. Each query
is built here once, so the backend runs it and ``tests/contract/test_sqlite_specific.py``
can ``EXPLAIN QUERY PLAN`` the very same text.

Layout: every document is stored whole as JSON in ``doc``; the fields the runner and
the CLI filter or sort on are copied into indexed columns, recomputed from the
document on every write so the two never disagree. Times in columns are integer
microseconds since the epoch (exact, and they sort); a free lock expires at 0.
Datetimes are kept to the millisecond, as MongoDB keeps them, so both backends hand
back the same documents.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from pydantic_core import to_jsonable_python

from conveyor.db.base import JobFilter, plain
from conveyor.models import EPOCH, utcnow
from conveyor.states import JobState

__all__ = [
    "INDEXES",
    "INSERT_FLOW",
    "INSERT_JOB",
    "TABLES",
    "UPDATE_FLOW",
    "UPDATE_JOB",
    "UPSERT_RUNNER",
    "Query",
    "as_now",
    "count_jobs",
    "count_jobs_by_state",
    "delete_flow_jobs",
    "delete_jobs",
    "dumps",
    "find_flows",
    "find_jobs",
    "flow_row",
    "get_job",
    "job_by_uuid",
    "job_row",
    "lock_candidates",
    "lock_job",
    "owned_job",
    "to_us",
    "unlock_candidates",
    "updatable_job",
]

Raw = dict[str, Any]

#: Tables, in creation order. ``meta`` holds the schema version and the db id counter.
TABLES: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS jobs (
        db_id INTEGER PRIMARY KEY,
        uuid TEXT NOT NULL,
        idx INTEGER NOT NULL,
        flow_uuid TEXT NOT NULL,
        state TEXT NOT NULL,
        worker TEXT NOT NULL,
        priority INTEGER NOT NULL,
        lock_id TEXT,
        lock_expires INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        doc TEXT NOT NULL,
        UNIQUE (uuid, idx)
    )""",
    """CREATE TABLE IF NOT EXISTS flows (
        uuid TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        doc TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS runners (
        runner_id TEXT PRIMARY KEY,
        started_at INTEGER NOT NULL,
        doc TEXT NOT NULL
    )""",
    # How many jobs are in each state, kept by the triggers below in the same
    # transaction as every change: counting all jobs by state then costs one tiny read,
    # however many finished jobs the table holds.
    "CREATE TABLE IF NOT EXISTS job_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    """CREATE TRIGGER IF NOT EXISTS job_counts_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO job_counts (state, n) VALUES (NEW.state, 1)
            ON CONFLICT (state) DO UPDATE SET n = n + 1;
    END""",
    """CREATE TRIGGER IF NOT EXISTS job_counts_delete AFTER DELETE ON jobs BEGIN
        UPDATE job_counts SET n = n - 1 WHERE state = OLD.state;
    END""",
    """CREATE TRIGGER IF NOT EXISTS job_counts_update AFTER UPDATE OF state ON jobs
        WHEN OLD.state != NEW.state BEGIN
        UPDATE job_counts SET n = n - 1 WHERE state = OLD.state;
        INSERT INTO job_counts (state, n) VALUES (NEW.state, 1)
            ON CONFLICT (state) DO UPDATE SET n = n + 1;
    END""",
)

#: Secondary indexes by name. With the primary keys (db_id, flows.uuid, runner_id)
#: and UNIQUE (uuid, idx) they serve every query below; the test of query plans
#: holds them to it.
INDEXES: dict[str, str] = {
    # lock_next_job without workers: equality on state, then the lock order, with the
    # lock in the index so held jobs are skipped without reading the table. Also the
    # state filters and counts (with or without the locked filter).
    "jobs_state_order": "jobs (state, priority DESC, db_id, lock_expires, lock_id)",
    # lock_next_job for given workers; also the worker (+ state) filters and counts.
    "jobs_worker_order": "jobs (worker, state, priority DESC, db_id, lock_expires, lock_id)",
    "jobs_flow": "jobs (flow_uuid)",
    "jobs_updated": "jobs (updated_at)",
    # the locked filter and unlock_jobs (lock_id too, so neither reads the table).
    "jobs_lock": "jobs (lock_expires, lock_id)",
    "flows_created": "flows (created_at, uuid)",
    "flows_state": "flows (state, created_at, uuid)",
    "runners_started": "runners (started_at)",
}

_JOB_COLUMNS = (
    "uuid, idx, flow_uuid, state, worker, priority, lock_id, lock_expires, updated_at, "
    "created_at, doc, db_id"
)
INSERT_JOB = f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({', '.join('?' * 12)})"
UPDATE_JOB = (
    "UPDATE jobs SET uuid = ?, idx = ?, flow_uuid = ?, state = ?, worker = ?, priority = ?, "
    "lock_id = ?, lock_expires = ?, updated_at = ?, created_at = ?, doc = ? WHERE db_id = ?"
)
INSERT_FLOW = "INSERT INTO flows (state, created_at, doc, uuid) VALUES (?, ?, ?, ?)"
UPDATE_FLOW = "UPDATE flows SET state = ?, created_at = ?, doc = ? WHERE uuid = ?"
UPSERT_RUNNER = (
    "INSERT INTO runners (runner_id, started_at, doc) VALUES (?, ?, ?) ON CONFLICT (runner_id) "
    "DO UPDATE SET started_at = excluded.started_at, doc = excluded.doc"
)

#: Longer lists are passed as one JSON parameter (SQLite caps the number of parameters).
_MAX_INLINE = 500


class Query(NamedTuple):
    """One SQL statement and its parameters."""

    sql: str
    params: tuple[Any, ...] = ()


# --- times and documents -----------------------------------------------------------


def as_now(now: datetime | None) -> datetime:
    """``now`` (default: now) in UTC, to the millisecond, as documents keep times."""
    if now is None:
        return utcnow()
    return _ms(now)


def _ms(value: datetime) -> datetime:
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def to_us(value: datetime | str) -> int:
    """A stored time (datetime or ISO text) as integer microseconds since the epoch."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return (_ms(value) - EPOCH) // timedelta(microseconds=1)


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return _ms(value).isoformat(timespec="milliseconds")
    return to_jsonable_python(value)


def dumps(raw: Raw) -> str:
    """The JSON text of a document (datetimes as UTC ISO-8601 to the millisecond)."""
    return json.dumps(plain(raw), default=_encode, separators=(",", ":"), ensure_ascii=False)


def job_row(raw: Raw) -> tuple[Any, ...]:
    """The parameters of :data:`INSERT_JOB` / :data:`UPDATE_JOB` for a job document."""
    lock = raw["lock"]
    return (
        raw["uuid"],
        raw["index"],
        raw["flow_uuid"],
        plain(raw["state"]),
        raw["worker"],
        raw["priority"],
        lock["id"],
        to_us(lock["expires_at"]),
        to_us(raw["updated_at"]),
        to_us(raw["created_at"]),
        dumps(raw),
        raw["db_id"],
    )


def flow_row(raw: Raw) -> tuple[Any, ...]:
    """The parameters of :data:`INSERT_FLOW` / :data:`UPDATE_FLOW` for a flow document."""
    return (plain(raw["state"]), to_us(raw["created_at"]), dumps(raw), raw["uuid"])


# --- conditions ----------------------------------------------------------------------


def _in(column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
    if len(values) > _MAX_INLINE:
        return f"{column} IN (SELECT value FROM json_each(?))", [json.dumps(list(values))]
    return f"{column} IN ({', '.join('?' * len(values))})", list(values)


def _job_where(flt: JobFilter) -> tuple[list[str], list[Any]]:
    """The conditions of ``flt`` (ANDed) and their parameters."""
    terms: list[str] = []
    params: list[Any] = []
    for column, values in (
        ("db_id", flt.db_ids),
        ("uuid", flt.uuids),
        ("flow_uuid", flt.flow_uuids),
        ("state", flt.states),
        ("worker", flt.workers),
    ):
        if values is not None:
            term, values_params = _in(column, plain(list(values)))
            terms.append(term)
            params.extend(values_params)
    if flt.locked is not None:
        # Held: an id and a lease in the future. A job in backoff has no id: not held.
        now = to_us(as_now(flt.now))
        terms.append(
            "lock_id IS NOT NULL AND lock_expires > ?"
            if flt.locked
            else "(lock_id IS NULL OR lock_expires <= ?)"
        )
        params.append(now)
    if flt.updated_after is not None:
        terms.append("updated_at > ?")
        params.append(to_us(flt.updated_after))
    if flt.updated_before is not None:
        terms.append("updated_at < ?")
        params.append(to_us(flt.updated_before))
    return terms, params


def _where(terms: list[str]) -> str:
    return f" WHERE {' AND '.join(terms)}" if terms else ""


# --- queries -------------------------------------------------------------------------


def get_job(db_id: int) -> Query:
    return Query("SELECT doc FROM jobs WHERE db_id = ?", (db_id,))


def job_by_uuid(uuid: str, index: int | None) -> Query:
    if index is None:
        return Query("SELECT doc FROM jobs WHERE uuid = ? ORDER BY idx DESC LIMIT 1", (uuid,))
    return Query("SELECT doc FROM jobs WHERE uuid = ? AND idx = ?", (uuid, index))


def find_jobs(flt: JobFilter, limit: int, newest_first: bool) -> Query:
    """Matching documents by db id.

    With conditions, the ids are picked and sorted in an index first (``+db_id`` keeps
    SQLite from walking the whole table in db id order instead) and only the
    documents of the first ``limit`` are read. Without, the table is read in db id
    order and the read stops after ``limit`` rows.
    """
    order = "DESC" if newest_first else "ASC"
    terms, params = _job_where(flt)
    if not terms:
        return Query(f"SELECT doc FROM jobs ORDER BY db_id {order} LIMIT ?", (limit or -1,))
    ids = f"SELECT db_id FROM jobs{_where(terms)} ORDER BY +db_id {order} LIMIT ?"
    sql = f"SELECT doc FROM jobs WHERE db_id IN ({ids}) ORDER BY db_id {order}"
    return Query(sql, (*params, limit or -1))


def count_jobs(flt: JobFilter) -> Query:
    terms, params = _job_where(flt)
    if not terms:  # the trigger-kept counts: no walk over the finished jobs
        return Query("SELECT COALESCE(SUM(n), 0) FROM job_counts", ())
    return Query(f"SELECT COUNT(*) FROM jobs{_where(terms)}", tuple(params))


def count_jobs_by_state(flt: JobFilter) -> Query:
    """Counts per state. Without conditions, the trigger-kept ``job_counts`` table;
    with some, ``+state`` lets the conditions choose the index (grouping by ``state``
    would have SQLite walk the whole state index to save a sort)."""
    terms, params = _job_where(flt)
    if not terms:
        return Query("SELECT state, n FROM job_counts WHERE n > 0", ())
    sql = f"SELECT state, COUNT(*) FROM jobs{_where(terms)} GROUP BY +state"
    return Query(sql, tuple(params))


def lock_candidates(
    states: Iterable[JobState], workers: Iterable[str] | None, now: datetime
) -> list[Query]:
    """One query per state (and worker): its first free job in the lock order.

    Each is an equality prefix of ``jobs_state_order`` or ``jobs_worker_order``, so
    SQLite walks the index in order and stops at the first free job; an ``IN`` list
    would make it sort every match instead. The caller picks the best of the answers
    (highest priority, then lowest db id) inside the transaction that locks it.
    """
    now_us = to_us(now)
    order = "lock_expires < ? ORDER BY priority DESC, db_id LIMIT 1"
    queries = []
    for state in dict.fromkeys(plain(list(states))):
        if workers is None:
            sql = f"SELECT priority, db_id FROM jobs WHERE state = ? AND {order}"
            queries.append(Query(sql, (state, now_us)))
            continue
        for worker in dict.fromkeys(workers):
            sql = f"SELECT priority, db_id FROM jobs WHERE worker = ? AND state = ? AND {order}"
            queries.append(Query(sql, (worker, state, now_us)))
    return queries


def lock_job(db_id: int, states: Iterable[JobState] | None, now: datetime) -> Query:
    """The job if it is free at ``now`` (and in ``states``)."""
    sql = "SELECT doc FROM jobs WHERE db_id = ? AND lock_expires < ?"
    params: list[Any] = [db_id, to_us(now)]
    if states is not None:
        term, state_params = _in("state", plain(list(states)))
        sql += f" AND {term}"
        params.extend(state_params)
    return Query(sql, tuple(params))


def owned_job(db_id: int, lock_id: str, expect_state: JobState | None) -> Query:
    """The job if ``lock_id`` still holds it (and it is in ``expect_state``): fencing."""
    if expect_state is None:
        return Query("SELECT doc FROM jobs WHERE db_id = ? AND lock_id = ?", (db_id, lock_id))
    sql = "SELECT doc FROM jobs WHERE db_id = ? AND lock_id = ? AND state = ?"
    return Query(sql, (db_id, lock_id, plain(expect_state)))


def updatable_job(db_id: int, expect_state: JobState | None, unlocked_at: datetime | None) -> Query:
    """The job if it is in ``expect_state`` and, with ``unlocked_at``, nobody holds a
    live lease then (no lock id, or a lapsed one)."""
    sql = "SELECT doc FROM jobs WHERE db_id = ?"
    params: list[Any] = [db_id]
    if expect_state is not None:
        sql += " AND state = ?"
        params.append(plain(expect_state))
    if unlocked_at is not None:
        sql += " AND (lock_id IS NULL OR lock_expires < ?)"
        params.append(to_us(unlocked_at))
    return Query(sql, tuple(params))


def unlock_candidates(flt: JobFilter) -> Query:
    """Matching jobs whose lock is not the free one: live, lapsed or backoff."""
    terms, params = _job_where(flt)
    return Query(f"SELECT doc FROM jobs{_where([*terms, 'lock_expires > 0'])}", tuple(params))


def find_flows(
    uuids: Sequence[str] | None, states: Sequence[str] | None, limit: int, newest_first: bool
) -> Query:
    order = "DESC" if newest_first else "ASC"
    terms: list[str] = []
    params: list[Any] = []
    for column, values in (("uuid", uuids), ("state", states)):
        if values is not None:
            term, values_params = _in(column, plain(list(values)))
            terms.append(term)
            params.extend(values_params)
    sql = f"SELECT doc FROM flows{_where(terms)} ORDER BY created_at {order}, uuid {order} LIMIT ?"
    return Query(sql, (*params, limit or -1))


def delete_jobs(db_ids: Sequence[int]) -> Query:
    """Delete jobs by db id (the primary key)."""
    term, params = _in("db_id", list(db_ids))
    return Query(f"DELETE FROM jobs WHERE {term}", tuple(params))


def delete_flow_jobs(flow_uuid: str) -> Query:
    """Delete every job of a flow (through ``jobs_flow``)."""
    return Query("DELETE FROM jobs WHERE flow_uuid = ?", (flow_uuid,))
