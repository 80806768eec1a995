"""The transfer and queue steps: checkout, upload, submit, download.

Each handler takes a :class:`LockedJob` and returns a :class:`StepResult` declaring the
next state; the runner applies it on release. Each is safe to repeat (see DESIGN.md).
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Any

from conveyor.exceptions import PermanentStepError, QueueParseError, TransientStepError
from conveyor.models import JobDoc, utcnow
from conveyor.project import Project
from conveyor.queue.base import (
    EXIT_CODE_FILE,
    JOB_FILE,
    OUTPUT_FILE,
    STARTED_FILE,
    STDERR_FILE,
    STDOUT_FILE,
    SubmitSpec,
)
from conveyor.queue.resources import parse_resources
from conveyor.runner.context import LockedJob, StepResult
from conveyor.states import JobState

__all__ = [
    "checkout",
    "download",
    "download_dir",
    "render_files",
    "submit",
    "submit_spec",
    "upload",
]

log = logging.getLogger(__name__)


def run_dir_for(work_dir: str, uuid: str, index: int) -> str:
    """One run dir per job (and per index of a replaced job), spread over subdirs."""
    return f"{work_dir.rstrip('/')}/{uuid[:2]}/{uuid}_{index}"


def checkout(job: LockedJob) -> StepResult:
    """READY → CHECKED_OUT: claim the job and pick its run dir."""
    doc = job.doc
    run_dir = run_dir_for(job.project.work_dir(doc.worker), doc.uuid, doc.index)
    return StepResult(JobState.CHECKED_OUT, {"remote.run_dir": run_dir})


def _resolved_job(job: LockedJob) -> dict[str, Any]:
    """The job with its references resolved from the JobStore, serialized."""
    from jobflow.core.job import Job
    from monty.json import MontyDecoder

    from conveyor.flows import serialize_job

    try:
        jf_job = MontyDecoder().process_decoded(job.doc.job)
    except Exception as exc:
        raise PermanentStepError(
            f"job {job.db_id}: cannot rebuild the jobflow job (is its module importable "
            f"by the runner?): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(jf_job, Job):
        raise PermanentStepError(f"job {job.db_id}: stored job is not a jobflow Job")
    mode = jf_job.config.resolve_references
    if mode:
        try:
            with job.project.jobstore_lock:
                jf_job.resolve_args(
                    store=job.project.jobstore, inplace=True, wrap_resolved=mode == "both"
                )
        except ValueError as exc:
            # jobflow raises ValueError for a reference whose output is missing and
            # on_missing_references is "error": no retry brings the output back.
            raise PermanentStepError(f"job {job.db_id}: {exc}") from exc
    return serialize_job(jf_job)


_COMMAND_FUNCTION = {"@module": "conveyor.execution.command", "@callable": "run_command"}


def command_spec(job_dict: dict[str, Any]) -> dict[str, Any] | None:
    """The argv and settings of a command job, so the worker can run it without
    importing jobflow (a Python start of about 50 ms instead of 0.6 s); None for other
    jobs."""
    function = job_dict.get("function") or {}
    if any(function.get(k) != v for k, v in _COMMAND_FUNCTION.items()):
        return None
    args = list(job_dict.get("function_args") or [])
    kwargs = dict(job_dict.get("function_kwargs") or {})
    names = ("argv", "check", "tail_chars")
    bound = {**dict(zip(names, args, strict=False)), **kwargs}
    return {
        "argv": [str(a) for a in bound["argv"]],
        "check": bool(bound.get("check", True)),
        "tail_chars": int(bound.get("tail_chars", 4000)),
        "uuid": job_dict["uuid"],
        "index": job_dict["index"],
        "name": job_dict.get("name"),
        "metadata": job_dict.get("metadata") or {},
        "hosts": job_dict.get("hosts") or [],
    }


def _additional_stores(job: LockedJob) -> list[str]:
    stores: dict[str, Any] = getattr(job.project.jobstore, "additional_stores", {})
    return list(stores)


def submit_spec(project: Project, doc: JobDoc, run_dir: str, token: str) -> SubmitSpec:
    """What the worker's queue adapter renders and submits for this job."""
    worker = project.worker(doc.worker)
    python = project.python(doc.worker)
    return SubmitSpec(
        run_dir=run_dir,
        job_name=doc.name or f"job-{doc.db_id}",
        submit_token=token,
        command=[python, "-m", "conveyor.execution", run_dir],
        pre_run=worker.pre_run,
        env={**worker.env, **doc.exec_env},
        resources=parse_resources(worker.resources, doc.resources),
    )


def render_files(project: Project, doc: JobDoc) -> tuple[SubmitSpec, dict[str, str], list[str]]:
    """The files the upload step writes for the queue (by name) and the submit argv,
    built exactly as the runner builds them, without writing or submitting anything.

    A job not checked out yet gets the run dir and token it would get (the token is a
    placeholder until the upload step draws the real one).
    """
    run_dir = doc.remote.run_dir or run_dir_for(project.work_dir(doc.worker), doc.uuid, doc.index)
    token = doc.remote.submit_token or f"{doc.db_id}-000000000000"
    spec = submit_spec(project, doc, run_dir, token)
    adapter = project.adapter(doc.worker)
    return spec, adapter.render(spec), adapter.submit_command(spec)


def upload(job: LockedJob) -> StepResult:
    """CHECKED_OUT → UPLOADED: write job.json and the queue script into the run dir."""
    doc = job.doc
    run_dir = doc.remote.run_dir
    if not run_dir:
        raise PermanentStepError(f"job {job.db_id} has no run dir; rerun it")
    # One token per upload: a resubmission after a rerun never adopts an old queue job.
    token = f"{doc.db_id}-{secrets.token_hex(6)}"
    resolved = _resolved_job(job)
    payload: dict[str, Any] = {
        "version": 1,
        "job": resolved,
        "additional_stores": sorted(_additional_stores(job)),
    }
    command = command_spec(resolved)
    if command is not None:
        payload["command"] = command
    files = {f"{run_dir}/{JOB_FILE}": json.dumps(payload).encode()}
    adapter = job.project.adapter(doc.worker)
    for name, text in adapter.render(submit_spec(job.project, doc, run_dir, token)).items():
        files[f"{run_dir}/{name}"] = text.encode()
    host = job.project.host(doc.worker)
    if host.exists(run_dir):
        # A rerun reuses the run dir: results of the previous run must not decide this one.
        for stale in (OUTPUT_FILE, EXIT_CODE_FILE, STARTED_FILE):
            host.remove(f"{run_dir}/{stale}")
    else:
        host.mkdir(run_dir)
    host.write_files(files)
    return StepResult(
        JobState.UPLOADED,
        {
            "remote.submit_token": token,
            "remote.queue_id": None,
            "remote.submitted_at": None,
            "remote.exit_code": None,
            "remote.failure_reason": None,
            "remote.queue_state": None,
            "remote.native_state": None,
            "remote.missing_since": None,
        },
    )


def _adopt(job: LockedJob, run_dir: str, token: str) -> str | None:
    """The queue id of an earlier submission of this upload, if there was one."""
    doc = job.doc
    host = job.project.host(doc.worker)
    adapter = job.project.adapter(doc.worker)
    found = host.execute(adapter.find_by_token_command(token), timeout=_timeout(job))
    queue_id = adapter.parse_find_by_token(found.exit_code, found.stdout, found.stderr, token)
    if queue_id is None and host.exists(f"{run_dir}/{STARTED_FILE}"):
        # It ran (or runs) but the queue no longer lists it: the script recorded its id.
        queue_id = host.read_bytes(f"{run_dir}/{STARTED_FILE}").decode().strip() or None
    return queue_id


def _timeout(job: LockedJob) -> float:
    return job.project.worker(job.doc.worker).command_timeout


def submit(job: LockedJob) -> StepResult:
    """UPLOADED → SUBMITTED: hand the script to the queue; exactly one queue job."""
    doc = job.doc
    run_dir, token = doc.remote.run_dir, doc.remote.submit_token
    if not run_dir or not token:
        raise PermanentStepError(f"job {job.db_id} was not uploaded properly; rerun it")
    if doc.remote.submitted_at is not None:
        # An earlier attempt may have submitted before it crashed: adopt, never twice.
        queue_id = _adopt(job, run_dir, token)
        if queue_id is not None:
            log.info("job %s: adopted queue job %s of an earlier attempt", job.db_id, queue_id)
            return StepResult(JobState.SUBMITTED, {"remote.queue_id": queue_id})
    job.save({"remote.submitted_at": utcnow()})
    adapter = job.project.adapter(doc.worker)
    host = job.project.host(doc.worker)
    argv = adapter.submit_command(submit_spec(job.project, doc, run_dir, token))
    result = host.execute(argv, cwd=run_dir, timeout=_timeout(job))
    try:
        queue_id = adapter.parse_submit_output(result.exit_code, result.stdout, result.stderr)
    except QueueParseError as exc:
        raise TransientStepError(
            f"submitting job {job.db_id} on worker {doc.worker!r}: {exc}\n"
            f"command: {result.argv!r}, exit code {result.exit_code}, "
            f"stdout: {result.stdout.strip()!r}, stderr: {result.stderr.strip()!r}"
        ) from exc
    return StepResult(JobState.SUBMITTED, {"remote.queue_id": queue_id})


def download_dir(job: LockedJob) -> Path:
    """Where the runner keeps the files it fetched for this job."""
    return job.project.job_downloads(job.doc.uuid, job.doc.index)


def _fetch(job: LockedJob, name: str) -> bytes | None:
    """One file of the run dir copied into the download dir; None if it is missing."""
    run_dir, target = job.doc.remote.run_dir, download_dir(job) / name
    try:
        job.project.host(job.doc.worker).get(f"{run_dir}/{name}", str(target))
    except FileNotFoundError:
        target.unlink(missing_ok=True)
        return None
    return target.read_bytes()


def _succeeded(output: bytes | None) -> bool:
    try:
        return output is not None and json.loads(output).get("error") is None
    except (ValueError, AttributeError):
        return False


def download(job: LockedJob) -> StepResult:
    """TERMINATED → DOWNLOADED: fetch output.json, and the queue's logs if it failed.

    Each file is one transfer (one round trip on SSH), so a job that succeeded costs one:
    the logs only matter to explain a failure, and the exit code is already recorded.
    """
    doc = job.doc
    if not doc.remote.run_dir:
        raise PermanentStepError(f"job {job.db_id} has no run dir; rerun it")
    download_dir(job).mkdir(parents=True, exist_ok=True)
    output = _fetch(job, OUTPUT_FILE)
    for name in (STDOUT_FILE, STDERR_FILE):
        if _succeeded(output):
            (download_dir(job) / name).unlink(missing_ok=True)
        else:
            _fetch(job, name)
    return StepResult(JobState.DOWNLOADED)
