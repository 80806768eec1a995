"""LocalHost: commands without a shell, atomic writes, and rmtree that stays in its root."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from conveyor.exceptions import CommandError, CommandTimeoutError, HostError
from conveyor.hosts import CommandResult, Host, LocalHost


@pytest.fixture
def host(tmp_path: Path) -> LocalHost:
    root = tmp_path / "work"
    root.mkdir()
    return LocalHost(name="test-local", root=str(root))


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_is_a_host_with_an_absolute_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    local = LocalHost(root="rel")
    assert isinstance(local, Host)
    assert local.root == str(tmp_path / "rel")
    assert local.name == "localhost"


def test_execute_exit_code_and_output(host: LocalHost) -> None:
    result = host.execute(
        py("import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)")
    )
    assert isinstance(result, CommandResult)
    assert result.exit_code == 3
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert result.host == "test-local"
    assert not result.ok
    with pytest.raises(CommandError, match="exited with code 3"):
        result.check()
    assert host.execute(py("pass")).check().ok


def test_execute_does_not_use_a_shell(host: LocalHost) -> None:
    result = host.execute(["echo", "$(id)", "`id`", "a;b", "*"])
    assert result.stdout == "$(id) `id` a;b *\n"


def test_execute_stdin_env_and_cwd(host: LocalHost, tmp_path: Path) -> None:
    code = "import os, sys; print(sys.stdin.read().upper(), os.environ['CONVEYOR_T'], os.getcwd())"
    result = host.execute(py(code), stdin="hello", env={"CONVEYOR_T": "v a l"}, cwd=str(tmp_path))
    assert result.stdout.split() == ["HELLO", "v", "a", "l", str(tmp_path)]
    # The rest of the environment is kept.
    result = host.execute(py("import os; print(os.environ['PATH'])"), env={"X": "1"})
    assert result.stdout.strip() == os.environ["PATH"]


def test_execute_replaces_undecodable_output(host: LocalHost) -> None:
    result = host.execute(py("import sys; sys.stdout.buffer.write(b'a\\xffb')"))
    assert result.stdout == "a\ufffdb"


def test_execute_timeout(host: LocalHost) -> None:
    with pytest.raises(CommandTimeoutError, match=r"within 0\.5 s") as info:
        host.execute(py("import time; time.sleep(30)"), timeout=0.5)
    assert info.value.argv[0] == sys.executable
    assert info.value.timeout == 0.5


def test_execute_missing_program(host: LocalHost) -> None:
    with pytest.raises(HostError, match=r"could not start.*no-such-program-xyz"):
        host.execute(["no-such-program-xyz", "arg"])


def test_execute_not_executable(host: LocalHost, tmp_path: Path) -> None:
    script = tmp_path / "not-exec"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(HostError, match="could not start"):
        host.execute([str(script)])


def test_execute_missing_cwd(host: LocalHost, tmp_path: Path) -> None:
    with pytest.raises(HostError, match=r"could not start.*missing-dir"):
        host.execute(["true"], cwd=str(tmp_path / "missing-dir"))


def test_execute_empty_argv(host: LocalHost) -> None:
    with pytest.raises(HostError, match="empty"):
        host.execute([])


def test_write_and_read_bytes(host: LocalHost) -> None:
    path = f"{host.root}/file.bin"
    host.write_bytes(path, b"one")
    host.write_bytes(path, b"\x00two")
    assert host.read_bytes(path) == b"\x00two"
    # Nothing but the file itself is left behind.
    assert host.listdir(host.root) == ["file.bin"]


def test_write_bytes_respects_the_umask(host: LocalHost) -> None:
    path = f"{host.root}/file"
    old = os.umask(0o027)
    try:
        host.write_bytes(path, b"x")
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_write_bytes_into_a_missing_dir(host: LocalHost) -> None:
    with pytest.raises(FileNotFoundError):
        host.write_bytes(f"{host.root}/missing/file", b"x")
    assert host.listdir(host.root) == []


def test_write_files(host: LocalHost) -> None:
    host.write_files({f"{host.root}/a": b"1", f"{host.root}/b": b"2"})
    assert host.listdir(host.root) == ["a", "b"]


def test_read_missing(host: LocalHost) -> None:
    with pytest.raises(FileNotFoundError):
        host.read_bytes(f"{host.root}/missing")


def test_read_a_directory_is_a_host_error(host: LocalHost) -> None:
    with pytest.raises(HostError, match="could not read"):
        host.read_bytes(host.root)


def test_put_and_get(host: LocalHost, tmp_path: Path) -> None:
    local = tmp_path / "local.txt"
    local.write_bytes(b"payload")
    remote = f"{host.root}/remote.txt"
    host.put(str(local), remote)
    back = tmp_path / "back.txt"
    host.get(remote, str(back))
    assert back.read_bytes() == b"payload"
    with pytest.raises(FileNotFoundError):
        host.get(f"{host.root}/missing", str(back))


def test_mkdir_exists_listdir_remove(host: LocalHost) -> None:
    deep = f"{host.root}/a/b/c"
    host.mkdir(deep)
    host.mkdir(deep)
    assert host.exists(deep)
    host.write_bytes(f"{deep}/z", b"")
    host.write_bytes(f"{deep}/y", b"")
    assert host.listdir(deep) == ["y", "z"]
    host.remove(f"{deep}/z")
    host.remove(f"{deep}/z")
    assert not host.exists(f"{deep}/z")
    assert host.listdir(deep) == ["y"]
    with pytest.raises(FileNotFoundError):
        host.listdir(f"{host.root}/missing")


def test_rmtree_inside_root(host: LocalHost) -> None:
    tree = f"{host.root}/run/sub"
    host.mkdir(tree)
    host.write_bytes(f"{tree}/f", b"x")
    host.rmtree(f"{host.root}/run")
    assert not host.exists(f"{host.root}/run")
    host.rmtree(f"{host.root}/run")  # already gone: fine


@pytest.mark.parametrize("relative", ["", "/", "/..", "/../other", "/run/../.."])
def test_rmtree_refuses_the_root_and_outside(host: LocalHost, relative: str) -> None:
    with pytest.raises(HostError, match="refusing to remove"):
        host.rmtree(host.root + relative)
    assert os.path.isdir(host.root)


def test_rmtree_does_not_follow_a_symlink_outside(host: LocalHost, tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep").write_text("x")
    os.symlink(outside, f"{host.root}/link")
    for path in (f"{host.root}/link", f"{host.root}/link/"):
        with pytest.raises(HostError, match="outside"):
            host.rmtree(path)
    os.mkdir(outside / "sub")
    with pytest.raises(HostError, match="outside"):
        host.rmtree(f"{host.root}/link/sub")
    assert (outside / "keep").read_text() == "x"
    assert (outside / "sub").is_dir()


def test_rmtree_removes_links_inside_a_tree_not_their_targets(
    host: LocalHost, tmp_path: Path
) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep").write_text("x")
    host.mkdir(f"{host.root}/run")
    os.symlink(outside, f"{host.root}/run/link")
    host.rmtree(f"{host.root}/run")
    assert not host.exists(f"{host.root}/run")
    assert (outside / "keep").read_text() == "x"


def test_rmtree_refuses_a_symlink_inside(host: LocalHost) -> None:
    host.mkdir(f"{host.root}/real")
    os.symlink(f"{host.root}/real", f"{host.root}/alias")
    with pytest.raises(HostError, match="symbolic link"):
        host.rmtree(f"{host.root}/alias")
    assert host.exists(f"{host.root}/real")


def test_rmtree_through_a_symlinked_root(tmp_path: Path) -> None:
    real = tmp_path / "real-work"
    (real / "run").mkdir(parents=True)
    os.symlink(real, tmp_path / "work")
    host = LocalHost(root=str(tmp_path / "work"))
    host.rmtree(f"{host.root}/run")
    assert not (real / "run").exists()
