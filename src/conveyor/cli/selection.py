"""What the job commands share: naming jobs (ids and the filters of ``job list``),
confirming changes to many jobs, and reporting what happened to each.

A command that changes jobs selects them (:func:`selected`), shows and confirms them
when there are more than :data:`CONFIRM_THRESHOLD` (:func:`confirm`), calls the API,
and reports one line per job (:func:`report`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from conveyor.cli import render
from conveyor.exceptions import ConveyorError, NotFoundError

if TYPE_CHECKING:
    from conveyor.api import JobQuery, Outcome
    from conveyor.models import JobDoc

__all__ = [
    "CONFIRM_THRESHOLD",
    "CreatedSince",
    "CreatedUntil",
    "ErrorOpt",
    "FlowOpt",
    "Ids",
    "JsonOpt",
    "LockedOpt",
    "NameOpt",
    "Selection",
    "StateOpt",
    "UpdatedSince",
    "UpdatedUntil",
    "WorkerOpt",
    "YesOpt",
    "confirm",
    "is_interactive",
    "parse_ids",
    "report",
    "run_on_selection",
]

#: A change to more jobs than this is shown first and needs confirmation (or --yes).
CONFIRM_THRESHOLD = 10

Ids = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="ID",
        help="The jobs' db ids: 12, a range 10-20, or a list 3,5,8.",
        show_default=False,
    ),
]
StateOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--state", "-s", metavar="STATE", help="Only jobs in this state (repeat for several)."
    ),
]
WorkerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--worker", "-w", metavar="WORKER", help="Only jobs of this worker (repeat for several)."
    ),
]
FlowOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--flow", "-f", metavar="FLOW_UUID", help="Only the jobs of this flow (repeat for several)."
    ),
]
NameOpt = Annotated[
    str | None,
    typer.Option(
        "--name", metavar="PATTERN", help="Only jobs whose name matches: 'relax*', 'step_?'."
    ),
]
_TIME = "TIME: 2024-05-01T13:00 (local), or an age: 30m, 2h, 3d"
CreatedSince = Annotated[
    str | None,
    typer.Option("--created-since", metavar="TIME", help=f"Created after {_TIME}."),
]
CreatedUntil = Annotated[
    str | None,
    typer.Option("--created-until", metavar="TIME", help="Created before TIME."),
]
UpdatedSince = Annotated[
    str | None,
    typer.Option("--updated-since", metavar="TIME", help="Last changed after TIME."),
]
UpdatedUntil = Annotated[
    str | None,
    typer.Option("--updated-until", metavar="TIME", help="Last changed before TIME."),
]
LockedOpt = Annotated[
    bool | None,
    typer.Option(
        "--locked/--unlocked",
        help="Only jobs a runner holds a lock on now / only the others.",
        show_default=False,
    ),
]
ErrorOpt = Annotated[
    bool | None,
    typer.Option(
        "--error/--no-error",
        help="Only jobs with an error (FAILED, REMOTE_ERROR, a step in backoff) / without.",
        show_default=False,
    ),
]
YesOpt = Annotated[
    bool,
    typer.Option(
        "--yes",
        "-y",
        help=f"Change more than {CONFIRM_THRESHOLD} jobs without asking.",
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print a JSON list of what happened to each job.")
]


def parse_ids(values: Sequence[str] | None) -> list[int] | None:
    """Db ids from ``12``, ``10-20`` and ``3,4,5``; a clear error for anything else."""
    if not values:
        return None
    ids: list[int] = []
    for value in values:
        for part in value.split(","):
            text = part.strip()
            first, dash, last = text.partition("-")
            try:
                if dash:
                    low, high = int(first), int(last)
                    if low > high:
                        raise ValueError(text)
                    ids.extend(range(low, high + 1))
                elif text:
                    ids.append(int(text))
            except ValueError:
                raise ConveyorError(
                    f"{value!r} is not a db id or a range of them (12, 10-20, 3,4,5)"
                ) from None
    return list(dict.fromkeys(ids))


@dataclass(frozen=True)
class Selection:
    """The jobs named on the command line: db ids and filters, as typed."""

    ids: list[str] | None = None
    state: list[str] | None = None
    worker: list[str] | None = None
    flow: list[str] | None = None
    name: str | None = None
    created_since: str | None = None
    created_until: str | None = None
    updated_since: str | None = None
    updated_until: str | None = None
    locked: bool | None = None
    error: bool | None = None

    def query(self) -> JobQuery:
        """The API query of this selection."""
        from conveyor import api

        return api.job_query(
            db_ids=parse_ids(self.ids),
            states=self.state or None,
            workers=self.worker or None,
            flow_uuids=self.flow or None,
            name=self.name,
            created_after=self.created_since,
            created_before=self.created_until,
            updated_after=self.updated_since,
            updated_before=self.updated_until,
            locked=self.locked,
            in_error=self.error,
        )


def is_interactive() -> bool:
    """Whether a person can answer a question (stdin is a terminal)."""
    return sys.stdin.isatty()


def confirm(docs: Sequence[JobDoc], verb: str, yes: bool) -> None:
    """Show and confirm a change to more than :data:`CONFIRM_THRESHOLD` jobs.

    Raises ``typer.Exit(1)`` if the answer is no; ConveyorError without a terminal
    to ask on (pass --yes there).
    """
    if len(docs) <= CONFIRM_THRESHOLD or yes:
        return
    if not is_interactive():
        raise ConveyorError(
            f"this would {verb} {len(docs)} jobs (more than {CONFIRM_THRESHOLD}); pass --yes "
            "to confirm without a terminal to ask on"
        )
    console = render.stderr()
    console.print(render.jobs_table(docs))
    if not typer.confirm(f"{verb.capitalize()} these {len(docs)} jobs?", err=True):
        console.print("Nothing changed.")
        raise typer.Exit(1)


def report(
    outcomes: Sequence[Outcome], done: str, *, as_json: bool, show_state: bool = True
) -> None:
    """One line per job (or a JSON list); exit code 1 if any job was not ``done``.

    A single job that could not be changed is reported as the one error line.
    """
    failed = [o for o in outcomes if not o.ok]
    if as_json:
        render.print_json([o.as_dict() for o in outcomes])
    elif len(outcomes) == 1 and failed and failed[0].error is not None:
        raise failed[0].error
    else:
        out, err = render.stdout(), render.stderr()
        for outcome in outcomes:
            line = render.outcome_line(outcome, done, show_state=show_state)
            (out if outcome.ok else err).print(line)
    if failed:
        raise ConveyorError(f"{len(failed)} of {len(outcomes)} job(s) not {done}; see above")


def run_on_selection(
    selection: Selection,
    action: Callable[[list[int]], list[Outcome]],
    *,
    verb: str,
    done: str,
    yes: bool,
    as_json: bool,
    show_state: bool = True,
) -> None:
    """Select the jobs, confirm if many, run ``action`` on their ids, report.

    ``verb`` names the change (``cancel``), ``done`` its past (``cancelled``).
    """
    from conveyor import api
    from conveyor.api import Outcome

    query = selection.query()
    if query.is_empty:
        raise ConveyorError(
            "name the jobs: db ids (12, 10-20) or filters such as --state FAILED or "
            "--flow UUID; see --help"
        )
    docs = api.select_jobs(query, reverse=True)  # oldest first
    missing = [
        Outcome(i, error=NotFoundError(f"no job with db id {i}"))
        for i in sorted(set(query.db_ids or ()) - {d.db_id for d in docs})
    ]
    if not docs and not missing:
        render.stderr().print("No job matches; nothing changed.")
        return
    confirm(docs, verb, yes)
    outcomes = action([d.db_id for d in docs]) if docs else []
    report([*outcomes, *missing], done, as_json=as_json, show_state=show_state)
