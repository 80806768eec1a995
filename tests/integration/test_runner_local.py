"""The Runner end to end on a local worker: every job is a real background process."""

from __future__ import annotations

import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from jobflow import Flow, JobStore, OnMissing, run_locally
from maggma.stores import MemoryStore

from conveyor import Runner, submit_command, submit_flow
from conveyor.api import retry
from conveyor.db.base import JobFilter
from conveyor.exceptions import RunnerTimeoutError
from conveyor.models import utcnow
from conveyor.project import Project
from conveyor.states import FlowState, JobState
from conveyor.testing import jobs as J

pytestmark = pytest.mark.integration

PATH = [
    JobState.READY,
    JobState.CHECKED_OUT,
    JobState.UPLOADED,
    JobState.SUBMITTED,
    JobState.RUNNING,
    JobState.TERMINATED,
    JobState.DOWNLOADED,
    JobState.COMPLETED,
]


def outputs_by_name(docs: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    """Outputs keyed by job name and index; uuids inside outputs are replaced by a mark,
    since two runs of the same flow code get different uuids."""

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ("<uuid>" if k == "uuid" else scrub(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value

    return sorted((d["name"], d["index"], repr(scrub(d["output"]))) for d in docs)


def reference_outputs(flow: Flow) -> list[tuple[str, int, str]]:
    store = JobStore(MemoryStore())
    with warnings.catch_warnings():
        # run_locally uses monty's deprecated `cd`; that is jobflow's business, not ours.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", "Some jobs are not connected", UserWarning)
        run_locally(flow, store=store, log=False)
    return outputs_by_name(list(store.query({})))


def our_outputs(project: Project) -> list[tuple[str, int, str]]:
    with project.jobstore_lock:
        return outputs_by_name(list(project.jobstore.query({})))


def states(project: Project, flow: Flow) -> dict[str, list[JobState]]:
    found: dict[str, list[JobState]] = {}
    for doc in project.db.find_jobs(JobFilter(flow_uuids=[flow.uuid])):
        found.setdefault(doc.name, []).append(doc.state)
    return found


def test_the_readme_example(project: Project) -> None:
    one = J.add(1, 2)
    two = J.add(one.output, 3)
    ids = submit_flow(Flow([one, two]))
    assert [project.db.get_job(i).state for i in ids] == [JobState.READY, JobState.WAITING]
    assert Runner().run_all_jobs(max_seconds=120)
    assert project.jobstore.get_output(two.uuid) == 6
    for db_id in ids:
        doc = project.db.get_job(db_id)
        assert doc.state is JobState.COMPLETED
        assert [h.state for h in doc.history][-len(PATH) :] == PATH
        assert doc.remote.exit_code == 0
        assert not doc.lock.id
    assert project.db.get_flow(doc.flow_uuid).state is FlowState.COMPLETED


def build_diamond() -> Flow:
    a = J.add(1, 2)
    b = J.add(a.output, 10)
    c = J.add(a.output, 20)
    d = J.add(b.output, c.output)
    return Flow([a, b, c, d])


def build_replace() -> Flow:
    a = J.make_list(4)
    r = J.replace_with_sum(a.output)
    return Flow([a, r, J.add(r.output, 1)])


def build_addition() -> Flow:
    a = J.add_more(1, 2)
    return Flow([a, J.add(a.output, 1)])


def build_detour() -> Flow:
    a = J.add_with_detour(1, 2)
    return Flow([a, J.add(a.output, 1)])


def build_stop_children() -> Flow:
    a = J.stop_children_job(5)
    b = J.add(a.output, 1)
    return Flow([a, b, J.add(b.output, 1)])


def build_stop_jobflow() -> Flow:
    a = J.stop_flow_job(5)
    return Flow([a, J.add(a.output, 1), J.add(a.output, 2)])


def build_stored_data() -> Flow:
    a = J.store_data_job(7)
    return Flow([a, J.add(a.output, 1)])


def build_failure() -> Flow:
    a = J.add(1, 1)
    b = J.fail("boom")
    tolerant = J.sleep_job(0, b.output)
    tolerant.config.on_missing_references = OnMissing.NONE
    return Flow([a, b, J.add(b.output, 1), tolerant])


BUILDERS = {
    "diamond": build_diamond,
    "replace": build_replace,
    "addition": build_addition,
    "detour": build_detour,
    "stop_children": build_stop_children,
    "stop_jobflow": build_stop_jobflow,
    "stored_data": build_stored_data,
    "failure": build_failure,
}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_outputs_equal_what_run_locally_gives(project: Project, kind: str) -> None:
    expected = reference_outputs(BUILDERS[kind]())
    flow = BUILDERS[kind]()
    submit_flow(flow)
    assert Runner().run_all_jobs(max_seconds=180)
    assert our_outputs(project) == expected
    assert project.db.count_jobs(JobFilter(locked=True)) == 0


def test_response_effects_on_states(project: Project) -> None:
    flows = {kind: BUILDERS[kind]() for kind in ("stop_children", "stop_jobflow", "stored_data")}
    for flow in flows.values():
        submit_flow(flow)
    assert Runner().run_all_jobs(max_seconds=180)
    assert states(project, flows["stop_children"]) == {
        "stop_children_job": [JobState.COMPLETED],
        "add": [JobState.STOPPED, JobState.STOPPED],
    }
    assert project.db.get_flow(flows["stop_children"].uuid).state is FlowState.STOPPED
    assert states(project, flows["stop_jobflow"])["add"] == [JobState.STOPPED] * 2
    stored = project.db.find_jobs(JobFilter(flow_uuids=[flows["stored_data"].uuid]))
    assert [d.stored_data for d in stored] == [{"note": 7}, None]


def test_replace_and_detour_add_jobs_to_the_flow(project: Project) -> None:
    replace, detour = build_replace(), build_detour()
    submit_flow(replace)
    submit_flow(detour)
    assert Runner().run_all_jobs(max_seconds=180)
    replaced = project.db.find_jobs(JobFilter(flow_uuids=[replace.uuid]))
    assert all(d.state is JobState.COMPLETED for d in replaced)
    # the replaced job lives on as index 2 (jobflow's store_inputs job)
    assert sorted(d.index for d in replaced if d.name == "store_inputs") == [2]
    assert len(replaced) == 3 + 4 + 2  # original 3, four adds, the sum, the index-2 job
    last = project.jobstore.get_output(replace.jobs[-1].uuid)
    assert last == sum(range(4)) + 1
    detoured = project.db.find_jobs(JobFilter(flow_uuids=[detour.uuid]))
    child = next(d for d in detoured if d.uuid == detour.jobs[1].uuid)
    extra = next(d for d in detoured if d.uuid not in {j.uuid for j in detour.jobs})
    assert extra.uuid in child.parents  # the child waited for the detour
    assert child.ended_at is not None
    assert extra.ended_at is not None
    assert child.ended_at >= extra.ended_at


def test_a_failing_job_is_failed_with_its_traceback(project: Project) -> None:
    flow = build_failure()
    submit_flow(flow)
    assert Runner().run_all_jobs(max_seconds=180)
    docs = {d.uuid: d for d in project.db.find_jobs(JobFilter(flow_uuids=[flow.uuid]))}
    ok, failed, child, tolerant = (docs[j.uuid] for j in flow.jobs)
    assert ok.state is JobState.COMPLETED
    assert failed.state is JobState.FAILED
    assert failed.error is not None
    assert failed.error.message == "RuntimeError: boom"
    assert failed.error.traceback is not None
    assert "raise RuntimeError(message)" in failed.error.traceback
    assert child.state is JobState.WAITING  # on_missing_references="error": never runs
    assert tolerant.state is JobState.COMPLETED  # on_missing_references="none": runs
    assert project.jobstore.get_output(tolerant.uuid) is None
    assert project.db.get_flow(flow.uuid).state is FlowState.FAILED


def test_a_payload_that_dies_is_failed_with_exit_code_and_stderr(project: Project) -> None:
    (db_id,) = submit_flow(J.crash(7, "segfault-ish death"))
    assert Runner().run_one_job(db_id, max_seconds=120)
    doc = project.db.get_job(db_id)
    assert doc.state is JobState.FAILED
    assert doc.remote.exit_code == 7
    assert doc.remote.failure_reason == "EXIT_CODE"
    assert doc.error is not None
    assert "exit code 7" in doc.error.message
    assert "segfault-ish death" in doc.error.message


def test_command_jobs(project: Project) -> None:
    ok = submit_command(["sh", "-c", "echo hello; echo warn >&2"])
    bad = submit_command(["sh", "-c", "echo nope >&2; exit 4"])
    tolerated = submit_command(["sh", "-c", "exit 5"], check=False)
    assert Runner().run_all_jobs(max_seconds=180)
    out = project.jobstore.get_output(project.db.get_job(ok).uuid)
    assert out["exit_code"] == 0
    assert out["stdout_tail"].strip() == "hello"
    assert out["stderr_tail"].strip() == "warn"
    failed = project.db.get_job(bad)
    assert failed.state is JobState.FAILED
    assert failed.error is not None
    assert "exited with code 4" in failed.error.message
    assert "nope" in failed.error.message
    assert project.jobstore.get_output(project.db.get_job(tolerated).uuid)["exit_code"] == 5


def test_a_transient_step_error_is_retried_then_remote_error_then_retry(
    project: Project, tmp_path: Path
) -> None:
    # The worker's work dir is a plain file: creating run dirs fails (an OSError, as a
    # full disk or a dropped mount would), on every attempt.
    work_dir = Path(project.work_dir("local"))
    work_dir.parent.mkdir(parents=True, exist_ok=True)
    work_dir.write_text("not a directory")
    (db_id,) = submit_flow(J.add(2, 2))
    runner = Runner()
    assert runner.run_one_job(db_id, max_seconds=60)
    doc = project.db.get_job(db_id)
    assert doc.state is JobState.REMOTE_ERROR
    assert doc.previous_state is JobState.CHECKED_OUT
    assert doc.attempts.count == project.config.runner.max_step_attempts
    assert doc.error is not None
    assert doc.error.step == "upload"
    assert str(work_dir) in doc.error.message
    # every failed attempt was recorded before the last one gave up
    assert not doc.lock.id

    work_dir.unlink()
    retried = retry(db_id)
    assert retried.state is JobState.CHECKED_OUT
    assert runner.run_one_job(db_id, max_seconds=60)
    doc = project.db.get_job(db_id)
    assert doc.state is JobState.COMPLETED
    assert doc.error is None
    assert project.jobstore.get_output(doc.uuid) == 4


def test_an_expired_lease_is_taken_over_and_a_live_one_left_alone(project: Project) -> None:
    (expired_id,) = submit_flow(J.add(1, 1))
    (live_id,) = submit_flow(J.add(2, 2))
    past = utcnow() - timedelta(hours=1)
    ghost = project.db.lock_job(expired_id, "ghost", timedelta(seconds=1), now=past)
    assert ghost is not None
    alive = project.db.lock_job(live_id, "alive", timedelta(hours=1))
    assert alive is not None

    runner = Runner()
    assert runner.run_one_job(expired_id, max_seconds=60)
    assert project.db.get_job(expired_id).state is JobState.COMPLETED
    assert not runner.run_one_job(live_id, max_seconds=0.5, raise_at_timeout=False)
    doc = project.db.get_job(live_id)
    assert doc.state is JobState.READY
    assert doc.lock.owner == "alive"
    # the ghost wakes up and releases with its old lock id: nothing changes
    assert ghost.lock.id is not None
    assert not project.db.release_job_lock(expired_id, ghost.lock.id)
    assert project.db.get_job(expired_id).state is JobState.COMPLETED


def test_run_one_job_targets_and_timeouts(project: Project) -> None:
    first = J.add(1, 2)
    second = J.add(first.output, 1)
    first_id, second_id = submit_flow(Flow([first, second]))
    runner = Runner()
    assert runner.run_one_job(first_id, target_state=JobState.UPLOADED, max_seconds=60)
    assert project.db.get_job(first_id).state is JobState.UPLOADED
    with pytest.raises(RunnerTimeoutError, match=f"job {second_id} is WAITING"):
        runner.run_one_job(second_id, max_seconds=0.3)
    assert not runner.run_one_job(second_id, max_seconds=0.3, raise_at_timeout=False)
    assert runner.run_one_job(job_id=(first.uuid, 1), max_seconds=60)
    assert project.db.get_job(first_id).state is JobState.COMPLETED
    assert runner.run_one_job(second_id, max_seconds=60)
    assert project.jobstore.get_output(second.uuid) == 4


def test_the_runner_registers_and_says_when_it_stopped(project: Project) -> None:
    runner = Runner()
    runner.run(ticks=2)
    (doc,) = project.db.list_runners()
    assert doc.runner_id == runner.runner_id
    assert doc.stopped_at is not None
    assert sorted(doc.roles) == ["checkout", "complete", "queue", "transfer"]
