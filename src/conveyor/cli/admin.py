"""``conveyor admin ...``: maintenance of the project's database: upgrade its schema,
free locks, reset it, check its jobs against their locks, queues and run dirs."""

from __future__ import annotations

from typing import Annotated

import typer

from conveyor.cli import render
from conveyor.cli.selection import (
    CreatedSince,
    CreatedUntil,
    ErrorOpt,
    FlowOpt,
    Ids,
    NameOpt,
    Selection,
    StateOpt,
    UpdatedSince,
    UpdatedUntil,
    WorkerOpt,
    YesOpt,
    confirm,
    is_interactive,
)
from conveyor.exceptions import ConveyorError

__all__ = ["app"]

app = typer.Typer(help="Maintain the project's database: upgrade, unlock, reset, check.")


@app.command()
def upgrade() -> None:
    """Bring the project's database to the schema this Conveyor uses.

    Run it once after installing a Conveyor whose schema version is newer than the
    database's (opening the database says so). A current database is left as it is; a
    database newer than this Conveyor is refused: upgrade Conveyor instead.
    """
    from conveyor import api

    found, now = api.upgrade_database()
    if found == now:
        render.stdout().print(f"The database is at schema version {now}; nothing to do.")
    else:
        render.stdout().print(f"Upgraded the database from schema version {found} to {now}.")


@app.command()
def unlock(
    ids: Ids = None,
    state: StateOpt = None,
    worker: WorkerOpt = None,
    flow: FlowOpt = None,
    name: NameOpt = None,
    created_since: CreatedSince = None,
    created_until: CreatedUntil = None,
    updated_since: UpdatedSince = None,
    updated_until: UpdatedUntil = None,
    error: ErrorOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Free the locks of live runners too.")
    ] = False,
    yes: YesOpt = False,
) -> None:
    """Free the locks of the named jobs (every locked job without ids or filters).

    Only locks change, never states: a freed job continues when a runner takes it. A
    lock a live runner holds is kept unless --force; 'conveyor admin check' names the
    locks whose runner is gone.
    """
    from conveyor import api

    selection = Selection(
        ids, state, worker, flow, name, created_since, created_until, updated_since,
        updated_until, True, error,
    )  # fmt: skip
    query = selection.query()
    confirm(api.select_jobs(query), "unlock", yes)
    freed = api.unlock(query, force=force)
    render.stdout().print(f"Freed {freed} lock(s).", highlight=False)


@app.command()
def reset(
    confirm_name: Annotated[
        str | None,
        typer.Option(
            "--confirm",
            metavar="NAME",
            help="The project's name, to reset without being asked (scripts).",
        ),
    ] = None,
) -> None:
    """Delete every job, flow and runner registration in the project's database.

    Asks for the project's name to be typed (or takes it from --confirm). Refused while
    a runner of the project is live. Job outputs in the job store are kept.
    """
    from conveyor import api
    from conveyor.project import open_project

    project = open_project()
    if confirm_name is None:
        if not is_interactive():
            raise ConveyorError(
                "no terminal to ask on: pass --confirm NAME with the project's name"
            )
        count = project.db.count_jobs()
        confirm_name = typer.prompt(
            f"This deletes all {count} job(s) of project {project.name!r} "
            f"({render.masked(project.database_url)}). Type the project's name to confirm",
            err=True,
        )
    api.reset_project(confirm_name, project=project)
    render.stdout().print(f"Reset project {project.name!r}: its database is empty.")


@app.command()
def check(
    fix: Annotated[
        bool, typer.Option("--fix", help="Repair what is found (each fix is printed).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Compare each active job's document with its lock, queue state and run dir.

    Lists every disagreement with its evidence: a lock whose runner is gone, a queued
    job the queue no longer knows, a run dir without output. --fix repairs them (jobs a
    live runner holds are left alone). Exit code 1 if anything was found (with --fix:
    if anything is left unrepaired).
    """
    from conveyor import api

    findings = api.check(fix=fix)
    left = [f for f in findings if not f.fixed]
    if as_json:
        render.print_json([f.as_dict() for f in findings])
    else:
        out = render.stdout()
        for item in findings:
            out.print(
                f"job {item.db_id} {item.name} ({item.state}): {item.kind}: {item.evidence}",
                highlight=False,
            )
            if item.fixed:
                out.print(f"      fixed: {item.fix}", highlight=False)
            elif item.error:
                out.print(f"      not fixed: {item.error}", highlight=False)
            elif item.fix:
                out.print(f"      fix: {item.fix} (--fix)", highlight=False)
            else:
                out.print(f"      {item.note}", highlight=False)
        if not findings:
            out.print("No inconsistency found.")
        elif fix:
            out.print(
                f"{len(findings) - len(left)} of {len(findings)} finding(s) fixed",
                highlight=False,
            )
        else:
            out.print(f"{len(findings)} finding(s)", highlight=False)
    if left if fix else findings:
        raise typer.Exit(1)
