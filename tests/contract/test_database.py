"""The storage contract: every backend behaves the same through the `Database` interface.

Times are given explicitly (``now=``) wherever a lease matters, so nothing here sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conveyor.db import Database, FlowFilter, JobFilter, open_database
from conveyor.db.base import SCHEMA_VERSION
from conveyor.exceptions import ConfigError, DatabaseError, NotFoundError, SchemaVersionError
from conveyor.models import EPOCH, FlowDoc, JobDoc, RunnerDoc, utcnow
from conveyor.states import HISTORY_LIMIT, FlowState, JobState, JobUpdate, transition

FlowFactory = Callable[..., tuple[FlowDoc, list[JobDoc]]]
JobFactory = Callable[..., JobDoc]

S = JobState
T0 = utcnow()
LEASE = timedelta(minutes=5)


def at(minutes: float) -> datetime:
    """T0 plus some minutes."""
    return T0 + timedelta(minutes=minutes)


def ids(jobs: list[JobDoc]) -> list[int]:
    return [job.db_id for job in jobs]


def assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.tzinfo is not None
    assert value.utcoffset() == timedelta(0)


# --- opening ---------------------------------------------------------------------------


def test_new_database_records_the_schema_version(database: Database) -> None:
    assert database.schema_version() == SCHEMA_VERSION


def test_second_open_of_the_same_url_sees_the_same_data(
    database: Database, database_url: str, make_flow: FlowFactory
) -> None:
    _, [job] = make_flow()
    other = open_database(database_url)
    try:
        assert other.get_job(job.db_id) == job
    finally:
        other.close()


def test_other_schema_version_is_refused(database_url: str, backend: Any) -> None:
    open_database(database_url).close()
    backend.set_schema_version(database_url, SCHEMA_VERSION + 1)
    with pytest.raises(SchemaVersionError) as info:
        open_database(database_url)
    message = str(info.value)
    assert f"version {SCHEMA_VERSION + 1}" in message
    assert f"expects version {SCHEMA_VERSION}" in message
    assert "conveyor admin upgrade" in message


def test_upgrade_of_a_current_database_changes_nothing(database_url: str) -> None:
    db = open_database(database_url, check_schema=False)
    try:
        assert db.upgrade() == SCHEMA_VERSION
        assert db.schema_version() == SCHEMA_VERSION
    finally:
        db.close()


def test_upgrade_refuses_a_newer_database(database_url: str, backend: Any) -> None:
    open_database(database_url).close()
    backend.set_schema_version(database_url, SCHEMA_VERSION + 1)
    db = open_database(database_url, check_schema=False)
    try:
        with pytest.raises(SchemaVersionError, match="newer"):
            db.upgrade()
    finally:
        db.close()


def test_reset_deletes_everything_but_keeps_the_schema(
    database: Database, make_flow: FlowFactory
) -> None:
    flow, [job] = make_flow()
    database.register_runner(RunnerDoc(runner_id="r1", hostname="h", pid=1))
    database.reset()
    assert database.get_job(job.db_id) is None
    assert database.get_flow(flow.uuid) is None
    assert database.list_runners() == []
    assert database.count_jobs() == 0
    assert database.next_db_ids(1) == 1
    assert database.schema_version() == SCHEMA_VERSION


def test_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"redis://.*mongodb://.*sqlite://"):
        open_database("redis://localhost/0")


def test_unknown_scheme_error_hides_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        open_database("mongdb://user:secret@host/db")
    assert "secret" not in str(info.value)
    assert "host/db" in str(info.value)


# --- ids and inserts -------------------------------------------------------------------


def test_next_db_ids_are_sequential_and_blocks_contiguous(database: Database) -> None:
    first = database.next_db_ids(1)
    block = database.next_db_ids(3)
    after = database.next_db_ids(1)
    assert first == 1
    assert block == first + 1
    assert after == block + 3


def test_next_db_ids_blocks_never_overlap_across_threads(database: Database) -> None:
    handed: list[int] = []
    guard = threading.Lock()

    def reserve() -> None:
        for _ in range(25):
            first = database.next_db_ids(3)
            with guard:
                handed.extend(range(first, first + 3))

    threads = [threading.Thread(target=reserve) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(handed) == list(range(1, 4 * 25 * 3 + 1))


def test_insert_flow_round_trips_flow_and_jobs(database: Database, make_flow: FlowFactory) -> None:
    payload = {"function": "f", "kwargs": {"doc": {"_id": "kept", "n": [1, 2.5, None]}}}
    flow, jobs = make_flow(
        [{"priority": 3, "parents": ["p"], "resources": {"cpus": 2}, "job": payload}, {}]
    )
    assert database.get_flow(flow.uuid) == flow
    for job in jobs:
        assert database.get_job(job.db_id) == job
        assert database.get_job_by_uuid(job.uuid) == job


def test_insert_flow_twice_is_an_error(database: Database, make_flow: FlowFactory) -> None:
    flow, jobs = make_flow()
    with pytest.raises(DatabaseError):
        database.insert_flow(flow, jobs)


def test_missing_documents_are_none(database: Database) -> None:
    assert database.get_job(12345) is None
    assert database.get_job_by_uuid("nope") is None
    assert database.get_flow("nope") is None


def test_get_job_by_uuid_gives_the_highest_index(
    database: Database, make_flow: FlowFactory, make_job: JobFactory
) -> None:
    flow, [first] = make_flow()
    third = make_job(flow.uuid, uuid=first.uuid, index=3)
    second = make_job(flow.uuid, uuid=first.uuid, index=2)
    assert database.add_jobs(flow.uuid, [third, second]) == 2
    assert database.get_job_by_uuid(first.uuid) == third
    assert database.get_job_by_uuid(first.uuid, 2) == second
    assert database.get_job_by_uuid(first.uuid, 1) == first
    assert database.get_job_by_uuid(first.uuid, 4) is None


def test_add_jobs_is_idempotent(
    database: Database, make_flow: FlowFactory, make_job: JobFactory
) -> None:
    flow, [old] = make_flow()
    new = [make_job(flow.uuid), make_job(flow.uuid)]
    replacement = make_job(flow.uuid, uuid=old.uuid, index=2)
    assert database.add_jobs(flow.uuid, [*new, replacement]) == 3
    assert database.add_jobs(flow.uuid, [*new, replacement]) == 0
    assert database.count_jobs(JobFilter(flow_uuids=[flow.uuid])) == 4
    stored = database.get_flow(flow.uuid)
    assert stored is not None
    assert stored.job_uuids == [old.uuid, new[0].uuid, new[1].uuid]


def test_add_jobs_inserts_only_what_is_missing(
    database: Database, make_flow: FlowFactory, make_job: JobFactory
) -> None:
    flow, _ = make_flow()
    kept = make_job(flow.uuid, name="kept")
    assert database.add_jobs(flow.uuid, [kept]) == 1
    again = kept.model_copy(update={"name": "ignored"})
    fresh = make_job(flow.uuid)
    assert database.add_jobs(flow.uuid, [again, fresh]) == 1
    stored = database.get_job_by_uuid(kept.uuid)
    assert stored is not None
    assert stored.name == "kept"


def test_add_jobs_to_a_missing_flow_is_not_found(database: Database, make_job: JobFactory) -> None:
    with pytest.raises(NotFoundError):
        database.add_jobs("nope", [make_job("nope")])
    assert database.count_jobs() == 0


# --- queries ---------------------------------------------------------------------------


@pytest.fixture
def zoo(database: Database, make_flow: FlowFactory) -> dict[str, JobDoc]:
    """Five jobs in two flows, seen at ``at(10)``: free, held, backoff, lapsed, free.

    ``updated_at`` is ``at(i)`` for the i-th job.
    """
    names = ["free", "held", "backoff", "lapsed", "running"]
    specs: list[dict[str, Any]] = [
        {"state": S.READY, "worker": "local"},
        {"state": S.READY, "worker": "remote"},
        {"state": S.CHECKED_OUT, "worker": "local"},
        {"state": S.COMPLETED, "worker": "remote"},
        {"state": S.RUNNING, "worker": "local"},
    ]
    for i, (name, spec) in enumerate(zip(names, specs, strict=True)):
        spec.update(name=name, updated_at=at(i))
    _, first = make_flow(specs[:3])
    _, second = make_flow(specs[3:])
    jobs = dict(zip(names, first + second, strict=True))
    held = database.lock_job(jobs["held"].db_id, "r1", LEASE, now=at(9))
    assert held is not None
    backoff = database.lock_job(jobs["backoff"].db_id, "r1", LEASE, now=at(9))
    assert backoff is not None
    assert backoff.lock.id is not None
    assert database.release_job_lock(backoff.db_id, backoff.lock.id, free_at=at(20))
    assert database.lock_job(jobs["lapsed"].db_id, "r1", LEASE, now=at(0)) is not None
    return jobs


FILTERS: list[tuple[str, Callable[[dict[str, JobDoc]], JobFilter], list[str]]] = [
    ("all", lambda z: JobFilter(), ["free", "held", "backoff", "lapsed", "running"]),
    (
        "db_ids",
        lambda z: JobFilter(db_ids=[z["held"].db_id, z["running"].db_id]),
        ["held", "running"],
    ),
    ("uuids", lambda z: JobFilter(uuids=[z["lapsed"].uuid]), ["lapsed"]),
    ("flow_uuids", lambda z: JobFilter(flow_uuids=[z["lapsed"].flow_uuid]), ["lapsed", "running"]),
    ("states", lambda z: JobFilter(states=[S.READY, S.RUNNING]), ["free", "held", "running"]),
    ("workers", lambda z: JobFilter(workers=["remote"]), ["held", "lapsed"]),
    ("empty list", lambda z: JobFilter(states=[]), []),
    ("locked", lambda z: JobFilter(locked=True, now=at(10)), ["held"]),
    (
        "unlocked",
        lambda z: JobFilter(locked=False, now=at(10)),
        ["free", "backoff", "lapsed", "running"],
    ),
    ("locked later", lambda z: JobFilter(locked=True, now=at(15)), []),
    ("updated_after", lambda z: JobFilter(updated_after=at(2)), ["lapsed", "running"]),
    ("updated_before", lambda z: JobFilter(updated_before=at(2)), ["free", "held"]),
    (
        "combined",
        lambda z: JobFilter(workers=["local"], locked=False, updated_after=at(1), now=at(10)),
        ["backoff", "running"],
    ),
]


@pytest.mark.parametrize(
    ("build", "expected"), [f[1:] for f in FILTERS], ids=[f[0] for f in FILTERS]
)
def test_filters_select_the_same_jobs_in_every_query(
    database: Database,
    zoo: dict[str, JobDoc],
    build: Callable[[dict[str, JobDoc]], JobFilter],
    expected: list[str],
) -> None:
    flt = build(zoo)
    found = database.find_jobs(flt)
    assert [job.name for job in found] == expected
    assert database.count_jobs(flt) == len(expected)
    by_state: dict[JobState, int] = {}
    for name in expected:
        state = zoo[name].state
        by_state[state] = by_state.get(state, 0) + 1
    assert database.count_jobs_by_state(flt) == by_state


def test_find_jobs_newest_first_and_limit(database: Database, zoo: dict[str, JobDoc]) -> None:
    all_ids = sorted(job.db_id for job in zoo.values())
    assert ids(database.find_jobs()) == all_ids
    assert ids(database.find_jobs(limit=2)) == all_ids[:2]
    assert ids(database.find_jobs(newest_first=True)) == all_ids[::-1]
    assert ids(database.find_jobs(limit=2, newest_first=True)) == all_ids[:-3:-1]


@pytest.mark.parametrize("newest_first", [False, True])
@pytest.mark.parametrize("locked", [False, True])
def test_limit_applies_after_the_lock_condition(
    database: Database, zoo: dict[str, JobDoc], locked: bool, newest_first: bool
) -> None:
    flt = JobFilter(locked=locked, now=at(10))
    everything = database.find_jobs(flt, newest_first=newest_first)
    for limit in range(1, len(everything) + 2):
        limited = database.find_jobs(flt, limit=limit, newest_first=newest_first)
        assert ids(limited) == ids(everything)[:limit]


def test_count_jobs_by_state_leaves_out_empty_states(
    database: Database, zoo: dict[str, JobDoc]
) -> None:
    counts = database.count_jobs_by_state()
    assert counts == {S.READY: 2, S.CHECKED_OUT: 1, S.COMPLETED: 1, S.RUNNING: 1}
    assert all(isinstance(state, JobState) for state in counts)


def test_find_flows_filters_and_order(database: Database) -> None:
    flows = [
        FlowDoc(uuid=f"f{i}", state=state, created_at=at(i))
        for i, state in enumerate([FlowState.READY, FlowState.RUNNING, FlowState.READY])
    ]
    for flow in reversed(flows):
        database.insert_flow(flow, [])
    assert [f.uuid for f in database.find_flows()] == ["f0", "f1", "f2"]
    assert [f.uuid for f in database.find_flows(newest_first=True, limit=2)] == ["f2", "f1"]
    assert [f.uuid for f in database.find_flows(limit=1)] == ["f0"]
    ready = FlowFilter(states=[FlowState.READY])
    assert [f.uuid for f in database.find_flows(ready)] == ["f0", "f2"]
    assert [f.uuid for f in database.find_flows(FlowFilter(uuids=["f1", "x"]))] == ["f1"]
    assert database.find_flows(FlowFilter(uuids=[])) == []


def test_timestamps_come_back_timezone_aware_utc(
    database: Database, make_flow: FlowFactory
) -> None:
    flow, [job] = make_flow(started_at=T0)
    locked = database.lock_job(job.db_id, "r1", LEASE, now=at(0))
    assert locked is not None
    assert locked.lock.id is not None
    update = transition(S.READY, S.CHECKED_OUT, by="r1", now=at(1))
    assert database.release_job_lock(job.db_id, locked.lock.id, update, free_at=at(2))
    stored = database.get_job(job.db_id)
    assert stored is not None
    for value in (
        stored.created_at,
        stored.updated_at,
        stored.started_at,
        stored.lock.acquired_at,
        stored.lock.expires_at,
        stored.attempts.retry_at,
        stored.history[-1].at,
    ):
        assert_utc(value)
    assert stored.lock.expires_at == at(2)
    stored_flow = database.get_flow(flow.uuid)
    assert stored_flow is not None
    assert_utc(stored_flow.created_at)
    assert_utc(stored_flow.lock.expires_at)


# --- job locks -------------------------------------------------------------------------


def test_lock_next_job_takes_highest_priority_then_lowest_db_id(
    database: Database, make_flow: FlowFactory
) -> None:
    _, jobs = make_flow([{"priority": 0}, {"priority": 5}, {"priority": 5}, {"priority": 1}])
    order = []
    while (job := database.lock_next_job([S.READY], "r1", LEASE, now=at(0))) is not None:
        order.append(job.db_id)
    assert order == [jobs[1].db_id, jobs[2].db_id, jobs[3].db_id, jobs[0].db_id]


def test_lock_next_job_sets_and_stores_the_lease(
    database: Database, make_flow: FlowFactory
) -> None:
    _, [job] = make_flow()
    locked = database.lock_next_job([S.READY], "r1", LEASE, now=at(0))
    assert locked is not None
    assert locked.db_id == job.db_id
    assert locked.lock.id is not None
    assert locked.lock.owner == "r1"
    assert locked.lock.acquired_at == at(0)
    assert locked.lock.expires_at == at(0) + LEASE
    assert locked.lock.is_held(at(1))
    assert database.get_job(job.db_id) == locked


def test_lock_next_job_respects_states_and_workers(
    database: Database, make_flow: FlowFactory
) -> None:
    _, [waiting, remote, local] = make_flow(
        [{"state": S.WAITING}, {"worker": "remote"}, {"worker": "local"}]
    )
    lock = database.lock_next_job
    assert lock([S.READY], "r1", LEASE, workers=["remote"], now=at(0)) == database.get_job(
        remote.db_id
    )
    assert lock([S.READY], "r1", LEASE, workers=["remote"], now=at(0)) is None
    assert lock([S.READY], "r1", LEASE, workers=[], now=at(0)) is None
    found = lock([S.READY], "r1", LEASE, now=at(0))
    assert found is not None
    assert found.db_id == local.db_id
    assert lock([S.READY], "r1", LEASE, now=at(0)) is None
    assert lock([], "r1", LEASE, now=at(0)) is None
    found = lock([S.READY, S.WAITING], "r1", LEASE, now=at(0))
    assert found is not None
    assert found.db_id == waiting.db_id


def test_live_lease_is_skipped_and_an_expired_one_taken_over(
    database: Database, make_flow: FlowFactory
) -> None:
    make_flow()
    first = database.lock_next_job([S.READY], "r1", LEASE, now=at(0))
    assert first is not None
    assert database.lock_next_job([S.READY], "r2", LEASE, now=at(4)) is None
    second = database.lock_next_job([S.READY], "r2", LEASE, now=at(6))
    assert second is not None
    assert second.db_id == first.db_id
    assert second.lock.owner == "r2"
    assert second.lock.id != first.lock.id
    assert second.lock.expires_at == at(6) + LEASE


def test_job_in_backoff_is_skipped_until_free_at(
    database: Database, make_flow: FlowFactory
) -> None:
    _, [job] = make_flow()
    locked = database.lock_job(job.db_id, "r1", LEASE, now=at(0))
    assert locked is not None
    assert locked.lock.id is not None
    assert database.release_job_lock(job.db_id, locked.lock.id, free_at=at(10))
    assert database.lock_next_job([S.READY], "r1", LEASE, now=at(9)) is None
    assert database.lock_job(job.db_id, "r1", LEASE, now=at(9)) is None
    again = database.lock_next_job([S.READY], "r1", LEASE, now=at(11))
    assert again is not None
    assert again.db_id == job.db_id


def test_lock_job(database: Database, make_flow: FlowFactory) -> None:
    _, [job] = make_flow()
    assert database.lock_job(job.db_id, "r1", LEASE, states=[S.WAITING], now=at(0)) is None
    locked = database.lock_job(job.db_id, "r1", LEASE, states=[S.READY], now=at(0))
    assert locked is not None
    assert locked.lock.owner == "r1"
    assert database.lock_job(job.db_id, "r2", LEASE, now=at(1)) is None
    taken = database.lock_job(job.db_id, "r2", LEASE, now=at(6))
    assert taken is not None
    assert taken.lock.owner == "r2"
    assert database.lock_job(999_999, "r1", LEASE, now=at(0)) is None


def test_renew_extends_only_our_lease(database: Database, make_flow: FlowFactory) -> None:
    _, [job] = make_flow()
    ours = database.lock_job(job.db_id, "r1", LEASE, now=at(0))
    assert ours is not None
    assert ours.lock.id is not None
    assert database.renew_job_lock(job.db_id, ours.lock.id, LEASE, now=at(4))
    # Renewed to at(9): at(6) would have been free without the renewal.
    assert database.lock_job(job.db_id, "r2", LEASE, now=at(6)) is None
    assert not database.renew_job_lock(job.db_id, "not-ours", LEASE, now=at(6))
    theirs = database.lock_job(job.db_id, "r2", LEASE, now=at(10))
    assert theirs is not None
    assert not database.renew_job_lock(job.db_id, ours.lock.id, LEASE, now=at(11))
    assert database.get_job(job.db_id) == theirs


def test_renew_with_update_applies_it_fenced(database: Database, make_flow: FlowFactory) -> None:
    _, [job] = make_flow()
    ours = database.lock_job(job.db_id, "r1", LEASE, now=at(0))
    assert ours is not None
    assert ours.lock.id is not None
    wrong_state = JobUpdate({"remote.submit_token": "t0"}, expect_state=S.RUNNING)
    assert not database.renew_job_lock(job.db_id, ours.lock.id, LEASE, update=wrong_state)
    update = JobUpdate({"remote.submit_token": "t1"}, expect_state=S.READY)
    assert database.renew_job_lock(job.db_id, ours.lock.id, LEASE, update=update, now=at(1))
    stored = database.get_job(job.db_id)
    assert stored is not None
    assert stored.remote.submit_token == "t1"
    assert stored.lock.id == ours.lock.id
    assert stored.lock.expires_at == at(1) + LEASE
    assert not database.renew_job_lock(job.db_id, "not-ours", LEASE, update=update)


def test_release_applies_the_update_and_frees_the_lock(
    database: Database, make_flow: FlowFactory
) -> None:
    _, [job] = make_flow()
    locked = database.lock_job(job.db_id, "r1", LEASE, now=at(0))
    assert locked is not None
    assert locked.lock.id is not None
    update = transition(S.READY, S.CHECKED_OUT, by="r1", now=at(1), extra={"remote.run_dir": "/x"})
    assert database.release_job_lock(job.db_id, locked.lock.id, update)
    stored = database.get_job(job.db_id)
    assert stored is not None
    assert stored.state is S.CHECKED_OUT
    assert stored.updated_at == at(1)
    assert stored.remote.run_dir == "/x"
    assert stored.lock.id is None
    assert stored.lock.owner is None
    assert stored.lock.expires_at == EPOCH
    assert [(h.state, h.at, h.by) for h in stored.history] == [(S.CHECKED_OUT, at(1), "r1")]
    # Free at once: anyone can lock it again.
    assert database.lock_job(job.db_id, "r2", LEASE, now=at(1)) is not None


def test_release_by_a_lost_owner_changes_nothing(
    database: Database, make_flow: FlowFactory
) -> None:
    _, [job] = make_flow()
    lost = database.lock_job(job.db_id, "r1", LEASE, now=at(0))
    assert lost is not None
    assert lost.lock.id is not None
    current = database.lock_job(job.db_id, "r2", LEASE, now=at(6))
    assert current is not None
    update = transition(S.READY, S.CHECKED_OUT, by="r1", now=at(7))
    assert not database.release_job_lock(job.db_id, lost.lock.id, update)
    assert database.get_job(job.db_id) == current


def test_release_with_a_state_mismatch_applies_nothing(
    database: Database, make_flow: FlowFactory
) -> None:
    _, [job] = make_flow()
    locked = database.lock_job(job.db_id, "r1", LEASE, now=at(0))
    assert locked is not None
    assert locked.lock.id is not None
    update = transition(S.RUNNING, S.TERMINATED, by="r1", now=at(1))
    assert not database.release_job_lock(job.db_id, locked.lock.id, update)
    assert database.get_job(job.db_id) == locked


def test_history_is_bounded(database: Database, make_flow: FlowFactory) -> None:
    _, [job] = make_flow()
    rounds = HISTORY_LIMIT + 10
    for i in range(rounds):
        locked = database.lock_job(job.db_id, "r1", LEASE, now=at(i))
        assert locked is not None
        assert locked.lock.id is not None
        entry = {"state": S.READY, "at": at(i), "by": f"r{i}"}
        assert database.release_job_lock(job.db_id, locked.lock.id, JobUpdate(history=entry))
    stored = database.get_job(job.db_id)
    assert stored is not None
    assert [h.by for h in stored.history] == [f"r{i}" for i in range(10, rounds)]


def test_release_refuses_an_update_of_the_lock(database: Database, make_flow: FlowFactory) -> None:
    _, [job] = make_flow()
    locked = database.lock_job(job.db_id, "r1", LEASE, now=at(0))
    assert locked is not None
    assert locked.lock.id is not None
    with pytest.raises(ValueError, match="lock"):
        database.release_job_lock(job.db_id, locked.lock.id, JobUpdate({"lock.owner": "x"}))


def test_update_job_requires_no_live_lease(database: Database, make_flow: FlowFactory) -> None:
    _, [job] = make_flow()
    now = utcnow()
    locked = database.lock_job(job.db_id, "r1", LEASE, now=now)
    assert locked is not None
    assert locked.lock.id is not None
    assert not database.update_job(job.db_id, JobUpdate({"name": "a"}))
    assert database.update_job(job.db_id, JobUpdate({"name": "b"}), require_unlocked=False)
    stored = database.get_job(job.db_id)
    assert stored is not None
    assert stored.name == "b"
    assert stored.lock == locked.lock
    assert database.release_job_lock(job.db_id, locked.lock.id)
    assert database.update_job(job.db_id, JobUpdate({"name": "c"}))


def test_update_job_counts_lapsed_and_backoff_locks_as_free(
    database: Database, make_flow: FlowFactory
) -> None:
    past = utcnow() - timedelta(hours=1)
    _, [lapsed, backoff] = make_flow(2)
    assert database.lock_job(lapsed.db_id, "r1", LEASE, now=past) is not None
    locked = database.lock_job(backoff.db_id, "r1", LEASE, now=past)
    assert locked is not None
    assert locked.lock.id is not None
    assert database.release_job_lock(
        backoff.db_id, locked.lock.id, free_at=utcnow() + timedelta(hours=1)
    )
    for job in (lapsed, backoff):
        assert database.update_job(job.db_id, transition(S.READY, S.PAUSED, by="cli"))
        stored = database.get_job(job.db_id)
        assert stored is not None
        assert stored.state is S.PAUSED
        assert [h.by for h in stored.history] == ["cli"]


def test_update_job_checks_the_expected_state(database: Database, make_flow: FlowFactory) -> None:
    _, [job] = make_flow()
    assert not database.update_job(job.db_id, transition(S.WAITING, S.READY))
    assert database.get_job(job.db_id) == job
    assert database.update_job(job.db_id, transition(S.READY, S.WAITING))
    assert not database.update_job(999_999, JobUpdate({"name": "x"}))


def test_unlock_jobs_frees_leases_and_backoff(database: Database, zoo: dict[str, JobDoc]) -> None:
    assert database.unlock_jobs(JobFilter(workers=["nowhere"])) == 0
    # Only the live lease (held) is locked at at(10); backoff and the lapsed lease are not.
    assert database.unlock_jobs(JobFilter(locked=True, now=at(10))) == 1
    # Backoff and lapsed still carry a lock that is not the free one.
    assert database.unlock_jobs() == 2
    assert database.unlock_jobs() == 0
    for job in database.find_jobs():
        assert job.lock.id is None
        assert job.lock.expires_at == EPOCH
    locked = database.lock_next_job([S.CHECKED_OUT], "r1", LEASE, now=at(10))
    assert locked is not None
    assert locked.name == "backoff"


def test_unlock_jobs_respects_the_filter(database: Database, make_flow: FlowFactory) -> None:
    _, [local, remote] = make_flow([{"worker": "local"}, {"worker": "remote"}])
    for job in (local, remote):
        assert database.lock_job(job.db_id, "r1", LEASE) is not None
    assert database.unlock_jobs(JobFilter(workers=["local"])) == 1
    assert database.count_jobs(JobFilter(locked=True)) == 1
    assert database.find_jobs(JobFilter(locked=True))[0].db_id == remote.db_id


# --- flows -----------------------------------------------------------------------------


def test_flow_lock_release_and_fields(database: Database, make_flow: FlowFactory) -> None:
    flow, _ = make_flow()
    first = database.lock_flow(flow.uuid, "r1", LEASE, now=at(0))
    assert first is not None
    assert database.lock_flow(flow.uuid, "r2", LEASE, now=at(4)) is None
    second = database.lock_flow(flow.uuid, "r2", LEASE, now=at(6))
    assert second is not None
    assert second != first
    assert not database.release_flow_lock(flow.uuid, first, {"state": FlowState.FAILED})
    assert database.release_flow_lock(
        flow.uuid, second, {"state": FlowState.RUNNING, "metadata.step": 2, "updated_at": at(7)}
    )
    stored = database.get_flow(flow.uuid)
    assert stored is not None
    assert stored.state is FlowState.RUNNING
    assert stored.metadata == {"step": 2}
    assert stored.updated_at == at(7)
    assert stored.lock.id is None
    assert stored.lock.expires_at == EPOCH
    assert database.lock_flow(flow.uuid, "r3", LEASE, now=at(7)) is not None


def test_lock_flow_of_a_missing_flow_is_not_found(database: Database) -> None:
    with pytest.raises(NotFoundError):
        database.lock_flow("nope", "r1", LEASE)


def test_update_flow(database: Database, make_flow: FlowFactory) -> None:
    flow, _ = make_flow()
    assert database.update_flow(flow.uuid, {"state": FlowState.COMPLETED, "metadata.a.b": 1})
    stored = database.get_flow(flow.uuid)
    assert stored is not None
    assert stored.state is FlowState.COMPLETED
    assert stored.metadata == {"a": {"b": 1}}
    assert database.update_flow(flow.uuid, {})
    assert not database.update_flow("nope", {"name": "x"})


# --- deletes ---------------------------------------------------------------------------


def test_delete_jobs_removes_exactly_those_jobs(database: Database, make_flow: FlowFactory) -> None:
    flow, jobs = make_flow(3)
    _, [kept] = make_flow()
    assert database.lock_job(jobs[2].db_id, "cli", LEASE) is not None  # the caller's lock
    assert database.delete_jobs([jobs[0].db_id, jobs[2].db_id, 999_999]) == 2
    assert database.get_job(jobs[0].db_id) is None
    assert database.get_job(jobs[2].db_id) is None
    assert ids(database.find_jobs()) == [jobs[1].db_id, kept.db_id]
    assert database.count_jobs() == 2
    assert database.count_jobs_by_state() == {S.READY: 2}
    assert database.delete_jobs([]) == 0
    assert database.get_flow(flow.uuid) is not None  # the caller updates the flow
    assert database.next_db_ids(1) > kept.db_id  # ids are never given out again


def test_delete_flow_removes_the_flow_and_its_jobs(
    database: Database, make_flow: FlowFactory
) -> None:
    flow, _ = make_flow([{"state": S.COMPLETED}, {"state": S.WAITING}])
    other, [kept] = make_flow()
    assert database.delete_flow(flow.uuid) == 2
    assert database.get_flow(flow.uuid) is None
    assert database.find_jobs(JobFilter(flow_uuids=[flow.uuid])) == []
    assert ids(database.find_jobs()) == [kept.db_id]
    assert database.count_jobs_by_state() == {S.READY: 1}
    assert [f.uuid for f in database.find_flows()] == [other.uuid]
    with pytest.raises(NotFoundError, match="no such flow"):
        database.delete_flow(flow.uuid)


# --- runners ---------------------------------------------------------------------------


def test_runner_registry(database: Database) -> None:
    old = RunnerDoc(runner_id="old", hostname="h1", pid=1, roles=["checkout"], started_at=at(0))
    new = RunnerDoc(runner_id="new", hostname="h2", pid=2, started_at=at(1))
    database.register_runner(old)
    database.register_runner(new)
    assert database.list_runners() == [new, old]
    database.heartbeat_runner("old", now=at(2))
    database.heartbeat_runner("new", now=at(3), stopped=True)
    by_id = {runner.runner_id: runner for runner in database.list_runners()}
    assert by_id["old"].heartbeat_at == at(2)
    assert by_id["old"].stopped_at is None
    assert by_id["new"].heartbeat_at == at(3)
    assert by_id["new"].stopped_at == at(3)
    assert_utc(by_id["new"].started_at)
    restarted = old.model_copy(update={"pid": 10, "started_at": at(4), "heartbeat_at": at(4)})
    database.register_runner(restarted)
    assert database.list_runners() == [restarted, by_id["new"]]


def test_heartbeat_of_an_unknown_runner_is_not_found(database: Database) -> None:
    with pytest.raises(NotFoundError):
        database.heartbeat_runner("ghost")


# --- threads ---------------------------------------------------------------------------


def test_concurrent_lock_next_job_locks_each_job_once(
    database: Database, make_flow: FlowFactory
) -> None:
    _, jobs = make_flow(200)
    start = threading.Barrier(8)
    taken: list[list[int]] = [[] for _ in range(8)]
    errors: list[BaseException] = []

    def work(slot: int) -> None:
        try:
            start.wait()
            while (job := database.lock_next_job([S.READY], f"r{slot}", LEASE)) is not None:
                taken[slot].append(job.db_id)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    every = [db_id for slot in taken for db_id in slot]
    assert sorted(every) == sorted(job.db_id for job in jobs)
    owners = {job.db_id: job.lock.owner for job in database.find_jobs()}
    for slot, db_ids in enumerate(taken):
        assert all(owners[db_id] == f"r{slot}" for db_id in db_ids)


def test_timestamps_are_utc_at_first_read(database: Database, make_flow: FlowFactory) -> None:
    _, [job] = make_flow(updated_at=datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC))
    stored = database.get_job(job.db_id)
    assert stored is not None
    assert stored.updated_at == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert_utc(stored.updated_at)


def test_counts_by_state_follow_every_kind_of_change(
    database: Database, make_flow: FlowFactory, make_job: JobFactory
) -> None:
    """Whatever keeps the counts (a GROUP BY or a trigger-kept table) must agree with the
    jobs themselves after inserts, additions, releases, updates and a reset."""

    def recount() -> dict[JobState, int]:
        counts: dict[JobState, int] = {}
        for doc in database.find_jobs():
            counts[doc.state] = counts.get(doc.state, 0) + 1
        return counts

    flow, jobs = make_flow(4, state=JobState.READY)
    database.add_jobs(flow.uuid, [make_job(flow.uuid, state=JobState.WAITING)])
    database.add_jobs(flow.uuid, [make_job(flow.uuid, state=JobState.WAITING)])
    locked = database.lock_job(jobs[0].db_id, "a", timedelta(minutes=1))
    assert locked is not None
    assert locked.lock.id is not None
    update = transition(JobState.READY, JobState.CHECKED_OUT)
    assert database.release_job_lock(jobs[0].db_id, locked.lock.id, update)
    assert database.update_job(jobs[1].db_id, transition(JobState.READY, JobState.PAUSED))
    assert database.count_jobs_by_state() == recount()
    assert database.count_jobs() == 6
    assert database.count_jobs_by_state() == {
        JobState.READY: 2,
        JobState.CHECKED_OUT: 1,
        JobState.PAUSED: 1,
        JobState.WAITING: 2,
    }
    database.reset()
    assert database.count_jobs_by_state() == {}
    assert database.count_jobs() == 0
