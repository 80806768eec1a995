"""The complete step: outputs into the JobStore, jobflow's Response applied, children
readied and the flow's state updated — all before the job itself is marked done, so a
crash at any point is repaired by simply running the step again (every write is keyed).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from conveyor.db.base import Database, JobFilter
from conveyor.exceptions import PermanentStepError, tail
from conveyor.flows import (
    Assume,
    JobDefaults,
    descendants,
    job_docs_from_flow,
    latest_states,
    parent_done,
)
from conveyor.models import ErrorInfo, JobDoc, utcnow
from conveyor.queue.base import OUTPUT_FILE, STDERR_FILE, STDOUT_FILE
from conveyor.runner.context import FlowLockBusy, LockedJob, StepResult
from conveyor.runner.steps import download_dir
from conveyor.states import JobState, JobUpdate, flow_state_from_jobs, transition

__all__ = ["complete", "refresh_flow"]

log = logging.getLogger(__name__)

_STOPPABLE = (JobState.WAITING, JobState.READY, JobState.PAUSED)


def _read_output(job: LockedJob) -> dict[str, Any] | None:
    path = download_dir(job) / OUTPUT_FILE
    if not path.is_file():
        return None
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PermanentStepError(f"job {job.db_id}: unreadable {path}: {exc}") from exc
    return data


def _log_tail(job: LockedJob, name: str) -> str:
    path = download_dir(job) / name
    try:
        return tail(path.read_text(errors="replace").strip())
    except OSError:
        return ""


def _failure(job: LockedJob, output: dict[str, Any] | None) -> ErrorInfo:
    """What went wrong with the job itself, with its evidence."""
    if output is not None and output.get("error"):
        err = output["error"]
        return ErrorInfo(
            step="job",
            message=f"{err.get('type', 'Error')}: {err.get('message', '')}",
            traceback=err.get("traceback"),
        )
    remote = job.doc.remote
    parts = [
        f"the job on worker {job.doc.worker!r} left the queue without output "
        f"(queue id {remote.queue_id}, exit code {remote.exit_code}, "
        f"reason {remote.failure_reason})"
    ]
    for name in (STDERR_FILE, STDOUT_FILE):
        text = _log_tail(job, name)
        if text:
            parts.append(f"{name} ends with:\n{text}")
    return ErrorInfo(step="job", message="\n".join(parts))


def _store_outputs(job: LockedJob, output: dict[str, Any]) -> None:
    """Copy the documents the job stored on the worker into the project's JobStore."""
    store_part = output.get("store") or {}
    docs = store_part.get("docs") or []
    additional = store_part.get("additional") or {}
    jobstore = job.project.jobstore
    stores: dict[str, Any] = getattr(jobstore, "additional_stores", {})
    with job.project.jobstore_lock:
        if docs:
            jobstore.docs_store.update(docs, key=["uuid", "index"])
        for name, blobs in additional.items():
            if not blobs:
                continue
            if name not in stores:
                raise PermanentStepError(
                    f"job {job.db_id} stored data in additional store {name!r}, which "
                    f"the project's jobstore lacks; add it under jobstore.additional_stores"
                )
            stores[name].update(blobs, key="blob_uuid")


def _stop(db: Database, docs: list[JobDoc], uuids: set[str], by: str) -> None:
    for doc in docs:
        if doc.uuid in uuids and doc.state in _STOPPABLE:
            db.update_job(doc.db_id, transition(doc.state, JobState.STOPPED, by=by))


def _add_flow(
    job: LockedJob, flow_dict: dict[str, Any], root_parents: list[str], assume: Assume
) -> list[JobDoc]:
    from jobflow.core.flow import Flow
    from monty.json import MontyDecoder

    flow = MontyDecoder().process_decoded(flow_dict)
    if not isinstance(flow, Flow):
        flow = Flow(flow)
    doc = job.doc
    defaults = JobDefaults(doc.worker, doc.resources, doc.exec_env, doc.priority)
    new = job_docs_from_flow(
        flow,
        job.db,
        defaults,
        extra_root_parents=root_parents,
        assume=assume,
        flow_uuid=doc.flow_uuid,
    )
    job.db.add_jobs(doc.flow_uuid, new)
    return new


def _apply_response(job: LockedJob, response: dict[str, Any], assume: Assume) -> None:
    """Do what jobflow does with a Response: stop, replace, detour, add."""
    doc, db = job.doc, job.db
    flow_jobs = db.find_jobs(JobFilter(flow_uuids=[doc.flow_uuid]))
    if response.get("stop_jobflow"):
        _stop(db, flow_jobs, {d.uuid for d in flow_jobs} - {doc.uuid}, job.owner)
        return  # jobflow runs no replacement, detour or addition after stop_jobflow
    if response.get("stop_children"):
        _stop(db, flow_jobs, descendants(flow_jobs, [doc.uuid]), job.owner)
    if response.get("replace"):
        _add_flow(job, response["replace"], list(doc.parents), assume)
    if response.get("detour"):
        new = _add_flow(job, response["detour"], [doc.uuid], assume)
        inner = {p for d in new for p in d.parents}
        leaves = sorted({d.uuid for d in new} - inner)
        for child in flow_jobs:
            if doc.uuid in child.parents and child.state is JobState.WAITING:
                parents = sorted(set(child.parents) | set(leaves))
                if parents != child.parents:
                    update = JobUpdate({"parents": parents}, expect_state=child.state)
                    db.update_job(child.db_id, update)
    if response.get("addition"):
        _add_flow(job, response["addition"], [doc.uuid], assume)


def refresh_flow(
    db: Database, flow_uuid: str, by: str, finishing: tuple[JobDoc, JobState] | None = None
) -> None:
    """Ready every WAITING job of the flow whose parents are done; set the flow state.

    ``finishing`` is a job being completed and the state it is about to get: it counts
    as already there. Sweeping all the flow's waiting jobs (not just one job's children)
    also repairs a flow left half-updated by a runner that died. Only waiting jobs are
    read, and the flow's state comes from counts, so completing a job costs the same in
    a flow of ten jobs as in one of ten thousand. The caller holds the flow lock.
    """
    assume: Assume = {finishing[0].key: finishing[1]} if finishing else {}
    waiting = db.find_jobs(JobFilter(flow_uuids=[flow_uuid], states=[JobState.WAITING]))
    if waiting:
        states = latest_states(db, {p for d in waiting for p in d.parents}, assume)
        for doc in waiting:
            if all(parent_done(states.get(p), doc.on_missing) for p in doc.parents):
                db.update_job(doc.db_id, transition(doc.state, JobState.READY, by=by))
    counts = db.count_jobs_by_state(JobFilter(flow_uuids=[flow_uuid]))
    if finishing is not None:
        doc, final = finishing
        counts[doc.state] = counts.get(doc.state, 1) - 1
        counts[final] = counts.get(final, 0) + 1
    present = [state for state, count in counts.items() if count > 0]
    db.update_flow(flow_uuid, {"state": flow_state_from_jobs(present), "updated_at": utcnow()})


def complete(job: LockedJob) -> StepResult:
    """DOWNLOADED → COMPLETED or FAILED, with everything that follows from it."""
    doc, db = job.doc, job.db
    output = _read_output(job)
    ok = output is not None and not output.get("error")
    final = JobState.COMPLETED if ok else JobState.FAILED
    fields: dict[str, Any] = {}
    if output is not None and ok:
        _store_outputs(job, output)
        response = output.get("response") or {}
        if response.get("stored_data") is not None:
            fields["stored_data"] = response["stored_data"]
    else:
        response = {}
        error = _failure(job, output)
        fields["error"] = error.model_dump()
        log.info("job %s failed: %s", job.db_id, error.message.splitlines()[0])
    flow_lock = db.lock_flow(doc.flow_uuid, job.owner, job.lease)
    if flow_lock is None:
        raise FlowLockBusy(doc.flow_uuid)
    try:
        if response:
            _apply_response(job, response, {doc.key: final})
        refresh_flow(db, doc.flow_uuid, job.owner, (doc, final))
    finally:
        db.release_flow_lock(doc.flow_uuid, flow_lock)
    return StepResult(final, fields)
