"""Administration of a project's database: free locks, delete everything, find and repair
jobs whose document disagrees with their lock, their queue or their run dir, and list the
projects of this machine.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.api._common import Edit, Held, ProjectRef, change_jobs
from conveyor.api._reads import JobQuery, select_jobs
from conveyor.db.base import JobFilter
from conveyor.exceptions import ConveyorError
from conveyor.models import ErrorInfo, JobDoc, utcnow
from conveyor.project import Project, open_project
from conveyor.queue.base import EXIT_CODE_FILE
from conveyor.runfiles import OUTPUT_FILE
from conveyor.runner.daemon import RunnerStatus, runner_status
from conveyor.states import ACTIVE_STATES, QUEUED_STATES, JobState, transition

__all__ = [
    "CHECK_KINDS",
    "GONE_OWNER",
    "NO_OUTPUT",
    "QUEUE_LOST",
    "Finding",
    "ProjectEntry",
    "check",
    "list_projects",
    "reset_project",
    "runner_statuses",
    "unlock",
]

#: A live lease whose owner is a registered runner that stopped or whose process is gone.
GONE_OWNER = "lock of a gone owner"
#: A queued job the worker's queue no longer lists, and whose script never ended.
QUEUE_LOST = "queue lost the job"
#: A job recorded as ended well whose run dir (or download) has no output.
NO_OUTPUT = "run dir without output"
CHECK_KINDS = (GONE_OWNER, QUEUE_LOST, NO_OUTPUT)

_BY = "admin-check"


@dataclass(frozen=True)
class Finding:
    """One disagreement :func:`check` found about a job.

    ``fix`` says what repairs it (empty: nothing safe does; ``note`` says why); with
    ``fix=True`` in :func:`check`, ``fixed`` says whether it was applied, and ``error``
    why not.
    """

    db_id: int
    name: str
    state: JobState
    kind: str
    evidence: str
    fix: str = ""
    fixed: bool = False
    error: str = ""
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-compatible facts."""
        return {
            "db_id": self.db_id,
            "name": self.name,
            "state": str(self.state),
            "kind": self.kind,
            "evidence": self.evidence,
            "fix": self.fix,
            "fixed": self.fixed,
            "error": self.error or None,
            "note": self.note,
        }


def runner_statuses(project: Project) -> list[RunnerStatus]:
    """Every registration of the project's runners, judged as ``conveyor daemon`` does."""
    interval = project.config.runner.heartbeat_interval
    now, host = utcnow(), socket.gethostname()
    return [
        runner_status(doc, heartbeat_interval=interval, now=now, hostname=host)
        for doc in project.db.list_runners()
    ]


def unlock(
    query: JobQuery | None = None, *, force: bool = False, project: ProjectRef = None
) -> int:
    """Free the locks of the selected jobs (all locked jobs without a query); how many.

    Only locks are touched, never states: a freed job continues when a runner takes it.
    A lock held by a live runner is left alone unless ``force`` (the runner then finds
    its lock gone at its next write, which fencing refuses, and drops the job).
    """
    proj = open_project(project)
    now = utcnow()
    docs = [d for d in select_jobs(query, project=proj) if d.lock.is_held(now)]
    if not force:
        live = {s.doc.runner_id for s in runner_statuses(proj) if s.live}
        docs = [d for d in docs if d.lock.owner not in live]
    if not docs:
        return 0
    return proj.db.unlock_jobs(JobFilter(db_ids=[d.db_id for d in docs], locked=True))


def reset_project(confirm_name: str, *, project: ProjectRef = None) -> None:
    """Delete every job, flow, runner registration and counter of the project's database.

    Raises
    ------
    ConveyorError
        If ``confirm_name`` is not the project's name, or a runner of the project is
        live (stop it first).
    """
    proj = open_project(project)
    if confirm_name != proj.name:
        raise ConveyorError(
            f"{confirm_name!r} is not the project's name ({proj.name!r}); nothing deleted"
        )
    live = [s.doc.runner_id for s in runner_statuses(proj) if s.live]
    if live:
        raise ConveyorError(
            f"runner(s) {', '.join(live)} of project {proj.name!r} are live; stop them "
            "('conveyor daemon stop') before resetting; nothing deleted"
        )
    proj.db.reset()


# --- check ---------------------------------------------------------------------------


def check(*, fix: bool = False, project: ProjectRef = None) -> list[Finding]:
    """Compare each active job's document with its lock, queue state and run dir.

    Finds (see :data:`CHECK_KINDS`): a live lease whose owner is a registered runner
    that stopped or whose process is gone (fix: free the lock; the job goes on when a
    runner takes it); a SUBMITTED/RUNNING job the worker's queue no longer lists and
    whose run dir has no exit code file (fix: REMOTE_ERROR with the evidence; ``conveyor
    job rerun`` starts it again); a TERMINATED or DOWNLOADED job recorded as ended well
    whose run dir (and download) has no output (fix: REMOTE_ERROR). Jobs a live runner
    holds are left out: they are being worked on. With ``fix``, each fix is applied
    under the job's lock, as a runner would.

    Raises
    ------
    ConveyorError
        If a worker cannot be reached or its queue cannot be asked.
    """
    proj = open_project(project)
    now = utcnow()
    gone = {s.doc.runner_id: s for s in runner_statuses(proj) if s.status in ("dead", "stopped")}
    docs = proj.db.find_jobs(JobFilter(states=sorted(ACTIVE_STATES)))
    findings: list[Finding] = []
    free: list[JobDoc] = []
    for doc in docs:
        if not doc.lock.is_held(now):
            free.append(doc)
        elif doc.lock.owner in gone:
            findings.append(_gone_owner(proj, doc, gone[doc.lock.owner], fix))
    findings += _queue_lost(proj, [d for d in free if d.state in QUEUED_STATES], fix)
    ended = (JobState.TERMINATED, JobState.DOWNLOADED)
    findings += _no_output(proj, [d for d in free if d.state in ended], fix)
    return sorted(findings, key=lambda f: f.db_id)


def _gone_owner(project: Project, doc: JobDoc, owner: RunnerStatus, fix: bool) -> Finding:
    runner = owner.doc
    why = (
        f"it stopped at {runner.stopped_at.isoformat(timespec='seconds')}"
        if runner.stopped_at is not None
        else f"its process {runner.pid} on {runner.hostname} is gone"
    )
    finding = Finding(
        doc.db_id,
        doc.name,
        doc.state,
        GONE_OWNER,
        f"locked by runner {runner.runner_id} (lock {doc.lock.id}, until "
        f"{doc.lock.expires_at.isoformat(timespec='seconds')}), but {why}",
        "free the lock; the job continues when a runner takes it",
    )
    if not fix or doc.lock.id is None:
        return finding
    # Fenced by the lock id: a lock some runner took meanwhile is not touched.
    if project.db.release_job_lock(doc.db_id, doc.lock.id):
        return _fixed(finding)
    return _failed(finding, "the lock changed meanwhile; check again")


def _fixed(finding: Finding) -> Finding:
    return Finding(**{**finding.__dict__, "fixed": True})


def _failed(finding: Finding, error: str) -> Finding:
    return Finding(**{**finding.__dict__, "error": error})


def _exists(project: Project, doc: JobDoc, name: str) -> bool:
    return project.host(doc.worker).exists(f"{doc.remote.run_dir}/{name}")


def _queue_lost(project: Project, docs: Sequence[JobDoc], fix: bool) -> list[Finding]:
    by_worker: dict[str, list[JobDoc]] = {}
    for doc in docs:
        if doc.remote.queue_id:
            by_worker.setdefault(doc.worker, []).append(doc)
    findings: list[Finding] = []
    for worker, jobs in sorted(by_worker.items()):
        # One status command per worker, read as the runner's poll reads it.
        host, adapter = project.host(worker), project.adapter(worker)
        ids = [str(d.remote.queue_id) for d in jobs]
        result = host.execute(
            adapter.status_command(ids), timeout=project.worker(worker).command_timeout
        )
        listed = adapter.parse_status_output(result.exit_code, result.stdout, result.stderr, ids)
        for doc in jobs:
            if str(doc.remote.queue_id) in listed:
                continue
            run_dir = doc.remote.run_dir
            if run_dir and host.exists(run_dir) and _exists(project, doc, EXIT_CODE_FILE):
                continue  # it ended: the runner's terminate step takes it from here
            where = f"run dir {run_dir} has no {EXIT_CODE_FILE}" if run_dir else "no run dir"
            if run_dir and not host.exists(run_dir):
                where = f"run dir {run_dir} is gone"
            evidence = (
                f"{doc.state} with queue id {doc.remote.queue_id}, which the {worker} "
                f"queue ({project.worker(worker).queue}) no longer lists; {where}, so "
                "the job script never ended"
            )
            findings.append(
                _to_remote_error(
                    project,
                    Finding(
                        doc.db_id,
                        doc.name,
                        doc.state,
                        QUEUE_LOST,
                        evidence,
                        "REMOTE_ERROR with this evidence; 'conveyor job rerun' starts it again",
                    ),
                    fix,
                )
            )
    return findings


def _no_output(project: Project, docs: Sequence[JobDoc], fix: bool) -> list[Finding]:
    findings: list[Finding] = []
    for doc in docs:
        if doc.remote.failure_reason is not None:
            continue  # it failed: no output is expected, the runner reports the failure
        run_dir = doc.remote.run_dir
        host = project.host(doc.worker)
        downloaded = project.job_downloads(doc.uuid, doc.index) / OUTPUT_FILE
        if doc.state is JobState.DOWNLOADED and downloaded.is_file():
            continue
        if not run_dir or not host.exists(run_dir):
            where = f"its run dir {run_dir} is gone" if run_dir else "it has no run dir"
        else:
            has_output = _exists(project, doc, OUTPUT_FILE)
            if has_output and doc.state is JobState.TERMINATED:
                continue
            if has_output:
                findings.append(
                    Finding(
                        doc.db_id,
                        doc.name,
                        doc.state,
                        NO_OUTPUT,
                        f"DOWNLOADED, but {downloaded} is missing while {run_dir} has "
                        f"{OUTPUT_FILE}",
                        note="no fix: no allowed transition repeats the download; "
                        "'conveyor job rerun' runs the job again",
                    )
                )
                continue
            if _exists(project, doc, EXIT_CODE_FILE):
                continue  # the script ended without output: the payload's failure
            where = f"its run dir {run_dir} has neither {OUTPUT_FILE} nor {EXIT_CODE_FILE}"
        extra = f" and {downloaded} is missing" if doc.state is JobState.DOWNLOADED else ""
        evidence = (
            f"{doc.state} and recorded as ended well (exit code {doc.remote.exit_code}), "
            f"but {where}{extra}"
        )
        finding = Finding(
            doc.db_id,
            doc.name,
            doc.state,
            NO_OUTPUT,
            evidence,
            "REMOTE_ERROR with this evidence; 'conveyor job rerun' runs it again",
        )
        findings.append(_to_remote_error(project, finding, fix))
    return findings


def _to_remote_error(project: Project, finding: Finding, fix: bool) -> Finding:
    """Apply a finding's fix: REMOTE_ERROR with the evidence, under the job's lock."""
    if not fix:
        return finding

    def change(held: Held) -> Edit:
        if held.doc.state is not finding.state:
            raise ConveyorError(f"the job went to {held.doc.state} meanwhile; check again")
        error = ErrorInfo(step="admin check", message=f"{finding.kind}: {finding.evidence}")
        update = transition(
            held.doc.state,
            JobState.REMOTE_ERROR,
            by=_BY,
            extra={"error": error.model_dump()},
        )
        return Edit(update, note=finding.kind)

    (outcome,) = change_jobs(project, [finding.db_id], change, by=_BY)
    return _fixed(finding) if outcome.ok else _failed(finding, outcome.message)


# --- projects ------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectEntry:
    """A project under ``$CONVEYOR_HOME/projects``: its name, file and database URL
    (as written, password included), whether it is the current one, and why it could
    not be read (``error``)."""

    name: str
    path: Path
    database_url: str
    current: bool
    error: str = ""


def list_projects() -> list[ProjectEntry]:
    """The projects under ``$CONVEYOR_HOME/projects``, by name.

    The current one is the one ``--project`` / ``CONVEYOR_PROJECT`` (or ``default``)
    names.
    """
    from conveyor.config import conveyor_home, load_config, project_file
    from conveyor.config.loading import PROJECT_FILE

    root = conveyor_home() / "projects"
    try:
        current: Path | None = project_file().resolve()
    except (OSError, ConveyorError):  # pragma: no cover - an unreadable current name
        current = None
    entries: list[ProjectEntry] = []
    for path in sorted(root.glob(f"*/{PROJECT_FILE}")):
        url, error = "", ""
        try:
            url = load_config(path).database.url
        except (ConveyorError, OSError) as exc:
            error = str(exc)
        entries.append(ProjectEntry(path.parent.name, path, url, path.resolve() == current, error))
    return entries
