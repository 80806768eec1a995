"""The embedded backend: one SQLite file, shared by every process on the machine.

The file is in WAL mode, every write and read-modify-write runs in one ``BEGIN
IMMEDIATE`` transaction (see :mod:`conveyor.db._sqlite_file`): so selecting a free job
and locking it is atomic across threads and processes, and readers never wait.
Documents are stored whole as JSON, with the fields that queries filter and sort on
copied into indexed columns (see :mod:`conveyor.db._sqlite_sql`, which holds every
statement this module runs).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from conveyor.db import _sqlite_schema as schema
from conveyor.db import _sqlite_sql as sql
from conveyor.db._mongo_query import free_lock, new_lock, refuse_lock_paths
from conveyor.db._sqlite_file import SqliteFile, parse_sqlite_url
from conveyor.db._sqlite_schema import Migration
from conveyor.db.base import (
    SCHEMA_VERSION,
    Database,
    FlowFilter,
    JobFilter,
    apply_update,
    check_db_id_count,
    merged_job_uuids,
    plain,
)
from conveyor.exceptions import DatabaseError, NotFoundError
from conveyor.models import EPOCH, FlowDoc, JobDoc, RunnerDoc, utcnow
from conveyor.states import JobState, JobUpdate

__all__ = ["MIGRATIONS", "SqliteDatabase", "parse_sqlite_url"]

#: ``MIGRATIONS[n]`` turns a version-``n`` database into a version ``n + 1`` one, inside
#: the upgrade's transaction. Version 1 is the first: nothing to migrate yet.
MIGRATIONS: dict[int, Migration] = {}

Raw = dict[str, Any]


class SqliteDatabase(Database):
    """Jobs, flows and runners in one SQLite file (``sqlite:///PATH``).

    Parameters
    ----------
    url
        ``sqlite:///ABSOLUTE/PATH.db`` or ``sqlite://RELATIVE/PATH.db``, optionally with
        ``?timeout=SECONDS`` (how long a write waits for other processes; default 30).
        The file and its directory are created if missing.
    check_schema
        Refuse a database of another schema version (turn off only to :meth:`upgrade`).

    Raises
    ------
    SchemaVersionError
        If the file was written by another schema version, or not by Conveyor.
    DatabaseError
        If the file cannot be opened, or is corrupt.
    """

    def __init__(self, url: str, *, check_schema: bool = True) -> None:
        self.url = url
        path, timeout = parse_sqlite_url(url)
        hint = "'?timeout=SECONDS' on the database URL (database.url in the project file)"
        self.file = SqliteFile(path, timeout, hint)
        self._read = self.file.read
        self._write = self.file.write
        try:
            self._prepare(check_schema)
        except BaseException:
            self.close()
            raise

    @property
    def path(self) -> Path:
        """The database file."""
        return self.file.path

    def __repr__(self) -> str:
        return f"SqliteDatabase({self.url!r})"

    # --- lifecycle -------------------------------------------------------------------

    def _prepare(self, check_schema: bool) -> None:
        with self._read() as conn:
            version = schema.stored_version(conn)
        if version == SCHEMA_VERSION:
            return
        with self._write() as conn:
            version = schema.stored_version(conn)  # again, now that we hold the lock
            if version is None:
                tables = schema.foreign_tables(conn)
                if tables:
                    raise schema.not_ours(self.path, tables, SCHEMA_VERSION)
                schema.create(conn, SCHEMA_VERSION)
            elif version != SCHEMA_VERSION and check_schema:
                raise schema.mismatch(self.path, version, SCHEMA_VERSION)

    def upgrade(self) -> int:
        """Bring the database to this Conveyor's schema version; the version it had.

        Open it with ``check_schema=False`` first (an open that checks refuses an old
        version). Each step of :data:`MIGRATIONS` runs in one transaction with the
        others: the file is upgraded entirely or not at all.

        Raises
        ------
        SchemaVersionError
            If the database is newer than this Conveyor, or no migration leads from its
            version to this one.
        """
        with self._write() as conn:
            return schema.upgrade(conn, self.path, SCHEMA_VERSION, MIGRATIONS)

    def close(self) -> None:
        self.file.close()

    def reset(self) -> None:
        with self._write() as conn:
            for table in ("jobs", "flows", "runners", "meta", "job_counts"):
                conn.execute(f"DELETE FROM {table}")
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))

    def schema_version(self) -> int:
        """The recorded version; 0 if none is recorded."""
        with self._read() as conn:
            return schema.stored_version(conn) or 0

    # --- ids and inserts -----------------------------------------------------------

    def next_db_ids(self, count: int) -> int:
        check_db_id_count(count)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('db_id', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                (count,),
            )
            (last,) = conn.execute("SELECT value FROM meta WHERE key = 'db_id'").fetchone()
        return int(last) - count + 1

    def insert_flow(self, flow: FlowDoc, jobs: Sequence[JobDoc]) -> None:
        flow_row = sql.flow_row(flow.model_dump(mode="python"))
        job_rows = [sql.job_row(job.model_dump(mode="python")) for job in jobs]
        with self._write() as conn:
            try:
                conn.execute(sql.INSERT_FLOW, flow_row)
                conn.executemany(sql.INSERT_JOB, job_rows)
            except sqlite3.IntegrityError as exc:
                raise DatabaseError(
                    f"cannot insert flow {flow.uuid} with {len(jobs)} job(s): a flow uuid, "
                    f"job (uuid, index) or db id is already stored: {exc}"
                ) from exc

    def add_jobs(self, flow_uuid: str, jobs: Sequence[JobDoc]) -> int:
        rows = [sql.job_row(job.model_dump(mode="python")) for job in jobs]
        with self._write() as conn:
            found = conn.execute("SELECT doc FROM flows WHERE uuid = ?", (flow_uuid,)).fetchone()
            if found is None:
                raise NotFoundError(f"cannot add jobs to flow {flow_uuid}: no such flow")
            # A job already stored under its (uuid, index) is skipped; a db id clash is not.
            # rowcount counts the inserted rows only (total_changes would also count the
            # job_counts trigger's writes).
            cursor = conn.executemany(f"{sql.INSERT_JOB} ON CONFLICT (uuid, idx) DO NOTHING", rows)
            inserted = max(cursor.rowcount, 0)
            flow = json.loads(found[0])
            job_uuids = merged_job_uuids(flow.get("job_uuids", []), jobs)
            if job_uuids is not None:
                flow["job_uuids"] = job_uuids
                conn.execute(sql.UPDATE_FLOW, sql.flow_row(flow))
        return inserted

    # --- reads ---------------------------------------------------------------------

    def _one_job(self, query: sql.Query) -> JobDoc | None:
        with self._read() as conn:
            row = conn.execute(*query).fetchone()
        return None if row is None else JobDoc.model_validate_json(row[0])

    def get_job(self, db_id: int) -> JobDoc | None:
        return self._one_job(sql.get_job(db_id))

    def get_job_by_uuid(self, uuid: str, index: int | None = None) -> JobDoc | None:
        return self._one_job(sql.job_by_uuid(uuid, index))

    def find_jobs(
        self, flt: JobFilter | None = None, *, limit: int = 0, newest_first: bool = False
    ) -> list[JobDoc]:
        query = sql.find_jobs(flt or JobFilter(), limit, newest_first)
        with self._read() as conn:
            rows = conn.execute(*query).fetchall()
        return [JobDoc.model_validate_json(text) for (text,) in rows]

    def count_jobs(self, flt: JobFilter | None = None) -> int:
        with self._read() as conn:
            (count,) = conn.execute(*sql.count_jobs(flt or JobFilter())).fetchone()
        return int(count)

    def count_jobs_by_state(self, flt: JobFilter | None = None) -> dict[JobState, int]:
        with self._read() as conn:
            rows = conn.execute(*sql.count_jobs_by_state(flt or JobFilter())).fetchall()
        return {JobState(state): int(count) for state, count in rows if count}

    def get_flow(self, uuid: str) -> FlowDoc | None:
        with self._read() as conn:
            row = conn.execute("SELECT doc FROM flows WHERE uuid = ?", (uuid,)).fetchone()
        return None if row is None else FlowDoc.model_validate_json(row[0])

    def find_flows(
        self, flt: FlowFilter | None = None, *, limit: int = 0, newest_first: bool = False
    ) -> list[FlowDoc]:
        flt = flt or FlowFilter()
        states = plain(list(flt.states)) if flt.states is not None else None
        query = sql.find_flows(flt.uuids, states, limit, newest_first)
        with self._read() as conn:
            rows = conn.execute(*query).fetchall()
        return [FlowDoc.model_validate_json(text) for (text,) in rows]

    # --- job locks -----------------------------------------------------------------

    def _save_job(self, conn: sqlite3.Connection, raw: Raw) -> JobDoc:
        row = sql.job_row(raw)
        conn.execute(sql.UPDATE_JOB, row)
        return JobDoc.model_validate_json(row[-2])

    def _change_job(self, query: sql.Query, change: Callable[[Raw], object]) -> JobDoc | None:
        """In one transaction: the job ``query`` selects, changed and saved; or None."""
        with self._write() as conn:
            row = conn.execute(*query).fetchone()
            if row is None:
                return None
            raw = json.loads(row[0])
            change(raw)
            return self._save_job(conn, raw)

    def lock_next_job(
        self,
        states: Iterable[JobState],
        owner: str,
        lease: timedelta,
        *,
        workers: Iterable[str] | None = None,
        now: datetime | None = None,
    ) -> JobDoc | None:
        now = sql.as_now(now)
        queries = sql.lock_candidates(states, None if workers is None else list(workers), now)
        if not queries:
            return None
        with self._write() as conn:
            found = [row for query in queries if (row := conn.execute(*query).fetchone())]
            if not found:
                return None
            _, db_id = min(found, key=lambda row: (-row[0], row[1]))
            (text,) = conn.execute(*sql.get_job(db_id)).fetchone()
            raw = json.loads(text)
            raw["lock"] = new_lock(owner, now, lease)
            return self._save_job(conn, raw)

    def lock_job(
        self,
        db_id: int,
        owner: str,
        lease: timedelta,
        *,
        states: Iterable[JobState] | None = None,
        now: datetime | None = None,
    ) -> JobDoc | None:
        now = sql.as_now(now)

        def lock(raw: Raw) -> None:
            raw["lock"] = new_lock(owner, now, lease)

        return self._change_job(sql.lock_job(db_id, states, now), lock)

    def renew_job_lock(
        self,
        db_id: int,
        lock_id: str,
        lease: timedelta,
        *,
        update: JobUpdate | None = None,
        now: datetime | None = None,
    ) -> bool:
        refuse_lock_paths(update.set if update else {})
        expires = sql.as_now(now) + lease

        def renew(raw: Raw) -> None:
            if update is not None:
                apply_update(raw, update)
            raw["lock"]["expires_at"] = expires

        query = sql.owned_job(db_id, lock_id, update.expect_state if update else None)
        return self._change_job(query, renew) is not None

    def release_job_lock(
        self,
        db_id: int,
        lock_id: str,
        update: JobUpdate | None = None,
        *,
        free_at: datetime | None = None,
    ) -> bool:
        refuse_lock_paths(update.set if update else {})
        lock = free_lock(EPOCH if free_at is None else sql.as_now(free_at))

        def release(raw: Raw) -> None:
            if update is not None:
                apply_update(raw, update)
            raw["lock"] = lock

        query = sql.owned_job(db_id, lock_id, update.expect_state if update else None)
        return self._change_job(query, release) is not None

    def update_job(self, db_id: int, update: JobUpdate, *, require_unlocked: bool = True) -> bool:
        # "Nobody holds a live lease": no lock id, or a lease that has lapsed.
        query = sql.updatable_job(
            db_id, update.expect_state, utcnow() if require_unlocked else None
        )
        if not update.set and update.history is None:
            with self._read() as conn:
                return conn.execute(*query).fetchone() is not None
        return self._change_job(query, lambda raw: apply_update(raw, update)) is not None

    def unlock_jobs(self, flt: JobFilter | None = None) -> int:
        with self._write() as conn:
            rows = conn.execute(*sql.unlock_candidates(flt or JobFilter())).fetchall()
            for (text,) in rows:
                raw = json.loads(text)
                raw["lock"] = free_lock()
                conn.execute(sql.UPDATE_JOB, sql.job_row(raw))
        return len(rows)

    # --- flows ---------------------------------------------------------------------

    def _change_flow(self, uuid: str, change: Callable[[Raw], bool]) -> bool:
        """In one transaction: ``change`` the flow; saved if it returns True. NotFound
        if there is no such flow."""
        with self._write() as conn:
            row = conn.execute("SELECT doc FROM flows WHERE uuid = ?", (uuid,)).fetchone()
            if row is None:
                raise NotFoundError(f"no flow {uuid}")
            raw = json.loads(row[0])
            if not change(raw):
                return False
            conn.execute(sql.UPDATE_FLOW, sql.flow_row(raw))
        return True

    def lock_flow(
        self, uuid: str, owner: str, lease: timedelta, *, now: datetime | None = None
    ) -> str | None:
        now = sql.as_now(now)
        lock = new_lock(owner, now, lease)

        def take(raw: Raw) -> bool:
            if sql.to_us(raw["lock"]["expires_at"]) >= sql.to_us(now):
                return False
            raw["lock"] = lock
            return True

        try:
            taken = self._change_flow(uuid, take)
        except NotFoundError:
            raise NotFoundError(f"cannot lock flow {uuid}: no such flow") from None
        return str(lock["id"]) if taken else None

    def release_flow_lock(
        self, uuid: str, lock_id: str, fields: Mapping[str, Any] | None = None
    ) -> bool:
        refuse_lock_paths(fields or {})

        def release(raw: Raw) -> bool:
            if raw["lock"]["id"] != lock_id:
                return False
            apply_update(raw, JobUpdate(dict(fields or {})))
            raw["lock"] = free_lock()
            return True

        try:
            return self._change_flow(uuid, release)
        except NotFoundError:
            return False

    def update_flow(self, uuid: str, fields: Mapping[str, Any]) -> bool:
        def update(raw: Raw) -> bool:
            apply_update(raw, JobUpdate(dict(fields)))
            return True

        if not fields:
            return self.get_flow(uuid) is not None
        try:
            return self._change_flow(uuid, update)
        except NotFoundError:
            return False

    # --- deletes -------------------------------------------------------------------

    def delete_jobs(self, db_ids: Sequence[int]) -> int:
        if not db_ids:
            return 0
        with self._write() as conn:
            return max(conn.execute(*sql.delete_jobs(db_ids)).rowcount, 0)

    def delete_flow(self, uuid: str) -> int:
        with self._write() as conn:
            found = conn.execute("SELECT 1 FROM flows WHERE uuid = ?", (uuid,)).fetchone()
            if found is None:
                raise NotFoundError(f"cannot delete flow {uuid}: no such flow")
            deleted = conn.execute(*sql.delete_flow_jobs(uuid)).rowcount
            conn.execute("DELETE FROM flows WHERE uuid = ?", (uuid,))
        return max(deleted, 0)

    # --- runners -------------------------------------------------------------------

    def register_runner(self, runner: RunnerDoc) -> None:
        raw = runner.model_dump(mode="python")
        with self._write() as conn:
            row = (runner.runner_id, sql.to_us(runner.started_at), sql.dumps(raw))
            conn.execute(sql.UPSERT_RUNNER, row)

    def heartbeat_runner(
        self, runner_id: str, *, now: datetime | None = None, stopped: bool = False
    ) -> None:
        now = sql.as_now(now)
        with self._write() as conn:
            row = conn.execute("SELECT doc FROM runners WHERE runner_id = ?", (runner_id,))
            found = row.fetchone()
            if found is None:
                raise NotFoundError(f"runner {runner_id} is not registered")
            raw = json.loads(found[0])
            raw["heartbeat_at"] = now
            if stopped:
                raw["stopped_at"] = now
            conn.execute(
                "UPDATE runners SET doc = ? WHERE runner_id = ?", (sql.dumps(raw), runner_id)
            )

    def list_runners(self) -> list[RunnerDoc]:
        with self._read() as conn:
            rows = conn.execute("SELECT doc FROM runners ORDER BY started_at DESC").fetchall()
        return [RunnerDoc.model_validate_json(text) for (text,) in rows]
