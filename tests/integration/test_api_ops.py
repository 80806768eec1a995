"""The Python API's operations on real jobs: pause, resume, cancel (in the queue too),
set state and settings, rerun, delete, hold and release, and waiting.

Jobs are driven by a real Runner; where a test needs a job in a given state without
running anything, it walks the job there with ``set_state`` one hop at a time, as a
person repairing a job would.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from jobflow import Flow

from conveyor import Runner, api, submit_flow
from conveyor.exceptions import (
    CommandError,
    ConfigError,
    ConveyorError,
    InvalidTransitionError,
    LockError,
    NotFoundError,
    QueueError,
)
from conveyor.models import EPOCH, JobDoc, utcnow
from conveyor.project import Project
from conveyor.queue.shell import ShellAdapter
from conveyor.states import FlowState, JobState, JobUpdate
from conveyor.testing import jobs as J
from conveyor.testing import temp_project

pytestmark = pytest.mark.integration

S = JobState
LEASE = timedelta(minutes=5)


def chain(n: int = 2, name: str = "chain") -> list[int]:
    """A flow of ``n`` add jobs, each using the one before; their db ids, in order."""
    jobs = [J.add(1, 1)]
    for _ in range(n - 1):
        jobs.append(J.add(jobs[-1].output, 1))
    submit_flow(Flow(jobs, name=name))
    return [api.list_jobs(uuids=[j.uuid])[0].db_id for j in jobs]


def walk(db_id: int, *states: JobState) -> JobDoc:
    """Move a job along ``states`` one allowed hop at a time."""
    doc = api.get_job(db_id)
    for state in states:
        doc = api.set_state(db_id, state)
    return doc


def states(ids: Sequence[int]) -> list[JobState]:
    return [api.get_job(i).state for i in ids]


def unused_pid() -> str:
    """A pid no process has (the shell queue's ids are pids)."""
    top = int(Path("/proc/sys/kernel/pid_max").read_text())
    for pid in range(top - 1, 1, -1):
        if not Path(f"/proc/{pid}").exists():
            return str(pid)
    raise AssertionError("no free pid")  # pragma: no cover


def flow_state(db_id: int) -> FlowState:
    return api.find_flow(db_id).state


# --- pause, resume ----------------------------------------------------------------------


def test_pause_and_resume_follow_the_parents(project: Project) -> None:
    first, second = chain()
    outcomes = api.pause([first, second])
    assert [o.ok for o in outcomes] == [True, True]
    assert [o.doc.state for o in outcomes if o.doc] == [S.PAUSED, S.PAUSED]
    assert flow_state(first) is FlowState.PAUSED
    (again,) = api.pause([first])
    assert again.ok
    assert again.note == "already PAUSED"

    assert api.resume(second).state is S.WAITING  # its parent is paused, not done
    assert api.resume(first).state is S.READY
    assert flow_state(first) is FlowState.READY
    assert [h.by for h in api.get_job(first).history[-2:]] == ["api", "api"]
    with pytest.raises(ConveyorError, match=f"job {first} is READY, not PAUSED"):
        api.resume(first)

    assert Runner().run_all_jobs(max_seconds=120)
    with pytest.raises(ConveyorError, match="only READY or WAITING jobs can be paused"):
        api.pause(first)
    assert states([first, second]) == [S.COMPLETED, S.COMPLETED]


def test_each_job_gets_an_outcome_and_a_runner_lock_is_respected(project: Project) -> None:
    ids = chain(3)
    assert project.db.lock_job(ids[1], "runner-x", LEASE) is not None
    outcomes = api.cancel([ids[0], ids[1], 999, ids[2]])
    assert [o.db_id for o in outcomes] == [ids[0], ids[1], 999, ids[2]]
    assert [o.ok for o in outcomes] == [True, False, False, True]
    busy, missing = outcomes[1].error, outcomes[2].error
    assert isinstance(busy, LockError)
    assert "locked by runner-x" in str(busy)
    assert "try again" in str(busy)
    assert isinstance(missing, NotFoundError)
    assert states(ids) == [S.CANCELLED, S.WAITING, S.CANCELLED]
    assert outcomes[0].as_dict() == {
        "db_id": ids[0],
        "name": "add",
        "ok": True,
        "state": "CANCELLED",
        "note": "",
        "error": None,
    }
    with pytest.raises(LockError, match="runner-x"):
        api.cancel(ids[1])
    project.db.unlock_jobs()
    assert api.cancel(ids[1]).state is S.CANCELLED
    assert flow_state(ids[0]) is FlowState.CANCELLED


def test_a_job_in_step_backoff_is_changed_without_waiting(project: Project) -> None:
    first, second = chain()
    for db_id in (first, second):
        locked = project.db.lock_job(db_id, "runner-x", LEASE)
        assert locked is not None
        assert locked.lock.id is not None
        failed = JobUpdate({"attempts.count": 1, "attempts.retry_at": utcnow() + LEASE})
        assert project.db.release_job_lock(
            db_id, locked.lock.id, failed, free_at=utcnow() + timedelta(hours=1)
        )
    retried = api.retry(first)
    assert retried.attempts.count == 0
    assert retried.lock.expires_at == EPOCH  # free for a runner at once
    assert api.cancel(second).state is S.CANCELLED


# --- cancel -----------------------------------------------------------------------------


def _queue_lists(project: Project, doc: JobDoc) -> bool:
    adapter, host = project.adapter(doc.worker), project.host(doc.worker)
    queue_id = str(doc.remote.queue_id)
    result = host.execute(adapter.status_command([queue_id]))
    return queue_id in adapter.parse_status_output(
        result.exit_code, result.stdout, result.stderr, [queue_id]
    )


def test_cancel_a_running_job_cancels_its_queue_job(project: Project) -> None:
    (db_id,) = submit_flow(J.sleep_job(60))
    assert Runner().run_one_job(db_id, target_state=S.RUNNING, max_seconds=60)
    running = api.get_job(db_id)
    assert _queue_lists(project, running)
    (outcome,) = api.cancel([db_id])
    assert outcome.ok, outcome.message
    assert outcome.note == f"queue job {running.remote.queue_id} cancelled"
    assert outcome.doc is not None
    assert outcome.doc.state is S.CANCELLED
    assert outcome.doc.history[-1].by == "api"
    assert outcome.doc.lock.id is None
    assert flow_state(db_id) is FlowState.CANCELLED
    deadline = utcnow() + timedelta(seconds=30)
    while _queue_lists(project, running):  # the signal is delivered asynchronously
        assert utcnow() < deadline, "the queue job outlived its cancel"


def test_cancel_a_job_that_already_left_its_queue(project: Project) -> None:
    (db_id,) = submit_flow(J.add(1, 2))
    walk(db_id, S.CHECKED_OUT, S.UPLOADED, S.SUBMITTED)
    assert project.db.update_job(db_id, JobUpdate({"remote.queue_id": unused_pid()}))
    (outcome,) = api.cancel([db_id])
    assert outcome.ok, outcome.message
    assert "had already left the queue" in outcome.note
    assert api.get_job(db_id).state is S.CANCELLED


class RefusingQueue(ShellAdapter):
    """The shell queue, but cancel fails and hold/release append to a file."""

    log = ""

    def cancel_command(self, queue_id: str) -> list[str]:
        return ["sh", "-c", "echo permission denied >&2; exit 1"]

    def hold_command(self, queue_id: str) -> list[str]:
        return ["sh", "-c", f'echo "hold $0" >> {self.log}', queue_id]

    def release_command(self, queue_id: str) -> list[str]:
        return ["sh", "-c", f'echo "release $0" >> {self.log}', queue_id]


def _fake_queue(project: Project, monkeypatch: pytest.MonkeyPatch, log: Path) -> None:
    adapter = RefusingQueue()
    adapter.log = str(log)
    monkeypatch.setattr(project, "adapter", lambda worker: adapter)


def test_a_refused_cancel_leaves_the_job_and_shows_the_evidence(
    project: Project, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _fake_queue(project, monkeypatch, tmp_path / "queue.log")
    (db_id,) = submit_flow(J.add(1, 2))
    walk(db_id, S.CHECKED_OUT, S.UPLOADED, S.SUBMITTED, S.RUNNING)
    # Our own pid: the queue still lists the job, so its refusal stands.
    assert project.db.update_job(db_id, JobUpdate({"remote.queue_id": str(os.getpid())}))
    with pytest.raises(CommandError, match="permission denied") as info:
        api.cancel(db_id)
    assert info.value.exit_code == 1
    doc = api.get_job(db_id)
    assert doc.state is S.RUNNING
    assert doc.lock.id is None


def test_hold_and_release_run_the_queue_commands_and_record_nothing(
    project: Project, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    log = tmp_path / "queue.log"
    _fake_queue(project, monkeypatch, log)
    (db_id,) = submit_flow(J.add(1, 2))
    with pytest.raises(ConveyorError, match=r"only a job waiting in its queue \(SUBMITTED\)"):
        api.hold(db_id)
    before = walk(db_id, S.CHECKED_OUT, S.UPLOADED, S.SUBMITTED)
    assert project.db.update_job(db_id, JobUpdate({"remote.queue_id": "4242"}))
    held = api.hold(db_id)
    (released,) = api.release([db_id])
    assert released.ok
    assert "the next poll shows" in released.note
    assert log.read_text().splitlines() == ["hold 4242", "release 4242"]
    assert held.history == before.history
    assert api.get_job(db_id).updated_at == held.updated_at


def test_hold_on_the_shell_queue_is_a_clear_error(project: Project) -> None:
    (db_id,) = submit_flow(J.add(1, 2))
    walk(db_id, S.CHECKED_OUT, S.UPLOADED, S.SUBMITTED)
    assert project.db.update_job(db_id, JobUpdate({"remote.queue_id": "4242"}))
    with pytest.raises(QueueError, match="uses the shell queue, which cannot hold jobs"):
        api.hold(db_id)
    with pytest.raises(QueueError, match="cannot release jobs"):
        api.release(db_id)


# --- set state and settings -------------------------------------------------------------


def test_skips_steps() -> None:
    assert not api.skips_steps(S.READY, S.CHECKED_OUT)
    assert not api.skips_steps(S.TERMINATED, S.DOWNLOADED)
    assert not api.skips_steps(S.FAILED, S.READY)
    assert not api.skips_steps(S.PAUSED, S.WAITING)
    assert api.skips_steps(S.DOWNLOADED, S.COMPLETED)
    assert api.skips_steps(S.READY, S.PAUSED)
    assert api.skips_steps(S.RUNNING, S.CANCELLED)
    assert api.skips_steps(S.READY, S.UPLOADED)


def test_set_state_is_guarded(project: Project) -> None:
    first, second = chain()
    assert api.set_state(first, "paused", force=True).state is S.PAUSED
    assert api.set_state(first, S.READY).state is S.READY  # to READY: never a skip
    with pytest.raises(ConveyorError, match=r"READY → PAUSED skips what the runner does"):
        api.set_state(first, S.PAUSED)
    assert api.set_state(first, S.PAUSED, force=True).state is S.PAUSED
    with pytest.raises(InvalidTransitionError, match="cannot go from WAITING to COMPLETED"):
        api.set_state(second, S.COMPLETED, force=True)
    (same,) = api.set_state([second], S.WAITING)
    assert same.note == "already WAITING"
    with pytest.raises(ConveyorError, match="unknown job state 'done'"):
        api.set_state(first, "done")
    assert api.set_state(second, S.READY).state is S.READY
    assert api.set_state(second, "checked_out").state is S.CHECKED_OUT  # one hop
    with pytest.raises(InvalidTransitionError, match="cannot go from CHECKED_OUT to READY"):
        api.set_state(second, S.READY)
    assert api.get_job(second).history[-1].by == "api"


def test_settings_change_before_a_job_starts_or_after_it_ends(tmp_path: Path) -> None:
    workers = {
        "local": {"type": "local", "work_dir": str(tmp_path / "work")},
        "other": {"type": "local", "work_dir": str(tmp_path / "other")},
    }
    with temp_project(tmp_path / "p", settings={"workers": workers}):
        first, second = chain()
        assert api.set_worker(first, "other").worker == "other"
        with pytest.raises(ConfigError, match=r"no worker 'gpu' \(workers: local, other\)"):
            api.set_worker(first, "gpu")
        doc = api.set_resources(first, {"walltime": "1:00:00", "memory": "2G"})
        assert doc.resources == {"walltime": "1:00:00", "memory": "2G"}
        doc = api.set_resources(first, {"memory": None, "nodes": 2})
        assert doc.resources == {"walltime": "1:00:00", "nodes": 2}
        doc = api.set_resources(first, {"nodes": 1}, replace=True)
        assert doc.resources == {"nodes": 1}
        with pytest.raises(QueueError, match="unknown resource 'wall'; did you mean 'walltime'"):
            api.set_resources(first, {"wall": 10})
        (outcome,) = api.set_priority([second], 7)
        assert outcome.ok
        assert outcome.note == "priority 7"
        assert api.get_job(second).priority == 7
        assert [h.state for h in api.get_job(first).history] == [S.READY]  # no state change

        (started,) = submit_flow(J.add(5, 5))
        walk(started, S.CHECKED_OUT)
        with pytest.raises(ConveyorError, match="is CHECKED_OUT: its worker can change while"):
            api.set_worker(started, "other")
        assert api.set_priority(started, 3).priority == 3  # any state
        api.cancel(started)
        assert Runner().run_all_jobs(max_seconds=120)
        assert api.get_job(first).remote.run_dir.startswith(str(tmp_path / "other"))  # type: ignore[union-attr]
        assert api.set_worker(second, "other").worker == "other"  # ended: fine


# --- rerun ------------------------------------------------------------------------------


def test_rerun_together_and_refused_while_dependents_are_under_way(project: Project) -> None:
    ids = chain(3)
    assert Runner().run_all_jobs(max_seconds=120)
    outcomes = api.rerun([ids[2], ids[0]])
    assert [o.ok for o in outcomes] == [True, True]
    assert outcomes[0].note == f"back to WAITING with job {ids[0]}"
    assert outcomes[1].note == "2 dependent job(s) back to WAITING"
    assert states(ids) == [S.READY, S.WAITING, S.WAITING]
    assert flow_state(ids[0]) is FlowState.READY

    assert Runner().run_all_jobs(max_seconds=120)
    api.rerun(ids[1])  # its child waits again; the rerun job is READY (parent done)
    assert states(ids) == [S.COMPLETED, S.READY, S.WAITING]
    walk(ids[1], S.CHECKED_OUT)
    with pytest.raises(ConveyorError, match=rf"job {ids[1]} is CHECKED_OUT\); wait for them"):
        api.rerun(ids[0])
    assert states(ids) == [S.COMPLETED, S.CHECKED_OUT, S.WAITING]


def test_a_job_that_gave_up_in_its_queue_is_cancelled_before_a_rerun(project: Project) -> None:
    (db_id,) = submit_flow(J.add(1, 2))
    walk(db_id, S.CHECKED_OUT, S.UPLOADED, S.SUBMITTED)
    assert project.db.update_job(db_id, JobUpdate({"remote.queue_id": unused_pid()}))
    api.set_state(db_id, S.REMOTE_ERROR, force=True)
    with pytest.raises(ConveyorError, match="where it may still run; cancel it first"):
        api.rerun(db_id)
    (cancelled,) = api.cancel([db_id])
    assert "had already left the queue" in cancelled.note  # the queue was asked
    assert api.rerun(db_id).state is S.READY


# --- delete -----------------------------------------------------------------------------


def test_delete_jobs_keeps_flows_consistent(project: Project) -> None:
    first, second = chain()
    with pytest.raises(ConveyorError, match=rf"job\(s\) {second} depend on it"):
        api.delete_jobs(first)
    outcomes = api.delete_jobs([second, first])
    assert [o.note for o in outcomes] == ["deleted", "deleted"]
    assert api.list_jobs() == []
    assert api.list_flows() == []  # a flow left without jobs goes too

    first, second = chain(name="done")
    assert Runner().run_all_jobs(max_seconds=120)
    run_dir = Path(str(api.get_job(second).remote.run_dir))
    assert run_dir.is_dir()
    assert api.get_output(second) == 3
    deleted = api.delete_jobs(second, outputs=True, files=True)
    assert deleted.db_id == second
    assert not run_dir.exists()
    with pytest.raises(NotFoundError):
        api.get_job(second)
    (flow,) = api.list_flows()
    assert flow.job_uuids == [api.get_job(first).uuid]
    assert flow.state is FlowState.COMPLETED
    assert api.get_output(first) == 2  # the other job's output stays


def test_delete_flow_is_all_or_nothing(project: Project) -> None:
    ids = chain(2)
    assert project.db.lock_job(ids[1], "runner-x", LEASE) is not None
    with pytest.raises(LockError, match="runner-x"):
        api.delete_flow(ids[0])
    assert api.count_jobs() == 2
    project.db.unlock_jobs()
    walk(ids[0], S.CHECKED_OUT, S.UPLOADED, S.SUBMITTED)
    with pytest.raises(ConveyorError, match=r"has jobs in their queue \(job \d+ is SUBMITTED\)"):
        api.delete_flow(ids[1])
    api.cancel(ids[0])
    outcomes = api.delete_flow(ids[1], files=True)
    assert [o.db_id for o in outcomes] == ids
    assert all(o.note.startswith("deleted (and its flow)") for o in outcomes)
    assert api.count_jobs() == 0
    assert api.list_flows() == []


# --- flows ------------------------------------------------------------------------------


def test_flow_operations(project: Project) -> None:
    ids = chain(3)
    assert [o.db_id for o in api.pause_flow(ids[0])] == ids
    assert flow_state(ids[0]) is FlowState.PAUSED
    assert [o.db_id for o in api.resume_flow(api.find_flow(ids[0]).uuid)] == ids
    assert states(ids) == [S.READY, S.WAITING, S.WAITING]
    assert [o.db_id for o in api.cancel_flow(ids[2])] == ids
    assert flow_state(ids[0]) is FlowState.CANCELLED
    assert api.flow_targets(ids[0], "cancel") == []
    assert [o.db_id for o in api.rerun_flow(ids[0])] == ids
    assert states(ids) == [S.READY, S.WAITING, S.WAITING]
    assert Runner().run_all_jobs(max_seconds=120)
    assert api.rerun_flow(ids[0]) == []  # nothing went wrong
    outcomes = api.rerun_flow(ids[0], all_jobs=True)
    assert [o.ok for o in outcomes] == [True, True, True]
    assert states(ids) == [S.READY, S.WAITING, S.WAITING]
    with pytest.raises(ConveyorError, match="unknown flow action 'stop'"):
        api.flow_targets(ids[0], "stop")


# --- waiting ----------------------------------------------------------------------------


def _in_thread(target: Any, **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = target(**kwargs)
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def test_wait_polls_the_database_while_a_runner_works(project: Project) -> None:
    ids = chain(2)
    with pytest.raises(api.WaitTimeoutError, match=r"after 0 s, 2 of 2 job\(s\) have not"):
        api.wait(ids, timeout=0)
    with pytest.raises(NotFoundError, match="no job with db id 999"):
        api.wait([ids[0], 999], timeout=0)
    with pytest.raises(ConveyorError, match="'terminated' or 'started'"):
        api.wait(ids, until="soon")  # type: ignore[arg-type]
    started, first = _in_thread(api.wait, db_id=ids[0], until="started", timeout=120)
    ended, both = _in_thread(api.wait, db_id=ids, timeout=120, interval=0.05)
    seen: list[tuple[FlowState, dict[JobState, int]]] = []
    flow, flow_box = _in_thread(
        api.wait_flow,
        ref=ids[0],
        timeout=120,
        interval=0.05,
        progress=lambda f, counts: seen.append((f.state, counts)),
    )
    assert Runner().run_all_jobs(max_seconds=120)
    for thread in (started, ended, flow):
        thread.join(timeout=120)
    assert "error" not in first
    assert "error" not in both
    assert "error" not in flow_box
    assert first["result"][0].state in api.STARTED_STATES
    assert [d.db_id for d in both["result"]] == ids
    assert [d.state for d in both["result"]] == [S.COMPLETED, S.COMPLETED]
    assert flow_box["result"].state is FlowState.COMPLETED
    assert seen[0][1][S.READY] == 1
    assert seen[-1] == (FlowState.COMPLETED, {S.COMPLETED: 2})
    assert api.wait(ids[0], timeout=0)[0].state is S.COMPLETED
