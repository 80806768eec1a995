"""The generic resources model: merging layers, sizes, durations, unknown keys."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.exceptions import QueueError
from conveyor.queue.resources import (
    SYSTEM_KEYS,
    Container,
    Resources,
    format_hms,
    parse_duration,
    parse_resources,
)


def test_no_layers_is_all_unset() -> None:
    res = parse_resources()
    assert res == Resources()
    assert parse_resources(None, {}) == Resources()
    assert res.extra_directives == []
    assert res.container is None
    assert all(getattr(res, key) == {} for key in SYSTEM_KEYS)


def test_later_layers_win_per_key() -> None:
    worker = {"nodes": 2, "queue": "normal", "walltime": 3600, "account": "proj"}
    job = {"queue": "debug", "walltime": "00:10:00"}
    res = parse_resources(worker, job)
    assert (res.nodes, res.queue, res.walltime, res.account) == (2, "debug", 600, "proj")


def test_system_passthrough_is_merged_key_by_key_and_kept_verbatim() -> None:
    worker = {"slurm": {"constraint": "haswell", "exclusive": ""}, "pbs": {"place": "scatter"}}
    job = {"slurm": {"constraint": "knl", "begin": "now+60"}}
    res = parse_resources(worker, job)
    assert res.slurm == {"constraint": "knl", "exclusive": "", "begin": "now+60"}
    assert res.pbs == {"place": "scatter"}
    # Values become strings, as they go into directives; keys are not checked here.
    assert parse_resources({"sge": {"h_vmem": 4, "any-key": 1.5}}).sge == {
        "h_vmem": "4",
        "any-key": "1.5",
    }


def test_a_later_passthrough_replaces_a_bad_earlier_one() -> None:
    with pytest.raises(QueueError, match="slurm"):
        parse_resources({"slurm": "not a mapping"})
    assert parse_resources({"slurm": "oops"}, {"slurm": {"a": "b"}}).slurm == {"a": "b"}


@pytest.mark.parametrize(
    ("text", "mib"),
    [
        ("4G", 4096),
        ("4g", 4096),
        ("4GB", 4096),
        ("4GiB", 4096),
        (" 4 G ", 4096),
        ("1.5G", 1536),
        ("512M", 512),
        ("512MB", 512),
        ("2048", 2048),
        ("1T", 1024 * 1024),
        ("2048K", 2),
        ("100K", 1),  # rounds up to the smallest size a queue takes
        (3000, 3000),  # a number is MiB already
    ],
)
def test_memory_sizes(text: Any, mib: int) -> None:
    assert parse_resources({"memory": text}).memory_mb == mib


@pytest.mark.parametrize("text", ["lots", "4X", "G", "-1G", "4 G B", "0", "0G", "1.2.3G"])
def test_bad_memory_sizes(text: str) -> None:
    with pytest.raises(QueueError, match="memory"):
        parse_resources({"memory": text})


def test_memory_and_memory_mb() -> None:
    assert parse_resources({"memory_mb": 1000}).memory_mb == 1000
    with pytest.raises(QueueError, match="either memory or memory_mb"):
        parse_resources({"memory": "1G", "memory_mb": 1000})
    # One spelling in the worker's defaults, the other in the job: the job wins.
    assert parse_resources({"memory_mb": 1000}, {"memory": "2G"}).memory_mb == 2048
    assert parse_resources({"memory": "2G"}, {"memory_mb": 1000}).memory_mb == 1000
    with pytest.raises(QueueError, match="memory_mb"):
        parse_resources({"memory_mb": 0})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("1:30", 90),
        ("01:00:00", 3600),
        ("48:00:00", 172800),
        ("1-00:00:00", 86400),
        ("2-03:04:05", 2 * 86400 + 3 * 3600 + 4 * 60 + 5),
        (" 10:00 ", 600),
    ],
)
def test_walltime_formats(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert parse_resources({"walltime": text}).walltime == seconds


def test_walltime_as_a_number_is_seconds() -> None:
    assert parse_resources({"walltime": 120}).walltime == 120


@pytest.mark.parametrize("text", ["", "abc", "1:2:3:4", "1.5", "1:-5", "-5", "x-01:00:00"])
def test_bad_walltimes(text: str) -> None:
    with pytest.raises(QueueError, match="walltime"):
        parse_resources({"walltime": text})


def test_zero_walltime_is_refused() -> None:
    with pytest.raises(QueueError, match="walltime"):
        parse_resources({"walltime": 0})


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "00:00:00"), (59, "00:00:59"), (3661, "01:01:01"), (90000, "25:00:00")],
)
def test_format_hms(seconds: int, text: str) -> None:
    assert format_hms(seconds) == text


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("walltme", "walltime"),
        ("memroy", "memory"),
        ("node", "nodes"),
        ("partition_", None),
        ("slurmm", "slurm"),
        ("cpus_per_tsk", "cpus_per_task"),
    ],
)
def test_unknown_keys_name_the_close_match(key: str, suggestion: str | None) -> None:
    with pytest.raises(QueueError, match=f"unknown resource '{key}'") as info:
        parse_resources({key: 1})
    if suggestion:
        assert f"did you mean '{suggestion}'" in str(info.value)
    else:
        # No close match: the message lists what is known instead.
        assert "known: " in str(info.value)
        assert "walltime" in str(info.value)


def test_unknown_key_in_a_later_layer_is_found_too() -> None:
    with pytest.raises(QueueError, match=r"'gpu'.*did you mean 'gpus'"):
        parse_resources({"gpus": 1}, {"gpu": 2})


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"nodes": 0}, "nodes"),
        ({"processes": -1}, "processes"),
        ({"gpus": -1}, "gpus"),
        ({"array_size": 0}, "array_size"),
        ({"nodes": "many"}, "nodes"),
        ({"extra_directives": "--exclusive"}, "extra_directives"),
        ({"container": {"image": "x", "runtime": "podman"}}, "runtime"),
        ({"container": {"runtime": "docker"}}, "image"),
        ({"container": {"image": "x", "bogus": 1}}, "bogus"),
    ],
)
def test_invalid_values_name_the_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(QueueError, match=f"invalid resources: .*{field}"):
        parse_resources(values)


def test_every_field_at_once() -> None:
    res = parse_resources(
        {
            "nodes": 2,
            "processes": 8,
            "processes_per_node": 4,
            "cpus_per_task": 2,
            "gpus": 1,
            "memory": "8G",
            "walltime": "1-00:00:00",
            "queue": "gpu",
            "account": "proj",
            "qos": "high",
            "job_name": "relax",
            "email": "me@example.org",
            "array_size": 3,
            "extra_directives": ["--exclusive"],
            "container": {"runtime": "docker", "image": "python:3.11", "options": ["--gpus=all"]},
            "htcondor": {"request_disk": "1GB"},
        }
    )
    assert res.memory_mb == 8192
    assert res.walltime == 86400
    assert res.container == Container(runtime="docker", image="python:3.11", options=["--gpus=all"])
    assert res.htcondor == {"request_disk": "1GB"}
    assert res.gpus == 1


def test_container_runtime_defaults_to_apptainer() -> None:
    res = parse_resources({"container": {"image": "/images/py.sif"}})
    assert res.container is not None
    assert res.container.runtime == "apptainer"
    assert res.container.options == []


def test_layers_are_not_modified() -> None:
    worker: dict[str, Any] = {"memory": "1G", "slurm": {"a": "1"}}
    job: dict[str, Any] = {"slurm": {"b": "2"}}
    parse_resources(worker, job)
    assert worker == {"memory": "1G", "slurm": {"a": "1"}}
    assert job == {"slurm": {"b": "2"}}


def test_yaml_booleans_in_passthrough_become_lowercase_words() -> None:
    from conveyor.queue.resources import parse_resources as parse

    found = parse({"slurm": {"exclusive": True, "requeue": False}})
    assert found.slurm == {"exclusive": "true", "requeue": "false"}
