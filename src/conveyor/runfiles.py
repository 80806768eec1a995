"""Names of the files in a job's run dir, shared by the runner, the job scripts and the
worker-side execution module (which must stay light: this module imports nothing)."""

__all__ = [
    "EXIT_CODE_FILE",
    "JOB_FILE",
    "OUTPUT_FILE",
    "STARTED_FILE",
    "STDERR_FILE",
    "STDOUT_FILE",
]

#: What the runner uploads: the job, its references resolved.
JOB_FILE = "job.json"
#: What the execution module writes: response, error, stored documents, timings.
OUTPUT_FILE = "output.json"
#: The payload's exit code, written by the job script when the payload ends.
EXIT_CODE_FILE = "conveyor.exit"
#: The queue's id for the job, written by the job script when it starts.
STARTED_FILE = "conveyor.started"
#: The queue's capture of the job script's stdout and stderr.
STDOUT_FILE = "queue.out"
STDERR_FILE = "queue.err"
