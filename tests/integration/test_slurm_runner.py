"""The Runner end to end through a real SLURM cluster (scripts/services/slurm.sh).

Every job here is a real SLURM job: sbatch, squeue, sacct, scancel and scontrol on this
machine, driven by the runner through a local worker with ``queue: slurm``.

slurmctld checks time limits every 30 s, and the shortest limit is one minute: the
walltime job takes 60-90 s. It is submitted first, by a module fixture, and its test
comes last, so that it runs while the others do.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from jobflow import Flow

from conveyor import Runner, submit_command, submit_flow
from conveyor.db.base import JobFilter
from conveyor.hosts import LocalHost
from conveyor.models import JobDoc, utcnow
from conveyor.project import Project
from conveyor.queue import QueueState
from conveyor.queue.base import STARTED_FILE, STDERR_FILE
from conveyor.queue.slurm import SlurmAdapter
from conveyor.runner.steps import submit_spec
from conveyor.states import JobState, JobUpdate
from conveyor.testing import jobs as J
from conveyor.testing import temp_project
from services import service_missing

pytestmark = pytest.mark.integration

DEADLINE = 90.0
#: A walltime kill: one minute of limit, up to 30 s until slurmctld looks, KillWait 5 s.
TIMEOUT_DEADLINE = 150.0


def slurm(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture(scope="module")
def sacct_args() -> list[str]:
    """The cluster answers and its node takes jobs; its accounting decides sacct's args:
    ``-c`` (the job completion log) when it keeps no accounting storage."""
    if shutil.which("sbatch") is None:
        service_missing("SLURM is not installed (as root: bash scripts/services/slurm.sh)")
    ping = slurm("scontrol", "ping")
    nodes = slurm("sinfo", "--noheader", "--format=%T")
    if "is UP" not in ping.stdout or not re.search(
        r"^(idle|mixed|allocated)", nodes.stdout, re.MULTILINE
    ):
        service_missing(
            "SLURM is not running or its node takes no jobs (as root: bash "
            f"scripts/services/slurm.sh); scontrol ping: {ping.stdout.strip()} "
            f"{ping.stderr.strip()}; sinfo: {nodes.stdout.strip()} {nodes.stderr.strip()}"
        )
    config = slurm("scontrol", "show", "config").stdout
    storage = re.search(r"^AccountingStorageType\s*=\s*(\S+)", config, re.MULTILINE)
    jobcomp = re.search(r"^JobCompType\s*=\s*jobcomp/filetxt", config, re.MULTILINE)
    if storage and storage.group(1) == "accounting_storage/none":
        if not jobcomp:
            service_missing("this SLURM keeps neither accounting storage nor jobcomp/filetxt")
        return ["-c"]
    return []


@dataclass
class Cluster:
    project: Project
    #: The walltime job, submitted before every other test.
    timeout_job: int

    def job(self, db_id: int) -> JobDoc:
        return self.project.db.get_job(db_id)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, sacct_args: list[str]) -> Iterator[Cluster]:
    """A project whose only worker submits to SLURM; its queue jobs are cancelled after."""
    tmp = tmp_path_factory.mktemp("slurm")
    settings = {
        "workers": {
            "slurm": {
                "type": "local",
                "queue": "slurm",
                "queue_options": {"sacct_args": sacct_args},
                "work_dir": str(tmp / "work"),
                # The completion record is written as the job leaves squeue.
                "missing_grace": 1.0,
                "poll_interval": 0.2,
                "resources": {"walltime": 600, "job_name": "conveyor-test"},
            }
        },
        "runner": {"retry_delays": [0.2], "heartbeat_interval": 1.0},
    }
    with temp_project(tmp / "project", settings=settings) as proj:
        (timeout_job,) = submit_flow(J.sleep_job(300, "never"), resources={"walltime": 60})
        assert Runner().run_one_job(
            timeout_job, max_seconds=DEADLINE, target_state=JobState.SUBMITTED
        )
        yield Cluster(proj, timeout_job)
        for doc in proj.db.find_jobs(JobFilter()):
            if doc.remote.queue_id and doc.state not in (JobState.COMPLETED, JobState.FAILED):
                slurm("scancel", doc.remote.queue_id)


def wait_for(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        time.sleep(0.1)


def jobs_named(suffix: str) -> list[str]:
    """SLURM ids of every job slurmctld knows (finished too) whose name ends in suffix."""
    listing = slurm("squeue", "--noheader", "--me", "--states=all", "--format=%i|%j")
    return [
        line.split("|", 1)[0]
        for line in listing.stdout.splitlines()
        if line.split("|", 1)[-1].endswith(suffix)
    ]


def test_a_flow_completes_with_its_outputs(cluster: Cluster) -> None:
    project = cluster.project
    first = J.add(1, 2)
    second = J.add(first.output, 3)
    flow = Flow([first, second])
    ids = submit_flow(flow)
    # Resources in SLURM's syntax reach sbatch, which takes them.
    command = submit_command(
        ["sh", "-c", 'echo "cpus=$SLURM_CPUS_PER_TASK mem=$SLURM_MEM_PER_NODE"'],
        resources={"cpus_per_task": 2, "memory": "512M", "walltime": "00:05:00"},
    )
    assert Runner().run_all_jobs(max_seconds=DEADLINE, flows=[flow.uuid])
    assert Runner().run_one_job(command, max_seconds=DEADLINE)
    assert project.jobstore.get_output(first.uuid) == 3
    assert project.jobstore.get_output(second.uuid) == 6
    for db_id in [*ids, command]:
        doc = cluster.job(db_id)
        assert doc.state is JobState.COMPLETED
        assert doc.remote.queue_state == QueueState.DONE
        assert doc.remote.exit_code == 0
        assert doc.remote.failure_reason is None
        assert doc.remote.queue_id is not None
        assert doc.remote.queue_id.isdigit()
        assert doc.remote.run_dir is not None
        started = Path(doc.remote.run_dir, STARTED_FILE).read_text().strip()
        assert started == doc.remote.queue_id
        assert [h.state for h in doc.history].index(JobState.SUBMITTED) < [
            h.state for h in doc.history
        ].index(JobState.TERMINATED)
        assert jobs_named(f"conveyor-test-{doc.remote.submit_token}") == [doc.remote.queue_id]
    out = project.jobstore.get_output(cluster.job(command).uuid)
    assert out["stdout_tail"].strip() == "cpus=2 mem=512"


def test_a_non_zero_exit_is_failed_with_exit_code(cluster: Cluster) -> None:
    (db_id,) = submit_flow(J.crash(7, "dying under SLURM"))
    assert Runner().run_one_job(db_id, max_seconds=DEADLINE)
    doc = cluster.job(db_id)
    assert doc.state is JobState.FAILED
    assert doc.remote.exit_code == 7
    assert doc.remote.failure_reason == "EXIT_CODE"
    assert doc.remote.native_state == "FAILED"
    assert doc.error is not None
    assert "dying under SLURM" in doc.error.message
    assert doc.remote.run_dir is not None
    assert "dying under SLURM" in Path(doc.remote.run_dir, STDERR_FILE).read_text()


def test_a_job_cancelled_with_scancel_is_failed_with_cancelled(cluster: Cluster) -> None:
    (db_id,) = submit_flow(J.sleep_job(300, "never"))
    runner = Runner()
    assert runner.run_one_job(db_id, max_seconds=DEADLINE, target_state=JobState.RUNNING)
    queue_id = cluster.job(db_id).remote.queue_id
    assert queue_id is not None
    cancelled = slurm(*SlurmAdapter().cancel_command(queue_id))
    assert cancelled.returncode == 0, cancelled.stderr
    assert runner.run_one_job(db_id, max_seconds=DEADLINE)
    doc = cluster.job(db_id)
    assert doc.state is JobState.FAILED
    assert doc.remote.failure_reason == "CANCELLED"
    assert doc.remote.native_state is not None
    assert doc.remote.native_state.startswith("CANCELLED")
    # The TERM reached the payload; the script outlived it and wrote its code.
    assert doc.remote.exit_code == 143


def test_a_held_job_is_seen_held_then_runs_once_released(cluster: Cluster) -> None:
    project = cluster.project
    # Held from submission (sbatch --hold), so the scheduler cannot start it first.
    (db_id,) = submit_flow(J.add(20, 22), resources={"slurm": {"hold": ""}})
    runner = Runner()
    adapter = project.adapter("slurm")
    host = project.host("slurm")
    assert isinstance(host, LocalHost)

    def held() -> bool:
        runner.run_one_job(db_id, max_seconds=0.5, raise_at_timeout=False)
        return cluster.job(db_id).remote.queue_state == QueueState.HELD

    wait_for(held, "the runner to see the job held")
    doc = cluster.job(db_id)
    assert doc.state is JobState.SUBMITTED
    assert doc.remote.native_state == "PENDING"
    assert doc.remote.queue_id is not None
    # The adapter's own hold and release, run the way the runner runs commands.
    host.execute(adapter.hold_command(doc.remote.queue_id), timeout=30).check()
    runner.run_one_job(db_id, max_seconds=1, raise_at_timeout=False)
    assert cluster.job(db_id).remote.queue_state == QueueState.HELD
    host.execute(adapter.release_command(doc.remote.queue_id), timeout=30).check()
    assert runner.run_one_job(db_id, max_seconds=DEADLINE)
    doc = cluster.job(db_id)
    assert doc.state is JobState.COMPLETED
    assert project.jobstore.get_output(doc.uuid) == 42
    assert JobState.RUNNING in [h.state for h in doc.history]


def test_a_submission_retried_after_a_crash_adopts_the_queue_job(cluster: Cluster) -> None:
    project = cluster.project
    (db_id,) = submit_flow(J.add(2, 3))
    runner = Runner()
    assert runner.run_one_job(db_id, max_seconds=DEADLINE, target_state=JobState.UPLOADED)
    doc = cluster.job(db_id)
    run_dir, token = doc.remote.run_dir, doc.remote.submit_token
    assert run_dir is not None
    assert token is not None
    # The crashed attempt: it recorded submitted_at and sbatch went through (held, so
    # that the retry finds it pending), but the id was never saved.
    project.db.update_job(
        db_id, JobUpdate({"remote.submitted_at": utcnow()}, expect_state=JobState.UPLOADED)
    )
    adapter = SlurmAdapter()
    argv = adapter.submit_command(submit_spec(project, doc, run_dir, token))
    submitted = subprocess.run(
        [argv[0], "--hold", *argv[1:]], cwd=run_dir, capture_output=True, text=True, check=True
    )
    queue_id = adapter.parse_submit_output(0, submitted.stdout, submitted.stderr)
    assert runner.run_one_job(db_id, max_seconds=DEADLINE, target_state=JobState.SUBMITTED)
    assert cluster.job(db_id).remote.queue_id == queue_id
    assert slurm(*adapter.release_command(queue_id)).returncode == 0
    assert runner.run_one_job(db_id, max_seconds=DEADLINE)
    doc = cluster.job(db_id)
    assert doc.state is JobState.COMPLETED
    assert doc.remote.queue_id == queue_id
    assert project.jobstore.get_output(doc.uuid) == 5
    # Exactly one queue job ever carried the token, in squeue and in the accounting.
    assert jobs_named(f"-{token}") == [queue_id]
    records = slurm(*project.adapter("slurm").accounting_command(queue_id)).stdout
    assert [
        line.split("|")[0] for line in records.splitlines() if "." not in line.split("|")[0]
    ] == [queue_id]


def test_a_job_over_its_walltime_is_failed_with_timeout(cluster: Cluster) -> None:
    # Submitted by the fixture, before the other tests.
    db_id = cluster.timeout_job
    assert Runner().run_one_job(db_id, max_seconds=TIMEOUT_DEADLINE)
    doc = cluster.job(db_id)
    assert doc.state is JobState.FAILED
    assert doc.remote.failure_reason == "TIMEOUT"
    assert doc.remote.native_state == "TIMEOUT"
    # SLURM sent TERM first: the script outlived the payload and wrote its code.
    assert doc.remote.exit_code == 143
    assert doc.remote.run_dir is not None
    assert "DUE TO TIME LIMIT" in Path(doc.remote.run_dir, STDERR_FILE).read_text()
