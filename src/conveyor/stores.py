"""Job output stores that need no server: maggma stores on one SQLite file.

:class:`SqliteStore` is the embedded default for a project's jobflow ``JobStore``: the
runner's complete step writes outputs while the upload step, the CLI and the user's
Python read them, from as many processes as they like. Name it in a project file as
any maggma store::

    jobstore:
      docs_store: {type: SqliteStore, path: /abs/project/outputs.db, collection_name: outputs}
      additional_stores:
        data: {type: SqliteStore, path: /abs/project/outputs.db, collection_name: blobs}

``JobStore.from_dict_spec`` finds stores by class name among the subclasses of
maggma's ``Store`` that have been imported: import this module before building one.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, cast

import mongomock  # noqa: F401 - registers the expression parser that filter_applies needs
from bson import ObjectId
from maggma.core import Sort, Store, StoreError
from mongomock import filtering
from monty.json import jsanitize
from pydash import get, has, set_, unset

from conveyor.db._sqlite_file import DEFAULT_TIMEOUT, SqliteFile

__all__ = ["SqliteStore"]

# mongomock and maggma's StoreError are untyped: their types, as used here.
_matches = cast(Callable[[dict[str, Any], dict[str, Any]], bool], filtering.filter_applies)
_sort_key = cast(Callable[[str, dict[str, Any]], Any], filtering.resolve_sort_key)
_StoreError = cast(type[Exception], StoreError)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
#: Longer ``$in`` lists are passed as one JSON parameter (SQLite caps parameters).
_MAX_INLINE = 500


class Select(NamedTuple):
    """The SQL that narrows the rows of a query, and its parameters."""

    sql: str
    params: tuple[Any, ...]


def _encode(value: Any) -> Any:
    # The BSON types that jsanitize(allow_bson=True) lets through, as MongoDB's
    # extended JSON spells them.
    if isinstance(value, datetime):
        return {"$date": value.isoformat()}
    if isinstance(value, bytes):
        return {"$binary": base64.b64encode(value).decode("ascii")}
    if isinstance(value, ObjectId):
        return {"$oid": str(value)}
    raise TypeError(f"cannot store a {type(value).__name__} in a SqliteStore: {value!r}")


def _decode(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        ((key, value),) = obj.items()
        if key == "$date":
            return datetime.fromisoformat(value)
        if key == "$binary":
            return base64.b64decode(value)
        if key == "$oid":
            return ObjectId(value)
    return obj


def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, default=_encode, separators=(",", ":"), ensure_ascii=False)


def _loads(text: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(text, object_hook=_decode)
    return doc


def _scalar(value: Any) -> bool:
    # bool is left to the Python check: SQLite stores JSON true as 1.
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _project(doc: dict[str, Any], properties: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    """``doc`` with only (or without) ``properties``, as a MongoDB projection."""
    if properties is None:
        return doc
    spec = {p: 1 for p in properties} if isinstance(properties, list | tuple) else properties
    shown = [field for field, keep in spec.items() if keep and field != "_id"]
    if not shown:
        for field, keep in spec.items():
            if not keep:
                unset(doc, field)
        return doc
    out: dict[str, Any] = {}
    if "_id" in doc and spec.get("_id", 1):
        out["_id"] = doc["_id"]
    for field in shown:
        if has(doc, field):
            set_(out, field, get(doc, field))
    return out


class SqliteStore(Store):
    """A maggma store of JSON documents in a SQLite file that many processes share.

    Writes run in ``BEGIN IMMEDIATE`` transactions on a WAL-mode file, so several
    processes write and read at once; a write waits up to ``timeout`` seconds for
    another. Queries use MongoDB's language: top-level equality and ``$in`` on
    indexed fields (the store's key, the first key given to :meth:`update`, and those
    of :meth:`ensure_index`) narrow the rows in SQL through an index; the documents
    read are then checked against the whole query by mongomock's matcher. Indexed
    fields are compared as scalars: a document whose indexed field is an array is not
    found by one of its elements (jobflow's ``uuid``, ``index`` and ``blob_uuid`` are
    scalars).

    Parameters
    ----------
    path
        The SQLite file (created with its directory if missing). Several stores may
        share one file, each in its own table.
    collection_name
        The table (letters, digits and ``_``).
    timeout
        Seconds a write waits for another process's transaction.
    kwargs
        Passed to maggma's ``Store`` (``key``, ``last_updated_field``, ``validator``...).
    """

    def __init__(
        self,
        path: str,
        collection_name: str = "outputs",
        timeout: float = DEFAULT_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        if not _NAME.fullmatch(collection_name):
            raise ValueError(
                f"SqliteStore collection_name {collection_name!r} must be letters, digits "
                "and '_', not starting with a digit"
            )
        self.path = str(path)
        self.collection_name = collection_name
        self.timeout = timeout
        self.kwargs = kwargs
        self._file: SqliteFile | None = None
        #: Field tuples with an index (ours, or found in the file at connect).
        self._indexes: set[tuple[str, ...]] = set()
        super().__init__(**kwargs)

    # --- maggma's Store interface ------------------------------------------------------

    @property
    def name(self) -> str:
        return f"sqlite://{self.path}/{self.collection_name}"

    @property
    def _collection(self) -> SqliteFile:
        if self._file is None:
            raise _StoreError("Must connect the SqliteStore before attempting to use it")
        return self._file

    def connect(self, force_reset: bool = False) -> None:
        if self._file is not None and not force_reset:
            return
        self.close()
        hint = f"the 'timeout' option of the SqliteStore {self.collection_name!r}"
        self._file = SqliteFile(Path(self.path).expanduser().absolute(), self.timeout, hint)
        with self._file.write() as conn:
            conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{self.collection_name}" '
                "(id INTEGER PRIMARY KEY, doc TEXT NOT NULL)"
            )
            names = conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?",
                (self.collection_name,),
            )
            prefix = f"{self.collection_name}:"
            self._indexes = {
                tuple(name[len(prefix) :].split(":")[0].split(","))
                for (name,) in names
                if name.startswith(prefix)
            }
        if not any(fields[0] == self.key for fields in self._indexes):
            self._ensure_index([self.key])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def count(self, criteria: dict[str, Any] | None = None) -> int:
        if not criteria:
            with self._collection.read() as conn:
                sql = f'SELECT COUNT(*) FROM "{self.collection_name}"'
                (found,) = conn.execute(sql).fetchone()
            return int(found)
        return len(self._matching(criteria))

    def query(
        self,
        criteria: dict[str, Any] | None = None,
        properties: dict[str, Any] | list[str] | None = None,
        sort: dict[str, Sort | int] | None = None,
        skip: int = 0,
        limit: int = 0,
    ) -> Iterator[dict[str, Any]]:
        docs = [doc for _, doc in self._matching(criteria)]
        for field, direction in reversed(list((sort or {}).items())):
            descending = Sort(direction).value < 0
            docs.sort(key=functools.partial(_sort_key, field), reverse=descending)
        docs = docs[skip:]
        if limit:
            docs = docs[: abs(limit)]
        for doc in docs:
            yield _project(doc, properties)

    def update(
        self, docs: list[dict[str, Any]] | dict[str, Any], key: list[str] | str | None = None
    ) -> None:
        keys = list(key) if isinstance(key, list | tuple) else [key or self.key]
        valid = []
        for doc in docs if isinstance(docs, list) else [docs]:
            clean = jsanitize(doc, allow_bson=True, recursive_msonable=True)
            if self.validator is not None and not self.validator.is_valid(clean):
                if getattr(self.validator, "strict", False):
                    raise ValueError(self.validator.validation_errors(clean))
                self.logger.error(self.validator.validation_errors(clean))
                continue
            valid.append(clean)
        if not valid:
            return
        if not any(fields[0] == keys[0] for fields in self._indexes):
            self._ensure_index(keys[:1])  # each upsert finds its document through it
        with self._collection.write() as conn:
            for doc in valid:
                criteria = {k: doc[k] for k in keys}
                found = self._matching(criteria, conn, limit=1)
                text = _dumps(doc)
                if found:
                    conn.execute(
                        f'UPDATE "{self.collection_name}" SET doc = ? WHERE id = ?',
                        (text, found[0][0]),
                    )
                else:
                    conn.execute(f'INSERT INTO "{self.collection_name}" (doc) VALUES (?)', (text,))

    def ensure_index(self, key: str, unique: bool = False) -> bool:
        """Index ``key`` (a dotted field); equality and ``$in`` on it then use the index.

        Returns False if ``key`` is not a plain dotted name, or, with ``unique``, if
        stored documents share a value.
        """
        return self._ensure_index([key], unique=unique)

    def groupby(
        self,
        keys: list[str] | str,
        criteria: dict[str, Any] | None = None,
        properties: dict[str, Any] | list[str] | None = None,
        sort: dict[str, Sort | int] | None = None,
        skip: int = 0,
        limit: int = 0,
    ) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
        keys = keys if isinstance(keys, list) else [keys]
        wanted = list(properties) if properties is not None else None
        docs = self.query(
            criteria, properties=None if wanted is None else [*keys, *wanted], sort=sort
        )
        groups: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        for doc in docs:
            if not all(has(doc, k) for k in keys):
                continue
            group: dict[str, Any] = {}
            for k in keys:
                set_(group, k, get(doc, k))
            marker = json.dumps(group, sort_keys=True, default=str)
            groups.setdefault(marker, (group, []))[1].append(doc)
        ordered = sorted(groups.values(), key=lambda item: [_sort_key(k, item[0]) for k in keys])
        ordered = ordered[skip:]
        yield from ordered[:limit] if limit else ordered

    def distinct(
        self, field: str, criteria: dict[str, Any] | None = None, all_exist: bool = False
    ) -> list[Any]:
        values: list[Any] = []
        seen: set[str] = set()
        for _, doc in self._matching(criteria):
            if not has(doc, field):
                continue
            value = get(doc, field)
            for item in value if isinstance(value, list) else [value]:
                marker = json.dumps(item, sort_keys=True, default=str)
                if marker not in seen:
                    seen.add(marker)
                    values.append(item)
        return values

    def remove_docs(self, criteria: dict[str, Any]) -> None:
        with self._collection.write() as conn:
            ids = [row_id for row_id, _ in self._matching(criteria, conn)]
            conn.execute(
                f'DELETE FROM "{self.collection_name}" WHERE id IN '
                "(SELECT value FROM json_each(?))",
                (json.dumps(ids),),
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SqliteStore):
            return False
        fields = ("path", "collection_name", "last_updated_field")
        return all(getattr(self, f) == getattr(other, f) for f in fields)

    def __hash__(self) -> int:
        return hash((self.path, self.collection_name, self.last_updated_field))

    # --- the SQL side ------------------------------------------------------------------

    def _index_expr(self, field: str) -> str:
        # Queries repeat this text exactly, so that SQLite matches them to the index.
        return f"json_extract(doc, '$.{field}')"

    def _ensure_index(self, fields: Sequence[str], unique: bool = False) -> bool:
        if not all(_FIELD.fullmatch(field) for field in fields):
            return False
        wanted = tuple(fields)
        if wanted in self._indexes and not unique:
            return True
        name = f"{self.collection_name}:{','.join(wanted)}{':unique' if unique else ''}"
        columns = ", ".join(self._index_expr(field) for field in wanted)
        kind = "UNIQUE INDEX" if unique else "INDEX"
        try:
            with self._collection.write() as conn:
                conn.execute(
                    f'CREATE {kind} IF NOT EXISTS "{name}" ON "{self.collection_name}" ({columns})'
                )
        except Exception:  # maggma's contract: report, don't raise
            self.logger.exception("cannot index %s on %s", wanted, self.name)
            return False
        self._indexes.add(wanted)
        return True

    def select_query(self, criteria: dict[str, Any] | None) -> Select:
        """The SQL that narrows the rows of ``criteria`` (for reads and EXPLAIN).

        Top-level equality and ``$in`` of strings and numbers on indexed fields become
        SQL conditions on the index; the rows it selects are a superset of the matches
        (when indexed fields are scalars), which the caller then checks one by one.
        """
        indexed = {field for fields in self._indexes for field in fields}
        terms: list[str] = []
        params: list[Any] = []
        for field, condition in (criteria or {}).items():
            if field in indexed and _scalar(condition):
                terms.append(f"{self._index_expr(field)} = ?")
                params.append(condition)
            elif (
                field in indexed
                and isinstance(condition, dict)
                and list(condition) == ["$in"]
                and isinstance(condition["$in"], list | tuple)
                and all(_scalar(value) for value in condition["$in"])
            ):
                values = list(condition["$in"])
                if len(values) > _MAX_INLINE:
                    terms.append(f"{self._index_expr(field)} IN (SELECT value FROM json_each(?))")
                    params.append(json.dumps(values))
                else:
                    terms.append(f"{self._index_expr(field)} IN ({', '.join('?' * len(values))})")
                    params.extend(values)
        where = f" WHERE {' AND '.join(terms)}" if terms else ""
        sql = f'SELECT id, doc FROM "{self.collection_name}"{where} ORDER BY id'
        return Select(sql, tuple(params))

    def _matching(
        self, criteria: dict[str, Any] | None, conn: Any = None, limit: int = 0
    ) -> list[tuple[int, dict[str, Any]]]:
        """``(row id, document)`` of every match, in insertion order."""
        select = self.select_query(criteria)
        if conn is None:
            with self._collection.read() as reader:
                rows = reader.execute(select.sql, select.params).fetchall()
        else:
            rows = conn.execute(select.sql, select.params).fetchall()
        found = []
        for row_id, text in rows:
            doc = _loads(text)
            if _matches(criteria or {}, doc):
                found.append((row_id, doc))
                if len(found) == limit:
                    break
        return found
