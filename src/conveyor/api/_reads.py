"""Reading jobs: one job, queries with filters and sorting, counts, outputs, and what a
job left on its worker (queue logs, run dir files, the submitted script).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from conveyor.api._common import ProjectRef
from conveyor.db.base import JobFilter
from conveyor.exceptions import ConveyorError, HostError, NotFoundError
from conveyor.models import JobDoc, utcnow
from conveyor.project import Project, open_project
from conveyor.runfiles import STDERR_FILE, STDOUT_FILE
from conveyor.states import ERROR_STATES, JobState

__all__ = [
    "SORT_KEYS",
    "JobFiles",
    "JobLogs",
    "JobQuery",
    "JobScript",
    "count_jobs",
    "count_selected",
    "get_job",
    "get_output",
    "job_files",
    "job_filter",
    "job_logs",
    "job_query",
    "job_script",
    "list_jobs",
    "parse_state",
    "parse_time",
    "select_jobs",
    "upgrade_database",
]


def get_job(db_id: int, *, project: ProjectRef = None) -> JobDoc:
    """The job with this db id; :class:`NotFoundError` if there is none."""
    doc = open_project(project).db.get_job(db_id)
    if doc is None:
        raise NotFoundError(f"no job with db id {db_id}")
    return doc


def parse_state(value: JobState | str) -> JobState:
    """A job state from its name (any case); ConveyorError listing the valid ones."""
    try:
        return JobState(str(value).upper())
    except ValueError:
        valid = ", ".join(JobState)
        raise ConveyorError(f"unknown job state {value!r}; valid states: {valid}") from None


_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])(?:\s+ago)?", re.IGNORECASE)
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(value: datetime | str, *, now: datetime | None = None) -> datetime:
    """A moment from an ISO 8601 time or an age, as timezone-aware UTC.

    ``2024-05-01``, ``2024-05-01T13:00`` (local time unless it has an offset),
    ``2024-05-01T13:00+02:00``; or an age before ``now``: ``90s``, ``30m``, ``2h``,
    ``3d``, ``1w``; or ``today`` (local midnight).
    """
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.astimezone()).astimezone(UTC)
    text = value.strip()
    now = now or utcnow()
    age = _AGE.fullmatch(text)
    if age:
        return now - timedelta(seconds=float(age[1]) * _AGE_UNITS[age[2].lower()])
    if text.lower() == "today":
        local = now.astimezone()
        return local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConveyorError(
            f"cannot read the time {value!r}: give an ISO 8601 time (2024-05-01, "
            "2024-05-01T13:00, 2024-05-01T13:00+02:00) or an age (30m, 2h, 3d, 1w)"
        ) from None
    return (moment if moment.tzinfo else moment.astimezone()).astimezone(UTC)


def job_filter(
    *,
    states: Iterable[JobState | str] | None = None,
    workers: Iterable[str] | None = None,
    flow_uuids: Iterable[str] | None = None,
    db_ids: Iterable[int] | None = None,
    uuids: Iterable[str] | None = None,
) -> JobFilter:
    """A :class:`JobFilter` from the API's keyword arguments (None means any)."""
    return JobFilter(
        states=[parse_state(s) for s in states] if states is not None else None,
        workers=list(workers) if workers is not None else None,
        flow_uuids=list(flow_uuids) if flow_uuids is not None else None,
        db_ids=list(db_ids) if db_ids is not None else None,
        uuids=list(uuids) if uuids is not None else None,
    )


@dataclass(frozen=True)
class JobQuery:
    """Which jobs to select; ``None`` means "any", and the conditions are ANDed.

    The database answers the conditions it indexes (ids, uuids, flows, states,
    workers, the lock, the update time); ``name``, the creation time and ``in_error``
    are checked in Python on what it returns. A job is created before its last update,
    so ``created_after`` also narrows the indexed query on the update time.
    """

    db_ids: tuple[int, ...] | None = None
    uuids: tuple[str, ...] | None = None
    flow_uuids: tuple[str, ...] | None = None
    states: tuple[JobState, ...] | None = None
    workers: tuple[str, ...] | None = None
    #: A shell-style pattern (``*``, ``?``, ``[...]``) the whole name must match.
    name: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    #: True: only jobs a runner holds a live lease on; False: only the others.
    locked: bool | None = None
    #: True: only jobs with an error recorded (FAILED, REMOTE_ERROR, or a step waiting
    #: out its backoff); False: only jobs without.
    in_error: bool | None = None

    @property
    def is_empty(self) -> bool:
        """Whether the query selects every job."""
        return all(value is None for value in self.__dict__.values())

    @property
    def post_filtered(self) -> bool:
        """Whether some conditions are checked in Python after the database query."""
        return any(
            value is not None
            for value in (self.name, self.created_after, self.created_before, self.in_error)
        )

    def job_filter(self) -> JobFilter:
        """The conditions the database answers from its indexes."""
        after = [t for t in (self.updated_after, self.created_after) if t is not None]
        return JobFilter(
            db_ids=self.db_ids,
            uuids=self.uuids,
            flow_uuids=self.flow_uuids,
            states=self.states,
            workers=self.workers,
            locked=self.locked,
            updated_after=max(after) if after else None,
            updated_before=self.updated_before,
        )

    def matches(self, doc: JobDoc) -> bool:
        """Whether ``doc`` meets the conditions checked in Python."""
        if self.name is not None and not fnmatch.fnmatchcase(doc.name, self.name):
            return False
        if self.created_after is not None and doc.created_at <= self.created_after:
            return False
        if self.created_before is not None and doc.created_at >= self.created_before:
            return False
        if self.in_error is not None:
            has_error = doc.state in ERROR_STATES or doc.error is not None
            if has_error is not self.in_error:
                return False
        return True


def job_query(
    *,
    states: Iterable[JobState | str] | None = None,
    workers: Iterable[str] | None = None,
    flow_uuids: Iterable[str] | None = None,
    db_ids: Iterable[int] | None = None,
    uuids: Iterable[str] | None = None,
    name: str | None = None,
    created_after: datetime | str | None = None,
    created_before: datetime | str | None = None,
    updated_after: datetime | str | None = None,
    updated_before: datetime | str | None = None,
    locked: bool | None = None,
    in_error: bool | None = None,
) -> JobQuery:
    """A :class:`JobQuery` from plain values: state names in any case, times as
    datetimes or as :func:`parse_time` reads them."""

    def when(value: datetime | str | None) -> datetime | None:
        return parse_time(value) if value is not None else None

    return JobQuery(
        db_ids=tuple(int(i) for i in db_ids) if db_ids is not None else None,
        uuids=tuple(uuids) if uuids is not None else None,
        flow_uuids=tuple(flow_uuids) if flow_uuids is not None else None,
        states=tuple(parse_state(s) for s in states) if states is not None else None,
        workers=tuple(workers) if workers is not None else None,
        name=name,
        created_after=when(created_after),
        created_before=when(created_before),
        updated_after=when(updated_after),
        updated_before=when(updated_before),
        locked=locked,
        in_error=in_error,
    )


_STATE_ORDER = {state: i for i, state in enumerate(JobState)}

#: Sort keys of :func:`select_jobs`: how to order by each, and whether the natural
#: order is descending (newest, highest first) or ascending (alphabetical, pipeline).
SORT_KEYS: dict[str, tuple[Callable[[JobDoc], Any], bool]] = {
    "id": (lambda d: d.db_id, True),
    "created": (lambda d: (d.created_at, d.db_id), True),
    "updated": (lambda d: (d.updated_at, d.db_id), True),
    "priority": (lambda d: (d.priority, d.db_id), True),
    "state": (lambda d: (_STATE_ORDER[d.state], d.db_id), False),
    "name": (lambda d: (d.name, d.db_id), False),
    "worker": (lambda d: (d.worker, d.db_id), False),
}


def select_jobs(
    query: JobQuery | None = None,
    *,
    sort: str = "id",
    reverse: bool = False,
    limit: int = 0,
    project: ProjectRef = None,
) -> list[JobDoc]:
    """The jobs ``query`` selects, sorted, at most ``limit`` of them (0: all).

    ``sort`` is one of :data:`SORT_KEYS`: ``id`` (default), ``created`` and ``updated``
    are newest first, ``priority`` highest first, ``state`` in pipeline order, ``name``
    and ``worker`` alphabetical; ``reverse`` flips that. Sorted by id without
    conditions checked in Python, the database reads only ``limit`` jobs; otherwise
    every match is read, then sorted and cut.
    """
    query = query or JobQuery()
    if sort not in SORT_KEYS:
        raise ConveyorError(f"unknown sort key {sort!r}; use one of {', '.join(SORT_KEYS)}")
    key, descending = SORT_KEYS[sort]
    db = open_project(project).db
    flt = query.job_filter()
    if sort == "id" and not query.post_filtered:
        return db.find_jobs(flt, limit=limit, newest_first=descending != reverse)
    docs = [doc for doc in db.find_jobs(flt) if query.matches(doc)]
    docs.sort(key=key, reverse=descending != reverse)
    return docs[:limit] if limit else docs


def count_selected(query: JobQuery | None = None, *, project: ProjectRef = None) -> int:
    """How many jobs ``query`` selects (counted by the database when it can)."""
    query = query or JobQuery()
    db = open_project(project).db
    if not query.post_filtered:
        return db.count_jobs(query.job_filter())
    return sum(1 for doc in db.find_jobs(query.job_filter()) if query.matches(doc))


def list_jobs(
    *,
    states: Iterable[JobState | str] | None = None,
    workers: Iterable[str] | None = None,
    flow_uuids: Iterable[str] | None = None,
    db_ids: Iterable[int] | None = None,
    uuids: Iterable[str] | None = None,
    name: str | None = None,
    created_after: datetime | str | None = None,
    created_before: datetime | str | None = None,
    updated_after: datetime | str | None = None,
    updated_before: datetime | str | None = None,
    locked: bool | None = None,
    in_error: bool | None = None,
    sort: str = "id",
    reverse: bool = False,
    limit: int = 0,
    newest_first: bool = True,
    project: ProjectRef = None,
) -> list[JobDoc]:
    """Jobs matching every given condition, newest first by default.

    See :class:`JobQuery` for the conditions and :func:`select_jobs` for ``sort``;
    ``newest_first=False`` reverses the order, as ``reverse=True`` does.
    """
    query = job_query(
        states=states,
        workers=workers,
        flow_uuids=flow_uuids,
        db_ids=db_ids,
        uuids=uuids,
        name=name,
        created_after=created_after,
        created_before=created_before,
        updated_after=updated_after,
        updated_before=updated_before,
        locked=locked,
        in_error=in_error,
    )
    flip = reverse != (not newest_first)
    return select_jobs(query, sort=sort, reverse=flip, limit=limit, project=project)


def count_jobs(
    *,
    states: Iterable[JobState | str] | None = None,
    workers: Iterable[str] | None = None,
    flow_uuids: Iterable[str] | None = None,
    db_ids: Iterable[int] | None = None,
    name: str | None = None,
    created_after: datetime | str | None = None,
    created_before: datetime | str | None = None,
    updated_after: datetime | str | None = None,
    updated_before: datetime | str | None = None,
    locked: bool | None = None,
    in_error: bool | None = None,
    project: ProjectRef = None,
) -> int:
    """How many jobs match every given condition (see :class:`JobQuery`)."""
    query = job_query(
        states=states,
        workers=workers,
        flow_uuids=flow_uuids,
        db_ids=db_ids,
        name=name,
        created_after=created_after,
        created_before=created_before,
        updated_after=updated_after,
        updated_before=updated_before,
        locked=locked,
        in_error=in_error,
    )
    return count_selected(query, project=project)


def get_output(db_id: int, *, load: bool = False, project: ProjectRef = None) -> Any:
    """The output a completed job stored in the project's JobStore.

    Raises
    ------
    NotFoundError
        If there is no such job, or it stored no output (yet).
    """
    proj = open_project(project)
    doc = get_job(db_id, project=proj)
    with proj.jobstore_lock:
        found = proj.jobstore.query_one({"uuid": doc.uuid, "index": doc.index}, ["output"])
        if found is None:
            raise NotFoundError(f"job {db_id} ({doc.state}) has no output in the job store")
        return proj.jobstore.get_output(doc.uuid, which=doc.index, load=load)


@dataclass(frozen=True)
class JobScript:
    """What the runner would write and run to submit a job."""

    run_dir: str
    files: dict[str, str]
    submit_argv: list[str]


def job_script(db_id: int, *, project: ProjectRef = None) -> JobScript:
    """The queue files and submit command of a job, rendered exactly as the runner
    renders them, without writing or submitting anything."""
    from conveyor.runner.steps import render_files

    proj = open_project(project)
    spec, files, argv = render_files(proj, get_job(db_id, project=proj))
    return JobScript(spec.run_dir, files, argv)


def download_dir(project: Project, doc: JobDoc) -> Path:
    """Where the runner keeps the files it fetched for ``doc``."""
    return project.job_downloads(doc.uuid, doc.index)


@dataclass(frozen=True)
class JobLogs:
    """What the queue caught of a job's output, and where it was read."""

    db_id: int
    #: The queue's stdout and stderr of the job; None where no such file was found.
    stdout: str | None
    stderr: str | None
    #: Where they were read: the run dir on the worker, or the runner's downloaded copy.
    source: str


def _decode(data: bytes | None) -> str | None:
    return data.decode(errors="replace") if data is not None else None


def job_logs(db_id: int, *, project: ProjectRef = None) -> JobLogs:
    """The queue's stdout and stderr of a job, read from its run dir on the worker,
    or, when that is gone or unreachable, from the copies the runner downloaded.

    Raises
    ------
    NotFoundError
        If neither place has them (the job was not submitted yet, say).
    """
    proj = open_project(project)
    doc = get_job(db_id, project=proj)
    tried: list[str] = []
    run_dir = doc.remote.run_dir
    if run_dir:
        host = proj.host(doc.worker)
        found: dict[str, bytes | None] = {}
        for name in (STDOUT_FILE, STDERR_FILE):
            try:
                found[name] = host.read_bytes(f"{run_dir}/{name}")
            except (FileNotFoundError, HostError) as exc:
                found[name] = None
                if not isinstance(exc, FileNotFoundError):
                    tried.append(f"{run_dir} on {host.name}: {exc}")
        if any(value is not None for value in found.values()):
            return JobLogs(
                db_id,
                _decode(found[STDOUT_FILE]),
                _decode(found[STDERR_FILE]),
                f"run dir {run_dir} on {host.name}",
            )
        tried.append(f"run dir {run_dir} on {host.name}")
    local = download_dir(proj, doc)
    copies = {name: local / name for name in (STDOUT_FILE, STDERR_FILE)}
    if any(path.is_file() for path in copies.values()):
        texts = {
            name: path.read_text(errors="replace") if path.is_file() else None
            for name, path in copies.items()
        }
        return JobLogs(db_id, texts[STDOUT_FILE], texts[STDERR_FILE], f"downloaded copy in {local}")
    tried.append(f"downloads {local}")
    where = "" if run_dir else " (it has no run dir yet: it was never submitted)"
    raise NotFoundError(
        f"job {db_id} ({doc.state}) has no queue output{where}; looked in: {'; '.join(tried)}"
    )


@dataclass(frozen=True)
class JobFiles:
    """The files in a job's run dir on its worker."""

    db_id: int
    worker: str
    host: str
    run_dir: str
    names: list[str]


def job_files(db_id: int, *, project: ProjectRef = None) -> JobFiles:
    """The names of the files in a job's run dir, listed on its worker.

    Raises
    ------
    NotFoundError
        If the job has no run dir yet, or it no longer exists.
    """
    proj = open_project(project)
    doc = get_job(db_id, project=proj)
    run_dir = doc.remote.run_dir
    if not run_dir:
        raise NotFoundError(
            f"job {db_id} is {doc.state} and has no run dir yet; a runner picks one when "
            "it checks the job out"
        )
    host = proj.host(doc.worker)
    if not host.exists(run_dir):
        raise NotFoundError(f"the run dir {run_dir} of job {db_id} does not exist on {host.name}")
    return JobFiles(db_id, doc.worker, host.name, run_dir, host.listdir(run_dir))


def upgrade_database(*, project: ProjectRef = None) -> tuple[int, int]:
    """Bring the project's database to this Conveyor's schema version.

    Returns the version found and the version it now has.
    """
    from conveyor.db import open_database
    from conveyor.db.base import SCHEMA_VERSION

    proj = open_project(project)
    # database_url: a relative sqlite path starts at the project dir, not the cwd.
    db = open_database(proj.database_url, proj.config.database.name, check_schema=False)
    try:
        return db.upgrade(), SCHEMA_VERSION
    finally:
        db.close()
