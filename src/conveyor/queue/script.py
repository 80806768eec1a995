"""The job script every adapter submits: directives, then one common body.

The body changes into the run dir, records the queue's id for the job in
``conveyor.started``, exports the job's environment, runs the worker's ``pre_run``,
runs the payload (inside a container if asked) and writes its exit code to
``conveyor.exit``. Every value is shell-quoted; ``pre_run`` is the user's own shell code.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

from conveyor.exceptions import QueueError
from conveyor.queue.base import EXIT_CODE_FILE, STARTED_FILE, SubmitSpec
from conveyor.queue.resources import Container

__all__ = [
    "absolute_run_dir",
    "comment",
    "container_command",
    "identifier",
    "render_script",
    "valid_token",
]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
_EXIT_TMP = f"{EXIT_CODE_FILE}.tmp"
_STARTED_TMP = f"{STARTED_FILE}.tmp"


def identifier(key: str) -> str:
    """``key`` if it is a valid shell variable name; QueueError otherwise."""
    if not _IDENTIFIER.fullmatch(key):
        raise QueueError(
            f"environment variable name {key!r} is not a valid shell identifier "
            "(letters, digits and '_', not starting with a digit)"
        )
    return key


def valid_token(token: str) -> str:
    """``token`` if it is a usable submit token (it ends up in job names and ``ps``)."""
    if not _TOKEN.fullmatch(token):
        raise QueueError(
            f"submit token {token!r} must be 1-200 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit"
        )
    return token


def absolute_run_dir(run_dir: str) -> str:
    """``run_dir`` if it is an absolute path; QueueError otherwise."""
    if not run_dir.startswith("/") or "\0" in run_dir:
        raise QueueError(f"run dir {run_dir!r} must be an absolute path")
    return run_dir


def comment(text: str) -> str:
    """``text`` fit for one comment line: control characters (newlines...) become '?'."""
    return "".join(c if c.isprintable() else "?" for c in text)


def container_command(
    command: Sequence[str],
    container: Container | None,
    run_dir: str,
    env: Sequence[str] = (),
) -> list[str]:
    """The payload argv, wrapped to run inside ``container`` if one is asked for.

    The run dir is bound at the same path, so the payload finds its files where the
    script left them. Apptainer passes the script's environment on by itself; docker
    passes only the variables named in ``env`` (``-e NAME``, value from the script).
    """
    argv = list(command)
    if container is None:
        return argv
    if container.runtime in ("apptainer", "singularity"):
        return [
            container.runtime,
            "exec",
            "--bind",
            run_dir,
            "--pwd",
            run_dir,
            *container.options,
            container.image,
            *argv,
        ]
    return [
        container.runtime,
        "run",
        "--rm",
        "-v",
        f"{run_dir}:{run_dir}",
        "-w",
        run_dir,
        *[arg for name in env for arg in ("-e", identifier(name))],
        *container.options,
        container.image,
        *argv,
    ]


def render_script(
    spec: SubmitSpec,
    *,
    adapter: str,
    directives: Sequence[str] = (),
    queue_id: str = "$$",
    interpreter: str = "#!/bin/bash",
) -> str:
    """The whole job script: interpreter line, ``directives``, comments, then the body.

    ``queue_id`` is the shell expression for the job's id in its queue (``$$`` for a
    plain process, ``$SLURM_JOB_ID`` under SLURM ...); the script records it so that a
    submission retried after a crash can adopt the job.
    """
    run_dir = absolute_run_dir(spec.run_dir)
    token = valid_token(spec.submit_token)
    if not spec.command:
        raise QueueError(f"job {spec.job_name!r}: the payload command is empty")
    exports = [f"export {identifier(key)}={shlex.quote(value)}" for key, value in spec.env.items()]
    cd = f"cd -- {shlex.quote(run_dir)} || exit 1"
    payload = container_command(spec.command, spec.container, run_dir, list(spec.env))
    lines = [
        interpreter,
        *directives,
        f"# Conveyor job: {comment(spec.job_name)}",
        f"# Submit token: {token}",
        f"# Written by conveyor's {adapter} adapter.",
        cd,
        f"printf '%s\\n' \"{queue_id}\" >{_STARTED_TMP} && mv -f -- {_STARTED_TMP} {STARTED_FILE}",
        *exports,
    ]
    if spec.pre_run:
        lines += ["# pre_run, from the worker's configuration", spec.pre_run.rstrip("\n"), cd]
    exit_file = shlex.quote(f"{run_dir.rstrip('/')}/{EXIT_CODE_FILE}")
    exit_tmp = shlex.quote(f"{run_dir.rstrip('/')}/{_EXIT_TMP}")
    lines += [
        "# A TERM (a cancel, a walltime warning) reaches the payload too; the trap keeps",
        "# this shell alive until the payload exits, to record its code.",
        "trap ':' TERM",
        shlex.join(payload),
        "conveyor_exit_code=$?",
        f"printf '%s\\n' \"$conveyor_exit_code\" >{exit_tmp} \\",
        f"  && mv -f -- {exit_tmp} {exit_file}",
        'exit "$conveyor_exit_code"',
    ]
    return "\n".join(lines) + "\n"
