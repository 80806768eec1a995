"""The Runner end to end through a real Son of Grid Engine (scripts/services/sge.sh).

Every job here is a real SGE job: qsub, qstat -xml, qacct -j, qdel, qrls on this
machine, driven by the runner through a local worker with ``queue: sge``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from jobflow import Flow

from conveyor import Runner, submit_command, submit_flow
from conveyor.db.base import JobFilter
from conveyor.models import JobDoc, utcnow
from conveyor.project import Project
from conveyor.queue import QueueState, get_adapter
from conveyor.queue.base import STARTED_FILE
from conveyor.states import JobState, JobUpdate
from conveyor.testing import jobs as J
from conveyor.testing import temp_project
from services import service_missing

pytestmark = pytest.mark.integration

DEADLINE = 90.0
ADAPTER = get_adapter("sge")
# A queue instance whose execd reports a load: "all.q@vm  BIP  0/0/2  0.08  lx-amd64".
_QUEUE_UP = re.compile(r"^\S+@\S+\s+[A-Z]+\s+\d+/\d+/\d+\s+[0-9.]+\s+\S+\s*$", re.MULTILINE)


def sge(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture(scope="session")
def sge_up() -> None:
    """SGE answers and an execd serves a queue; else the service is missing."""
    if shutil.which("qsub") is None:
        service_missing("SGE is not installed (as root: bash scripts/services/sge.sh)")
    listing = sge("qstat", "-f")
    if listing.returncode != 0 or not _QUEUE_UP.search(listing.stdout):
        service_missing(
            "SGE is not running or no execd serves a queue (as root: bash "
            f"scripts/services/sge.sh); qstat -f: {listing.stdout.strip()} "
            f"{listing.stderr.strip()}"
        )


@pytest.fixture
def project(tmp_path: Path, sge_up: None) -> Iterator[Project]:
    """A project whose only worker submits to SGE; its queue jobs are deleted after."""
    settings = {
        "workers": {
            "sge": {
                "type": "local",
                "queue": "sge",
                "work_dir": str(tmp_path / "work"),
                # The service script makes qacct current at once; 1 s is plenty.
                "missing_grace": 1.0,
                "poll_interval": 0.2,
            }
        },
        "runner": {"retry_delays": [0.2], "heartbeat_interval": 1.0},
    }
    with temp_project(tmp_path / "project", settings=settings) as proj:
        yield proj
        left = [d.remote.queue_id for d in proj.db.find_jobs(JobFilter()) if d.remote.queue_id]
        if left:
            sge("qdel", *left)


def wait_for(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        time.sleep(0.1)


def job(project: Project, db_id: int) -> JobDoc:
    return project.db.get_job(db_id)


def test_a_flow_completes_with_its_outputs(project: Project) -> None:
    first = J.add(1, 2)
    second = J.add(first.output, 3)
    ids = submit_flow(Flow([first, second]))
    # Two slots of a parallel environment, memory per slot, a walltime: real qsub takes
    # the directives and runs the job.
    wide = submit_command(
        ["sh", "-c", 'echo "slots=$NSLOTS pe=$PE"'],
        resources={"processes": 2, "memory": "2G", "walltime": 120, "sge": {"pe": "smp"}},
    )
    assert Runner().run_all_jobs(max_seconds=DEADLINE)
    assert project.jobstore.get_output(second.uuid) == 6
    for db_id in [*ids, wide]:
        doc = job(project, db_id)
        assert doc.state is JobState.COMPLETED
        assert doc.remote.queue_state == QueueState.DONE
        assert doc.remote.exit_code == 0
        assert doc.remote.queue_id is not None
        assert doc.remote.queue_id.isdigit()
        assert doc.remote.run_dir is not None
        started = Path(doc.remote.run_dir, STARTED_FILE).read_text().strip()
        assert started == doc.remote.queue_id
    out = project.jobstore.get_output(job(project, wide).uuid)
    assert out["stdout_tail"].strip() == "slots=2 pe=smp"


def test_a_non_zero_exit_is_failed_with_exit_code(project: Project) -> None:
    (db_id,) = submit_flow(J.crash(7, "dying under SGE"))
    assert Runner().run_one_job(db_id, max_seconds=DEADLINE)
    doc = job(project, db_id)
    assert doc.state is JobState.FAILED
    assert doc.remote.exit_code == 7
    assert doc.remote.failure_reason == "EXIT_CODE"
    assert doc.error is not None
    assert "dying under SGE" in doc.error.message


def test_a_job_over_its_walltime_is_failed_with_timeout(project: Project) -> None:
    (db_id,) = submit_flow(J.sleep_job(60, "never"), resources={"walltime": 3})
    assert Runner().run_one_job(db_id, max_seconds=DEADLINE)
    doc = job(project, db_id)
    assert doc.state is JobState.FAILED
    assert doc.remote.failure_reason == "TIMEOUT"
    assert doc.remote.native_state is not None
    assert doc.remote.native_state.startswith("failed 37")
    # h_rt kills with SIGKILL: the script never wrote an exit code; qacct's is 137.
    assert doc.remote.exit_code == 137


def test_a_job_deleted_with_qdel_is_failed_with_cancelled(project: Project) -> None:
    (db_id,) = submit_flow(J.sleep_job(60, "never"))
    runner = Runner()
    assert runner.run_one_job(db_id, max_seconds=DEADLINE, target_state=JobState.RUNNING)
    queue_id = job(project, db_id).remote.queue_id
    assert queue_id is not None
    assert sge(*ADAPTER.cancel_command(queue_id)).returncode == 0
    assert runner.run_one_job(db_id, max_seconds=DEADLINE)
    doc = job(project, db_id)
    assert doc.state is JobState.FAILED
    assert doc.remote.failure_reason == "CANCELLED"


def test_a_held_job_is_seen_held_then_runs_once_released(project: Project) -> None:
    (db_id,) = submit_flow(J.add(20, 22), resources={"sge": {"h": ""}})
    runner = Runner()

    def held() -> bool:
        runner.run_one_job(db_id, max_seconds=0.5, raise_at_timeout=False)
        return job(project, db_id).remote.queue_state == QueueState.HELD

    wait_for(held, "the runner to see the job held")
    doc = job(project, db_id)
    assert doc.state is JobState.SUBMITTED
    assert doc.remote.native_state == "hqw"
    assert doc.remote.queue_id is not None
    assert sge(*ADAPTER.release_command(doc.remote.queue_id)).returncode == 0
    assert runner.run_one_job(db_id, max_seconds=DEADLINE)
    doc = job(project, db_id)
    assert doc.state is JobState.COMPLETED
    assert project.jobstore.get_output(doc.uuid) == 42
    assert JobState.RUNNING in [h.state for h in doc.history]


def test_a_submission_retried_after_a_crash_adopts_the_queue_job(project: Project) -> None:
    (db_id,) = submit_flow(J.add(2, 3))
    runner = Runner()
    assert runner.run_one_job(db_id, max_seconds=DEADLINE, target_state=JobState.UPLOADED)
    doc = job(project, db_id)
    run_dir, token = doc.remote.run_dir, doc.remote.submit_token
    assert run_dir is not None
    assert token is not None
    # The crashed attempt: it recorded submitted_at, and qsub went through (held here,
    # so that the retry finds it in qstat by its token), but the id was never saved.
    project.db.update_job(
        db_id, JobUpdate({"remote.submitted_at": utcnow()}, expect_state=JobState.UPLOADED)
    )
    script = f"{run_dir}/{ADAPTER.script_name}"
    submitted = subprocess.run(
        ["qsub", "-terse", "-h", script], cwd=run_dir, capture_output=True, text=True, check=True
    )
    queue_id = ADAPTER.parse_submit_output(0, submitted.stdout, submitted.stderr)
    assert runner.run_one_job(db_id, max_seconds=DEADLINE, target_state=JobState.SUBMITTED)
    assert job(project, db_id).remote.queue_id == queue_id
    assert sge(*ADAPTER.release_command(queue_id)).returncode == 0
    assert runner.run_one_job(db_id, max_seconds=DEADLINE)
    doc = job(project, db_id)
    assert doc.state is JobState.COMPLETED
    assert doc.remote.queue_id == queue_id
    assert project.jobstore.get_output(doc.uuid) == 5
    # Exactly one queue job ever carried the token: qacct -j NAME lists every run.
    name = re.search(r"^#\$ -N (\S+)$", Path(script).read_text(), re.MULTILINE)
    assert name is not None
    assert name.group(1).endswith(f"-{token}")
    records = sge("qacct", "-j", name.group(1))
    assert records.stdout.count("\njobnumber ") == 1, records.stdout
    assert re.search(rf"^jobnumber\s+{queue_id}\s*$", records.stdout, re.MULTILINE)
