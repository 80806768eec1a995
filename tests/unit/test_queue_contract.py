"""The contract every queue adapter keeps, run against each one in ``ADAPTERS``.

An adapter whose module is not written yet is skipped with the reason. The checks:

* ``render`` returns text files, the job script among them, holding the token and the
  payload; hostile values (blanks, quotes, ``$(...)``, backticks, ``;``, newlines ...) in
  the run dir, job names, environment values and resources are either refused with a
  QueueError or made harmless: run with bash, the script executes nothing it should not
  and hands the payload the exact values, and no value adds a directive line;
* every command builder returns a non-empty list of strings, and refuses hostile ids;
* every parser raises nothing but QueueParseError, whatever it is fed: garbage, and the
  adapter's recorded outputs (``tests/fixtures/queue/NAME``) cut, shuffled and corrupted;
* an empty status output means "no jobs" (or is a QueueParseError).
"""

from __future__ import annotations

import contextlib
import importlib
import random
import re
import shlex
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from conveyor.exceptions import ConfigError, QueueError, QueueParseError
from conveyor.queue import ADAPTERS, QueueAdapter, QueueJobInfo, SubmitSpec, get_adapter
from conveyor.queue.base import EXIT_CODE_FILE
from conveyor.queue.resources import parse_resources

FIXTURES = Path(__file__).parents[1] / "fixtures" / "queue"
TOKEN = "7-0123456789ab"
IDS = ["123", "456"]
#: Lines the schedulers read as directives in a job script.
DIRECTIVE = re.compile(r"^\s*#(SBATCH|PBS|\$|BSUB|COBALT|@)")
MARK = "INJECTED"


def _adapter_class(name: str) -> type[QueueAdapter]:
    module_name, class_name = ADAPTERS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            pytest.skip(f"{module_name} is not written yet")
        raise
    cls: type[QueueAdapter] = getattr(module, class_name)
    return cls


@pytest.fixture(params=sorted(ADAPTERS))
def adapter(request: pytest.FixtureRequest) -> QueueAdapter:
    cls = _adapter_class(request.param)
    return cls()


def make_spec(run_dir: str, **changes: Any) -> SubmitSpec:
    resources = changes.pop("resources", {})
    values: dict[str, Any] = {
        "run_dir": run_dir,
        "job_name": "add",
        "submit_token": TOKEN,
        # env prints the environment; its NAME=VALUE arguments are added to it first,
        # so the output shows the run dir as the payload received it, too.
        "command": ["env", "-0", f"CONTRACT_RUN_DIR={run_dir}"],
        "env": {"CONTRACT_VALUE": "plain"},
    }
    values.update(changes)
    return SubmitSpec(**values, resources=parse_resources(resources))


def script_of(adapter: QueueAdapter, files: dict[str, str], spec: SubmitSpec) -> str:
    """The rendered file that runs the payload: a script holding it."""
    payload = shlex.join(spec.command)
    scripts = [name for name, text in files.items() if text.startswith("#!") and payload in text]
    assert scripts, f"{adapter.name}: no rendered script holds the payload {payload!r}"
    return scripts[0]


# --- the basics -------------------------------------------------------------------------


def test_identity(adapter: QueueAdapter) -> None:
    name = next(n for n, target in ADAPTERS.items() if target.endswith(type(adapter).__name__))
    assert adapter.name == name
    assert isinstance(adapter.script_name, str)
    assert adapter.script_name
    assert "/" not in adapter.script_name
    assert isinstance(adapter.missing_grace, timedelta)
    assert adapter.missing_grace >= timedelta(0)
    with pytest.raises(ConfigError, match=f"queue_options for '{name}'"):
        get_adapter(name, {"no_such_option": 1})


def test_render_returns_the_script_with_token_and_payload(adapter: QueueAdapter) -> None:
    spec = make_spec("/work/ab/abcd_1")
    files = adapter.render(spec)
    assert isinstance(files, dict)
    assert adapter.script_name in files
    for name, text in files.items():
        assert isinstance(name, str)
        assert name
        assert "/" not in name
        assert isinstance(text, str)
        assert text.endswith("\n")
    assert any(TOKEN in text for text in files.values())
    script = files[script_of(adapter, files, spec)]
    assert TOKEN in script
    assert "/work/ab/abcd_1" in script


def test_command_builders_return_argument_lists(adapter: QueueAdapter) -> None:
    spec = make_spec("/work/ab/abcd_1")
    argvs: list[list[str] | None] = [
        adapter.submit_command(spec),
        adapter.status_command(IDS),
        adapter.status_command(IDS[:1]),
        adapter.find_by_token_command(TOKEN),
        adapter.cancel_command(IDS[0]),
        adapter.accounting_command(IDS[0]),
    ]
    for build in (adapter.hold_command, adapter.release_command):
        with contextlib.suppress(QueueError):  # a system that cannot hold says so
            argvs.append(build(IDS[0]))
    for argv in argvs:
        if argv is None:  # only accounting may be missing
            continue
        assert isinstance(argv, list)
        assert argv
        assert all(isinstance(arg, str) for arg in argv)
        assert re.fullmatch(r"[A-Za-z0-9_./-]+", argv[0]), argv
    assert argvs[-1] is None or isinstance(argvs[-1], list)


@pytest.mark.parametrize(
    "bad", ["", "1; rm -rf /", "--all", "-1", "$(touch x)", "1\n2", "1 2", "`x`", "../1"]
)
def test_hostile_ids_are_refused(adapter: QueueAdapter, bad: str) -> None:
    builders: list[Callable[[], object]] = [
        lambda: adapter.status_command([IDS[0], bad]),
        lambda: adapter.cancel_command(bad),
        lambda: adapter.hold_command(bad),
        lambda: adapter.release_command(bad),
        lambda: adapter.accounting_command(bad),
    ]
    for build in builders:
        try:
            argv = build()
        except QueueError:
            continue
        # Only an adapter without accounting may answer None.
        assert argv is None, f"{adapter.name} accepted the queue id {bad!r}: {argv!r}"


@pytest.mark.parametrize("token", ["", "a b", "$(x)", "-x", "a;b", "a\nb"])
def test_hostile_tokens_are_refused(adapter: QueueAdapter, token: str) -> None:
    with pytest.raises(QueueError):
        adapter.render(make_spec("/work/r", submit_token=token))
    with pytest.raises(QueueError):
        adapter.submit_command(make_spec("/work/r", submit_token=token))


@pytest.mark.parametrize("run_dir", ["relative", "", "~/r"])
def test_relative_run_dirs_are_refused(adapter: QueueAdapter, run_dir: str) -> None:
    with pytest.raises(QueueError):
        adapter.render(make_spec(run_dir))
    with pytest.raises(QueueError):
        adapter.submit_command(make_spec(run_dir))


# --- hostile values ---------------------------------------------------------------------

HOSTILE = {
    "space": "with space",
    "single-quote": "it's",
    "double-quote": 'say "hi"',
    "subst": "$(touch {pwned})",
    "backtick": "`touch {pwned}`",
    "semicolon": "x; touch {pwned}",
    "newline": "x\n" + MARK + "=1 touch {pwned}",
    "backslash": "back\\slash\\",
    "hash": "a # b",
    "percent": "100%j %%",
    "operators": "a|b&c>d<e",
    "dollar": "$HOME ${{PATH}}",
    "star": "*",
}
FIELDS = [
    "run_dir",
    "spec.job_name",
    "env",
    "job_name",
    "queue",
    "account",
    "qos",
    "email",
    "passthrough",
]


def hostile_spec(adapter: QueueAdapter, tmp: Path, field: str, value: str) -> SubmitSpec:
    run_dir = tmp / (f"run {value}" if field == "run_dir" else "run")
    run_dir.mkdir(parents=True, exist_ok=True)
    changes: dict[str, Any] = {}
    if field == "spec.job_name":
        changes["job_name"] = value
    elif field == "env":
        changes["env"] = {"CONTRACT_VALUE": value}
    elif field == "passthrough":
        changes["resources"] = {adapter.name: {"comment": value}}
    elif field != "run_dir":
        changes["resources"] = {field: value}
    return make_spec(str(run_dir), **changes)


def directive_counts(files: dict[str, str], script: str) -> dict[str, int]:
    """Directive lines per file: in the script, lines a scheduler reads; in other files
    (a submit description), every line."""
    return {
        name: sum(1 for line in text.splitlines() if name != script or DIRECTIVE.match(line))
        for name, text in files.items()
    }


def run_script(path: Path, cwd: Path) -> tuple[int, dict[str, str]]:
    done = subprocess.run(
        ["bash", str(path)],
        cwd=cwd,
        capture_output=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)},
    )
    env = dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    return done.returncode, env


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_values_are_quoted_or_refused(
    adapter: QueueAdapter, tmp_path: Path, field: str, kind: str
) -> None:
    pwned = tmp_path / "PWNED"
    value = HOSTILE[kind].format(pwned=pwned)
    try:
        benign_spec = hostile_spec(adapter, tmp_path / "benign", field, "benign")
        benign = adapter.render(benign_spec)
    except QueueError as exc:
        pytest.skip(f"{adapter.name} takes no plain value in {field}: {exc}")
    try:
        spec = hostile_spec(adapter, tmp_path / "hostile", field, value)
        files = adapter.render(spec)
    except QueueError:
        return  # refused, naming the problem: fine
    script = script_of(adapter, files, spec)
    # No value adds or removes a directive (or a line of a submit description).
    benign_script = script_of(adapter, benign, benign_spec)
    assert benign_script == script
    assert directive_counts(files, script) == directive_counts(benign, benign_script)
    for name, text in files.items():
        for line in text.splitlines():
            head = DIRECTIVE.sub("", line) if name == script else line
            if name == script and not DIRECTIVE.match(line):
                continue
            assert not head.lstrip().startswith(MARK), f"{name}: injected line {line!r}"
    # Run with bash, the script runs nothing it should not, and the values arrive intact.
    run_dir = Path(spec.run_dir)
    path = run_dir / script
    for name, text in files.items():
        (run_dir / name).write_text(text)
    code, env = run_script(path, tmp_path)
    assert not pwned.exists(), f"{adapter.name}: {field}={value!r} ran a command"
    assert code == 0, f"{adapter.name}: the script failed with {field}={value!r}"
    assert (run_dir / EXIT_CODE_FILE).read_text() == "0\n"
    assert env["CONTRACT_RUN_DIR"] == spec.run_dir
    assert env["PWD"] == spec.run_dir
    assert env["CONTRACT_VALUE"] == (value if field == "env" else "plain")


@pytest.mark.parametrize("extra", ["a\nb", "x\r", "ok\n" + MARK])
def test_extra_directives_with_line_breaks_are_refused(adapter: QueueAdapter, extra: str) -> None:
    try:
        files = adapter.render(make_spec("/work/r", resources={"extra_directives": [extra]}))
    except QueueError:
        return
    # Not refused: then not written either (the shell adapter ignores resources).
    assert not any(extra in text for text in files.values())


# --- parsers ----------------------------------------------------------------------------


def garbage(rng: random.Random) -> list[str]:
    alphabet = "abcXYZ0123456789 .:;|_-[]%()<>=\"'\\/\t\n\x00\xff\u2028{}"
    fixed = [
        "",
        "\n",
        " \n \n",
        "\x00",
        "\ufeff",
        "-" * 10000,
        "1" * 5000,
        "<?xml version='1.0'?><job_info><queue_info><job_list",
        '{"not": "this"}',
        "Traceback (most recent call last):\n  File x\n",
        "123\n456\n",
        "123|\n",
        "Job Id: 123\n    job_state = \n",
    ]
    return fixed + [
        "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 200))) for _ in range(40)
    ]


def recorded_outputs(name: str) -> list[str]:
    folder = FIXTURES / name
    if not folder.is_dir():
        return []
    files = [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".stdout", ".stderr", ".txt", ".xml", ".out")
    ]
    return [p.read_text(errors="replace") for p in files]


def corrupted(text: str, rng: random.Random) -> list[str]:
    lines = text.splitlines(keepends=True)
    variants = [
        text[: rng.randrange(len(text) + 1)],
        text[rng.randrange(len(text) + 1) :],
        "".join(rng.sample(lines, len(lines))),
        "".join(line[: len(line) // 2] + "\n" for line in lines),
        text + text[: len(text) // 3],
    ]
    if text:
        chars = list(text)
        for _ in range(5):
            chars[rng.randrange(len(chars))] = rng.choice("|:.<>=\"'\n\t x9[]{}-")
        variants.append("".join(chars))
    return variants


def check_parsers(adapter: QueueAdapter, stdout: str, stderr: str, code: int) -> None:
    def attempt(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except QueueParseError:
            return None

    result = attempt(lambda: adapter.parse_status_output(code, stdout, stderr, IDS))
    if result is not None:
        assert isinstance(result, dict)
        assert set(result) <= set(IDS), f"status answered about ids not asked: {set(result)}"
        assert all(isinstance(info, QueueJobInfo) for info in result.values())
    result = attempt(lambda: adapter.parse_submit_output(code, stdout, stderr))
    assert result is None or (isinstance(result, str) and result)
    result = attempt(lambda: adapter.parse_find_by_token(code, stdout, stderr, TOKEN))
    assert result is None or (isinstance(result, str) and result)
    result = attempt(lambda: adapter.parse_accounting_output(code, stdout, stderr, IDS[0]))
    assert result is None or isinstance(result, QueueJobInfo)


def test_parsers_raise_only_parse_errors_on_garbage(adapter: QueueAdapter) -> None:
    rng = random.Random(adapter.name)
    for text in garbage(rng):
        for code in (0, 1, 2, 127, -9):
            check_parsers(adapter, text, "", code)
            check_parsers(adapter, "", text, code)
            check_parsers(adapter, text, text, code)


def test_parsers_raise_only_parse_errors_on_corrupted_recordings(adapter: QueueAdapter) -> None:
    rng = random.Random(f"{adapter.name}-recorded")
    outputs = recorded_outputs(adapter.name)
    if not outputs:
        pytest.skip(f"no recorded outputs in {FIXTURES / adapter.name}")
    for text in outputs:
        for variant in [text, *corrupted(text, rng)]:
            for code in (0, 1):
                check_parsers(adapter, variant, "", code)


def test_empty_status_output_means_no_jobs(adapter: QueueAdapter) -> None:
    # A format that is never empty may call emptiness an error.
    with contextlib.suppress(QueueParseError):
        assert adapter.parse_status_output(0, "", "", IDS) == {}
