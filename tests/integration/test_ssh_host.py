"""SSHHost against a real OpenSSH server (scripts/services/sshd.sh): commands, quoting,
files over SFTP, rmtree's refusals, host keys, keys, ~/.ssh/config, jump hosts, the pool.

The sshd listens on 127.0.0.1 and logs in a test user with a generated key; the second
host (scripts/services/netns-host.sh) is a network namespace with its own address. The
helpers here are shared with test_ssh_runner.py and test_ssh_faults.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conveyor.config.models import SSHWorkerConfig
from conveyor.exceptions import CommandTimeoutError, ConfigError, HostError
from conveyor.hosts.pool import HostPool
from conveyor.hosts.ssh import HostKeyError, SSHAuthError, SSHHost
from services import service_missing

pytestmark = pytest.mark.integration

TEST_ROOT = Path(os.environ.get("CONVEYOR_TEST_ROOT", "/var/lib/conveyor-test"))
CANARY = Path("/tmp/conveyor-pwned")
WEIRD_NAMES = [
    "with space",
    "single'quote",
    'double"quote',
    "$(touch /tmp/conveyor-pwned)",
    "`touch /tmp/conveyor-pwned`",
    "semi;touch /tmp/conveyor-pwned",
    "new\nline",
    "ünïcode*?",
]
#: The same, fit for file names (no '/').
WEIRD_FILES = [name.replace("/", "%") for name in WEIRD_NAMES]


@dataclass(frozen=True)
class Service:
    """An sshd started by scripts/services/*.sh, as its description file tells."""

    name: str
    addr: str
    port: int
    user: str
    home: str
    key: str
    key_enc: str
    passphrase_file: str
    known_hosts: str
    python: str
    pid_file: str
    netns: str
    veth: str = ""
    slurm: bool = False

    def worker(self, work_dir: str, **extra: Any) -> dict[str, Any]:
        """Settings of an ssh worker on this host, strict and isolated from ~/.ssh."""
        return {
            "type": "ssh",
            "host": self.addr,
            "port": self.port,
            "user": self.user,
            "identity_file": self.key,
            "known_hosts": self.known_hosts,
            "allow_agent": False,
            "look_for_keys": False,
            "ssh_config": None,
            "work_dir": work_dir,
            "python": self.python,
            **extra,
        }

    def host(self, work_dir: str, pool: HostPool | None = None, **extra: Any) -> SSHHost:
        config = SSHWorkerConfig.model_validate(self.worker(work_dir, **extra))
        return SSHHost.from_config("w", config, pool=pool or HostPool())

    def listener_pid(self) -> int:
        return int(Path(self.pid_file).read_text())


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _answers(addr: str, port: int) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=2) as sock:
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def load_service(name: str, how: str) -> Service:
    """The service described by TEST_ROOT/NAME.env, answering; else service_missing."""
    path = TEST_ROOT / f"{name}.env"
    if not path.is_file():
        service_missing(f"no {path}: start it as root with {how}")
    fields = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    service = Service(
        name=name,
        addr=fields["ADDR"],
        port=int(fields["PORT"]),
        user=fields["USER"],
        home=fields["HOME"],
        key=fields["KEY"],
        key_enc=fields["KEY_ENC"],
        passphrase_file=fields["PASSPHRASE_FILE"],
        known_hosts=fields["KNOWN_HOSTS"],
        python=fields["PYTHON"],
        pid_file=fields["PID_FILE"],
        netns=fields.get("NETNS", ""),
        veth=fields.get("VETH", ""),
        slurm=fields.get("SLURM") == "1",
    )
    pid_ok = Path(service.pid_file).is_file() and _alive(service.listener_pid())
    if not pid_ok or not _answers(service.addr, service.port):
        service_missing(
            f"sshd {name} ({service.addr}:{service.port}) is not running: start it as root "
            f"with {how}"
        )
    return service


def remote_dir(service: Service, label: str = "t") -> Iterator[str]:
    """A fresh directory in the test user's home (removed afterwards, as root)."""
    path = f"{service.home}/conveyor-tests/{label}-{uuid.uuid4().hex[:8]}"
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd() -> Service:
    return load_service("sshd", "bash scripts/services/sshd.sh")


@pytest.fixture(scope="session")
def nshost() -> Service:
    return load_service("cvhost1", "bash scripts/services/netns-host.sh")


@pytest.fixture
def work(sshd: Service) -> Iterator[str]:
    yield from remote_dir(sshd)


@pytest.fixture
def host(sshd: Service, work: str) -> Iterator[SSHHost]:
    host = sshd.host(work)
    host.mkdir(work)
    yield host
    host.close()


@pytest.fixture
def no_home_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME without ~/.ssh: known hosts come only from what the test gives."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


# --- commands --------------------------------------------------------------------------


def test_commands_give_exit_code_output_and_take_stdin(host: SSHHost) -> None:
    result = host.execute(["sh", "-c", "read x; echo out:$x; echo err >&2; exit 3"], stdin="in\n")
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out:in\n", "err\n")
    assert "cvtest@127.0.0.1" in result.host
    assert host.execute(["id", "-un"]).stdout.strip() == "cvtest"
    assert host.stats["commands"] == 2
    assert host.stats.snapshot()["programs"] == {"sh": 1, "id": 1}


@pytest.mark.parametrize("value", WEIRD_NAMES)
def test_arguments_cwd_and_env_reach_the_remote_side_intact(
    host: SSHHost, work: str, value: str
) -> None:
    CANARY.unlink(missing_ok=True)
    directory = f"{work}/{value.replace('/', '%')}"
    host.mkdir(directory)
    show = "import os, sys; print(repr([sys.argv[1:], os.getcwd(), os.environ['CV_X']]))"
    result = host.execute(
        ["python3", "-c", show, value, "a;b", "$HOME"], cwd=directory, env={"CV_X": value}
    ).check()
    assert result.stdout.strip() == repr([[value, "a;b", "$HOME"], directory, value])
    assert not CANARY.exists()


def test_a_command_past_its_timeout_is_killed_on_the_host(host: SSHHost) -> None:
    marker = f"conveyor-timeout-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    with pytest.raises(CommandTimeoutError, match=r"did not finish within 1 s"):
        host.execute(["sh", "-c", f"sleep 30; echo {marker}", marker], timeout=1)
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the timed-out command still runs on the host"
        time.sleep(0.1)
    assert host.execute(["echo", "still fine"]).stdout == "still fine\n"


def test_concurrent_commands_are_limited_per_host(sshd: Service, work: str) -> None:
    host = sshd.host(work, max_concurrent_commands=2)
    log = f"{work}/starts"
    host.mkdir(work)
    script = 'echo "$(date +%s.%N) start" >>"$1"; sleep 0.6; echo "$(date +%s.%N) end" >>"$1"'
    threads = [
        threading.Thread(target=host.execute, args=(["sh", "-c", script, "sh", log],))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    events = sorted(
        (float(t), kind)
        for t, kind in (line.split() for line in Path(log).read_text().splitlines())
    )
    running = peak = 0
    for _, kind in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 2
    host.close()


# --- files -----------------------------------------------------------------------------


def test_files_with_awkward_names_round_trip_over_one_sftp_session(
    host: SSHHost, work: str, tmp_path: Path
) -> None:
    directory = f"{work}/run dir/$(x)"
    host.mkdir(directory)
    host.mkdir(directory)  # fine if it exists
    files = {f"{directory}/{name}": name.encode() * 3 for name in WEIRD_FILES}
    host.write_files(files)
    assert host.listdir(directory) == sorted(WEIRD_FILES)
    for path, data in files.items():
        assert host.read_bytes(path) == data
        assert Path(path).read_bytes() == data  # the same filesystem, seen from here
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(3 * 1024 * 1024))
    host.put(str(local), f"{directory}/big copy")
    host.get(f"{directory}/big copy", str(tmp_path / "back"))
    assert (tmp_path / "back").read_bytes() == local.read_bytes()
    assert host.exists(f"{directory}/big copy")
    host.remove(f"{directory}/big copy")
    host.remove(f"{directory}/big copy")  # fine if missing
    assert not host.exists(f"{directory}/big copy")
    with pytest.raises(FileNotFoundError, match="big copy"):
        host.read_bytes(f"{directory}/big copy")
    with pytest.raises(FileNotFoundError):
        host.get(f"{directory}/big copy", str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()
    stats = host.connection.stats.snapshot()
    assert stats["sftp_sessions"] == 1
    assert stats["connections"] == 1
    assert stats["uploads"] == len(files) + 1
    assert not CANARY.exists()


def test_write_bytes_is_atomic_and_leaves_no_temporary_file(host: SSHHost, work: str) -> None:
    path = f"{work}/out.json"
    host.write_bytes(path, b"old")
    host.write_bytes(path, b"new")
    assert host.read_bytes(path) == b"new"
    assert host.listdir(work) == ["out.json"]


def test_file_errors_name_the_host_and_path(host: SSHHost) -> None:
    with pytest.raises(HostError, match=r"could not write '/root/x' on w \(cvtest@.*denied"):
        host.write_bytes("/root/x", b"x")
    with pytest.raises(FileNotFoundError, match=r"on w \(cvtest@.*'/proc/nope/x'"):
        host.write_bytes("/proc/nope/x", b"x")
    with pytest.raises(HostError, match="not inside the worker's work dir"):
        host.rmtree("/home")


def test_rmtree_removes_a_tree_but_never_follows_links_out(
    host: SSHHost, work: str, tmp_path: Path
) -> None:
    outside = f"{work}-outside"
    host.mkdir(f"{outside}/keep")
    host.write_bytes(f"{outside}/keep/file", b"precious")
    try:
        host.mkdir(f"{work}/job/sub")
        host.write_bytes(f"{work}/job/sub/f", b"x")
        host.execute(["ln", "-s", outside, f"{work}/job/link"]).check()
        host.execute(["ln", "-s", outside, f"{work}/link"]).check()
        with pytest.raises(HostError, match="symbolic link"):
            host.rmtree(f"{work}/link")
        with pytest.raises(HostError, match="outside the worker's work dir"):
            host.rmtree(f"{work}/link/keep")
        with pytest.raises(HostError, match="not inside"):
            host.rmtree(f"{work}/../{Path(outside).name}")
        host.rmtree(f"{work}/job")
        assert not host.exists(f"{work}/job")
        host.rmtree(f"{work}/job")  # fine if missing
        assert host.read_bytes(f"{outside}/keep/file") == b"precious"
    finally:
        shutil.rmtree(outside, ignore_errors=True)


# --- logging in ------------------------------------------------------------------------


def test_an_unknown_host_key_is_refused_with_the_fix(
    sshd: Service, work: str, tmp_path: Path, no_home_keys: Path
) -> None:
    known = tmp_path / "known_hosts"
    host = sshd.host(work, known_hosts=str(known))
    with pytest.raises(HostKeyError) as caught:
        host.execute(["true"])
    message = str(caught.value)
    assert "[127.0.0.1]:22022" in message
    assert "SHA256:" in message
    assert "ssh-keyscan -p 22022 127.0.0.1" in message
    assert "accept_new_host_keys: true" in message
    assert not known.exists()
    # During the backoff it stays a configuration error (never retried), not "unreachable".
    with pytest.raises(HostKeyError, match="accept_new_host_keys"):
        host.execute(["true"])
    host.close()


def test_a_new_host_key_is_accepted_and_recorded_when_the_config_says_so(
    sshd: Service, work: str, tmp_path: Path, no_home_keys: Path
) -> None:
    known = tmp_path / "ssh" / "known_hosts"
    host = sshd.host(work, known_hosts=str(known), accept_new_host_keys=True)
    assert host.execute(["echo", "hello"]).stdout == "hello\n"
    host.close()
    recorded = known.read_text().split()
    expected = Path(sshd.known_hosts).read_text().split()
    assert recorded[:3] == expected[:3]
    # Now known: a strict worker connects too.
    strict = sshd.host(work, known_hosts=str(known))
    assert strict.execute(["true"]).ok
    strict.close()


def test_a_changed_host_key_is_refused_even_when_accepting_new_ones(
    sshd: Service, work: str, tmp_path: Path, no_home_keys: Path
) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = tmp_path / "known_hosts"
    kind, blob = Path(f"{other}.pub").read_text().split()[:2]
    known.write_text(f"[127.0.0.1]:22022 {kind} {blob}\n")
    host = sshd.host(work, known_hosts=str(known), accept_new_host_keys=True)
    with pytest.raises(HostKeyError, match=r"CHANGED.*ssh-keygen -R"):
        host.execute(["true"])
    host.close()


def test_an_encrypted_key_opens_with_the_passphrase_from_the_named_variable(
    sshd: Service, work: str, monkeypatch: pytest.MonkeyPatch, no_home_keys: Path
) -> None:
    settings = {"identity_file": sshd.key_enc, "passphrase_env": "CV_TEST_KEY_PASSPHRASE"}
    missing = sshd.host(work, **settings)
    with pytest.raises(ConfigError, match=r"CV_TEST_KEY_PASSPHRASE.*is not set"):
        missing.execute(["true"])
    missing.close()
    monkeypatch.setenv("CV_TEST_KEY_PASSPHRASE", "wrong")
    wrong = sshd.host(work, **settings)
    with pytest.raises(SSHAuthError, match=r"cannot log in to cvtest@127\.0\.0\.1:22022"):
        wrong.execute(["true"])
    wrong.close()
    passphrase = Path(sshd.passphrase_file).read_text().strip("\n")
    monkeypatch.setenv("CV_TEST_KEY_PASSPHRASE", passphrase)
    right = sshd.host(work, **settings)
    assert right.execute(["true"]).ok
    right.close()


def test_ssh_config_alias_and_two_workers_share_one_connection(
    sshd: Service, work: str, tmp_path: Path
) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host mycluster\n    HostName {sshd.addr}\n    Port {sshd.port}\n"
        f"    User {sshd.user}\n    IdentityFile {sshd.key}\n"
    )
    pool = HostPool()
    alias = sshd.worker(work, ssh_config=str(config), host="mycluster")
    for key in ("port", "user", "identity_file"):
        del alias[key]
    first = SSHHost.from_config("a", SSHWorkerConfig.model_validate(alias), pool=pool)
    second = sshd.host(f"{work}/other", pool=pool)
    assert first.connection is second.connection
    assert first.execute(["true"]).ok
    assert second.execute(["true"]).ok
    assert first.connection.stats["connections"] == 1
    assert first.stats["commands"] == second.stats["commands"] == 1
    assert first.connection.stats["commands"] == 2
    first.close()
    assert pool.connections() == [second.connection]
    second.close()
    assert pool.connections() == []


@pytest.mark.parametrize("how", ["ssh_config", "jump_hosts"])
def test_a_jump_host_leads_to_the_second_host(
    sshd: Service, nshost: Service, tmp_path: Path, how: str
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(Path(sshd.known_hosts).read_text() + Path(nshost.known_hosts).read_text())
    config = tmp_path / "ssh_config"
    jump = f"{sshd.user}@{sshd.addr}:{sshd.port}"
    lines = [
        "Host *",
        f"    IdentityFile {sshd.key}",
        "Host far",
        f"    HostName {nshost.addr}",
        f"    User {nshost.user}",
    ]
    if how == "ssh_config":
        lines.append(f"    ProxyJump {jump}")
    config.write_text("\n".join(lines) + "\n")
    settings = nshost.worker(f"{nshost.home}/conveyor-tests", known_hosts=str(known))
    settings.update(host="far", ssh_config=str(config))
    if how == "jump_hosts":
        settings["jump_hosts"] = [jump]
    for key in ("port", "user", "identity_file"):
        del settings[key]
    host = SSHHost.from_config("far", SSHWorkerConfig.model_validate(settings), pool=HostPool())
    # The namespace's own view: its address is on its own interface.
    assert nshost.addr in host.execute(["ip", "-o", "addr"]).stdout
    # It was reached through the jump host: one hop, logged in.
    hops = host.connection._hops
    assert [(h.host, h.port) for h in hops] == [(sshd.addr, sshd.port)]
    assert hops[0].transport is not None
    assert hops[0].transport.is_authenticated()
    host.close()


# --- interactive login (password + one-time code) --------------------------------------


class _OTPServer:
    """An in-process SSH server (paramiko's server side) that asks, with
    keyboard-interactive, for a password and a one-time code, then runs nothing but
    answers every command with "ok"."""

    def __init__(self) -> None:
        import paramiko

        self.key = paramiko.RSAKey.generate(2048)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(5)
        self.port = int(self.listener.getsockname()[1])
        self.logins = 0
        self.transports: list[Any] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import paramiko

        server = self

        class Interface(paramiko.ServerInterface):  # type: ignore[misc]
            def get_allowed_auths(self, username: str) -> str:
                return "keyboard-interactive"

            def check_auth_interactive(self, username: str, submethods: str) -> Any:
                query = paramiko.InteractiveQuery("Cluster login", "Two factors")
                query.add_prompt("Password: ", False)
                query.add_prompt("Verification code: ", False)
                return query

            def check_auth_interactive_response(self, responses: list[str]) -> int:
                if list(responses) == ["s3cret", "123456"]:
                    server.logins += 1
                    return int(paramiko.AUTH_SUCCESSFUL)
                return int(paramiko.AUTH_FAILED)

            def check_channel_request(self, kind: str, chanid: int) -> int:
                return int(paramiko.OPEN_SUCCEEDED)

            def check_channel_exec_request(self, channel: Any, command: bytes) -> bool:
                def answer() -> None:
                    channel.sendall(b"ok\n")
                    channel.send_exit_status(0)
                    channel.close()

                threading.Timer(0.01, answer).start()
                return True

        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(sock)
            transport.add_server_key(self.key)
            transport.start_server(server=Interface())
            self.transports.append(transport)

    def known_hosts(self, path: Path) -> Path:
        path.write_text(f"[127.0.0.1]:{self.port} ssh-rsa {self.key.get_base64()}\n")
        return path

    def close(self) -> None:
        self.listener.close()
        for transport in self.transports:
            transport.close()


@pytest.fixture
def otp_server() -> Iterator[_OTPServer]:
    server = _OTPServer()
    yield server
    server.close()


class _Terminal:
    def isatty(self) -> bool:
        return True


def test_an_interactive_login_asks_on_the_terminal_once_and_keeps_the_connection(
    otp_server: _OTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_home_keys: Path
) -> None:
    import conveyor.hosts._sshsetup as setup

    asked: list[str] = []
    answers = {"Password:": "s3cret", "Verification code:": "123456"}

    def fake_getpass(prompt: str) -> str:
        asked.append(prompt)
        return next(v for k, v in answers.items() if k in prompt)

    monkeypatch.setattr(setup.getpass, "getpass", fake_getpass)
    monkeypatch.setattr(setup.sys, "stdin", _Terminal())
    settings = {
        "type": "ssh",
        "host": "127.0.0.1",
        "port": otp_server.port,
        "user": "alice",
        "ssh_config": None,
        "allow_agent": False,
        "look_for_keys": False,
        "known_hosts": str(otp_server.known_hosts(tmp_path / "known_hosts")),
        "work_dir": "/tmp/unused",
        "interactive": True,
    }
    host = SSHHost.from_config("otp", SSHWorkerConfig.model_validate(settings), pool=HostPool())
    assert host.execute(["anything"]).stdout == "ok\n"
    assert host.execute(["again"]).stdout == "ok\n"
    label = f"[alice@127.0.0.1:{otp_server.port}]"
    assert asked == [f"{label} Password: ", f"{label} Verification code: "]
    assert otp_server.logins == 1
    assert host.connection.stats["connections"] == 1
    host.close()


def test_a_daemon_never_prompts_and_says_how_to_log_in(
    otp_server: _OTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_home_keys: Path
) -> None:
    import conveyor.hosts._sshsetup as setup

    def no_prompt(prompt: str) -> str:
        raise AssertionError(f"prompted: {prompt}")

    monkeypatch.setattr(setup.getpass, "getpass", no_prompt)
    base = {
        "type": "ssh",
        "host": "127.0.0.1",
        "port": otp_server.port,
        "user": "alice",
        "ssh_config": None,
        "allow_agent": False,
        "look_for_keys": False,
        "known_hosts": str(otp_server.known_hosts(tmp_path / "known_hosts")),
        "work_dir": "/tmp/unused",
    }
    # interactive, but no terminal (a daemon): refused, with the way out
    interactive = SSHWorkerConfig.model_validate({**base, "interactive": True})
    host = SSHHost.from_config("otp", interactive, pool=HostPool())
    with pytest.raises(SSHAuthError, match=r"interactive: true.*foreground"):
        host.execute(["true"])
    host.close()
    assert otp_server.logins == 0


def test_the_agents_key_logs_in(
    sshd: Service, work: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_home_keys: Path
) -> None:
    if shutil.which("ssh-agent") is None:
        service_missing("ssh-agent is not installed (Debian: openssh-client)")
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 5
        while not sock.exists():
            assert time.monotonic() < deadline, "ssh-agent did not start"
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", sshd.key], env=env, check=True, timeout=10)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        host = sshd.host(work, identity_file=[], allow_agent=True)
        assert host.execute(["id", "-un"]).stdout.strip() == sshd.user
        host.close()
        monkeypatch.delenv("SSH_AUTH_SOCK")
        without = sshd.host(work, identity_file=[], allow_agent=True)
        with pytest.raises(SSHAuthError, match=r"cannot log in.*no key to offer"):
            without.execute(["true"])
        without.close()
    finally:
        agent.terminate()
        agent.wait(10)
