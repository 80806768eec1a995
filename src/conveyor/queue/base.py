"""The ``QueueAdapter`` interface: build queue commands and parse their output.

An adapter does no I/O: it renders files, builds argument lists and parses text. The
runner runs the commands on the worker's :class:`~conveyor.hosts.base.Host`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import ClassVar

from conveyor.exceptions import QueueError
from conveyor.queue.resources import Container, Resources
from conveyor.runfiles import (
    EXIT_CODE_FILE,
    JOB_FILE,
    OUTPUT_FILE,
    STARTED_FILE,
    STDERR_FILE,
    STDOUT_FILE,
)

__all__ = [
    "EXIT_CODE_FILE",
    "JOB_FILE",
    "OUTPUT_FILE",
    "STARTED_FILE",
    "STDERR_FILE",
    "STDOUT_FILE",
    "QueueAdapter",
    "QueueJobInfo",
    "QueueState",
    "SubmitSpec",
]


class QueueState(StrEnum):
    """What a queue manager says about a job, in one vocabulary for all of them."""

    QUEUED = "QUEUED"
    HELD = "HELD"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    DONE = "DONE"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class QueueJobInfo:
    """One job as the queue reports it; the native state and reason are kept."""

    queue_id: str
    state: QueueState
    native_state: str = ""
    reason: str | None = None
    exit_code: int | None = None


@dataclass(frozen=True)
class SubmitSpec:
    """Everything an adapter needs to render and submit one job."""

    run_dir: str
    job_name: str
    submit_token: str
    #: The payload command, e.g. ``[python, "-m", "conveyor.execution", run_dir]``.
    command: Sequence[str]
    pre_run: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)

    @property
    def container(self) -> Container | None:
        """The container the payload runs in, if the resources ask for one."""
        return self.resources.container


class QueueAdapter(ABC):
    """Pure functions for one queue system."""

    #: The name workers use in ``queue:`` to pick this adapter.
    name: ClassVar[str]
    #: The script the submit command runs.
    script_name: ClassVar[str] = "submit.sh"
    #: How long a job may be missing from the status output before it counts as gone.
    missing_grace: ClassVar[timedelta] = timedelta(seconds=0)

    @abstractmethod
    def render(self, spec: SubmitSpec) -> dict[str, str]:
        """The files to write into the run dir, by name (the script among them)."""

    @abstractmethod
    def submit_command(self, spec: SubmitSpec) -> list[str]:
        """The argv that submits the rendered script."""

    @abstractmethod
    def parse_submit_output(self, exit_code: int, stdout: str, stderr: str) -> str:
        """The queue id from the submit command's output (QueueParseError otherwise)."""

    @abstractmethod
    def status_command(self, queue_ids: Sequence[str]) -> list[str]:
        """One argv that reports on all ``queue_ids``."""

    @abstractmethod
    def parse_status_output(
        self, exit_code: int, stdout: str, stderr: str, queue_ids: Sequence[str]
    ) -> dict[str, QueueJobInfo]:
        """The jobs the queue knows about; a job it no longer lists is left out."""

    @abstractmethod
    def find_by_token_command(self, token: str) -> list[str]:
        """An argv whose output lets :meth:`parse_find_by_token` find a submission."""

    @abstractmethod
    def parse_find_by_token(
        self, exit_code: int, stdout: str, stderr: str, token: str
    ) -> str | None:
        """The queue id of the job submitted with ``token``, or None."""

    def accounting_command(self, queue_id: str) -> list[str] | None:
        """An argv asking the queue's history about a finished job; None if none."""
        return None

    def parse_accounting_output(
        self, exit_code: int, stdout: str, stderr: str, queue_id: str
    ) -> QueueJobInfo | None:
        """What the history says about the job, or None if it does not know it."""
        return None

    @abstractmethod
    def cancel_command(self, queue_id: str) -> list[str]:
        """The argv that cancels a job."""

    def transfer_data_command(self, queue_id: str) -> list[str] | None:
        """An argv that brings a finished job's files back to its run dir (a queue that
        spools them, like HTCondor with ``-spool``); None when files stay in place."""
        return None

    def hold_command(self, queue_id: str) -> list[str]:
        """The argv that holds a queued job (QueueError if the system cannot)."""
        raise QueueError(f"the {self.name} queue cannot hold jobs")

    def release_command(self, queue_id: str) -> list[str]:
        """The argv that releases a held job (QueueError if the system cannot)."""
        raise QueueError(f"the {self.name} queue cannot release jobs")
