"""Run one jobflow job in its run dir: ``job.json`` in, ``output.json`` out.

``job.json`` (written by the runner)::

    {"version": 1,
     "job": <the serialized jobflow Job, its references already resolved>,
     "additional_stores": ["data", ...]}

``output.json`` (read back by the runner)::

    {"version": 1, "uuid": ..., "index": ...,
     "response": {"replace": FLOW | null, "addition": FLOW | null, "detour": FLOW | null,
                  "stored_data": ... | null, "stop_children": bool, "stop_jobflow": bool}
                 | null,
     "error": {"type": ..., "message": ..., "traceback": ...} | null,
     "store": {"docs": [...], "additional": {"data": [...], ...}},
     "timings": {"started_at": ISO-8601 UTC, "ended_at": ..., "seconds": float}}

The job runs against in-memory stores; what it stored goes into ``store`` for the runner
to copy into the project's JobStore. jobflow, maggma and monty are imported only when a
job runs, so that importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.runfiles import JOB_FILE, OUTPUT_FILE

if TYPE_CHECKING:
    from jobflow.core.job import Job, Response
    from jobflow.core.store import JobStore

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_JOB_FAILED",
    "EXIT_OK",
    "INPUT_VERSION",
    "OUTPUT_VERSION",
    "execute",
]

log = logging.getLogger(__name__)

#: The job ran and returned.
EXIT_OK = 0
#: The job raised; output.json holds the error and its traceback.
EXIT_JOB_FAILED = 1
#: job.json is missing, unreadable or cannot be turned back into a job.
EXIT_BAD_INPUT = 2

INPUT_VERSION = 1
OUTPUT_VERSION = 1


class JobFileError(Exception):
    """job.json cannot be used; the message says why."""


@dataclass
class _Timer:
    started_at: datetime
    start: float

    @classmethod
    def begin(cls) -> _Timer:
        return cls(datetime.now(UTC), time.perf_counter())

    def timings(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at.isoformat(),
            "ended_at": datetime.now(UTC).isoformat(),
            "seconds": time.perf_counter() - self.start,
        }


def execute(run_dir: str | os.PathLike[str]) -> int:
    """Run the job of ``run_dir`` and write its ``output.json``.

    Returns
    -------
    int
        :data:`EXIT_OK`, :data:`EXIT_JOB_FAILED` or :data:`EXIT_BAD_INPUT`.
    """
    path = Path(run_dir).absolute()
    timer = _Timer.begin()
    try:
        data = read_job_file(path / JOB_FILE)
        if isinstance(data.get("command"), dict):
            return _execute_command(path, data["command"])
        job, additional_names = load_job(path / JOB_FILE, data)
    except JobFileError as exc:
        print(f"conveyor.execution: {exc}", file=sys.stderr)
        output = _output(None, None, None, _error_doc(exc), _empty_store(), timer.timings())
        try:
            _write_json(path / OUTPUT_FILE, output)
        except OSError as write_exc:
            print(f"conveyor.execution: cannot write {OUTPUT_FILE}: {write_exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    store, additional = _memory_job_store(additional_names)
    response_doc: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    os.chdir(path)
    timer = _Timer.begin()
    try:
        response = job.run(store=store, job_dir=path)
        response_doc = _response_doc(response)
    except (Exception, SystemExit) as exc:
        log.exception("job %s (%s, index %s) failed", job.name, job.uuid, job.index)
        error = _error_doc(exc)
    timings = timer.timings()
    try:
        stored = _stored_docs(store, additional)
    except Exception as exc:
        log.exception("cannot serialize what job %s stored", job.uuid)
        error = error or _error_doc(exc)
        stored = _empty_store()
    output = _output(job.uuid, job.index, response_doc, error, stored, timings)
    try:
        _write_json(path / OUTPUT_FILE, output)
    except (OSError, TypeError, ValueError) as exc:
        log.exception("cannot write %s", path / OUTPUT_FILE)
        print(f"conveyor.execution: cannot write {OUTPUT_FILE}: {exc}", file=sys.stderr)
        return EXIT_JOB_FAILED
    outcome = "succeeded" if error is None else "failed"
    log.info("job %s %s after %.3f s", job.uuid, outcome, timings["seconds"])
    return EXIT_OK if error is None else EXIT_JOB_FAILED


def read_job_file(job_file: Path) -> dict[str, Any]:
    """The parsed ``job.json``; :class:`JobFileError` if missing or not version 1."""
    try:
        data = json.loads(job_file.read_bytes())
    except OSError as exc:
        raise JobFileError(f"cannot read {job_file}: {exc}") from exc
    except ValueError as exc:
        raise JobFileError(f"{job_file} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != INPUT_VERSION:
        version = data.get("version") if isinstance(data, dict) else None
        raise JobFileError(
            f"{job_file} is not a version {INPUT_VERSION} job file (version: {version!r})"
        )
    return data


def load_job(job_file: Path, data: dict[str, Any] | None = None) -> tuple[Job, list[str]]:
    """The job and the names of the additional stores from ``job.json``.

    Raises
    ------
    JobFileError
        If the file is missing, is not JSON of the expected version, or does not decode
        to a jobflow Job (for instance because the job's module cannot be imported).
    """
    if data is None:
        data = read_job_file(job_file)
    names = data.get("additional_stores", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise JobFileError(f"{job_file}: additional_stores must be a list of names: {names!r}")

    from jobflow.core.job import Job
    from monty.json import MontyDecoder

    try:
        job = MontyDecoder().process_decoded(data.get("job"))
    except Exception as exc:
        raise JobFileError(
            f"{job_file}: cannot rebuild the job ({type(exc).__name__}: {exc}); is its "
            "module importable by this Python?"
        ) from exc
    if not isinstance(job, Job):
        raise JobFileError(f"{job_file}: 'job' is not a serialized jobflow Job")
    return job, names


def _execute_command(path: Path, spec: dict[str, Any]) -> int:
    """The fast path of command jobs: run the argv and write the output document
    jobflow would have stored, without importing jobflow."""
    from conveyor.execution.argv import run_argv

    os.chdir(path)
    timer = _Timer.begin()
    error: dict[str, Any] | None = None
    docs: list[dict[str, Any]] = []
    try:
        result = run_argv(spec["argv"], check=spec["check"], tail_chars=spec["tail_chars"])
        docs.append(
            {
                "uuid": spec["uuid"],
                "index": spec["index"],
                "output": result,
                # jobflow stamps outputs with a naive local isoformat; so do we.
                "completed_at": datetime.now().isoformat(),  # noqa: DTZ005
                "metadata": spec.get("metadata") or {},
                "hosts": spec.get("hosts") or [],
                "name": spec.get("name"),
            }
        )
    except Exception as exc:
        error = _error_doc(exc)
    response = {
        "replace": None,
        "addition": None,
        "detour": None,
        "stored_data": None,
        "stop_children": False,
        "stop_jobflow": False,
    }
    store = {"docs": docs, "additional": {}}
    output = _output(spec["uuid"], spec["index"], response, error, store, timer.timings())
    _write_json(path / OUTPUT_FILE, output)
    return EXIT_OK if error is None else EXIT_JOB_FAILED


def _memory_job_store(additional_names: list[str]) -> tuple[JobStore, dict[str, Any]]:
    """A JobStore in memory, and its additional stores by name."""
    from jobflow.core.store import JobStore
    from maggma.stores import MemoryStore

    additional: dict[str, Any] = {name: MemoryStore() for name in additional_names}
    store = JobStore(MemoryStore(), additional_stores=additional)
    store.connect()
    return store, additional


def _response_doc(response: Response[Any]) -> dict[str, Any]:
    from monty.json import jsanitize

    def strict(obj: Any) -> Any:
        if obj is None:
            return None
        return jsanitize(obj, strict=True, enum_values=True, allow_bson=False)

    return {
        "replace": strict(response.replace),
        "addition": strict(response.addition),
        "detour": strict(response.detour),
        "stored_data": strict(response.stored_data),
        "stop_children": bool(response.stop_children),
        "stop_jobflow": bool(response.stop_jobflow),
    }


def _stored_docs(store: JobStore, additional: dict[str, Any]) -> dict[str, Any]:
    """Every document the job stored, JSON-ready, without the stores' ``_id``."""
    from monty.json import jsanitize

    def dump(docs: Any) -> list[Any]:
        out = []
        for doc in docs:
            doc = dict(doc)
            doc.pop("_id", None)
            out.append(jsanitize(doc, strict=False, enum_values=True, allow_bson=False))
        return out

    return {
        "docs": dump(store.docs_store.query({})),
        "additional": {
            name: dump(additional_store.query({})) for name, additional_store in additional.items()
        },
    }


def _empty_store() -> dict[str, Any]:
    return {"docs": [], "additional": {}}


def _error_doc(exc: BaseException) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }


def _output(
    uuid: str | None,
    index: int | None,
    response: dict[str, Any] | None,
    error: dict[str, Any] | None,
    store: dict[str, Any],
    timings: dict[str, Any],
) -> dict[str, Any]:
    return {
        "version": OUTPUT_VERSION,
        "uuid": uuid,
        "index": index,
        "response": response if error is None else None,
        "error": error,
        "store": store,
        "timings": timings,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``path`` atomically: readers see no file or the whole of it."""
    text = json.dumps(data)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
