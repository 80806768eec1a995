"""``conveyor flow ...``: list, inspect, draw and steer flows.

A flow is named by its uuid or by the db id of any of its jobs. The commands that
change a flow act on its jobs through the same API functions as ``conveyor job ...``,
and ask first when they would change more than
:data:`~conveyor.cli.selection.CONFIRM_THRESHOLD` jobs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from conveyor.cli import render, render_flows
from conveyor.cli.selection import JsonOpt, YesOpt, confirm, report
from conveyor.models import utcnow
from conveyor.states import FlowState

if TYPE_CHECKING:
    from collections.abc import Callable

    from conveyor.api import Outcome
    from conveyor.models import FlowDoc
    from conveyor.states import JobState

__all__ = ["app"]

app = typer.Typer(
    help="List flows, show one, draw its graph, pause, resume, cancel, rerun, delete it, "
    "wait for it.",
    no_args_is_help=True,
)

FlowArg = Annotated[
    str,
    typer.Argument(metavar="FLOW", help="The flow's uuid, or the db id of one of its jobs."),
]


@app.command("list")
def list_(
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state", "-s", metavar="STATE", help="Only flows in this state (repeat for several)."
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", metavar="PATTERN", help="Only flows whose name matches: 'relax*'."),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=0, help="Show at most this many flows; 0: all.")
    ] = 50,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list of the flows instead of a table.")
    ] = False,
) -> None:
    """List flows, newest first: uuid, name, state, number of jobs, creation time."""
    from conveyor import api

    flows = api.list_flows(states=state, name=name, limit=limit)
    if as_json:
        render.print_json([render_flows.flow_json(flow) for flow in flows])
        return
    console = render.stdout()
    if flows:
        console.print(render_flows.flows_table(flows))
    console.print(f"{len(flows)} flows shown", style="dim")


@app.command()
def info(
    flow: FlowArg,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the flow, its job counts and jobs as JSON.")
    ] = False,
) -> None:
    """Show a flow: its state, job counts by state, and its jobs."""
    from conveyor import api

    found = api.find_flow(flow)
    counts = api.flow_counts(found.uuid)
    jobs = api.flow_jobs(found.uuid)
    if as_json:
        data = render_flows.flow_json(found)
        data["counts"] = {str(state): n for state, n in counts.items()}
        data["jobs"] = [render.job_json(doc) for doc in jobs]
        render.print_json(data)
        return
    console = render.stdout()
    console.print(render_flows.flow_details(found, counts, utcnow()))
    if jobs:
        console.print()
        console.print(render.jobs_table(jobs))


@app.command()
def graph(
    flow: FlowArg,
    mermaid: Annotated[
        Path | None,
        typer.Option(
            "--mermaid",
            "-m",
            metavar="FILE",
            dir_okay=False,
            help="Also write the graph as a Mermaid flowchart to FILE ('-': stdout only).",
        ),
    ] = None,
) -> None:
    """Draw a flow as a tree: each job under the jobs it depends on, states coloured.

    A job with several parents is drawn under the first and referred to under the
    others. --mermaid writes a Mermaid flowchart (nodes j<db id>) that GitHub, GitLab
    and most Markdown viewers draw.
    """
    from conveyor import api

    found = api.find_flow(flow)
    jobs = api.flow_jobs(found.uuid)
    if mermaid is not None and str(mermaid) == "-":
        render.print_text(render_flows.mermaid(found, jobs))
        return
    render.stdout().print(render_flows.flow_tree(found, jobs))
    if mermaid is not None:
        mermaid.write_text(render_flows.mermaid(found, jobs))
        render.stderr().print(f"Wrote the Mermaid flowchart to {mermaid}", style="dim")


def _act(
    flow: str,
    action: str,
    verb: str,
    done: str,
    yes: bool,
    as_json: bool,
    run: Callable[[FlowDoc], list[Outcome]],
    *,
    show_state: bool = True,
) -> None:
    from conveyor import api

    found = api.find_flow(flow)
    targets = api.flow_targets(found.uuid, action)
    if not targets:
        render.stderr().print(f"No job of flow {found.uuid} to {verb}; nothing changed.")
        return
    confirm(targets, verb, yes)
    report(run(found), done, as_json=as_json, show_state=show_state)
    if not as_json:
        _flow_line(api.find_flow(found.uuid) if action != "delete" else None, found.uuid)


def _flow_line(flow: FlowDoc | None, uuid: str) -> None:
    line = Text(f"Flow {uuid}: ")
    if flow is None:
        line.append("deleted")
    else:
        line.append_text(render_flows.flow_state_text(flow.state))
    render.stdout().print(line)


@app.command()
def pause(flow: FlowArg, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Pause every READY or WAITING job of a flow (running jobs go on)."""
    from conveyor import api

    _act(flow, "pause", "pause", "paused", yes, as_json, lambda f: api.pause_flow(f.uuid, by="cli"))


@app.command()
def resume(flow: FlowArg, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Resume every PAUSED job of a flow."""
    from conveyor import api

    _act(
        flow, "resume", "resume", "resumed", yes, as_json,
        lambda f: api.resume_flow(f.uuid, by="cli"),
    )  # fmt: skip


@app.command()
def cancel(flow: FlowArg, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Cancel every job of a flow that has not ended, in its queue too."""
    from conveyor import api

    _act(
        flow, "cancel", "cancel", "cancelled", yes, as_json,
        lambda f: api.cancel_flow(f.uuid, by="cli"),
    )  # fmt: skip


@app.command()
def rerun(
    flow: FlowArg,
    all_jobs: Annotated[
        bool,
        typer.Option("--all", "-a", help="Rerun every job that ended, from the first jobs on."),
    ] = False,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Rerun the jobs of a flow that failed, gave up (REMOTE_ERROR) or were cancelled;
    the jobs that depend on them wait for them again. With --all, the whole flow."""
    from conveyor import api

    action = "rerun-all" if all_jobs else "rerun"
    _act(
        flow, action, "rerun", "rerun", yes, as_json,
        lambda f: api.rerun_flow(f.uuid, all_jobs=all_jobs, by="cli"),
    )  # fmt: skip


@app.command()
def delete(
    flow: FlowArg,
    outputs: Annotated[
        bool, typer.Option("--outputs", help="Also delete the jobs' outputs from the JobStore.")
    ] = False,
    run_dirs: Annotated[
        bool,
        typer.Option("--files", help="Also delete the jobs' run dirs and downloaded copies."),
    ] = False,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete a flow and all its jobs (with --outputs and --files, what they left too).

    All or nothing: refused while a job of the flow is in its queue (cancel the flow
    first) or a runner works on one.
    """
    from conveyor import api

    _act(
        flow, "delete", "delete", "deleted", yes, as_json,
        lambda f: api.delete_flow(f.uuid, outputs=outputs, files=run_dirs, by="cli"),
        show_state=False,
    )  # fmt: skip


@app.command()
def wait(
    flow: FlowArg,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", "-t", min=0, help="Give up after this many seconds."),
    ] = None,
    interval: Annotated[
        float, typer.Option("--interval", "-i", min=0.05, help="Seconds between two looks.")
    ] = 0.5,
) -> None:
    """Show a live progress bar until the flow has ended (COMPLETED, FAILED, STOPPED or
    CANCELLED).

    A runner must be running (the daemon, or 'conveyor runner run' elsewhere): this
    only watches the database. Exit code 0 if the flow COMPLETED, 1 otherwise or on
    timeout.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from conveyor import api

    found = api.find_flow(flow)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=render.stdout(), transient=False) as progress:
        task = progress.add_task(found.name or found.uuid, total=None)

        def show(current: FlowDoc, counts: dict[JobState, int]) -> None:
            ended = sum(n for state, n in counts.items() if state in api.ENDED_STATES)
            label = Text(f"{current.name or current.uuid} ")
            label.append_text(render_flows.flow_state_text(current.state))
            progress.update(
                task, total=sum(counts.values()), completed=ended, description=label.markup
            )

        final = api.wait_flow(found.uuid, timeout=timeout, interval=interval, progress=show)
    counts = api.flow_counts(final.uuid)
    line = Text(f"Flow {final.name or final.uuid}: ")
    line.append_text(render_flows.flow_state_text(final.state))
    line.append(" (")
    line.append_text(render_flows.counts_text(counts))
    line.append(")")
    render.stdout().print(line)
    if final.state is not FlowState.COMPLETED:
        raise typer.Exit(1)
