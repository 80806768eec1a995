"""Fake PBS (Pro or Torque) and HTCondor commands over one JSON state file.

``python _fakeq.py COMMAND ARGS...`` behaves like ``COMMAND ARGS...`` would on a one-node
cluster: ``qsub``, ``qstat``, ``qselect``, ``qdel``, ``qhold``, ``qrls`` and
``condor_submit``, ``condor_q``, ``condor_history``, ``condor_rm``, ``condor_hold``,
``condor_release``, ``condor_transfer_data``. :func:`install` writes one small wrapper
per command into a directory to put on ``PATH``.

* The state is a JSON file named by ``CONVEYOR_FAKE_QUEUE_STATE``, locked with ``flock``
  for the whole of each command (the runner calls the commands from several threads).
  ``CONVEYOR_FAKE_PBS_FLAVOR`` is ``pro`` (default) or ``torque``.
* Submitted jobs really run: every command first "schedules": a queued job that is not
  held starts as ``bash SCRIPT`` in a session of its own, watched by a detached
  ``__run__`` process that enforces the walltime (TERM to the job's process group, KILL
  5 s later) and writes the exit status into a result file; the next command moves the
  job to its finished state.
* Outputs follow the recorded corpus in tests/fixtures/queue: a qstat job is the corpus
  job (``pro/qstat-f-F-json-running``, ``torque/qstat-f-running``) with this job's
  values put in, printed the way PBS prints it; condor_q and condor_history print
  ``-af:jV`` rows as the manual describes them (as in ``htcondor/condor_q-*``).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "fixtures" / "queue"
STATE_ENV = "CONVEYOR_FAKE_QUEUE_STATE"
FLAVOR_ENV = "CONVEYOR_FAKE_PBS_FLAVOR"
SERVER = "fakepbs"
PBS_COMMANDS = ("qsub", "qstat", "qselect", "qdel", "qhold", "qrls")
CONDOR_COMMANDS = (
    "condor_submit",
    "condor_q",
    "condor_history",
    "condor_rm",
    "condor_hold",
    "condor_release",
    "condor_transfer_data",
)
KILL_DELAY = 5.0
USER = os.environ.get("USER", "root")


class Failure(Exception):
    """A command error: message for stderr and exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def install(bin_dir: Path, state_file: Path) -> None:
    """Write the wrappers into ``bin_dir`` (they run this file with this Python)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in (*PBS_COMMANDS, *CONDOR_COMMANDS):
        path = bin_dir / name
        path.write_text(
            f"#!/bin/sh\nexec {shlex.quote(sys.executable)} "
            f'{shlex.quote(str(Path(__file__).resolve()))} {name} "$@"\n'
        )
        path.chmod(0o755)
    if not state_file.exists():
        state_file.write_text(json.dumps({"next_pbs": 1001, "next_condor": 101, "jobs": {}}))


# ----------------------------------------------------------------------------- state


@contextlib.contextmanager
def locked_state() -> Iterator[dict[str, Any]]:
    path = Path(os.environ[STATE_ENV])
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads(path.read_text())
        try:
            yield state
        finally:  # a command that fails still keeps what scheduling started
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps(state, indent=1))
            tmp.replace(path)


def result_file(job: dict[str, Any]) -> Path:
    return Path(f"{os.environ[STATE_ENV]}.{job['key']}.result")


def schedule(state: dict[str, Any]) -> None:
    """Start queued jobs; finish those whose watcher wrote a result."""
    for job in state["jobs"].values():
        if job["phase"] == "queued" and not job["held"]:
            job["phase"], job["start"] = "running", time.time()
            subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "__run__", job["key"]],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        elif job["phase"] == "running" and result_file(job).exists():
            result = json.loads(result_file(job).read_text())
            job.update(phase="done", end=time.time(), exit=result["exit"])
            job["timed_out"] = result["timeout"]


def run_job(key: str) -> None:
    """The watcher: run the job's script, enforce its walltime, record how it ended."""
    with locked_state() as state:
        job = state["jobs"][key]
        env = {**os.environ, **job["env"]}
        with open(job["stdout"], "ab") as out, open(job["stderr"], "ab") as err:
            proc = subprocess.Popen(
                job["argv"],
                cwd=job["cwd"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        job["pgid"] = proc.pid
        if job["deleted"]:  # deleted before it could start
            os.killpg(proc.pid, signal.SIGTERM)
    timeout = False
    try:
        code = proc.wait(timeout=job["walltime"])
    except subprocess.TimeoutExpired:
        timeout = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=KILL_DELAY)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
    exit_status = code if code >= 0 else 256 - code  # killed by signal N: 256 + N
    tmp = result_file(job).with_suffix(".tmp")
    tmp.write_text(json.dumps({"exit": exit_status, "timeout": timeout}))
    tmp.replace(result_file(job))


def find(state: dict[str, Any], queue_id: str, system: str) -> dict[str, Any] | None:
    for job in state["jobs"].values():
        if job["system"] != system:
            continue
        if system == "pbs" and job["id"].split(".", 1)[0] == queue_id.split(".", 1)[0]:
            return job
        if system == "condor" and job["id"] == queue_id:
            return job
    return None


def kill(job: dict[str, Any]) -> None:
    job["deleted"] = True
    if job["phase"] == "running" and job.get("pgid"):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job["pgid"], signal.SIGTERM)
    elif job["phase"] == "queued":
        job.update(phase="done", end=time.time(), exit=None, timed_out=False)


# ----------------------------------------------------------------------------- PBS


def flavor() -> str:
    return os.environ.get(FLAVOR_ENV, "pro")


def qsub(state: dict[str, Any], args: list[str], cwd: str) -> str:
    held = "-h" in args
    script = os.path.join(cwd, args[-1])
    opts: dict[str, str] = {}
    variables: dict[str, str] = {}
    limits: dict[str, str] = {}
    for line in Path(script).read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        words = line.split()
        if words[:1] != ["#PBS"] or len(words) < 2:
            continue
        if words[1] == "-h":
            held = True
        elif words[1] in ("-v", "-l"):
            target = variables if words[1] == "-v" else limits
            for item in words[2].split(","):
                key, _, value = item.partition("=")
                target[key] = value
        elif len(words) > 2:
            opts[words[1]] = words[2]
    seq = state["next_pbs"]
    state["next_pbs"] += 1
    queue_id = f"{seq}.{SERVER}"
    walltime = limits.get("walltime")
    state["jobs"][f"pbs{seq}"] = {
        "key": f"pbs{seq}",
        "system": "pbs",
        "id": queue_id,
        "name": opts.get("-N", Path(script).name),
        "token": variables.get("CONVEYOR_TOKEN", ""),
        "argv": ["/bin/bash", script],
        "cwd": os.environ.get("HOME", "/"),
        "stdout": os.path.join(cwd, opts.get("-o", f"job.o{seq}")),
        "stderr": os.path.join(cwd, opts.get("-e", f"job.e{seq}")),
        "env": {"PBS_JOBID": queue_id, "PBS_O_WORKDIR": cwd, **variables},
        "walltime_text": walltime or "01:00:00",
        "walltime": hms(walltime) if walltime else None,
        "phase": "queued",
        "held": held,
        "deleted": False,
        "timed_out": False,
        "submitted": time.time(),
    }
    return f"{queue_id}\n"


def hms(text: str) -> int:
    seconds = 0
    for part in text.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds


def pbs_letter(job: dict[str, Any]) -> str:
    if job["phase"] == "done":
        return "F" if flavor() == "pro" else "C"
    if job["phase"] == "running":
        return "R"
    return "H" if job["held"] else "Q"


def exit_status(job: dict[str, Any]) -> int | None:
    if job["phase"] != "done":
        return None
    if job["timed_out"]:
        return -29 if flavor() == "pro" else -11
    return job["exit"]


def used_walltime(job: dict[str, Any]) -> str:
    if not job.get("start"):
        return "00:00:00"
    seconds = int((job.get("end") or time.time()) - job["start"])
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def stamp(seconds: float | None) -> str:
    return time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(seconds or time.time()))


def pro_record(job: dict[str, Any]) -> dict[str, Any]:
    """The corpus's running job with this job's values (attribute order kept)."""
    template = json.loads((CORPUS / "pbs/pro/qstat-f-F-json-running.stdout").read_text())
    record: dict[str, Any] = copy.deepcopy(next(iter(template["Jobs"].values())))
    letter = pbs_letter(job)
    record["Job_Name"] = job["name"]
    record["Job_Owner"] = f"{USER}@{SERVER}"
    record["resources_used"]["walltime"] = used_walltime(job)
    record["job_state"] = letter
    record["server"] = SERVER
    record["Error_Path"] = f"{SERVER}:{job['stderr']}"
    record["Output_Path"] = f"{SERVER}:{job['stdout']}"
    record["Hold_Types"] = "u" if job["held"] and letter == "H" else "n"
    record["Resource_List"]["walltime"] = job["walltime_text"]
    record["Variable_List"]["CONVEYOR_TOKEN"] = job["token"]
    record["substate"] = {"Q": 10, "H": 20, "R": 42}.get(letter, 91 if job["deleted"] else 92)
    record["ctime"] = record["qtime"] = record["etime"] = stamp(job["submitted"])
    record["comment"] = f"Job run at {stamp(job.get('start'))} on ({SERVER}:ncpus=1)"
    if letter in ("Q", "H"):
        for key in ("resources_used", "exec_host", "exec_vnode", "stime", "session_id"):
            record.pop(key, None)
        record.pop("run_count", None)
        record["comment"] = "Not Running: job is held" if letter == "H" else "Job is queued"
    if letter == "F":
        record["comment"] += " and finished"
        code = exit_status(job)
        if code is not None:
            record["Exit_status"] = code
    return record


def torque_record(job: dict[str, Any]) -> str:
    """The corpus's running Torque job, as text, with this job's values."""
    template = (CORPUS / "pbs/torque/qstat-f-running.stdout").read_text()
    attrs: dict[str, str] = {}
    last = ""
    for line in template.splitlines()[1:]:
        if line.startswith("\t"):
            attrs[last] += line[1:]
        elif " = " in line:
            last, value = line.strip().split(" = ", 1)
            attrs[last] = value
    letter = pbs_letter(job)
    attrs.update(
        {
            "Job_Name": job["name"],
            "job_state": letter,
            "Error_Path": f"{SERVER}:{job['stderr']}",
            "Output_Path": f"{SERVER}:{job['stdout']}",
            "Hold_Types": "u" if letter == "H" else "n",
            "Resource_List.walltime": job["walltime_text"],
            "resources_used.walltime": used_walltime(job),
            "Variable_List": re.sub(
                r"CONVEYOR_TOKEN=[^,]*", f"CONVEYOR_TOKEN={job['token']}", attrs["Variable_List"]
            ),
        }
    )
    if letter in ("Q", "H"):
        attrs = {k: v for k, v in attrs.items() if not k.startswith("resources_used")}
    code = exit_status(job)
    if code is not None:
        attrs["exit_status"] = str(code)
    lines = [f"Job Id: {job['id']}"]
    for key, value in attrs.items():
        first = f"    {key} = {value}"
        lines += [first[:79], *(f"\t{first[i : i + 71]}" for i in range(79, len(first), 71))]
    return "\n".join(lines) + "\n\n"


def qstat(state: dict[str, Any], args: list[str]) -> str:
    history = "-x" in args
    ids = [a for a in args if not a.startswith("-") and a != "json"]
    jobs, errors = [], []
    for queue_id in ids:
        job = find(state, queue_id, "pbs")
        if job is None:
            errors.append(f"qstat: Unknown Job Id {queue_id}")
        elif flavor() == "pro" and job["phase"] == "done" and not history:
            errors.append(
                f"qstat: {job['id']} Job has finished, use -x or -H to obtain historical "
                "job information"
            )
        else:
            jobs.append(job)
    if flavor() == "pro":
        data: dict[str, Any] = {"timestamp": int(time.time()), "pbs_version": "2022.1.6"}
        data["pbs_server"] = SERVER
        if jobs:
            data["Jobs"] = {job["id"]: pro_record(job) for job in jobs}
        out = json.dumps(data, indent=4, separators=(",", ":")) + "\n" if jobs or not ids else ""
    else:
        out = "".join(torque_record(job) for job in jobs)
    if errors:
        sys.stdout.write(out)
        code = 153 if any("Unknown" in e for e in errors) else 35
        raise Failure("\n".join(errors), code)
    return out


def qselect(state: dict[str, Any], args: list[str]) -> str:
    name = args[args.index("-N") + 1]
    history = "-x" in args or flavor() == "torque"
    return "".join(
        f"{job['id']}\n"
        for job in state["jobs"].values()
        if job["system"] == "pbs" and job["name"] == name and (history or job["phase"] != "done")
    )


def pbs_control(state: dict[str, Any], command: str, args: list[str]) -> str:
    for queue_id in args:
        job = find(state, queue_id, "pbs")
        if job is None or job["phase"] == "done":
            raise Failure(f"{command}: Unknown Job Id {queue_id}", 153)
        if command == "qdel":
            kill(job)
        elif command == "qhold" and job["phase"] == "queued":
            job["held"] = True
        elif command == "qrls":
            job["held"] = False
        else:
            raise Failure(f"{command}: Request invalid for state of job {queue_id}", 168)
    return ""


# ----------------------------------------------------------------------------- HTCondor


def condor_words(value: str) -> list[str]:
    """The new-syntax ``arguments``/``environment`` value as words."""
    inner = value.strip()[1:-1].replace('""', '"')
    words = []
    for quoted, plain in re.findall(r"'((?:[^']|'')*)'|(\S+)", inner):
        words.append(plain or quoted.replace("''", "'"))
    return words


def condor_submit(state: dict[str, Any], args: list[str]) -> str:
    path = Path(args[-1])
    cluster = state["next_condor"]
    state["next_condor"] += 1
    commands: dict[str, str] = {}
    count = 1
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("queue"):
            count = int(line.split()[1]) if len(line.split()) > 1 else 1
            break
        key, value = (part.strip() for part in line.split("=", 1))
        commands[key.lower()] = value
    for proc in range(count):

        def expand(text: str, proc: int = proc) -> str:
            for macro, value in (("Cluster", cluster), ("Process", proc), ("DOLLAR", "$")):
                text = text.replace(f"$({macro})", str(value))
            return text

        initialdir = expand(commands.get("initialdir", str(path.parent)))
        environment = dict(
            w.split("=", 1) for w in condor_words(expand(commands.get("environment", '""')))
        )
        walltime = commands.get("+conveyorwalltime")
        held = commands.get("hold", "false").lower() == "true"
        state["jobs"][f"condor{cluster}.{proc}"] = {
            "key": f"condor{cluster}.{proc}",
            "system": "condor",
            "id": f"{cluster}.{proc}",
            "token": commands.get("+conveyortoken", '""').strip('"'),
            "argv": [commands["executable"], *condor_words(expand(commands["arguments"]))],
            "cwd": initialdir,
            "stdout": os.path.join(initialdir, expand(commands["output"])),
            "stderr": os.path.join(initialdir, expand(commands["error"])),
            "env": environment,
            "walltime": int(walltime) if walltime else None,
            "periodic_remove": commands.get("periodic_remove", ""),
            "phase": "queued",
            "held": held,
            "hold_code": 15 if held else None,
            "hold_reason": "submitted on hold at user's request" if held else None,
            "deleted": False,
            "timed_out": False,
            "submitted": time.time(),
        }
    return f"{cluster}.0 - {cluster}.{count - 1}\n"


def classad(value: Any) -> str:
    if value is None:
        return "undefined"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return str(value)


def condor_ad(job: dict[str, Any]) -> dict[str, Any]:
    if job["phase"] == "done":
        if job["deleted"] or job["timed_out"]:
            why = f"via condor_rm (by user {USER})"
            if job["timed_out"]:
                why = f"The job attribute PeriodicRemove expression '{job['periodic_remove']}' "
                why += "evaluated to TRUE"
            return {"JobStatus": 3, "ExitBySignal": False, "RemoveReason": why}
        code = job["exit"]
        if code is not None and code > 256:
            return {"JobStatus": 4, "ExitBySignal": True, "ExitSignal": code - 256}
        return {"JobStatus": 4, "ExitCode": code, "ExitBySignal": False}
    if job["phase"] == "running":
        return {"JobStatus": 2, "ExitBySignal": False}
    if job["held"]:
        return {
            "JobStatus": 5,
            "ExitBySignal": False,
            "HoldReasonCode": job["hold_code"],
            "HoldReason": job["hold_reason"],
        }
    return {"JobStatus": 1, "ExitBySignal": False}


def condor_query(state: dict[str, Any], args: list[str], history: bool) -> str:
    attributes: list[str] = []
    ids: list[str] = []
    constraint: tuple[str, str] | None = None
    limit: int | None = None
    it = iter(args)
    for arg in it:
        if arg == "-constraint":
            attr, value = next(it).split("==")
            constraint = (attr.strip(), value.strip().strip('"'))
        elif arg == "-limit":
            limit = int(next(it))
        elif arg.startswith("-af"):
            attributes = []
        elif re.fullmatch(r"[0-9]+(\.[0-9]+)?", arg):
            ids.append(arg)
        else:
            attributes.append(arg)
    rows = []
    jobs = [j for j in state["jobs"].values() if j["system"] == "condor"]
    for job in sorted(jobs, key=lambda j: j["submitted"], reverse=history):
        if (job["phase"] == "done") != history:
            continue
        if ids and not any(job["id"] == i or job["id"].split(".")[0] == i for i in ids):
            continue
        if constraint and (constraint[0] != "ConveyorToken" or job["token"] != constraint[1]):
            continue
        ad = condor_ad(job)
        rows.append(" ".join([job["id"], *(classad(ad.get(a)) for a in attributes)]) + "\n")
    return "".join(rows[:limit] if limit else rows)


def condor_control(state: dict[str, Any], command: str, args: list[str]) -> str:
    out = []
    for queue_id in args:
        job = find(state, queue_id, "condor")
        if job is None or job["phase"] == "done":
            raise Failure(f"Job {queue_id} not found", 1)
        if command == "condor_rm":
            kill(job)
            out.append(f"Job {queue_id} marked for removal")
        elif command == "condor_hold" and job["phase"] == "queued":
            job.update(held=True, hold_code=1, hold_reason=f"via condor_hold (by user {USER})")
            out.append(f"Job {queue_id} held")
        elif command == "condor_release" and job["held"]:
            job.update(held=False, hold_code=None, hold_reason=None)
            out.append(f"Job {queue_id} released")
        elif command == "condor_transfer_data":
            out.append(f"Fetched files for job {queue_id}")
        else:
            raise Failure(f"Job {queue_id} could not be changed in its state", 1)
    return "".join(f"{line}\n" for line in out)


# ----------------------------------------------------------------------------- main


def dispatch(command: str, args: list[str]) -> str:
    with locked_state() as state:
        schedule(state)
        if command == "qsub":
            out = qsub(state, args, os.getcwd())
        elif command == "qstat":
            out = qstat(state, args)
        elif command == "qselect":
            out = qselect(state, args)
        elif command in ("qdel", "qhold", "qrls"):
            out = pbs_control(state, command, args)
        elif command == "condor_submit":
            out = condor_submit(state, args)
        elif command in ("condor_q", "condor_history"):
            out = condor_query(state, args, history=command == "condor_history")
        else:
            out = condor_control(state, command, args)
        schedule(state)
        return out


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "__run__":
        run_job(args[0])
        return 0
    try:
        sys.stdout.write(dispatch(command, args))
    except Failure as failure:
        sys.stdout.flush()
        sys.stderr.write(f"{failure}\n")
        return failure.code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
