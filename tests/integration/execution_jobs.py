"""jobflow jobs for the execution tests; the worker subprocess imports them by name."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jobflow import Flow, Response, job


@job
def add(a: int, b: int) -> int:
    return a + b


@job
def shout(text: str) -> str:
    print(text.upper(), flush=True)
    return text.upper()


@job
def fail(message: str) -> None:
    raise ValueError(message)


@job
def when() -> datetime:
    return datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


@job
def add_more(a: int) -> Response[Any]:
    return Response(output=a, addition=add(a, 1), stop_children=True, stored_data={"seen": a})


@job
def replace_with_flow(a: int) -> Response[Any]:
    first = add(a, 1)
    second = add(first.output, 1)
    return Response(replace=Flow([first, second], output=second.output))


@job
def detour_and_stop(a: int) -> Response[Any]:
    return Response(output=a, detour=add(a, 2), stop_jobflow=True)


@job(data="big")
def with_big_data(n: int) -> dict[str, Any]:
    return {"big": list(range(n)), "small": n}
