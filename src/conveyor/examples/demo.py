"""The flow of ``conveyor demo``: a diamond of four jobs.

::

    start = 1 + 2
    ├── left  = start + 10
    └── right = start + 20
        combine = left + right      (= 36)

The jobs come from :mod:`conveyor.testing.jobs`, which every worker can import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobflow.core.flow import Flow

__all__ = ["DEMO_RESULT", "demo_flow"]

#: The output of the last job of :func:`demo_flow`.
DEMO_RESULT = 36


def demo_flow() -> Flow:
    """A new diamond flow: one job, two that use its output, one that joins them."""
    from jobflow.core.flow import Flow

    from conveyor.testing.jobs import add

    start = add(1, 2)
    left = add(start.output, 10)
    right = add(start.output, 20)
    combine = add(left.output, right.output)
    for job, name in ((start, "start"), (left, "left"), (right, "right"), (combine, "combine")):
        job.name = name
    return Flow([start, left, right, combine], output=combine.output, name="diamond")
