"""What a person reads after inference: `evc infer results` (boxes and keypoints) and the
table of what each model found per image that ends `evc run` and `evc run show`.

The jobs run through EVC's own runner against the fake fleet of the dashboard tests, whose
nodes answer a face with two keypoints on every image and a person on every other one.
"""

import json

import pytest

from evc.config import init_workspace
from evc.infer import nodes, runner
from evc.run import config as scenario
from evc.run import execute
from tests.conftest import evc
from tests.unit.grafana_support import FakeFleet, populate


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """(workspace env, run id, job id): a run-config whose one step is an inference job."""
    root = tmp_path_factory.mktemp("tables")
    ws = init_workspace(root / "ws")
    with pytest.MonkeyPatch.context() as mp:
        populate(ws, mp, root / "data")
        fake = FakeFleet()
        mp.setattr(runner, "run_playbook", fake)
        mp.setattr(nodes, "run_playbook", fake)
        path = root / "look.yaml"
        path.write_text(f"""\
version: 1
steps:
  - name: look
    do: infer.run
    target: node1
    with: {{model: "faces:1.1", data: {root / "data"}, shard_size: 2}}
""")  # fmt: skip
        s = scenario.load(path, ws=ws)
        run = execute.execute(ws, s, s.steps)
    assert run["state"] == "failed"  # corrupt.jpg fails: the job is partial
    return {"EVC_HOME": str(ws.root), "COLUMNS": "200"}, run["id"], run["steps"][0]["detail"]["id"]


def results(env, job) -> dict[str, dict]:
    rows = json.loads(evc("infer", "results", job, "--json", env=env, check=0).stdout)
    return {r["item"]: r for r in rows}


def test_infer_results_show_boxes_and_keypoints(ran):
    env, _, job = ran
    rows = results(env, job)
    dets = [d for r in rows.values() for d in r["detections"]]
    faces = [d for d in dets if d["label"] == "face"]
    assert len(faces) == 12 and all(
        d["keypoints"] == [{"name": "right_eye", "x": 203.3, "y": 100.9},
                           {"name": "left_eye", "x": 247.4, "y": 108.2}] for d in faces
    )  # fmt: skip
    assert {d["keypoints"] for d in dets if d["label"] == "person"} == {None}
    table = evc("infer", "results", job, env=env, check=0).stdout
    assert "face 0.91 at 177,66 95x95" in table and "right_eye 203,101, left_eye 247,108" in table
    csv = evc("infer", "results", job, "--csv", env=env, check=0).stdout.splitlines()
    assert csv[0].endswith(",keypoints") and any('""name"": ""right_eye""' in c for c in csv)


def test_run_ends_with_what_was_found_per_image(ran):
    env, run_id, job = ran
    shown = evc("run", "show", run_id, env=env, check=0).stdout
    table = shown[shown.index("found per image") :]
    assert "faces:1.1" in table and job in table
    cells = [ln.split("│")[1:3] for ln in table.splitlines() if ln.startswith("│")]
    lines = {item.strip(): text for item, text in cells if item.strip()}
    rows = results(env, job)
    assert set(lines) == set(rows)
    for item, row in rows.items():
        if row["state"] == "error":
            assert "error: cannot identify image file" in lines[item]
        elif len(row["detections"]) == 1:  # one detection: its box
            assert "face 0.91 at 177,66 95x95" in lines[item]
        else:  # more: labels with counts
            assert "1 face, 1 person" in lines[item]
