"""How the CLI shows things: rich tables for people, plain JSON for programs.

Nothing here reads or changes the database; every function takes what the API returned.
Consoles are made per call, so output goes to whatever ``sys.stdout`` is at that moment.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console
from rich.table import Table
from rich.text import Text

from conveyor.models import EPOCH, JobDoc
from conveyor.states import ERROR_STATES, JobState

if TYPE_CHECKING:
    from conveyor.api import Outcome

__all__ = [
    "MASK",
    "HistoryFollower",
    "error_line",
    "fields_text",
    "history_json",
    "history_table",
    "job_details",
    "job_json",
    "jobs_table",
    "masked",
    "outcome_line",
    "outputs_table",
    "print_json",
    "print_text",
    "short",
    "state_text",
    "stderr",
    "stdout",
    "when",
]

#: What a secret is shown as.
MASK = "********"
_SECRET_KEYS = ("password", "passphrase")
_STATE_STYLES = {
    JobState.COMPLETED: "green",
    JobState.FAILED: "bold red",
    JobState.REMOTE_ERROR: "bold red",
    JobState.RUNNING: "cyan",
    JobState.SUBMITTED: "blue",
    JobState.WAITING: "dim",
    JobState.PAUSED: "yellow",
    JobState.STOPPED: "yellow",
    JobState.CANCELLED: "yellow",
}


def stdout() -> Console:
    """A console on the current stdout that never breaks a long line in two."""
    return Console(highlight=False, soft_wrap=True)


def stderr() -> Console:
    """A console on the current stderr that never breaks a long line in two."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


def error_line(message: str, exc: BaseException | None = None, *, debug: bool = False) -> None:
    """Print ``error: message`` in red on stderr; with ``debug``, the traceback first."""
    if debug and exc is not None:
        sys.stderr.write("".join(traceback.format_exception(exc)))
        sys.stderr.flush()
    stderr().print(Text(f"error: {message}", style="red"))


def print_text(text: str) -> None:
    """Write ``text`` to stdout as it is, and nothing else."""
    sys.stdout.write(text)
    sys.stdout.flush()


def print_json(data: Any) -> None:
    """Write ``data`` as indented JSON to stdout, and nothing else."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def when(moment: datetime | None) -> str:
    """A stored time in the local time zone, to the second; ``-`` when unset."""
    if moment is None or moment == EPOCH:
        return "-"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def state_text(state: JobState | str) -> Text:
    """A state, coloured by what it means."""
    style = _STATE_STYLES.get(JobState(state), "")
    return Text(str(state), style=style)


def job_json(doc: JobDoc, *, full: bool = False) -> dict[str, Any]:
    """A job as JSON-compatible data; without the bulky serialized ``job`` unless ``full``."""
    return doc.model_dump(mode="json", exclude=None if full else {"job"})


def jobs_table(docs: Sequence[JobDoc]) -> Table:
    """One row per job: db id, name, state, worker, last update, first line of the error."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("db id", justify="right", no_wrap=True)
    table.add_column("name", overflow="fold")
    table.add_column("state", no_wrap=True)
    table.add_column("worker", no_wrap=True)
    table.add_column("updated", no_wrap=True)
    table.add_column("error", overflow="fold")
    for doc in docs:
        error = _first_line(doc.error.message) if doc.error else ""
        table.add_row(
            str(doc.db_id),
            Text(doc.name),
            state_text(doc.state),
            Text(doc.worker),
            when(doc.updated_at),
            Text(short(error, 100), style="red"),
        )
    return table


def outputs_table(rows: Iterable[tuple[JobDoc, str]]) -> Table:
    """Jobs with their final state and output (already rendered as text)."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("db id", justify="right", no_wrap=True)
    table.add_column("name", overflow="fold")
    table.add_column("state", no_wrap=True)
    table.add_column("output / error", overflow="fold")
    for doc, output in rows:
        if doc.state in ERROR_STATES and doc.error is not None:
            shown = Text(short(_first_line(doc.error.message), 100), style="red")
        else:
            shown = Text(output)
        table.add_row(str(doc.db_id), Text(doc.name), state_text(doc.state), shown)
    return table


def fields_text(rows: Iterable[tuple[str, Any]]) -> Text:
    """``key  value`` lines; values are never cut or folded, so paths can be copied."""
    rows = list(rows)
    width = max(len(key) for key, _ in rows)
    out = Text()
    for key, value in rows:
        out.append(f"{key:<{width}}  ", style="bold")
        out.append_text(value if isinstance(value, Text) else Text(str(value)))
        out.append("\n")
    out.rstrip()
    return out


def _or_dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def job_details(doc: JobDoc, now: datetime) -> list[Any]:
    """Everything about one job, as rich renderables to print one after another."""
    remote = doc.remote
    lock = doc.lock
    if lock.is_held(now):
        lock_text = f"held by {lock.owner} (lock {lock.id}) until {when(lock.expires_at)}"
    elif lock.id is not None:
        lock_text = f"lapsed: was {lock.owner}'s, expired {when(lock.expires_at)}"
    else:
        lock_text = "free"
    attempts = f"{doc.attempts.count} failed attempt(s) of the current step"
    if doc.attempts.retry_at != EPOCH:
        attempts += f"; next not before {when(doc.attempts.retry_at)}"
    state = state_text(doc.state)
    if doc.previous_state is not None:
        state.append(f" (failed in {doc.previous_state})")
    out: list[Any] = [
        Text(f"Job {doc.db_id}: {doc.name}", style="bold"),
        fields_text(
            [
                ("state", state),
                ("uuid", f"{doc.uuid} (index {doc.index})"),
                ("flow", doc.flow_uuid),
                ("parents", ", ".join(doc.parents) or "-"),
                ("worker", doc.worker),
                ("priority", doc.priority),
                ("resources", _or_dash(json.dumps(doc.resources) if doc.resources else None)),
                ("exec env", _or_dash(json.dumps(doc.exec_env) if doc.exec_env else None)),
                ("run dir", _or_dash(remote.run_dir)),
                ("queue id", _or_dash(remote.queue_id)),
                ("queue state", _or_dash(remote.queue_state)),
                ("native state", _or_dash(remote.native_state)),
                ("exit code", _or_dash(remote.exit_code)),
                ("failure reason", _or_dash(remote.failure_reason)),
                ("submitted", when(remote.submitted_at)),
                ("lock", lock_text),
                ("attempts", attempts),
                ("created", when(doc.created_at)),
                ("updated", when(doc.updated_at)),
                ("started", when(doc.started_at)),
                ("ended", when(doc.ended_at)),
            ]
        ),
    ]
    if doc.error is not None:
        error = doc.error
        kind = "will be retried" if error.transient else "not retried"
        where = "the job's own code" if error.step == "job" else f"step {error.step}"
        out.append(Text(f"\nError in {where} at {when(error.at)} ({kind}):", "bold red"))
        out.append(Text(error.message))
        if error.traceback:
            out.append(Text(""))
            out.append(Text(error.traceback.rstrip()))
    history = Table(box=None, pad_edge=False, header_style="bold")
    history.add_column("state", no_wrap=True)
    history.add_column("at", no_wrap=True)
    history.add_column("by", overflow="fold")
    for entry in doc.history:
        history.add_row(state_text(entry.state), when(entry.at), Text(_or_dash(entry.by)))
    out += [Text("\nHistory:", style="bold"), history]
    return out


def masked(data: Any) -> Any:
    """``data`` with the values of password/passphrase fields and of passwords in URLs
    replaced by :data:`MASK`."""
    if isinstance(data, Mapping):
        return {
            key: MASK
            if any(word in str(key).lower() for word in _SECRET_KEYS) and value
            else masked(value)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [masked(value) for value in data]
    if isinstance(data, str) and "://" in data and "@" in data:
        return _url_without_password(data)
    return data


def _url_without_password(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


class HistoryFollower:
    """Turns the growing ``history`` of jobs into one line per state change.

    Polling snapshots would miss changes that happen between two polls; every change
    is in the job's history, so each call reports the entries not reported before.
    """

    def __init__(self) -> None:
        self._seen: dict[int, int] = {}

    def new_lines(self, docs: Iterable[JobDoc]) -> list[tuple[datetime, Text]]:
        """Lines for the state changes not shown yet, oldest first."""
        lines: list[tuple[datetime, Text]] = []
        for doc in docs:
            seen = min(self._seen.get(doc.db_id, 0), len(doc.history))
            for i in range(seen, len(doc.history)):
                entry = doc.history[i]
                line = Text(f"job {doc.db_id} {doc.name}: ")
                if i == 0:
                    line.append_text(state_text(entry.state))
                    line.append(" (submitted)", style="dim")
                else:
                    line.append(f"{doc.history[i - 1].state} → ")
                    line.append_text(state_text(entry.state))
                lines.append((entry.at, line))
            self._seen[doc.db_id] = len(doc.history)
        lines.sort(key=lambda item: item[0])
        return lines


# --- outcomes of changes -----------------------------------------------------------------


def outcome_line(outcome: Outcome, verb: str, *, show_state: bool = True) -> Text:
    """``job N NAME: STATE (note)``, or ``job N NAME: not VERB: why`` in red."""
    line = Text(
        f"job {outcome.db_id} {outcome.name}: " if outcome.name else f"job {outcome.db_id}: "
    )
    if not outcome.ok:
        line.append(f"not {verb}: {outcome.message}", style="red")
        return line
    if show_state and outcome.doc is not None:
        line.append_text(state_text(outcome.doc.state))
        if outcome.note:
            line.append(f" ({outcome.note})", style="dim")
    else:
        line.append(outcome.note or verb)
    return line


# --- history ----------------------------------------------------------------------------


def history_json(doc: JobDoc) -> list[dict[str, Any]]:
    """Every recorded state change: the state, the one before, when and by whom."""
    rows = []
    for i, entry in enumerate(doc.history):
        rows.append(
            {
                "from": str(doc.history[i - 1].state) if i else None,
                "state": str(entry.state),
                "at": entry.at.isoformat(),
                "by": entry.by,
            }
        )
    return rows


def history_table(doc: JobDoc) -> Table:
    """One row per state change: from, to, when (local time, to the millisecond), by."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("from", no_wrap=True)
    table.add_column("to", no_wrap=True)
    table.add_column("at", no_wrap=True)
    table.add_column("by", overflow="fold")
    for i, entry in enumerate(doc.history):
        before = state_text(doc.history[i - 1].state) if i else Text("-", style="dim")
        at = entry.at.astimezone().isoformat(sep=" ", timespec="milliseconds")
        table.add_row(before, state_text(entry.state), at, Text(_or_dash(entry.by)))
    return table
