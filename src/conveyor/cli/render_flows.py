"""How the CLI shows flows: a table of flows, one flow's details, its graph as a tree
for the terminal and as a Mermaid flowchart for documents.

Like :mod:`conveyor.cli.render`, nothing here reads the database.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from conveyor.cli.render import fields_text, state_text, when
from conveyor.models import FlowDoc, JobDoc
from conveyor.states import FlowState, JobState

__all__ = [
    "counts_text",
    "flow_details",
    "flow_json",
    "flow_state_text",
    "flow_tree",
    "flows_table",
    "mermaid",
]

_FLOW_STYLES = {
    FlowState.COMPLETED: "green",
    FlowState.FAILED: "bold red",
    FlowState.RUNNING: "cyan",
    FlowState.WAITING: "dim",
    FlowState.PAUSED: "yellow",
    FlowState.STOPPED: "yellow",
    FlowState.CANCELLED: "yellow",
}


def flow_state_text(state: FlowState | str) -> Text:
    """A flow state, coloured by what it means."""
    return Text(str(state), style=_FLOW_STYLES.get(FlowState(state), ""))


def flow_json(flow: FlowDoc) -> dict[str, Any]:
    """A flow as JSON-compatible data."""
    return flow.model_dump(mode="json")


def flows_table(flows: Sequence[FlowDoc]) -> Table:
    """One row per flow: uuid, name, state, number of jobs, when it was created."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    # uuids and states are never cut: people copy them into the next command.
    table.add_column("uuid", no_wrap=True, min_width=36)
    table.add_column("name", overflow="fold")
    table.add_column("state", no_wrap=True, min_width=9)
    table.add_column("jobs", justify="right", no_wrap=True, min_width=4)
    table.add_column("created", no_wrap=True, min_width=19)
    for flow in flows:
        table.add_row(
            flow.uuid,
            Text(flow.name),
            flow_state_text(flow.state),
            str(len(flow.job_uuids)),
            when(flow.created_at),
        )
    return table


def counts_text(counts: Mapping[JobState, int]) -> Text:
    """``COMPLETED 3, RUNNING 1`` in pipeline order, each state coloured."""
    out = Text()
    for state in JobState:
        if counts.get(state):
            if out:
                out.append(", ")
            out.append_text(state_text(state))
            out.append(f" {counts[state]}")
    return out or Text("no jobs", style="dim")


def flow_details(flow: FlowDoc, counts: Mapping[JobState, int], now: datetime) -> Text:
    """A flow's fields and its job counts by state."""
    lock = flow.lock
    if lock.is_held(now):
        lock_text = f"held by {lock.owner} (lock {lock.id}) until {when(lock.expires_at)}"
    else:
        lock_text = "free"
    head = Text(f"Flow {flow.name}\n" if flow.name else "Flow\n", style="bold")
    head.append_text(
        fields_text(
            [
                ("uuid", flow.uuid),
                ("state", flow_state_text(flow.state)),
                ("jobs", counts_text(counts)),
                ("created", when(flow.created_at)),
                ("updated", when(flow.updated_at)),
                ("lock", lock_text),
                ("metadata", json.dumps(flow.metadata) if flow.metadata else "-"),
            ]
        )
    )
    return head


def _job_label(doc: JobDoc) -> Text:
    label = Text(f"{doc.db_id} {doc.name} ")
    label.append_text(state_text(doc.state))
    if doc.index > 1:
        label.append(f" (index {doc.index})", style="dim")
    return label


def _graph(
    jobs: Sequence[JobDoc],
) -> tuple[list[JobDoc], dict[str, list[JobDoc]], dict[str, JobDoc]]:
    """Roots, children by parent uuid, and the latest document of each uuid."""
    latest: dict[str, JobDoc] = {}
    for doc in sorted(jobs, key=lambda d: d.db_id):
        if doc.uuid not in latest or doc.index > latest[doc.uuid].index:
            latest[doc.uuid] = doc
    children: dict[str, list[JobDoc]] = {}
    roots = []
    for doc in sorted(jobs, key=lambda d: d.db_id):
        inside = [p for p in doc.parents if p in latest]
        if not inside:
            roots.append(doc)
        for parent in inside:
            children.setdefault(parent, []).append(doc)
    return roots, children, latest


def flow_tree(flow: FlowDoc, jobs: Sequence[JobDoc]) -> Tree:
    """The flow's jobs as a tree: each job under the jobs it depends on. A job with
    several parents is drawn in full under the first and referred to under the others."""
    title = Text(f"Flow {flow.name} " if flow.name else "Flow ", style="bold")
    title.append(f"{flow.uuid} ", style="dim")
    title.append_text(flow_state_text(flow.state))
    tree = Tree(title)
    roots, children, latest = _graph(jobs)
    seen: set[int] = set()

    def add(branch: Tree, doc: JobDoc) -> None:
        if doc.db_id in seen:
            branch.add(Text(f"{doc.db_id} {doc.name} (see above)", style="dim"))
            return
        seen.add(doc.db_id)
        node = branch.add(_job_label(doc))
        if latest.get(doc.uuid) is doc:
            for child in children.get(doc.uuid, []):
                add(node, child)

    for doc in roots:
        add(tree, doc)
    for doc in jobs:  # a cycle would leave jobs unreachable; show them anyway
        if doc.db_id not in seen:
            add(tree, doc)
    return tree


_MERMAID_STYLES = {
    JobState.COMPLETED: "fill:#d4edda,stroke:#2e7d32",
    JobState.FAILED: "fill:#f8d7da,stroke:#c62828",
    JobState.REMOTE_ERROR: "fill:#f8d7da,stroke:#c62828",
    JobState.RUNNING: "fill:#d1ecf1,stroke:#00838f",
    JobState.PAUSED: "fill:#fff3cd,stroke:#f9a825",
    JobState.STOPPED: "fill:#fff3cd,stroke:#f9a825",
    JobState.CANCELLED: "fill:#fff3cd,stroke:#f9a825",
}


def _mermaid_text(text: str) -> str:
    """Text safe inside a quoted Mermaid label: entity codes for the characters that
    would end the label or be read as markup, spaces for line breaks."""
    text = text.replace("#", "#35;")
    for char, code in (('"', "#quot;"), ("<", "#lt;"), (">", "#gt;"), ("&", "#amp;")):
        text = text.replace(char, code)
    return " ".join(text.split())


def mermaid(flow: FlowDoc, jobs: Sequence[JobDoc]) -> str:
    """The flow as a Mermaid flowchart: node ``j<db id>`` per job, labelled with its db
    id, name and state, an edge from each parent, states as classes."""
    _, children, latest = _graph(jobs)
    lines = ["flowchart TD", f"    %% flow {_mermaid_text(flow.name)} {flow.uuid}"]
    for doc in sorted(jobs, key=lambda d: d.db_id):
        label = f"{doc.db_id} {doc.name}: {doc.state}"
        if doc.index > 1:
            label += f" (index {doc.index})"
        lines.append(f'    j{doc.db_id}["{_mermaid_text(label)}"]')
    for uuid, kids in children.items():
        for child in kids:
            lines.append(f"    j{latest[uuid].db_id} --> j{child.db_id}")
    by_state: dict[JobState, list[str]] = {}
    for doc in jobs:
        by_state.setdefault(doc.state, []).append(f"j{doc.db_id}")
    for state, nodes in by_state.items():
        if state in _MERMAID_STYLES:
            lines.append(f"    classDef {state} {_MERMAID_STYLES[state]}")
            lines.append(f"    class {','.join(nodes)} {state}")
    return "\n".join(lines) + "\n"
