"""Submitting work: jobflow flows and jobs, and plain commands."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.flows import JobDefaults, flow_state, job_docs_from_flow
from conveyor.models import FlowDoc, utcnow
from conveyor.project import Project, open_project

if TYPE_CHECKING:
    from jobflow.core.flow import Flow
    from jobflow.core.job import Job

__all__ = ["submit_command", "submit_flow"]


def submit_flow(
    flow_or_job: Flow | Job | Sequence[Job],
    *,
    worker: str | None = None,
    resources: Mapping[str, Any] | None = None,
    exec_env: Mapping[str, str] | None = None,
    priority: int = 0,
    project: str | os.PathLike[str] | Project | None = None,
) -> list[int]:
    """Store a flow (or a job, or a list of jobs) for the runner to execute.

    Jobs whose parents are not done are WAITING, the others READY.

    Parameters
    ----------
    flow_or_job
        What to run.
    worker
        The worker to run on (default: the project's first worker). A job's own
        ``manager_config={"worker": ...}`` wins.
    resources
        Queue resources for every job, over the worker's defaults.
    exec_env
        Environment variables set for every job on the worker.
    priority
        Higher runs first.
    project
        The project (name, path or object); default: the current one.

    Returns
    -------
    list[int]
        The db ids of the new jobs, in the flow's order.
    """
    from jobflow.core.flow import Flow

    proj = open_project(project)
    worker = worker or proj.config.default_worker
    proj.worker(worker)  # fail now, with the known names, on a typo
    flow = flow_or_job if isinstance(flow_or_job, Flow) else Flow(flow_or_job)
    defaults = JobDefaults(worker, resources, exec_env, priority)
    docs = job_docs_from_flow(flow, proj.db, defaults)
    now = utcnow()
    flow_doc = FlowDoc(
        uuid=flow.uuid,
        name=flow.name,
        state=flow_state(docs),
        job_uuids=sorted({doc.uuid for doc in docs}),
        metadata=dict(getattr(flow, "metadata", None) or {}),
        created_at=now,
        updated_at=now,
    )
    proj.db.insert_flow(flow_doc, docs)
    return [doc.db_id for doc in docs]


def submit_command(
    argv: Sequence[str],
    *,
    name: str | None = None,
    check: bool = True,
    worker: str | None = None,
    resources: Mapping[str, Any] | None = None,
    exec_env: Mapping[str, str] | None = None,
    priority: int = 0,
    project: str | os.PathLike[str] | Project | None = None,
) -> int:
    """Store a job that runs ``argv`` (no shell) in its run dir on the worker.

    The job's output is ``{"argv", "exit_code", "stdout_tail", "stderr_tail"}``. With
    ``check`` (the default) a non-zero exit code makes the job FAILED, with the code
    and the tail of its stderr in the error.

    Returns
    -------
    int
        The db id of the job.
    """
    from conveyor.execution.command import run_command

    if not argv or not all(isinstance(arg, str) for arg in argv):
        raise TypeError("argv must be a non-empty list of strings")
    job = run_command(list(argv), check=check)
    job.name = name or f"command {os.path.basename(argv[0])}"
    (db_id,) = submit_flow(
        job,
        worker=worker,
        resources=resources,
        exec_env=exec_env,
        priority=priority,
        project=project,
    )
    return db_id
