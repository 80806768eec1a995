"""The Python API for scripts and notebooks: read, select, wait for and change jobs and
flows. The CLI calls these same functions; none of them holds database logic the Python
API lacks.

>>> from conveyor import api
>>> api.list_jobs(states=["FAILED"], updated_after="2h")     # doctest: +SKIP
>>> api.rerun([12, 13])                                      # doctest: +SKIP
>>> api.wait(12, until="terminated", timeout=600)            # doctest: +SKIP

Operations that change jobs take one db id, and return the job or raise, or several,
and return one :class:`Outcome` per job (the others go on when one is refused). They
take each job's lock as a runner does: a job a runner is working on is refused, never
changed behind the runner's back.

Reading
    :func:`get_job`, :func:`list_jobs`, :func:`count_jobs`, :func:`select_jobs`,
    :func:`count_selected` (with a :class:`JobQuery`), :func:`get_output`,
    :func:`job_logs`, :func:`job_files`, :func:`job_script`.
Changing jobs
    :func:`retry`, :func:`rerun`, :func:`pause`, :func:`resume`, :func:`cancel`,
    :func:`set_state`, :func:`set_worker`, :func:`set_resources`, :func:`set_priority`,
    :func:`delete_jobs`; in the queue: :func:`hold`, :func:`release`.
Flows
    :func:`get_flow`, :func:`find_flow`, :func:`list_flows`, :func:`flow_jobs`,
    :func:`flow_counts`, :func:`pause_flow`, :func:`resume_flow`, :func:`cancel_flow`,
    :func:`rerun_flow`, :func:`delete_flow`.
Administration
    :func:`unlock`, :func:`reset_project`, :func:`check` (one :class:`Finding` per
    inconsistency), :func:`list_projects`.
Waiting
    :func:`wait`, :func:`wait_flow` (raise :class:`WaitTimeoutError`).
"""

from conveyor.api._admin import (
    CHECK_KINDS,
    GONE_OWNER,
    NO_OUTPUT,
    QUEUE_LOST,
    Finding,
    ProjectEntry,
    check,
    list_projects,
    reset_project,
    unlock,
)
from conveyor.api._changes import (
    cancel,
    hold,
    pause,
    release,
    resume,
    retry,
    set_priority,
    set_resources,
    set_state,
    set_worker,
    skips_steps,
)
from conveyor.api._common import FLOW_LOCK_WAIT, Outcome, ProjectRef
from conveyor.api._flows import (
    FINAL_FLOW_STATES,
    FLOW_ACTIONS,
    cancel_flow,
    delete_flow,
    find_flow,
    flow_counts,
    flow_jobs,
    flow_targets,
    get_flow,
    list_flows,
    pause_flow,
    rerun_flow,
    resume_flow,
)
from conveyor.api._reads import (
    SORT_KEYS,
    JobFiles,
    JobLogs,
    JobQuery,
    JobScript,
    count_jobs,
    count_selected,
    download_dir,
    get_job,
    get_output,
    job_files,
    job_filter,
    job_logs,
    job_query,
    job_script,
    list_jobs,
    parse_state,
    parse_time,
    select_jobs,
    upgrade_database,
)
from conveyor.api._rerun import RERUNNABLE_STATES, delete_jobs, rerun
from conveyor.api._wait import ENDED_STATES, STARTED_STATES, WaitTimeoutError, wait, wait_flow

__all__ = [
    "CHECK_KINDS",
    "ENDED_STATES",
    "FINAL_FLOW_STATES",
    "FLOW_ACTIONS",
    "FLOW_LOCK_WAIT",
    "GONE_OWNER",
    "NO_OUTPUT",
    "QUEUE_LOST",
    "RERUNNABLE_STATES",
    "SORT_KEYS",
    "STARTED_STATES",
    "Finding",
    "JobFiles",
    "JobLogs",
    "JobQuery",
    "JobScript",
    "Outcome",
    "ProjectEntry",
    "ProjectRef",
    "WaitTimeoutError",
    "cancel",
    "cancel_flow",
    "check",
    "count_jobs",
    "count_selected",
    "delete_flow",
    "delete_jobs",
    "download_dir",
    "find_flow",
    "flow_counts",
    "flow_jobs",
    "flow_targets",
    "get_flow",
    "get_job",
    "get_output",
    "hold",
    "job_files",
    "job_filter",
    "job_logs",
    "job_query",
    "job_script",
    "list_flows",
    "list_jobs",
    "list_projects",
    "parse_state",
    "parse_time",
    "pause",
    "pause_flow",
    "release",
    "rerun",
    "rerun_flow",
    "reset_project",
    "resume",
    "resume_flow",
    "retry",
    "select_jobs",
    "set_priority",
    "set_resources",
    "set_state",
    "set_worker",
    "skips_steps",
    "unlock",
    "upgrade_database",
    "wait",
    "wait_flow",
]
