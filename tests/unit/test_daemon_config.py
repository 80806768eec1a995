"""The daemon without supervisord running: its configuration (read back by supervisor's
own parser), layouts, the control socket's path, liveness from /proc, the status of
runner registrations, stale pid files, logs, and the CLI where nothing runs."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conveyor.cli import app
from conveyor.config import init_project
from conveyor.exceptions import ConveyorError
from conveyor.models import RunnerDoc, utcnow
from conveyor.project import Project, forget_project, open_project
from conveyor.runner import ALL_ROLES
from conveyor.runner.daemon import (
    DAEMON_ENV,
    SOCKET_PATH_MAX,
    Daemon,
    DaemonLayout,
    daemon_key,
    follow_files,
    last_lines,
    pid_alive,
    process_state,
    render_config,
    runner_status,
    socket_path,
)

ServerOptions = pytest.importorskip("supervisor.options").ServerOptions


@pytest.fixture
def sqlite_project(tmp_path: Path) -> Iterator[Project]:
    """A project on the embedded database, in a folder whose path needs quoting."""
    path = init_project("units", tmp_path / "my 'first' project")
    project = open_project(path)
    yield project
    project.close()
    forget_project(project.path)


def parse(project: Project, layout: DaemonLayout) -> Any:
    """Write the configuration and read it back with supervisord's own parser."""
    directory = project.directory / "daemon"
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    config = directory / "supervisord.conf"
    config.write_text(render_config(project, layout, directory))
    options = ServerOptions()
    options.realize(args=["-c", str(config)])
    return options


def programs(options: Any) -> dict[str, Any]:
    return {pc.name: pc for group in options.process_group_configs for pc in group.process_configs}


def test_one_process_takes_every_role_by_default(sqlite_project: Project) -> None:
    options = parse(sqlite_project, DaemonLayout())
    (name, config), *_ = found = list(programs(options).items())
    assert len(found) == 1
    assert name == "runner_00"
    argv = shlex.split(config.command)
    project = ["--project", str(sqlite_project.path)]
    assert argv[:5] == [sys.executable, "-m", "conveyor.cli", *project]
    assert argv[5:] == ["runner", "run", "--roles", ",".join(ALL_ROLES), "--name", "runner_00"]
    assert config.directory == str(sqlite_project.directory)
    assert config.autostart
    assert config.autorestart is not False  # RestartUnconditionally
    assert (config.stopsignal, config.stopasgroup, config.killasgroup) == (15, False, True)
    assert config.stopwaitsecs >= 60  # the step in hand finishes
    directory = sqlite_project.directory / "daemon"
    assert config.stdout_logfile == str(directory / "logs" / "runner_00.log")
    assert config.redirect_stderr
    assert config.environment == {"PYTHONUNBUFFERED": "1", DAEMON_ENV: daemon_key(directory)}
    assert options.pidfile == str(directory / "supervisord.pid")
    assert options.logfile == str(directory / "supervisord.log")
    assert options.server_configs[0]["file"] == str(socket_path(directory))


def test_split_runs_one_program_per_role_with_the_counts_asked(sqlite_project: Project) -> None:
    found = programs(parse(sqlite_project, DaemonLayout(split=True, transfer=2, complete=3)))
    assert sorted(found) == [
        "checkout_00",
        "complete_00",
        "complete_01",
        "complete_02",
        "queue_00",
        "transfer_00",
        "transfer_01",
    ]
    for name, config in found.items():
        argv = shlex.split(config.command)
        role = name.split("_")[0]
        assert argv[argv.index("--roles") + 1] == role
        assert argv[argv.index("--name") + 1] == name


def test_layout_rejects_counts_without_split() -> None:
    with pytest.raises(ConveyorError, match="--split"):
        DaemonLayout(transfer=2)
    with pytest.raises(ConveyorError, match="at least 1"):
        DaemonLayout(split=True, complete=0)
    assert DaemonLayout(split=True).roles_of("queue") == ("queue",)
    assert DaemonLayout().roles_of("runner") == ALL_ROLES


@pytest.mark.parametrize("folder", ["a ;b", "a #b", "100% sure"])
def test_a_path_that_would_break_the_config_is_refused(tmp_path: Path, folder: str) -> None:
    path = init_project("bad", tmp_path / folder)
    project = open_project(path)
    try:
        with pytest.raises(ConveyorError, match="supervisord"):
            render_config(project, DaemonLayout(), project.directory / "daemon")
    finally:
        project.close()
        forget_project(project.path)


def test_a_socket_path_too_long_for_sun_path_goes_under_tmp(tmp_path: Path) -> None:
    short = tmp_path / "d"
    assert socket_path(short) == short / "supervisor.sock"
    deep = tmp_path / ("x" * SOCKET_PATH_MAX) / "daemon"
    sock = socket_path(deep)
    assert sock.parent == Path("/tmp")
    assert sock == socket_path(deep)  # stable: every command finds it
    assert sock != socket_path(tmp_path / ("y" * SOCKET_PATH_MAX) / "daemon")
    assert len(os.fsencode(sock)) < 108


def test_liveness_comes_from_proc_and_a_zombie_is_dead() -> None:
    assert pid_alive(os.getpid())
    assert process_state(os.getpid()) in ("R", "S")
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while process_state(proc.pid) != "Z":  # exited, not yet reaped: kill -0 says alive
        assert time.monotonic() < deadline, process_state(proc.pid)
        time.sleep(0.01)
    os.kill(proc.pid, 0)
    assert not pid_alive(proc.pid)
    proc.wait()
    assert process_state(proc.pid) is None
    assert not pid_alive(proc.pid)


def registration(**fields: Any) -> RunnerDoc:
    values: dict[str, Any] = {
        "runner_id": "r1",
        "hostname": "elsewhere",
        "pid": os.getpid(),
        "roles": list(ALL_ROLES),
        "version": "1",
    }
    return RunnerDoc(**{**values, **fields})


def test_registrations_are_live_stale_stopped_or_dead() -> None:
    now = utcnow()
    here = socket.gethostname()

    def status(doc: RunnerDoc) -> str:
        return runner_status(doc, heartbeat_interval=1.0, now=now, hostname=here).status

    assert status(registration(heartbeat_at=now)) == "live"
    assert status(registration(heartbeat_at=now - timedelta(seconds=3.5))) == "stale"
    assert status(registration(stopped_at=now)) == "stopped"
    assert status(registration(hostname=here, heartbeat_at=now)) == "live"  # this process
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert status(registration(hostname=here, pid=proc.pid, heartbeat_at=now)) == "dead"
    # Our pid, but registered long before this process started: the pid was reused.
    old = now - timedelta(days=30)
    assert status(registration(hostname=here, started_at=old, heartbeat_at=now)) == "dead"
    # Another host's pid says nothing here: only the heartbeat counts.
    assert status(registration(pid=proc.pid, heartbeat_at=now)) == "live"
    as_json = runner_status(registration(), heartbeat_interval=1.0, now=now, hostname=here)
    assert as_json.to_json()["status"] == "live"
    assert as_json.to_json()["live"] is True


def test_a_stale_pid_file_is_removed(sqlite_project: Project) -> None:
    daemon = Daemon(sqlite_project)
    daemon.directory.mkdir(parents=True)
    assert daemon.supervisord_pid() is None
    proc = subprocess.Popen(["true"])
    proc.wait()
    for content in (str(proc.pid), str(os.getpid()), "not a pid"):  # gone, not ours, junk
        daemon.pid_file.write_text(content + "\n")
        assert daemon.supervisord_pid() is None
        assert not daemon.pid_file.exists()


def test_logs_of_one_program_and_their_tails(sqlite_project: Project) -> None:
    daemon = Daemon(sqlite_project)
    daemon.log_dir.mkdir(parents=True)
    for name in ("transfer_00", "transfer_01", "queue_00"):
        (daemon.log_dir / f"{name}.log").write_text("".join(f"{name} {i}\n" for i in range(5)))
    assert [p.stem for p in daemon.log_files("transfer")] == ["transfer_00", "transfer_01"]
    assert [p.stem for p in daemon.log_files("queue_00")] == ["queue_00"]
    assert len(daemon.log_files()) == 3
    assert daemon.log_files("supervisord") == [daemon.directory / "supervisord.log"]
    with pytest.raises(ConveyorError, match=r"no log of 'checkout'.*queue_00"):
        daemon.log_files("checkout")
    path = daemon.log_dir / "queue_00.log"
    lines, (inode, offset) = last_lines(path, 2)
    assert lines == ["queue_00 3\n", "queue_00 4\n"]
    assert (inode, offset) == (path.stat().st_ino, path.stat().st_size)
    assert len(last_lines(path, 0)[0]) == 5


def test_follow_goes_on_where_the_tail_ended(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_text("one\ntwo\n")
    lines, end = last_lines(path, 1)
    with path.open("a") as handle:  # written between the tail and the follow
        handle.write("three\n")
    written: list[str] = []
    looks = iter([False, True])
    follow_files(lambda: [path], written.append, since={path: end}, stop=lambda: next(looks))
    assert lines + written == ["two\n", "three\n"]


def test_follow_prints_appended_text_across_rotation_and_new_files(tmp_path: Path) -> None:
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    first.write_text("old\n")
    written: list[str] = []

    def append(path: Path, text: str) -> None:
        with path.open("a") as handle:
            handle.write(text)

    def rotate() -> None:
        (tmp_path / "new").write_text("two\n")
        (tmp_path / "new").replace(first)

    steps = iter(
        [
            lambda: append(first, "one\n"),
            rotate,
            lambda: second.write_text("bee\n"),
            lambda: append(first, "three\n"),
        ]
    )

    def stop() -> bool:
        step = next(steps, None)
        if step is None:
            return True
        step()
        return False

    follow_files(lambda: sorted(tmp_path.glob("*.log")), written.append, stop=stop, interval=0)
    text = "".join(written)
    assert "old" not in text
    assert text == (f"one\ntwo\n\n==> {second} <==\nbee\n\n==> {first} <==\nthree\n")


cli = CliRunner()


def test_the_cli_where_no_daemon_runs(sqlite_project: Project) -> None:
    argv = ["--project", str(sqlite_project.path), "runner"]
    result = cli.invoke(app, [*argv, "status", "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["daemon"]["running"] is False
    assert (found["programs"], found["runners"], found["problems"]) == ([], [], [])
    result = cli.invoke(app, [*argv, "status"])
    assert "not running" in result.stdout
    for command in ("stop", "kill"):
        result = cli.invoke(app, [*argv, command])
        assert result.exit_code == 0
        assert "is not running" in result.stdout
    result = cli.invoke(app, [*argv, "logs"])
    assert (result.exit_code, result.stdout) == (0, "")


def test_start_refuses_an_in_memory_database(project: Project) -> None:
    result = cli.invoke(app, ["--project", str(project.path), "runner", "start"])
    assert result.exit_code == 1
    assert "mongomock" in result.stderr
    assert not (project.directory / "daemon" / "supervisord.pid").exists()


def test_start_and_run_refuse_bad_options(sqlite_project: Project) -> None:
    argv = ["--project", str(sqlite_project.path), "runner"]
    result = cli.invoke(app, [*argv, "start", "--transfer", "2"])
    assert result.exit_code == 1
    assert "--split" in result.stderr
    result = cli.invoke(app, [*argv, "run", "--roles", "checkout,upload"])
    assert result.exit_code == 2
    assert "upload" in result.stderr
