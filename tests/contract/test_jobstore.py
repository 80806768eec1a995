"""SqliteStore, the embedded store of job outputs, inside a jobflow JobStore.

It must behave as a maggma store to jobflow (outputs, blobs in an additional store,
queries in MongoDB's language) and let several processes write and read at once.
"""

from __future__ import annotations

import json
import multiprocessing
import pickle
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jobflow import JobStore
from monty.json import MontyDecoder

from conveyor.config import init_project
from conveyor.config.loading import default_config
from conveyor.exceptions import DatabaseError
from conveyor.stores import SqliteStore

WRITERS = 4
OUTPUTS_PER_WRITER = 100


def store_spec(path: Path) -> dict[str, Any]:
    """A JobStore spec with outputs and blobs in one SQLite file, as a project has."""
    return {
        "docs_store": {"type": "SqliteStore", "path": str(path), "collection_name": "outputs"},
        "additional_stores": {
            "data": {"type": "SqliteStore", "path": str(path), "collection_name": "blobs"}
        },
    }


def output_doc(uuid_: str, index: int, output: Any, name: str = "job") -> dict[str, Any]:
    """What jobflow writes for one finished job."""
    return {
        "uuid": uuid_,
        "index": index,
        "output": output,
        "completed_at": datetime.now(UTC).isoformat(),
        "metadata": {},
        "hosts": [],
        "name": name,
    }


@pytest.fixture
def jobstore(tmp_path: Path) -> Iterator[JobStore]:
    store = JobStore.from_dict_spec(store_spec(tmp_path / "outputs.db"))
    store.connect()
    yield store
    store.close()


@pytest.fixture
def docs(tmp_path: Path) -> Iterator[SqliteStore]:
    """A bare store with a few documents."""
    store = SqliteStore(str(tmp_path / "docs.db"), "docs", key="name")
    store.connect()
    store.update(
        [
            {"name": "a", "n": 3, "tags": ["x", "y"], "sub": {"v": 1.5}, "flag": True},
            {"name": "b", "n": 1, "tags": ["y"], "sub": {"v": 2.5}, "flag": False},
            {"name": "c", "n": 2, "tags": [], "sub": {"v": 0.5}},
        ]
    )
    yield store
    store.close()


# --- through jobflow ---------------------------------------------------------------------


def test_outputs_by_uuid_and_index(jobstore: JobStore) -> None:
    jobstore.update([output_doc("u1", 1, {"x": 1}), output_doc("u1", 2, {"x": 2})])
    jobstore.update(output_doc("u2", 1, 42))
    assert jobstore.get_output("u1") == {"x": 2}
    assert jobstore.get_output("u1", which="first") == {"x": 1}
    assert jobstore.get_output("u1", which=1) == {"x": 1}
    assert jobstore.get_output("u1", which="all") == [{"x": 1}, {"x": 2}]
    assert jobstore.get_output("u2") == 42
    with pytest.raises(ValueError, match="has no outputs"):
        jobstore.get_output("nope")
    latest = jobstore.query_one({"uuid": "u1"}, properties=["output"], sort={"index": -1})
    assert latest == {"uuid": "u1", "index": 2, "output": {"x": 2}}
    assert jobstore.count() == 3
    assert jobstore.count({"uuid": "u1"}) == 2
    assert sorted(jobstore.distinct("uuid")) == ["u1", "u2"]


def test_an_update_replaces_the_output_of_the_same_uuid_and_index(jobstore: JobStore) -> None:
    jobstore.update(output_doc("u1", 1, "old"))
    jobstore.update(output_doc("u1", 1, "new"))
    assert jobstore.count() == 1
    assert jobstore.get_output("u1") == "new"


def test_references_between_outputs_resolve(jobstore: JobStore) -> None:
    from jobflow import OutputReference

    jobstore.update(output_doc("u1", 1, {"value": 5}))
    jobstore.update(output_doc("u2", 1, {"from_u1": OutputReference("u1")["value"]}))
    assert jobstore.get_output("u2") == {"from_u1": 5}


def test_blobs_go_to_the_additional_store(jobstore: JobStore) -> None:
    big = {"matrix": [[1.0, 2.0], [3.0, 4.0]]}
    jobstore.update(output_doc("u1", 1, big), save={"data": "output"})
    blobs = jobstore.additional_stores["data"]
    assert blobs.count() == 1
    [blob] = blobs.query()
    assert blob["data"] == big
    assert (blob["job_uuid"], blob["job_index"]) == ("u1", 1)
    reference = jobstore.get_output("u1")
    assert reference["blob_uuid"] == blob["blob_uuid"]
    assert jobstore.get_output("u1", load=True) == big
    jobstore.remove_docs({"uuid": "u1"})
    assert jobstore.count() == 0
    assert blobs.count() == 0


def test_remove_docs(jobstore: JobStore) -> None:
    for i in range(5):
        jobstore.update(output_doc(f"u{i}", 1, i))
    jobstore.remove_docs({"uuid": {"$in": ["u1", "u3"]}})
    assert sorted(jobstore.distinct("uuid")) == ["u0", "u2", "u4"]
    jobstore.remove_docs({})
    assert jobstore.count() == 0


def test_lookups_by_key_use_an_index(jobstore: JobStore) -> None:
    jobstore.update(output_doc("u1", 1, 1), save={"data": "output"})
    docs = jobstore.docs_store
    blobs = jobstore.additional_stores["data"]
    for store, criteria in [
        (docs, {"uuid": "u1"}),
        (docs, {"uuid": "u1", "index": 1}),
        (docs, {"uuid": {"$in": ["u1", "u2"]}}),
        (blobs, {"blob_uuid": {"$in": ["b1", "b2"]}}),
    ]:
        select = store.select_query(criteria)
        conn = sqlite3.connect(store.path)
        try:
            steps = [
                row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {select.sql}", select.params)
            ]
        finally:
            conn.close()
        assert any("USING INDEX" in step for step in steps), (criteria, steps)
        assert not any(step.startswith("SCAN") for step in steps), (criteria, steps)


# --- the store itself --------------------------------------------------------------------


def test_queries_speak_mongodb(docs: SqliteStore) -> None:
    def names(criteria: dict[str, Any], **kwargs: Any) -> list[str]:
        return [d["name"] for d in docs.query(criteria, **kwargs)]

    assert names({}) == ["a", "b", "c"]
    assert names({"n": {"$gte": 2}}, sort={"n": 1}) == ["c", "a"]
    assert names({"tags": "y"}, sort={"name": -1}) == ["b", "a"]
    assert names({"sub.v": {"$lt": 2}}) == ["a", "c"]
    assert names({"$or": [{"name": "b"}, {"n": 3}]}) == ["a", "b"]
    assert names({"flag": True}) == ["a"]
    assert names({"flag": {"$exists": False}}) == ["c"]
    assert names({"name": {"$in": ["c", "a"]}}, sort={"n": -1}, skip=1, limit=1) == ["c"]
    assert docs.count({"tags": {"$size": 0}}) == 1
    assert docs.query_one({"name": "b"}, properties=["sub.v"]) == {"sub": {"v": 2.5}}
    assert docs.query_one({"name": "b"}, properties={"tags": 0, "sub": 0, "flag": 0}) == {
        "name": "b",
        "n": 1,
    }
    assert sorted(docs.distinct("tags")) == ["x", "y"]
    groups = {key["flag"]: [d["name"] for d in group] for key, group in docs.groupby("flag")}
    assert groups == {False: ["b"], True: ["a"]}  # c has no flag


def test_updates_upsert_by_key(docs: SqliteStore) -> None:
    docs.update({"name": "a", "n": 10})
    docs.update({"name": "d", "n": 4})
    assert docs.count() == 4
    assert docs.query_one({"name": "a"}) == {"name": "a", "n": 10}
    docs.update([{"name": "d", "n": 5, "k": 1}], key=["name", "k"])
    assert docs.count({"name": "d"}) == 2


def test_bson_values_round_trip(docs: SqliteStore) -> None:
    when = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    docs.update({"name": "t", "at": when, "raw": b"\x00\x01", "last_updated": when})
    found = docs.query_one({"name": "t"})
    assert found is not None
    assert found["at"] == when
    assert found["raw"] == b"\x00\x01"
    assert docs.query_one({"at": {"$gt": datetime(2024, 1, 1, tzinfo=UTC)}}) == found
    assert docs.last_updated == when


def test_ensure_index(docs: SqliteStore) -> None:
    assert docs.ensure_index("sub.v")
    assert not docs.ensure_index("not a field")
    docs.update({"name": "d", "n": 1})
    assert not docs.ensure_index("n", unique=True)  # b and d share n = 1
    assert docs.ensure_index("name", unique=True)
    select = docs.select_query({"sub.v": 1.5})
    assert "json_extract(doc, '$.sub.v') = ?" in select.sql
    assert [d["name"] for d in docs.query({"sub.v": 1.5})] == ["a"]


def test_serialisation(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"), "things", timeout=5, key="k")
    encoded = json.loads(json.dumps(store.as_dict()))
    again = MontyDecoder().process_decoded(encoded)
    assert isinstance(again, SqliteStore)
    assert (again.path, again.collection_name, again.timeout, again.key) == (
        store.path,
        "things",
        5,
        "k",
    )
    assert again == store
    assert hash(again) == hash(store)
    assert pickle.loads(pickle.dumps(store)) == store
    assert store != SqliteStore(str(tmp_path / "s.db"), "others")


def test_misuse_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="collection_name"):
        SqliteStore(str(tmp_path / "s.db"), "drop table")
    store = SqliteStore(str(tmp_path / "s.db"))
    with pytest.raises(Exception, match="connect"):
        store.count()
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"garbage" * 1000)
    with pytest.raises(DatabaseError, match="corrupt"):
        SqliteStore(str(corrupt)).connect()


def test_default_project_spec_builds(tmp_path: Path) -> None:
    config = default_config("p", tmp_path)
    spec = {"docs_store": config["jobstore"]["docs_store"]}
    store = JobStore.from_dict_spec(spec)
    assert isinstance(store.docs_store, SqliteStore)
    assert Path(store.docs_store.path) == tmp_path / "outputs.db"


# --- several processes -------------------------------------------------------------------


def write_outputs(path: str, writer: int) -> None:
    """One process: its own JobStore, writing its share of outputs one by one."""
    store = JobStore.from_dict_spec(store_spec(Path(path)))
    store.connect()
    try:
        for i in range(OUTPUTS_PER_WRITER):
            doc = output_doc(f"w{writer}-{i}", 1, {"writer": writer, "i": i, "pad": "x" * 500})
            store.update(doc, save={"data": "pad"} if i % 10 == 0 else None)
    finally:
        store.close()


def read_outputs(path: str, stop: Any, seen: Any) -> None:
    """One process: reads whatever is there until told to stop."""
    store = JobStore.from_dict_spec(store_spec(Path(path)))
    store.connect()
    try:
        reads = 0
        while not stop.is_set():
            for doc in store.query({}, properties=["uuid"], limit=50):
                store.get_output(doc["uuid"], load=True)
                reads += 1
            store.count()
        seen.value = reads
    finally:
        store.close()


def test_several_processes_write_and_read_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "outputs.db")
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    seen = context.Value("i", 0)
    reader = context.Process(target=read_outputs, args=(path, stop, seen))
    writers = [context.Process(target=write_outputs, args=(path, n)) for n in range(WRITERS)]
    reader.start()
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=240)
    stop.set()
    reader.join(timeout=60)
    assert [process.exitcode for process in writers] == [0] * WRITERS
    assert reader.exitcode == 0
    assert seen.value > 0

    fresh = JobStore.from_dict_spec(store_spec(Path(path)))
    fresh.connect()
    try:
        assert fresh.count() == WRITERS * OUTPUTS_PER_WRITER
        for writer in range(WRITERS):
            for i in range(OUTPUTS_PER_WRITER):
                output = fresh.get_output(f"w{writer}-{i}", load=True)
                assert output == {"writer": writer, "i": i, "pad": "x" * 500}
    finally:
        fresh.close()


def test_open_project_reads_outputs_from_any_process(tmp_path: Path) -> None:
    # A fresh interpreter, as the CLI or the user's Python is: nothing imported but
    # what open_project imports itself.
    path = init_project("p", tmp_path / "project")
    spec = default_config("p", path.parent)["jobstore"]
    writer = JobStore.from_dict_spec(spec)
    writer.connect()
    try:
        writer.update(output_doc("u1", 1, {"answer": 42}))
        script = textwrap.dedent(
            f"""
            from conveyor import open_project
            print(open_project({str(path)!r}).jobstore.get_output("u1")["answer"])
            """
        )
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "42"
        assert time.monotonic() - started < 120
    finally:
        writer.close()


def test_new_project_outputs_are_embedded(tmp_path: Path) -> None:
    config = default_config("p", tmp_path)
    assert config["database"]["url"] == f"sqlite://{tmp_path}/conveyor.db"
    assert config["jobstore"]["docs_store"] == {
        "type": "SqliteStore",
        "path": str(tmp_path / "outputs.db"),
        "collection_name": "outputs",
    }
