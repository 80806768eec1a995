"""Translation of Conveyor's queries and updates into plain MongoDB documents.

Pure functions, no I/O: what :mod:`conveyor.db.mongo` sends to the server. They use
only operators whose meaning MongoDB and mongomock share (see that module).
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from conveyor.db.base import JobFilter, plain
from conveyor.models import EPOCH, utcnow
from conveyor.states import HISTORY_LIMIT, JobUpdate

Raw = dict[str, Any]

EXPIRES = "lock.expires_at"
LOCK_ID = "lock.id"

__all__ = [
    "EXPIRES",
    "LOCK_ID",
    "Raw",
    "as_now",
    "fenced",
    "free_lock",
    "from_stored",
    "job_conditions",
    "lock_matches",
    "lock_terms",
    "new_lock",
    "refuse_lock_paths",
    "to_utc",
    "update_ops",
]


def as_now(now: datetime | None) -> datetime:
    # Truncated to milliseconds, as BSON stores it, so that Python-side comparisons
    # agree with the ones the server makes.
    if now is None:
        return utcnow()
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def from_stored(raw: Raw) -> Raw:
    """A stored document without its ``_id``, every datetime in ``datetime.UTC``."""
    return {key: to_utc(value) for key, value in raw.items() if key != "_id"}


def to_utc(value: Any) -> Any:
    """``value`` with every datetime in ``datetime.UTC`` (bson hands back its own tz)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, dict):
        return {key: to_utc(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_utc(item) for item in value]
    return value


def free_lock(expires_at: datetime = EPOCH) -> Raw:
    return {"id": None, "owner": None, "acquired_at": EPOCH, "expires_at": expires_at}


def new_lock(owner: str, now: datetime, lease: timedelta) -> Raw:
    lock_id = uuidlib.uuid4().hex
    return {"id": lock_id, "owner": owner, "acquired_at": now, "expires_at": now + lease}


def update_ops(update: JobUpdate | None, **extra: Any) -> Raw:
    """The ``$set``/``$push`` document of ``update`` plus ``extra`` fields to set."""
    fields = {path: plain(value) for path, value in (update.set if update else {}).items()}
    fields.update(extra)
    ops: Raw = {"$set": fields} if fields else {}
    if update is not None and update.history is not None:
        entry = plain(update.history)
        ops["$push"] = {"history": {"$each": [entry], "$slice": -HISTORY_LIMIT}}
    return ops


def refuse_lock_paths(fields: Mapping[str, Any]) -> None:
    # The lock methods write the lock themselves; a second write to it would conflict.
    paths = [path for path in fields if path == "lock" or path.startswith("lock.")]
    if paths:
        raise ValueError(f"an update given to a lock method may not set {paths}")


def fenced(db_id: int, lock_id: str, update: JobUpdate | None) -> Raw:
    """The condition of a write by the holder of ``lock_id``."""
    query: Raw = {"db_id": db_id, LOCK_ID: lock_id}
    if update is not None and update.expect_state is not None:
        query["state"] = plain(update.expect_state)
    return query


def job_conditions(flt: JobFilter) -> Raw:
    """The query of ``flt`` without its ``locked`` condition."""
    query: Raw = {}
    for field, values in (
        ("db_id", flt.db_ids),
        ("uuid", flt.uuids),
        ("flow_uuid", flt.flow_uuids),
        ("state", flt.states),
        ("worker", flt.workers),
    ):
        if values is not None:
            query[field] = {"$in": plain(list(values))}
    updated: Raw = {}
    if flt.updated_after is not None:
        updated["$gt"] = flt.updated_after
    if flt.updated_before is not None:
        updated["$lt"] = flt.updated_before
    if updated:
        query["updated_at"] = updated
    return query


def lock_terms(locked: bool | None, now: datetime) -> list[tuple[int, Raw]]:
    """``locked`` as signed queries whose counts add up to the matching count.

    A lease is held when ``lock.id`` is set and ``lock.expires_at > now``. A job in step
    backoff was released with ``id`` None and ``expires_at`` in the future: it is not
    locked. Without ``$or``/``$ne`` that is inclusion-exclusion over plain conditions:
    held = (expires > now) - (expires > now and id None); free = (id None) +
    (expires <= now) - (id None and expires <= now). Lists use the positive terms and
    a Python check (:func:`lock_matches`) on what they return.
    """
    if locked is None:
        return [(1, {})]
    if locked:
        live = {EXPIRES: {"$gt": now}}
        return [(1, live), (-1, {**live, LOCK_ID: None})]
    lapsed = {EXPIRES: {"$lte": now}}
    return [(1, {LOCK_ID: None}), (1, lapsed), (-1, {LOCK_ID: None, **lapsed})]


def lock_matches(raw: Raw, locked: bool | None, now: datetime) -> bool:
    if locked is None:
        return True
    lock = raw["lock"]
    held = lock["id"] is not None and to_utc(lock["expires_at"]) > now
    return held is locked
