"""SSH workers without a network: their settings, ~/.ssh/config, quoting, the pool, backoff."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from conveyor.config import load_config
from conveyor.config.models import LocalWorkerConfig, ProjectConfig, SSHWorkerConfig
from conveyor.exceptions import ConfigError, HostError
from conveyor.hosts._sshconn import SSHConnection
from conveyor.hosts._sshsetup import (
    ConnectionSettings,
    HostKeyError,
    _HostKeyPolicy,
    resolve_target,
)
from conveyor.hosts.pool import HostPool
from conveyor.hosts.ssh import SSHHost, command_line
from conveyor.project import Project

DOCS = Path(__file__).resolve().parents[2] / "docs" / "ssh.md"

WEIRD = [
    "plain",
    "with space",
    "single'quote",
    'double"quote',
    "$(touch /tmp/conveyor-pwned)",
    "`touch /tmp/conveyor-pwned`",
    "semi; touch /tmp/conveyor-pwned",
    "new\nline",
    "back\\slash",
    "glob *",
    "",
    "-dash",
    "tab\there",
    "ünïcode",
]


def ssh_worker(**extra: Any) -> dict[str, Any]:
    return {"type": "ssh", "host": "cluster", "work_dir": "/scratch/me/conveyor", **extra}


def project_data(**worker: Any) -> dict[str, Any]:
    return {"name": "p", "workers": {"c": ssh_worker(**worker)}}


# --- the project file ------------------------------------------------------------------


def test_an_ssh_worker_has_remote_defaults() -> None:
    config = ProjectConfig.model_validate(project_data())
    worker = config.workers["c"]
    assert isinstance(worker, SSHWorkerConfig)
    assert worker.python == "python3"
    assert worker.poll_interval == 30.0
    assert worker.accept_new_host_keys is False
    assert worker.connect_timeout > 0
    assert worker.channel_timeout > 0
    assert worker.command_timeout > 0
    assert worker.keepalive_interval > 0
    assert worker.max_concurrent_commands >= 1
    # the local worker keeps its own fields and defaults
    local = LocalWorkerConfig(work_dir="/w")
    assert local.python is None
    assert local.poll_interval == 0.1


def test_local_and_ssh_workers_share_the_common_fields() -> None:
    common = set(LocalWorkerConfig.model_fields)
    assert common <= set(SSHWorkerConfig.model_fields)
    assert {"work_dir", "queue", "pre_run", "resources", "env", "command_timeout"} <= common


def test_every_ssh_field_is_described_here_and_in_docs() -> None:
    text = DOCS.read_text()
    for name, field in SSHWorkerConfig.model_fields.items():
        assert field.description, name
        assert f"`{name}`" in text, f"docs/ssh.md does not describe {name}"


def test_an_ssh_work_dir_must_be_absolute() -> None:
    with pytest.raises(ValidationError, match="must be an absolute path"):
        ProjectConfig.model_validate(project_data(work_dir="conveyor"))


def test_unknown_ssh_field_suggests_the_close_match(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(project_data(conect_timeout=3)))
    with pytest.raises(ConfigError, match=r"did you mean 'connect_timeout'"):
        load_config(path)


def test_a_passphrase_is_never_in_the_file_only_the_name_of_its_variable() -> None:
    with pytest.raises(ValidationError, match="NAME of an environment variable"):
        ProjectConfig.model_validate(project_data(passphrase_env="my secret words"))
    worker = SSHWorkerConfig.model_validate(ssh_worker(passphrase_env="CLUSTER_KEY_PASS"))
    assert worker.passphrase_env == "CLUSTER_KEY_PASS"


def test_identity_file_takes_one_path_or_several() -> None:
    assert SSHWorkerConfig.model_validate(ssh_worker(identity_file="~/.ssh/k")).identity_file == [
        "~/.ssh/k"
    ]
    two = SSHWorkerConfig.model_validate(ssh_worker(identity_file=["a", "b"]))
    assert two.identity_file == ["a", "b"]


def test_reconnect_delays_need_one_non_negative_delay() -> None:
    with pytest.raises(ValidationError, match="reconnect_delays"):
        SSHWorkerConfig.model_validate(ssh_worker(reconnect_delays=[]))


def test_a_remote_worker_names_its_python_or_gets_python3(tmp_path: Path) -> None:
    data = {
        "name": "p",
        "workers": {
            "c": ssh_worker(),
            "d": ssh_worker(python="/opt/venv/bin/python"),
            "l": {"type": "local", "work_dir": str(tmp_path)},
        },
    }
    project = Project(tmp_path / "p.yaml", ProjectConfig.model_validate(data))
    assert project.python("c") == "python3"
    assert project.python("d") == "/opt/venv/bin/python"
    assert project.python("l") == sys.executable


# --- ~/.ssh/config ---------------------------------------------------------------------


def write_ssh_config(tmp_path: Path) -> Path:
    path = tmp_path / "ssh_config"
    path.write_text(
        "Host cluster\n"
        "    HostName login.cluster.example\n"
        "    User alice\n"
        "    Port 2200\n"
        "    IdentityFile ~/.ssh/cluster_key\n"
        "    ProxyJump bastion.example,bob@inner:2022\n"
        "Host direct\n"
        "    HostName 192.0.2.7\n"
    )
    return path


def test_ssh_config_gives_hostname_user_port_and_jump_hosts(tmp_path: Path) -> None:
    settings = ConnectionSettings(host="cluster", ssh_config=str(write_ssh_config(tmp_path)))
    target = resolve_target(settings)
    assert target.key == ("login.cluster.example", 2200, "alice")
    assert target.label == "alice@login.cluster.example:2200"
    assert target.known_hosts_name == "[login.cluster.example]:2200"
    assert any("cluster_key" in k for k in target.ssh_options["identityfile"])
    connection = SSHConnection(target, settings)
    assert connection._hop_list() == ["bastion.example", "bob@inner:2022"]


def test_worker_settings_override_ssh_config(tmp_path: Path) -> None:
    settings = ConnectionSettings(
        host="cluster",
        user="carol",
        port=22,
        jump_hosts=(),
        ssh_config=str(write_ssh_config(tmp_path)),
    )
    target = resolve_target(settings)
    assert target.key == ("login.cluster.example", 22, "carol")
    assert target.known_hosts_name == "login.cluster.example"
    assert SSHConnection(target, settings)._hop_list() == []


def test_a_missing_explicit_ssh_config_is_an_error_but_the_default_may_be_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_target(ConnectionSettings(host="h", ssh_config=str(tmp_path / "nope")))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_target(ConnectionSettings(host="h", user="u")).key == ("h", 22, "u")


def test_the_pool_shares_one_connection_per_host_port_and_user(tmp_path: Path) -> None:
    config = str(write_ssh_config(tmp_path))
    pool = HostPool()
    by_alias = pool.acquire(ConnectionSettings(host="cluster", ssh_config=config))
    by_name = pool.acquire(
        ConnectionSettings(
            host="login.cluster.example",
            user="alice",
            port=2200,
            ssh_config=config,
            max_concurrent_commands=2,
        )
    )
    other_user = pool.acquire(ConnectionSettings(host="cluster", user="bob", ssh_config=config))
    assert by_alias is by_name
    assert other_user is not by_alias
    assert by_alias.settings.max_concurrent_commands == 2  # the smallest limit wins
    assert len(pool.connections()) == 2
    pool.release(by_alias)
    assert len(pool.connections()) == 2  # one worker still uses it
    pool.release(by_name)
    pool.release(other_user)
    assert pool.connections() == []


def test_project_host_builds_an_ssh_host_without_connecting(tmp_path: Path) -> None:
    data = project_data(host="192.0.2.1", ssh_config=None)  # TEST-NET-1: never contacted
    project = Project(tmp_path / "p.yaml", ProjectConfig.model_validate(data))
    host = project.host("c")
    assert isinstance(host, SSHHost)
    assert host.root == "/scratch/me/conveyor"
    assert project.host("c") is host
    assert host.connection.stats["connections"] == 0
    project.close()


# --- quoting ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", WEIRD)
def test_arguments_reach_the_program_intact_through_a_shell(value: str, tmp_path: Path) -> None:
    canary = Path("/tmp/conveyor-pwned")
    canary.unlink(missing_ok=True)
    cwd = tmp_path / "dir with 'quote' and $(x)"
    cwd.mkdir()
    line = command_line(
        ["python3", "-c", "import os, sys; print(repr(sys.argv[1:]), repr(os.getcwd()))", value],
        cwd=str(cwd),
        env={"CONVEYOR_X": value},
    )
    out = subprocess.run(["bash", "-c", line], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"{[value]!r} {str(cwd)!r}"
    env = subprocess.run(
        ["bash", "-c", command_line(["printenv", "CONVEYOR_X"], env={"CONVEYOR_X": value})],
        capture_output=True,
        text=True,
        check=False,
    )
    assert env.stdout == value + "\n"
    assert not canary.exists()


def test_command_lines_quote_once_and_exec() -> None:
    line = command_line(["ls", "-l", "a b"], cwd="/x y")
    assert line == "cd -- '/x y' && exec ls -l 'a b'"
    assert shlex.split(line.split("exec ", 1)[1]) == ["ls", "-l", "a b"]
    with pytest.raises(HostError, match="empty"):
        command_line([])
    with pytest.raises(HostError, match="not a valid identifier"):
        command_line(["true"], env={"A B": "1"})
    with pytest.raises(HostError, match="may not start with '-'"):
        command_line(["-rf"])


# --- host keys, backoff ----------------------------------------------------------------


class _Key:
    fingerprint = "SHA256:abcdef"

    def get_name(self) -> str:
        return "ssh-ed25519"

    def get_base64(self) -> str:
        return "AAAAC3NzaC1lZDI1NTE5AAAAIGZha2U="


class _Keys:
    def __init__(self) -> None:
        self.added: list[tuple[str, str]] = []

    def add(self, hostname: str, kind: str, key: Any) -> None:
        self.added.append((hostname, kind))


class _Client:
    def __init__(self) -> None:
        self.keys = _Keys()

    def get_host_keys(self) -> _Keys:
        return self.keys


def test_an_unknown_host_key_is_refused_with_the_fix(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    policy = _HostKeyPolicy(ConnectionSettings(host="h", known_hosts=str(known)), "u@h:2200")
    with pytest.raises(HostKeyError) as caught:
        policy.missing_host_key(_Client(), "[h]:2200", _Key())  # type: ignore[arg-type]
    message = str(caught.value)
    assert "SHA256:abcdef" in message
    assert "ssh-keyscan -p 2200 h" in message
    assert "accept_new_host_keys: true" in message
    assert not known.exists()


def test_a_new_host_key_is_recorded_when_the_worker_accepts_new_ones(tmp_path: Path) -> None:
    known = tmp_path / "sub" / "known_hosts"
    settings = ConnectionSettings(host="h", known_hosts=str(known), accept_new_host_keys=True)
    client = _Client()
    _HostKeyPolicy(settings, "u@h:22").missing_host_key(client, "h", _Key())  # type: ignore[arg-type]
    assert client.keys.added == [("h", "ssh-ed25519")]
    assert known.read_text() == "h ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZha2U=\n"
    assert known.stat().st_mode & 0o777 == 0o600


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_refused_connection_backs_off_and_fails_fast_meanwhile() -> None:
    port = free_port()  # nothing listens there: refused at once, no traffic leaves
    settings = ConnectionSettings(
        host="127.0.0.1",
        user="nobody",
        port=port,
        ssh_config=None,
        connect_timeout=2,
        reconnect_delays=(30.0,),
        min_connect_interval=0,
        allow_agent=False,
        look_for_keys=False,
    )
    connection = SSHConnection(resolve_target(settings), settings)
    with pytest.raises(HostError, match=rf"cannot connect to nobody@127.0.0.1:{port}: .*refused"):
        connection.transport()
    started = time.monotonic()
    with pytest.raises(
        HostError, match=r"unreachable: .*refused.*next attempt in (30\.0|2\d\.\d) s"
    ):
        connection.run("true", ["true"], None, 5)
    assert time.monotonic() - started < 0.1
    assert connection.stats["connect_failures"] == 1
    connection.close()


def test_the_minimum_interval_between_connections_is_kept() -> None:
    port = free_port()
    settings = ConnectionSettings(
        host="127.0.0.1",
        user="nobody",
        port=port,
        ssh_config=None,
        reconnect_delays=(0.0,),
        min_connect_interval=0.4,
        allow_agent=False,
        look_for_keys=False,
    )
    connection = SSHConnection(resolve_target(settings), settings)
    started = time.monotonic()
    for _ in range(3):
        with pytest.raises(HostError, match="refused"):
            connection.transport()
    assert time.monotonic() - started >= 0.8
    connection.close()


def test_describe_names_the_failure() -> None:
    from conveyor.hosts._sshtools import describe

    assert "silent or unreachable" in describe(TimeoutError("timed out"), 2)
    assert re.search("within 2 s", describe(TimeoutError(), 2))
