"""The Python API for scripts and notebooks: reads, counts, outputs, retry and rerun."""

from __future__ import annotations

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
