"""The MongoDB backend, also serving ``mongomock://`` for tests and single-process runs.

Only operators whose meaning MongoDB and mongomock share are used: equality, ``$in``,
range conditions on fields that are always present, ``$set``, ``$inc``, ``$push`` with
``$each`` + ``$slice``, ``find_one_and_update`` with a sort, and ``$match`` + ``$group``.
A free lock has ``expires_at`` at the epoch, so "is this job free" is one range
condition and no ``$or`` is ever needed.

mongomock is not safe across threads, so every call on a mongomock-backed database
holds one re-entrant lock, shared by every :class:`MongoDatabase` opened on the same
in-process server. pymongo needs no lock: its single-document updates are atomic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pymongo
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database as PyMongoDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from conveyor.db import _mongo_setup as setup
from conveyor.db._mongo_query import (
    EXPIRES,
    LOCK_ID,
    Raw,
    as_now,
    fenced,
    free_lock,
    from_stored,
    job_conditions,
    lock_matches,
    lock_terms,
    new_lock,
    refuse_lock_paths,
    update_ops,
)
from conveyor.db._mongo_setup import forget_mongomock, redact
from conveyor.db.base import (
    SCHEMA_VERSION,
    Database,
    FlowFilter,
    JobFilter,
    check_db_id_count,
    merged_job_uuids,
    plain,
)
from conveyor.exceptions import ConfigError, DatabaseError, NotFoundError, SchemaVersionError
from conveyor.models import EPOCH, FlowDoc, JobDoc, RunnerDoc, utcnow
from conveyor.states import JobState, JobUpdate

__all__ = ["MongoDatabase", "forget_mongomock"]


_DUPLICATE_KEY = 11000


class MongoDatabase(Database):
    """Jobs, flows and runners in MongoDB (``mongodb://``) or mongomock (``mongomock://``).

    Parameters
    ----------
    url
        ``mongodb://...``, ``mongodb+srv://...`` or ``mongomock://SERVER[/DBNAME]``. Every
        ``mongomock://`` URL with the same SERVER shares one in-process server.
    name
        The database name when the URL does not give one.

    Raises
    ------
    SchemaVersionError
        If the database was written by another schema version.
    DatabaseError
        If the server cannot be reached.
    """

    def __init__(self, url: str, name: str = "conveyor", *, check_schema: bool = True) -> None:
        self.url = url
        self._client: Any
        self._lock: AbstractContextManager[Any]
        parts = urlsplit(url)
        if parts.scheme == "mongomock":
            self._client, self._lock = setup.mock_server(parts.netloc)
            self._owns_client = False
            db_name = parts.path.strip("/") or name
            self._db: PyMongoDatabase[Raw] = self._client[db_name]
        elif parts.scheme in ("mongodb", "mongodb+srv"):
            self._client = pymongo.MongoClient(url, tz_aware=True)
            self._lock = nullcontext()
            self._owns_client = True
            self._db = self._client.get_default_database(default=name)
        else:
            raise ConfigError(f"MongoDatabase cannot open {redact(url)!r}: not a MongoDB URL")
        self._jobs: Collection[Raw] = self._db["jobs"]
        self._flows: Collection[Raw] = self._db["flows"]
        self._runners: Collection[Raw] = self._db["runners"]
        self._meta: Collection[Raw] = self._db["meta"]
        try:
            with self._lock:
                if check_schema:
                    setup.check_schema_version(self._db, SCHEMA_VERSION)
                setup.create_indexes(self._db)
        except PyMongoError as exc:
            self.close()
            raise DatabaseError(f"cannot open the database at {redact(url)}: {exc}") from exc
        except SchemaVersionError:
            self.close()
            raise

    @property
    def mongo(self) -> PyMongoDatabase[Raw]:
        """The pymongo (or mongomock) database, for admin tools and backend tests.

        Calls through it on a mongomock-backed database are not serialised.
        """
        return self._db

    def __repr__(self) -> str:
        return f"MongoDatabase({redact(self.url)!r}, name={self._db.name!r})"

    # --- lifecycle -----------------------------------------------------------------

    def upgrade(self) -> int:
        """Bring the database to this Conveyor's schema version; the version it had.

        There is one schema version so far: an empty database is initialised, a
        current one is left alone, a newer one is refused.
        """
        with self._lock:
            return setup.upgrade_schema(self._db, SCHEMA_VERSION)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()
        # A mongomock server lives on in the process: another open of its URL sees it.

    def reset(self) -> None:
        with self._lock:
            for collection in (self._jobs, self._flows, self._runners, self._meta):
                collection.delete_many({})
            self._meta.insert_one({"_id": "schema", "version": SCHEMA_VERSION})

    def schema_version(self) -> int:
        """The recorded version; 0 if none is recorded."""
        with self._lock:
            found = self._meta.find_one({"_id": "schema"})
        return int(found["version"]) if found else 0

    # --- ids and inserts -----------------------------------------------------------

    def next_db_ids(self, count: int) -> int:
        check_db_id_count(count)
        with self._lock:
            counter = self._meta.find_one_and_update(
                {"_id": "db_id"},
                {"$inc": {"value": count}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        if counter is None:  # pragma: no cover - an upsert always returns the document
            raise DatabaseError("the db id counter vanished during an upsert")
        return int(counter["value"]) - count + 1

    def insert_flow(self, flow: FlowDoc, jobs: Sequence[JobDoc]) -> None:
        with self._lock:
            try:
                self._flows.insert_one(plain(flow.model_dump(mode="python")))
                if jobs:
                    self._jobs.insert_many([plain(j.model_dump(mode="python")) for j in jobs])
            except (DuplicateKeyError, BulkWriteError) as exc:
                raise DatabaseError(
                    f"cannot insert flow {flow.uuid} with {len(jobs)} job(s): a flow uuid, "
                    f"job (uuid, index) or db id is already stored: {exc}"
                ) from exc

    def add_jobs(self, flow_uuid: str, jobs: Sequence[JobDoc]) -> int:
        with self._lock:
            flow = self._flows.find_one({"uuid": flow_uuid}, {"job_uuids": 1})
            if flow is None:
                raise NotFoundError(f"cannot add jobs to flow {flow_uuid}: no such flow")
            stored = {
                (raw["uuid"], raw["index"])
                for raw in self._jobs.find(
                    {"uuid": {"$in": [j.uuid for j in jobs]}}, {"uuid": 1, "index": 1}
                )
            }
            new = [j for j in jobs if j.key not in stored]
            inserted = 0
            if new:
                try:
                    result = self._jobs.insert_many(
                        [plain(j.model_dump(mode="python")) for j in new], ordered=False
                    )
                    inserted = len(result.inserted_ids)
                except BulkWriteError as exc:
                    # Another writer inserted some of them first: fine. Anything else is not.
                    errors = exc.details.get("writeErrors", [])
                    if any(error.get("code") != _DUPLICATE_KEY for error in errors):
                        raise DatabaseError(f"cannot add jobs to flow {flow_uuid}: {exc}") from exc
                    inserted = int(exc.details.get("nInserted", 0))
            # Callers hold the flow lock, so read-modify-write of job_uuids is safe.
            job_uuids = merged_job_uuids(flow.get("job_uuids", []), jobs)
            if job_uuids is not None:
                self._flows.update_one({"uuid": flow_uuid}, {"$set": {"job_uuids": job_uuids}})
        return inserted

    # --- reads ---------------------------------------------------------------------

    def get_job(self, db_id: int) -> JobDoc | None:
        with self._lock:
            raw = self._jobs.find_one({"db_id": db_id})
        return None if raw is None else JobDoc.model_validate(from_stored(raw))

    def get_job_by_uuid(self, uuid: str, index: int | None = None) -> JobDoc | None:
        query: Raw = {"uuid": uuid}
        if index is not None:
            query["index"] = index
        with self._lock:
            raw = self._jobs.find_one(query, sort=[("index", DESCENDING)])
        return None if raw is None else JobDoc.model_validate(from_stored(raw))

    def find_jobs(
        self, flt: JobFilter | None = None, *, limit: int = 0, newest_first: bool = False
    ) -> list[JobDoc]:
        flt = flt or JobFilter()
        now = as_now(flt.now)
        base = job_conditions(flt)
        order = DESCENDING if newest_first else ASCENDING
        found: dict[int, Raw] = {}
        with self._lock:
            for sign, term in lock_terms(flt.locked, now):
                if sign < 0:
                    continue  # a negative term only removes what the positive ones hold
                # Each term's first `limit` matches cover the union's first `limit`.
                taken = 0
                for raw in self._jobs.find({**base, **term}, sort=[("db_id", order)]):
                    if not lock_matches(raw, flt.locked, now):
                        continue
                    found.setdefault(raw["db_id"], raw)
                    taken += 1
                    if taken == limit:
                        break
        ordered = sorted(found.values(), key=lambda raw: int(raw["db_id"]), reverse=newest_first)
        if limit:
            ordered = ordered[:limit]
        return [JobDoc.model_validate(from_stored(raw)) for raw in ordered]

    def count_jobs(self, flt: JobFilter | None = None) -> int:
        flt = flt or JobFilter()
        base = job_conditions(flt)
        with self._lock:
            return sum(
                sign * self._jobs.count_documents({**base, **term})
                for sign, term in lock_terms(flt.locked, as_now(flt.now))
            )

    def count_jobs_by_state(self, flt: JobFilter | None = None) -> dict[JobState, int]:
        flt = flt or JobFilter()
        base = job_conditions(flt)
        counts: dict[JobState, int] = {}
        with self._lock:
            for sign, term in lock_terms(flt.locked, as_now(flt.now)):
                pipeline = [
                    {"$match": {**base, **term}},
                    {"$group": {"_id": "$state", "n": {"$sum": 1}}},
                ]
                for row in self._jobs.aggregate(pipeline):
                    state = JobState(row["_id"])
                    counts[state] = counts.get(state, 0) + sign * int(row["n"])
        return {state: n for state, n in counts.items() if n}

    def get_flow(self, uuid: str) -> FlowDoc | None:
        with self._lock:
            raw = self._flows.find_one({"uuid": uuid})
        return None if raw is None else FlowDoc.model_validate(from_stored(raw))

    def find_flows(
        self, flt: FlowFilter | None = None, *, limit: int = 0, newest_first: bool = False
    ) -> list[FlowDoc]:
        flt = flt or FlowFilter()
        query: Raw = {}
        if flt.uuids is not None:
            query["uuid"] = {"$in": list(flt.uuids)}
        if flt.states is not None:
            query["state"] = {"$in": plain(list(flt.states))}
        order = DESCENDING if newest_first else ASCENDING
        with self._lock:
            cursor = self._flows.find(query, sort=[("created_at", order), ("uuid", order)])
            raws = list(cursor.limit(limit))
        return [FlowDoc.model_validate(from_stored(raw)) for raw in raws]

    # --- job locks -----------------------------------------------------------------

    def _lock_one(self, query: Raw, owner: str, lease: timedelta, now: datetime) -> JobDoc | None:
        with self._lock:
            raw = self._jobs.find_one_and_update(
                {**query, EXPIRES: {"$lt": now}},
                {"$set": {"lock": new_lock(owner, now, lease)}},
                sort=[("priority", DESCENDING), ("db_id", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            )
        return None if raw is None else JobDoc.model_validate(from_stored(raw))

    def lock_next_job(
        self,
        states: Iterable[JobState],
        owner: str,
        lease: timedelta,
        *,
        workers: Iterable[str] | None = None,
        now: datetime | None = None,
    ) -> JobDoc | None:
        query: Raw = {"state": {"$in": plain(list(states))}}
        if workers is not None:
            query["worker"] = {"$in": list(workers)}
        return self._lock_one(query, owner, lease, as_now(now))

    def lock_job(
        self,
        db_id: int,
        owner: str,
        lease: timedelta,
        *,
        states: Iterable[JobState] | None = None,
        now: datetime | None = None,
    ) -> JobDoc | None:
        query: Raw = {"db_id": db_id}
        if states is not None:
            query["state"] = {"$in": plain(list(states))}
        return self._lock_one(query, owner, lease, as_now(now))

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
        query = fenced(db_id, lock_id, update)
        with self._lock:
            result = self._jobs.update_one(
                query, update_ops(update, **{EXPIRES: as_now(now) + lease})
            )
        return result.matched_count == 1

    def release_job_lock(
        self,
        db_id: int,
        lock_id: str,
        update: JobUpdate | None = None,
        *,
        free_at: datetime | None = None,
    ) -> bool:
        refuse_lock_paths(update.set if update else {})
        query = fenced(db_id, lock_id, update)
        lock = free_lock(EPOCH if free_at is None else as_now(free_at))
        with self._lock:
            result = self._jobs.update_one(query, update_ops(update, lock=lock))
        return result.matched_count == 1

    def update_job(self, db_id: int, update: JobUpdate, *, require_unlocked: bool = True) -> bool:
        query: Raw = {"db_id": db_id}
        if update.expect_state is not None:
            query["state"] = plain(update.expect_state)
        ops = update_ops(update)
        # "Nobody holds a live lease" is (id None) or (expires_at < now): without $or,
        # that is two conditional writes, each atomic on its own.
        queries = (
            [{**query, LOCK_ID: None}, {**query, EXPIRES: {"$lt": utcnow()}}]
            if require_unlocked
            else [query]
        )
        with self._lock:
            for condition in queries:
                if not ops:
                    if self._jobs.count_documents(condition, limit=1):
                        return True
                elif self._jobs.update_one(condition, ops).matched_count:
                    return True
        return False

    def unlock_jobs(self, flt: JobFilter | None = None) -> int:
        flt = flt or JobFilter()
        # Every lock that is not the free one: live leases, lapsed ones and backoff.
        not_free: Raw = {EXPIRES: {"$gt": EPOCH}}
        with self._lock:
            if flt.locked is None:
                query = {**job_conditions(flt), **not_free}
            else:
                query = {"db_id": {"$in": [job.db_id for job in self.find_jobs(flt)]}, **not_free}
            result = self._jobs.update_many(query, {"$set": {"lock": free_lock()}})
        return result.modified_count

    # --- flows ---------------------------------------------------------------------

    def lock_flow(
        self, uuid: str, owner: str, lease: timedelta, *, now: datetime | None = None
    ) -> str | None:
        now = as_now(now)
        lock = new_lock(owner, now, lease)
        with self._lock:
            result = self._flows.update_one(
                {"uuid": uuid, EXPIRES: {"$lt": now}}, {"$set": {"lock": lock}}
            )
            if result.matched_count == 1:
                return str(lock["id"])
            if self._flows.count_documents({"uuid": uuid}, limit=1) == 0:
                raise NotFoundError(f"cannot lock flow {uuid}: no such flow")
        return None

    def release_flow_lock(
        self, uuid: str, lock_id: str, fields: Mapping[str, Any] | None = None
    ) -> bool:
        refuse_lock_paths(fields or {})
        values = {path: plain(value) for path, value in (fields or {}).items()}
        values["lock"] = free_lock()
        with self._lock:
            result = self._flows.update_one({"uuid": uuid, LOCK_ID: lock_id}, {"$set": values})
        return result.matched_count == 1

    def update_flow(self, uuid: str, fields: Mapping[str, Any]) -> bool:
        with self._lock:
            if not fields:
                return self._flows.count_documents({"uuid": uuid}, limit=1) == 1
            values = {path: plain(value) for path, value in fields.items()}
            result = self._flows.update_one({"uuid": uuid}, {"$set": values})
        return result.matched_count == 1

    # --- deletes -------------------------------------------------------------------

    def delete_jobs(self, db_ids: Sequence[int]) -> int:
        if not db_ids:
            return 0
        with self._lock:
            result = self._jobs.delete_many({"db_id": {"$in": list(db_ids)}})
        return int(result.deleted_count)

    def delete_flow(self, uuid: str) -> int:
        with self._lock:
            if self._flows.count_documents({"uuid": uuid}, limit=1) == 0:
                raise NotFoundError(f"cannot delete flow {uuid}: no such flow")
            # Jobs first: a crash in between leaves a flow without jobs, never jobs
            # without their flow.
            deleted = self._jobs.delete_many({"flow_uuid": uuid}).deleted_count
            self._flows.delete_one({"uuid": uuid})
        return int(deleted)

    # --- runners -------------------------------------------------------------------

    def register_runner(self, runner: RunnerDoc) -> None:
        doc = plain(runner.model_dump(mode="python"))
        with self._lock:
            self._runners.update_one({"runner_id": runner.runner_id}, {"$set": doc}, upsert=True)

    def heartbeat_runner(
        self, runner_id: str, *, now: datetime | None = None, stopped: bool = False
    ) -> None:
        now = as_now(now)
        fields: Raw = {"heartbeat_at": now}
        if stopped:
            fields["stopped_at"] = now
        with self._lock:
            result = self._runners.update_one({"runner_id": runner_id}, {"$set": fields})
        if result.matched_count == 0:
            raise NotFoundError(f"runner {runner_id} is not registered")

    def list_runners(self) -> list[RunnerDoc]:
        with self._lock:
            raws = list(self._runners.find({}, sort=[("started_at", DESCENDING)]))
        return [RunnerDoc.model_validate(from_stored(raw)) for raw in raws]
