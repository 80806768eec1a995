"""What goes over SSH per job: commands, file transfers, SFTP requests, connections, and
status commands per poll, counted by the SSH host itself (not estimated).

N independent command jobs (``true``) run on two ``type: ssh`` workers that share one
host (the sshd of scripts/services/sshd.sh, or the namespace host of netns-host.sh).

    python benchmarks/ssh_round_trips.py [--jobs 20] [--service sshd|cvhost1]
                                         [--queue shell|slurm] [--poll-interval 0.2]

Run as root after ``bash scripts/services/sshd.sh`` (and ``netns-host.sh`` for
``--service cvhost1``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from conveyor import Runner, submit_command
from conveyor.hosts.ssh import SSHHost
from conveyor.runner import runner as runner_module
from conveyor.states import JobState
from conveyor.testing import make_project

ROOT = Path("/var/lib/conveyor-test")


def service(name: str) -> dict[str, str]:
    path = ROOT / f"{name}.env"
    if not path.is_file():
        raise SystemExit(f"no {path}: start the service first (scripts/services/)")
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def worker(env: dict[str, str], work_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    data: dict[str, Any] = {
        "type": "ssh",
        "host": env["ADDR"],
        "port": int(env["PORT"]),
        "user": env["USER"],
        "identity_file": env["KEY"],
        "known_hosts": env["KNOWN_HOSTS"],
        "allow_agent": False,
        "look_for_keys": False,
        "ssh_config": None,
        "python": env["PYTHON"],
        "work_dir": work_dir,
        "queue": args.queue,
        "poll_interval": args.poll_interval,
    }
    if args.queue == "slurm":
        data["missing_grace"] = 1.0
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--service", default="sshd", help="sshd (loopback) or cvhost1 (netns)")
    parser.add_argument("--queue", choices=["shell", "slurm"], default="shell")
    parser.add_argument("--poll-interval", type=float, default=0.2)
    args = parser.parse_args()
    env = service(args.service)
    base = f"{env['HOME']}/conveyor-bench/{uuid.uuid4().hex[:8]}"
    workers = {name: worker(env, f"{base}/{name}", args) for name in ("a", "b")}
    polls: list[tuple[str, int]] = []
    hosts: dict[str, SSHHost] = {}
    poll = runner_module.poll_worker
    status_program = {"shell": "ps", "slurm": "squeue"}[args.queue]

    def counting(project: Any, name: str, *rest: Any, **kwargs: Any) -> Any:
        host = hosts[name]
        before = host.stats.snapshot()["programs"].get(status_program, 0)
        try:
            return poll(project, name, *rest, **kwargs)
        finally:
            after = host.stats.snapshot()["programs"].get(status_program, 0)
            polls.append((name, after - before))

    runner_module.poll_worker = counting
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(
            tmp,
            settings={"workers": workers, "runner": {"retry_delays": [1.0]}},
        )
        try:
            for name in workers:
                host = project.host(name)
                assert isinstance(host, SSHHost)
                hosts[name] = host
            ids = [
                submit_command(["true"], worker="ab"[i % 2], project=project)
                for i in range(args.jobs)
            ]
            started = time.perf_counter()
            assert Runner(project).run_all_jobs(max_seconds=600)
            took = time.perf_counter() - started
            states = {project.db.get_job(i).state for i in ids}
            assert states == {JobState.COMPLETED}, states
            report(args, hosts, polls, took, status_program)
        finally:
            project.close()
            shutil.rmtree(base, ignore_errors=True)


def report(
    args: argparse.Namespace,
    hosts: dict[str, SSHHost],
    polls: list[tuple[str, int]],
    took: float,
    status_program: str,
) -> None:
    n = args.jobs
    total: dict[str, float] = {}
    programs: dict[str, int] = {}
    for host in hosts.values():
        snap = host.stats.snapshot()
        for key in ("commands", "uploads", "downloads", "file_ops"):
            total[key] = total.get(key, 0) + snap[key]
        for program, count in snap["programs"].items():
            programs[program] = programs.get(program, 0) + count
    connections = {id(h.connection): h.connection for h in hosts.values()}
    conn = next(iter(connections.values())).stats.snapshot()
    status = programs.get(status_program, 0)
    asked = [count for _, count in polls if count]
    per_job_commands = (total["commands"] - status) / n
    transfers = (total["uploads"] + total["downloads"]) / n
    print(f"{n} command jobs, queue {args.queue}, service {args.service}, {took:.1f} s")
    print("| per job | count |")
    print("|---|---|")
    print(f"| commands other than status polls | {per_job_commands:.2f} |")
    print(f"| file transfers (uploads + downloads) | {transfers:.2f} |")
    print(f"| commands + transfers | {per_job_commands + transfers:.2f} |")
    print(
        f"| other SFTP requests (stat, mkdir, list, remove, rename) | {total['file_ops'] / n:.2f} |"
    )
    print(f"| status commands (amortised) | {status / n:.2f} |")
    print(f"| SSH connections, whole run | {conn['connections']} (hosts: {len(connections)}) |")
    print(f"| SFTP sessions, whole run | {conn['sftp_sessions']} |")
    print(
        f"| polls that asked the queue / status commands per poll (max, mean) | {len(asked)} / "
        f"{max(asked) if asked else 0}, {statistics.mean(asked) if asked else 0:.2f} |"
    )
    print(f"commands by program: {dict(sorted(programs.items()))}")


if __name__ == "__main__":
    main()
