"""Generic queue resources, validated once and mapped to each system's syntax by its
adapter. Unknown keys are refused with the close match; system-specific keys go under
the system's own name (``slurm: {constraint: ...}``) and are passed through as given.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from conveyor.exceptions import QueueError

__all__ = [
    "SYSTEM_KEYS",
    "Container",
    "Resources",
    "format_hms",
    "parse_resources",
]

#: Keys holding settings for one queue system only, passed through verbatim.
SYSTEM_KEYS = ("slurm", "pbs", "sge", "htcondor")

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_FACTORS = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


class Container(BaseModel):
    """Run the payload inside a container."""

    model_config = ConfigDict(extra="forbid")

    runtime: Literal["apptainer", "singularity", "docker"] = Field(
        "apptainer", description="The container runtime on the worker."
    )
    image: str = Field(description="Image to run (a .sif path, docker://..., or a tag).")
    options: list[str] = Field(
        default_factory=list, description="Extra arguments for the runtime, one per item."
    )


class Resources(BaseModel):
    """What a job asks of the queue. Every field is optional; unset ones are left out."""

    model_config = ConfigDict(extra="forbid")

    nodes: int | None = Field(None, ge=1, description="Number of nodes.")
    processes: int | None = Field(None, ge=1, description="Total MPI processes (tasks).")
    processes_per_node: int | None = Field(None, ge=1, description="Processes per node.")
    cpus_per_task: int | None = Field(None, ge=1, description="CPU cores per process.")
    gpus: int | None = Field(None, ge=0, description="GPUs per node.")
    memory_mb: int | None = Field(
        None, ge=1, description="Memory per node in MiB ('memory: 4G' is accepted too)."
    )
    walltime: int | None = Field(
        None, ge=1, description="Time limit in seconds ('HH:MM:SS' or 'D-HH:MM:SS' too)."
    )
    queue: str | None = Field(None, description="Queue or partition.")
    account: str | None = Field(None, description="Account or project to charge.")
    qos: str | None = Field(None, description="Quality of service.")
    job_name: str | None = Field(None, description="Name shown by the queue (token appended).")
    email: str | None = Field(None, description="Where the queue sends mail.")
    array_size: int | None = Field(None, ge=1, description="Run the payload as an array job.")
    extra_directives: list[str] = Field(
        default_factory=list, description="Raw directive lines added to the script as given."
    )
    container: Container | None = Field(None, description="Run the payload in a container.")
    slurm: dict[str, str] = Field(default_factory=dict, description="SLURM-only options.")
    pbs: dict[str, str] = Field(default_factory=dict, description="PBS-only resources (-l).")
    sge: dict[str, str] = Field(default_factory=dict, description="SGE-only options.")
    htcondor: dict[str, str] = Field(
        default_factory=dict, description="HTCondor-only submit description commands."
    )

    @field_validator("walltime", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("slurm", "pbs", "sge", "htcondor", mode="before")
    @classmethod
    def _strings(cls, value: Any) -> Any:
        # YAML's true/false arrive as bools: keep them as the words adapters look for.
        if isinstance(value, Mapping):
            return {
                str(k): (str(v).lower() if isinstance(v, bool) else str(v))
                for k, v in value.items()
            }
        return value


def parse_duration(text: str) -> int:
    """Seconds in ``'90'``, ``'MM:SS'``, ``'HH:MM:SS'`` or ``'D-HH:MM:SS'``."""
    value = text.strip()
    days = 0
    if "-" in value:
        head, value = value.split("-", 1)
        days = int(head)
    parts = [int(p) for p in value.split(":")]
    if not 1 <= len(parts) <= 3 or any(p < 0 for p in parts):
        raise ValueError(f"walltime {text!r} is not seconds, MM:SS, HH:MM:SS or D-HH:MM:SS")
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + part
    return days * 86400 + seconds


def format_hms(seconds: int) -> str:
    """``seconds`` as ``HH:MM:SS`` (hours may exceed 24)."""
    hours, rest = divmod(seconds, 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def _memory_mb(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    match = _MEMORY.match(value)
    if not match:
        raise QueueError(f"memory {value!r} is not a size like 4G, 512M or 2048 (MiB)")
    number, unit = float(match.group(1)), match.group(2).upper()
    if number <= 0:
        raise QueueError(f"memory {value!r} must be more than zero")
    return max(1, round(number * _FACTORS[unit]))


def parse_resources(*layers: Mapping[str, Any] | None) -> Resources:
    """Merge resource mappings (later ones win, per key) and validate them.

    Raises
    ------
    QueueError
        Naming each bad key (with the close match for a typo) or value.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        values = dict(layer or {})
        # Per layer, so that a job's ``memory: 4G`` overrides a worker's ``memory_mb``.
        if "memory" in values:
            if "memory_mb" in values:
                raise QueueError("give either memory or memory_mb, not both")
            values["memory_mb"] = _memory_mb(values.pop("memory"))
        for key, value in values.items():
            previous = merged.get(key)
            if key in SYSTEM_KEYS and isinstance(value, Mapping) and isinstance(previous, Mapping):
                merged[key] = {**previous, **value}
            else:
                merged[key] = value
    known = set(Resources.model_fields) | {"memory"}
    for key in merged:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = (
                f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(known))}"
            )
            raise QueueError(f"unknown resource {key!r}{hint}")
    try:
        return Resources.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise QueueError(f"invalid resources: {problems}") from exc
