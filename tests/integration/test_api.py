"""The Python API for scripts and notebooks: reads, counts, outputs, retry and rerun."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from jobflow import Flow

from conveyor import Runner, api, submit_command, submit_flow
from conveyor.exceptions import ConveyorError, NotFoundError
from conveyor.project import Project
from conveyor.states import FlowState, JobState
from conveyor.testing import jobs as J

pytestmark = pytest.mark.integration


def test_reads_counts_and_outputs(project: Project) -> None:
    first = J.add(1, 1)
    second = J.add(first.output, 1)
    ids = submit_flow(Flow([first, second], name="pair"))
    assert api.count_jobs() == 2
    assert api.count_jobs(states=["ready"]) == 1
    assert [d.db_id for d in api.list_jobs(states=["WAITING"])] == [ids[1]]
    assert [d.db_id for d in api.list_jobs(uuids=[first.uuid])] == [ids[0]]
    with pytest.raises(NotFoundError, match="has no output"):
        api.get_output(ids[0])
    (flow,) = api.list_flows()
    assert flow.name == "pair"
    assert api.get_flow(flow.uuid).state is FlowState.READY
    assert Runner().run_all_jobs(max_seconds=120)
    assert api.get_output(ids[1]) == 3
    assert api.get_flow(flow.uuid).state is FlowState.COMPLETED
    assert [f.uuid for f in api.list_flows(states=["completed"])] == [flow.uuid]


def test_bad_input_gets_clear_errors(project: Project) -> None:
    with pytest.raises(ConveyorError, match="unknown job state 'DONE'; valid states: WAITING"):
        api.list_jobs(states=["DONE"])
    with pytest.raises(NotFoundError, match="no job with db id 999"):
        api.get_job(999)
    with pytest.raises(NotFoundError, match="no flow with uuid nope"):
        api.get_flow("nope")


def test_rerun_sends_descendants_back_to_waiting(project: Project) -> None:
    first = J.add(1, 1)
    second = J.add(first.output, 1)
    ids = submit_flow(Flow([first, second]))
    assert Runner().run_all_jobs(max_seconds=120)
    with pytest.raises(ConveyorError, match="no failed step to retry"):
        api.retry(ids[0])
    again = api.rerun(ids[0])
    assert again.state is JobState.READY
    assert again.remote.run_dir is None
    assert api.get_job(ids[1]).state is JobState.WAITING
    assert Runner().run_all_jobs(max_seconds=120)
    assert [api.get_job(i).state for i in ids] == [JobState.COMPLETED] * 2
    history = [h.state for h in api.get_job(ids[0]).history]
    assert history.count(JobState.COMPLETED) == 2


def test_rerun_refuses_a_job_that_is_not_finished(project: Project) -> None:
    db_id = submit_command(["true"])
    with pytest.raises(ConveyorError, match="only finished jobs can be rerun"):
        api.rerun(db_id)


# --- queries: filters, sorting, counts ---------------------------------------------------


def test_queries_filter_sort_and_count_alike(project: Project) -> None:
    ok = J.add(1, 1)
    bad = J.fail("query me")
    bad.name = "broken_add"
    later = J.add(ok.output, 2)
    submit_flow(Flow([ok, bad, later], name="mixed"))
    ids = [api.list_jobs(uuids=[j.uuid])[0].db_id for j in (ok, bad, later)]
    extra = submit_command(["true"], name="cmd_true", priority=5)
    assert Runner().run_all_jobs(max_seconds=120)
    assert api.get_job(ids[1]).state is JobState.FAILED
    newest = sorted([*ids, extra], reverse=True)

    def check(expected: list[int], **filters: object) -> None:
        found = [d.db_id for d in api.list_jobs(**filters)]  # type: ignore[arg-type]
        assert found == expected, filters
        assert api.count_jobs(**filters) == len(expected), filters  # type: ignore[arg-type]

    check(sorted([ids[0], ids[2]], reverse=True), name="add")
    check([ids[1]], name="*_add")
    check([ids[1]], in_error=True)
    check([d for d in newest if d != ids[1]], in_error=False)
    check([extra], states=["completed"], name="cmd_*")
    check([], created_after="1h", name="nothing*")
    check(newest, created_after="1h")
    check([], created_before="1h")
    check(newest, updated_after="1h")
    check(newest, updated_before=datetime.now(UTC) + timedelta(minutes=1))
    check([], updated_before="1h")
    check([], locked=True)

    by_priority = api.list_jobs(sort="priority")
    assert by_priority[0].db_id == extra
    by_state = [d.state for d in api.list_jobs(sort="state")]
    assert by_state == sorted(by_state, key=list(JobState).index)
    assert [d.db_id for d in api.list_jobs(sort="name", limit=2)] == sorted([ids[0], ids[2]])
    assert [d.db_id for d in api.list_jobs(newest_first=False, limit=2)] == newest[::-1][:2]
    assert [d.db_id for d in api.list_jobs(reverse=True, limit=2)] == newest[::-1][:2]
    with pytest.raises(ConveyorError, match="unknown sort key 'size'; use one of id, "):
        api.list_jobs(sort="size")

    query = api.job_query(states=["COMPLETED"], name="add")
    assert not query.is_empty
    assert query.post_filtered
    assert api.count_selected(query) == len(api.select_jobs(query)) == 2
    assert api.JobQuery().is_empty


def test_parse_time_reads_iso_times_and_ages() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert api.parse_time("30m", now=now) == now - timedelta(minutes=30)
    assert api.parse_time("2h ago", now=now) == now - timedelta(hours=2)
    assert api.parse_time("1.5d", now=now) == now - timedelta(hours=36)
    assert api.parse_time("1w", now=now) == now - timedelta(weeks=1)
    assert api.parse_time("2024-05-01T13:00+02:00") == datetime(2024, 5, 1, 11, tzinfo=UTC)
    local = datetime(2024, 5, 1, 13, 0).astimezone()
    assert api.parse_time("2024-05-01T13:00") == local
    assert api.parse_time("today", now=now).astimezone().hour == 0
    with pytest.raises(ConveyorError, match=r"cannot read the time 'soon'.*30m, 2h, 3d, 1w"):
        api.parse_time("soon")


def test_list_flows_by_name_and_flow_reads(project: Project) -> None:
    first = submit_flow(Flow([J.add(1, 2)], name="relax-a"))
    submit_flow(Flow([J.add(1, 2)], name="static"))
    assert [f.name for f in api.list_flows(name="relax*")] == ["relax-a"]
    assert [f.name for f in api.list_flows(limit=1)] == ["static"]
    flow = api.find_flow(first[0])
    assert flow.name == "relax-a"
    assert api.find_flow(str(first[0])).uuid == api.find_flow(flow.uuid).uuid
    assert api.flow_counts(flow.uuid) == {JobState.READY: 1}
    assert [d.db_id for d in api.flow_jobs(flow.uuid)] == first
    with pytest.raises(ConveyorError, match="unknown flow state"):
        api.list_flows(states=["DONE"])
    with pytest.raises(NotFoundError, match="no job with db id 99"):
        api.find_flow(99)
