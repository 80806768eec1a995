"""``conveyor admin ...``: maintenance of the project's database."""

from __future__ import annotations

import typer

from conveyor.cli import render

__all__ = ["app"]

app = typer.Typer(help="Maintain the project's database: upgrade its schema.")


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
