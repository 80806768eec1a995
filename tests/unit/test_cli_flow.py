"""``conveyor flow ...`` in this process (typer's CliRunner), on throwaway projects with
real flows: tables and JSON agree with the database, the graph is drawn as a tree and
as Mermaid, and flows are paused, resumed, cancelled, rerun, deleted and waited for.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from jobflow import Flow
from typer.testing import CliRunner, Result

from conveyor import Runner, api, submit_flow
from conveyor.cli import app
from conveyor.cli.render_flows import mermaid
from conveyor.models import FlowDoc, JobDoc
from conveyor.project import Project
from conveyor.states import FlowState, JobState
from conveyor.testing import jobs as J

S = JobState


def invoke(*args: str, input: str | None = None) -> Result:  # noqa: A002 - CliRunner's name
    return CliRunner().invoke(app, list(args), input=input)


def diamond(name: str = "diamond") -> tuple[Flow, list[int]]:
    """start → left, right → combine; the db ids in that order."""
    start = J.add(1, 2)
    left = J.add(start.output, 10)
    right = J.add(start.output, 20)
    combine = J.add(left.output, right.output)
    flow = Flow([start, left, right, combine], name=name)
    submit_flow(flow)
    ids = [api.list_jobs(uuids=[j.uuid])[0].db_id for j in (start, left, right, combine)]
    return flow, ids


def states(ids: list[int]) -> list[JobState]:
    return [api.get_job(i).state for i in ids]


def test_flow_list_and_info_agree_with_the_database(project: Project) -> None:
    flow, ids = diamond()
    other = submit_flow(Flow([J.add(1, 1)], name="single"))
    assert Runner().run_all_jobs(max_seconds=120)

    table = invoke("flow", "list")
    assert table.exit_code == 0, table.output
    rows = re.findall(r"^(\S{36})\s+(\S+)\s+([A-Z]+)\s+(\d+)\s", table.stdout, re.M)
    as_json = json.loads(invoke("flow", "list", "--json").stdout)
    assert [(r[0], r[2], int(r[3])) for r in rows] == [
        (f["uuid"], f["state"], len(f["job_uuids"])) for f in as_json
    ]
    assert [f["name"] for f in as_json] == ["single", "diamond"]  # newest first
    assert "2 flows shown" in table.stdout
    assert [
        f["name"] for f in json.loads(invoke("flow", "list", "--json", "--name", "dia*").stdout)
    ] == ["diamond"]
    assert json.loads(invoke("flow", "list", "--json", "-s", "failed").stdout) == []
    assert invoke("flow", "list", "-s", "done").exit_code == 1

    info = invoke("flow", "info", str(ids[2]))  # by a job's db id
    assert info.exit_code == 0, info.output
    assert info.stdout.startswith("Flow diamond\n")
    assert re.search(rf"^uuid\s+{flow.uuid}$", info.stdout, re.M)
    assert re.search(r"^state\s+COMPLETED$", info.stdout, re.M)
    assert re.search(r"^jobs\s+COMPLETED 4$", info.stdout, re.M)
    data = json.loads(invoke("flow", "info", flow.uuid, "--json").stdout)
    assert data["uuid"] == flow.uuid
    assert data["state"] == "COMPLETED"
    assert data["counts"] == {"COMPLETED": 4}
    assert sorted(d["db_id"] for d in data["jobs"]) == sorted(ids)
    assert str(other[0]) not in {str(d["db_id"]) for d in data["jobs"]}

    missing = invoke("flow", "info", "no-such-flow")
    assert missing.exit_code == 1
    assert missing.stderr.strip() == "error: no flow with uuid no-such-flow"


def test_flow_graph_as_a_tree_and_as_mermaid(project: Project, tmp_path: Path) -> None:
    flow, ids = diamond('say "hi" <now> #1')
    tree = invoke("flow", "graph", flow.uuid)
    assert tree.exit_code == 0, tree.output
    lines = tree.stdout.splitlines()
    assert lines[0] == f'Flow say "hi" <now> #1 {flow.uuid} READY'
    start, left, right, combine = ids
    body = [re.sub(r"^[\s│├└─]+", "", line) for line in lines[1:]]
    assert body == [
        f"{start} add READY",
        f"{left} add WAITING",
        f"{combine} add WAITING",
        f"{right} add WAITING",
        f"{combine} add (see above)",
    ]
    depth = [len(line) - len(re.sub(r"^[\s│├└─]+", "", line)) for line in lines[1:]]
    assert depth[0] < depth[1] < depth[2]
    assert depth[3] == depth[1]

    target = tmp_path / "graph.mmd"
    written = invoke("flow", "graph", str(start), "--mermaid", str(target))
    assert written.exit_code == 0, written.output
    assert f"Wrote the Mermaid flowchart to {target}" in written.stderr
    text = target.read_text()
    assert text.startswith("flowchart TD\n")
    assert f"    %% flow say #quot;hi#quot; #lt;now#gt; #35;1 {flow.uuid}" in text
    for db_id in ids:
        assert f'    j{db_id}["{db_id} add: ' in text
    edges = set(re.findall(r"^    j(\d+) --> j(\d+)$", text, re.M))
    assert edges == {
        (str(start), str(left)),
        (str(start), str(right)),
        (str(left), str(combine)),
        (str(right), str(combine)),
    }
    assert '"' not in "".join(re.findall(r'\["(.*)"\]', text))  # labels stay quoted
    stdout_only = invoke("flow", "graph", str(start), "--mermaid", "-")
    assert stdout_only.stdout == text


def test_mermaid_labels_are_safe() -> None:
    flow = FlowDoc(uuid="f", name='a"b')
    doc = JobDoc(
        db_id=7,
        uuid="u",
        flow_uuid="f",
        name='x"]; click j7 call evil()\n%%',
        state=S.FAILED,
        job={},
        worker="local",
    )
    text = mermaid(flow, [doc])
    (node,) = [line for line in text.splitlines() if line.startswith("    j7[")]
    assert node == '    j7["7 x#quot;]; click j7 call evil() %%: FAILED"]'
    assert "    class j7 FAILED" in text


def test_flow_pause_resume_cancel(project: Project) -> None:
    flow, ids = diamond()
    paused = invoke("flow", "pause", flow.uuid)
    assert paused.exit_code == 0, paused.output
    assert paused.stdout.splitlines() == [
        *[f"job {i} add: PAUSED" for i in sorted(ids)],
        f"Flow {flow.uuid}: PAUSED",
    ]
    again = invoke("flow", "pause", flow.uuid)
    assert "No job of flow" in again.stderr
    resumed = invoke("flow", "resume", str(ids[0]), "--json")
    assert resumed.exit_code == 0, resumed.output
    assert {row["db_id"]: row["state"] for row in json.loads(resumed.stdout)} == {
        ids[0]: "READY",
        ids[1]: "WAITING",
        ids[2]: "WAITING",
        ids[3]: "WAITING",
    }
    cancelled = invoke("flow", "cancel", flow.uuid)
    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.stdout.splitlines()[-1] == f"Flow {flow.uuid}: CANCELLED"
    assert states(ids) == [S.CANCELLED] * 4


def test_flow_rerun_what_failed_then_everything(project: Project) -> None:
    bad = J.fail("once")
    child = J.add(bad.output, 1)
    flow = Flow([bad, child], name="failing")
    submit_flow(flow)
    ids = [api.list_jobs(uuids=[j.uuid])[0].db_id for j in (bad, child)]
    assert Runner().run_all_jobs(max_seconds=120)
    assert api.get_flow(flow.uuid).state is FlowState.FAILED
    assert states(ids) == [S.FAILED, S.WAITING]

    rerun = invoke("flow", "rerun", flow.uuid)
    assert rerun.exit_code == 0, rerun.output
    assert rerun.stdout.splitlines() == [f"job {ids[0]} fail: READY", f"Flow {flow.uuid}: READY"]
    api.cancel(ids)
    everything = invoke("flow", "rerun", flow.uuid, "--all", "--json")
    assert everything.exit_code == 0, everything.output
    assert [row["state"] for row in json.loads(everything.stdout)] == ["READY", "WAITING"]


def test_flow_delete_refuses_queued_jobs_then_deletes_everything(project: Project) -> None:
    (db_id,) = submit_flow(J.sleep_job(60))
    assert Runner().run_one_job(db_id, target_state=S.RUNNING, max_seconds=60)
    run_dir = Path(str(api.get_job(db_id).remote.run_dir))
    refused = invoke("flow", "delete", str(db_id))
    assert refused.exit_code == 1
    assert "has jobs in their queue" in refused.stderr
    assert "cancel the flow first" in refused.stderr
    assert invoke("flow", "cancel", str(db_id)).exit_code == 0
    uuid = api.get_job(db_id).flow_uuid
    deleted = invoke("flow", "delete", uuid, "--files")
    assert deleted.exit_code == 0, deleted.output
    assert deleted.stdout.splitlines() == [
        f"job {db_id} sleep_job: deleted (and its flow); removed run dir {run_dir}",
        f"Flow {uuid}: deleted",
    ]
    assert not run_dir.exists()
    assert api.list_flows() == []


def test_flow_commands_confirm_many_jobs(project: Project) -> None:
    jobs = [J.add(i, i) for i in range(11)]
    flow = Flow(jobs, name="wide")
    submit_flow(flow)
    refused = invoke("flow", "pause", flow.uuid)
    assert refused.exit_code == 1
    assert "this would pause 11 jobs (more than 10); pass --yes" in refused.stderr
    assert api.get_flow(flow.uuid).state is FlowState.READY
    assert invoke("flow", "pause", flow.uuid, "--yes").exit_code == 0
    assert api.get_flow(flow.uuid).state is FlowState.PAUSED


def test_flow_wait(project: Project) -> None:
    flow, _ = diamond()
    timeout = invoke("flow", "wait", flow.uuid, "--timeout", "0")
    assert timeout.exit_code == 1
    assert f"after 0 s, flow {flow.uuid} is READY, not finished" in timeout.stderr
    assert Runner().run_all_jobs(max_seconds=120)
    done = invoke("flow", "wait", flow.uuid, "--interval", "0.05")
    assert done.exit_code == 0, done.output
    assert "4/4" in done.stdout
    assert done.stdout.splitlines()[-1] == "Flow diamond: COMPLETED (COMPLETED 4)"

    failing = Flow([J.fail("no")], name="bad")
    submit_flow(failing)
    assert Runner().run_all_jobs(max_seconds=120)
    bad = invoke("flow", "wait", failing.uuid)
    assert bad.exit_code == 1
    assert bad.stdout.splitlines()[-1] == "Flow bad: FAILED (FAILED 1)"


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["flow", "list"], "newest first"),
        (["flow", "graph"], "Mermaid"),
        (["flow", "wait"], "progress bar"),
        (["flow", "rerun"], "--all"),
        (["flow", "delete"], "All or nothing"),
    ],
)
def test_flow_help(args: list[str], text: str) -> None:
    result = invoke(*args, "--help")
    assert result.exit_code == 0
    assert text in result.stdout
