"""Small jobflow jobs for examples and tests; importable on any worker.

Each shows one thing a flow can do: compute, fail, take time, touch the run dir, or
steer the flow through a jobflow ``Response``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jobflow.core.flow import Flow
from jobflow.core.job import Response, job

__all__ = [
    "add",
    "add_more",
    "add_with_detour",
    "append_line",
    "crash",
    "fail",
    "make_list",
    "replace_with_sum",
    "sleep_job",
    "stop_children_job",
    "stop_flow_job",
    "store_data_job",
    "sum_list",
    "write_file",
]


@job
def add(a: float, b: float) -> float:
    """Return ``a + b``."""
    return a + b


@job
def fail(message: str = "this job fails on purpose") -> None:
    """Raise ``RuntimeError(message)``."""
    raise RuntimeError(message)


@job
def crash(code: int = 3, message: str = "crashing on purpose") -> None:
    """Print ``message`` to stderr and end the process at once with exit ``code``.

    Unlike :func:`fail`, the Python process dies without writing any output: this is
    what a segfault, an OOM kill or ``exit 3`` in a wrapped program looks like.
    """
    import os
    import sys

    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os._exit(code)


@job
def sleep_job(seconds: float, value: Any = None) -> Any:
    """Sleep, then return ``value``."""
    time.sleep(seconds)
    return value


@job
def write_file(name: str, text: str) -> str:
    """Write ``text`` to ``name`` in the run dir; return the file's absolute path."""
    path = Path(name).resolve()
    path.write_text(text)
    return str(path)


@job
def append_line(path: str, line: str) -> str:
    """Append ``line`` to the file at ``path`` (shared by many jobs); return the line."""
    with open(path, "a") as handle:
        handle.write(line + "\n")
    return line


@job
def make_list(n: int) -> list[int]:
    """Return ``[0, 1, ..., n-1]``."""
    return list(range(n))


@job
def sum_list(values: list[float]) -> float:
    """Return the sum of ``values``."""
    return sum(values)


@job
def replace_with_sum(values: list[float]) -> Response[Any]:
    """Replace itself by one ``add`` job per value (a fan-out), whose outputs are summed."""
    jobs = [add(v, 0) for v in values]
    total = sum_list([j.output for j in jobs])
    return Response(replace=Flow([*jobs, total], output=total.output))


@job
def add_more(a: float, b: float) -> Response[Any]:
    """Return ``a + b`` and add a job to the flow computing ``(a + b) * 2``."""
    extra = add(a + b, a + b)
    return Response(output=a + b, addition=extra)


@job
def add_with_detour(a: float, b: float) -> Response[Any]:
    """Return ``a + b`` but detour through a job adding 100 before the children run."""
    detour = add(a, 100)
    return Response(output=a + b, detour=detour)


@job
def stop_children_job(value: Any = None) -> Response[Any]:
    """Return ``value`` and stop every job that depends on this one."""
    return Response(output=value, stop_children=True)


@job
def stop_flow_job(value: Any = None) -> Response[Any]:
    """Return ``value`` and stop the rest of the flow."""
    return Response(output=value, stop_jobflow=True)


@job
def store_data_job(value: Any = None) -> Response[Any]:
    """Return ``value`` and hand ``{"note": value}`` to the manager as stored data."""
    return Response(output=value, stored_data={"note": value})
