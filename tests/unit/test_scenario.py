"""Run-configs: schema, variables, anchors, did-you-mean, the plan, and steps == CLI."""

import json
import time
from pathlib import Path

import pytest

from evc import db as evcdb
from evc import devices, grafana
from evc.errors import UsageError
from evc.options import flag_of
from evc.progress import SILENT
from evc.resources import data_dir
from evc.run import capabilities as steps
from evc.run import config as scenario
from evc.run.variables import evaluate_when, parse_vars
from tests.conftest import evc

RUN_CFG = data_dir("run_cfg")


def write(tmp_path, text: str, name="s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def lab_like(ws):
    """Three devices in the lab's groups, enrolled without SSH (no facts, no Docker)."""
    db = evcdb.workspace_db(ws)
    rows = [
        {"name": f"node{i}", "host": f"10.77.0.{i}", "groups": ["lab", f"profile_{p}"],
         "labels": {"profile": p}, "added_at": time.time()}
        for i, p in ((1, "rpi"), (2, "nuc"), (3, "orin"))
    ]  # fmt: skip
    db["devices"].insert_all(evcdb.device_row(r) for r in rows)
    devices.regenerate_inventory(ws, db)
    return ws


@pytest.mark.parametrize("path", sorted(RUN_CFG.glob("*.yaml")), ids=lambda p: p.name)
def test_every_bundled_run_config_validates(path):
    s = scenario.load(path)
    assert s.steps and all(
        step.kind in steps.CAPABILITIES or step.kind == "devices" for step in s.steps
    )


def test_bundled_run_configs_resolve_on_a_lab_like_workspace(workspace):
    lab_like(workspace)
    for name in (
        "demo.yaml",
        "rolling-update.yaml",
        "retire-node.yaml",
        "fleet.yaml",
        "mixed-fleet.yaml",
    ):
        s = scenario.load(RUN_CFG / name, ws=workspace)
        assert s.targets_checked
        assert all(step.hosts for step in s.steps if step.target is not None and step.run)


def test_demo_does_what_the_issue_asks():
    s = scenario.load(RUN_CFG / "demo.yaml")
    kinds = [step.kind for step in s.steps]
    for kind in ("registry.up", "cert.push", "model.build", "model.push", "model.deploy",
                 "infer.run", "logs.collect", "grafana.build"):  # fmt: skip
        assert kind in kinds
    built = {st.options.name: st.run for st in s.steps if st.kind == "model.build"}
    assert built == {"face-haar": True, "face-blaze": True, "yolo-onnx": False}
    (data,) = {st.options.data for st in s.steps if st.kind == "infer.run"}
    assert data == RUN_CFG / "samples" and len(list(data.glob("*.jpg"))) >= 5


def test_demo_runs_yolo_only_with_the_weights_given_and_says_how(tmp_path):
    """No random weights: without --var yolo_weights every yolo step is skipped, with a note
    saying how to add them; with it, they run on that file."""
    s = scenario.load(RUN_CFG / "demo.yaml")
    yolo = [st for st in s.steps if "yolo" in st.name]
    assert [st.name for st in yolo] == ["build-yolo", "push-yolo", "deploy-yolo", "infer-yolo"]
    for st in yolo:
        assert not st.run and "--var yolo_weights=PATH" in st.skipped_because
        assert "YOLO_WEIGHTS=PATH" in st.skipped_because and ".pt or .onnx" in st.skipped_because
    assert all(st.run and st.skipped_because is None for st in s.steps if st not in yolo)
    weights = tmp_path / "best.onnx"
    weights.write_bytes(b"onnx")
    s = scenario.load(RUN_CFG / "demo.yaml", parse_vars([f"yolo_weights={weights}"]))
    build = next(st for st in s.steps if st.name == "build-yolo")
    assert all(st.run for st in s.steps) and build.options.weights == weights


def test_a_skipped_step_shows_its_note_in_the_plan_and_the_record(workspace, tmp_path):
    path = write(tmp_path, """\
version: 1
vars: {extra: false}
steps:
  - {name: a, do: grafana.build, with: {out: out}}
  - {name: b, do: model.push, with: {ref: "b:1"}, when: extra,
     skip_note: "b needs --var extra=true"}
  - {name: c, do: model.push, with: {ref: "c:1"}, when: extra}
""")  # fmt: skip
    plan = evc("run", path, "--dry-run", check=0, env={"COLUMNS": "200"}).stdout
    assert "b needs --var extra=true" in plan and "skipped: its when: is false" in plan
    proc = evc("run", path, check=0, env={"COLUMNS": "200"}, cwd=tmp_path)
    assert proc.stdout.count("b needs --var extra=true") == 2  # as it passes, and in the table
    rows = evcdb.workspace_db(workspace)["scenario_steps"].rows_where(order_by="idx")
    got = {r["name"]: (r["state"], r["summary"]) for r in rows}
    assert got["b"] == ("skipped", "b needs --var extra=true")
    assert got["c"] == ("skipped", "skipped: its when: is false")


def test_real_fleet_example_documents_every_field():
    text = (RUN_CFG / "fleet.yaml").read_text()
    comments = "\n".join(ln for ln in text.splitlines() if ln.lstrip().startswith("#"))
    fields = [*scenario.ScenarioFile.model_fields, "with", "x-"]
    fields += [f for f in scenario.StepFile.model_fields if f != "with_"]
    for field in fields:
        assert f"{field}" in comments, field
    for kind in steps.CAPABILITIES:
        assert kind in comments
    s = scenario.load(RUN_CFG / "fleet.yaml")
    assert {"jetson", "rpi"} <= {g for d in s.devices for g in d.groups}


# --------------------------------------------------------------------- steps == CLI


def _click_command(words: str):
    import typer.main

    from evc.cli import app

    command = typer.main.get_command(app)
    for word in words.split():
        command = command.get_command(None, word)  # the root builds its groups lazily
    return command


@pytest.mark.parametrize("kind", sorted(steps.CAPABILITIES))
def test_step_options_are_the_cli_options(kind):
    """A step's with: and its command's flags come from one declaration (evc.options)."""
    cap = steps.CAPABILITIES[kind]
    params = {p.name: p for p in _click_command(cap.command).params}
    for name, field in cap.options.model_fields.items():
        assert name in params, (kind, name)
        flag = flag_of(cap.options, name)
        if flag.startswith("--"):
            assert any(o.startswith(flag) for o in params[name].opts), (kind, flag)
        if not field.is_required():
            default = field.get_default(call_default_factory=True)
            assert params[name].default in (default, None if default == [] else default)
        assert params[name].required == field.is_required(), (kind, name)


def test_required_options_and_types_come_from_the_options_model():
    model = steps.CAPABILITIES["model.deploy"].options
    assert model.model_fields["ref"].is_required()
    assert not model.model_fields["serial"].is_required()
    deploy = model.model_validate({"ref": "a:1", "target": "lab", "serial": 2})
    assert deploy.serial == "2"  # like --serial 2
    assert model.model_fields["target"].is_required()
    assert steps.CAPABILITIES["cert.push"].options.model_fields["target"].default == "all"
    assert not steps.takes_target("model.build")


def test_plan_shows_the_equivalent_cli_command(tmp_path):
    s = scenario.load(RUN_CFG / "demo.yaml")
    commands = {st.name: st.command for st in s.steps}
    assert commands["deploy-faces"] == "evc model deploy face-haar:1.0 lab"
    assert commands["trust-registry"] == "evc cert push lab"
    assert commands["build-blaze"] == (
        "evc model build face-blaze --runtime face-blaze --version 1.0 --force"
    )
    assert commands["infer-faces"].startswith("evc infer run face-haar:1.0 lab --data ")
    assert commands["infer-faces"].endswith("--shard-size 1")


# --------------------------------------------------------------------- variables, anchors


BASE = """\
version: 1
vars:
  ver: "1.0"
  n: 2
  group: lab
  ref: face:${ver}
  home: ${env.EVC_TEST_HOME}
steps:
"""


def test_interpolation_keeps_types_and_nests(tmp_path, monkeypatch):
    monkeypatch.setenv("EVC_TEST_HOME", "/srv")
    s = scenario.load(write(tmp_path, BASE + """\
  - do: model.deploy
    target: ${group}:&profile_rpi
    with: {ref: "${ref}", serial: "${n}", max_fail_percent: "${n}"}
  - do: model.build
    with: {name: m, runtime: face-haar, version: "1", owner: "$${literal} in ${home}"}
"""))  # fmt: skip
    deploy, push = s.steps
    assert deploy.target == "lab:&profile_rpi"
    assert deploy.options.ref == "face:1.0"
    assert deploy.options.serial == "2" and deploy.options.max_fail_percent == 2
    assert push.options.owner == "${literal} in /srv"
    assert s.vars["ref"] == "face:1.0"


def test_var_overrides_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("EVC_TEST_HOME", "/srv")
    path = write(tmp_path, BASE + "  - {do: model.push, with: {ref: '${ref}'}}\n")
    s = scenario.load(path, parse_vars(["ver=2.5", "n=3"]))
    assert s.steps[0].options.ref == "face:2.5" and s.vars["n"] == 3
    with pytest.raises(UsageError, match=r"--var vre: .* no such variable \(did you mean 'ver'"):
        scenario.load(path, {"vre": "1"})
    with pytest.raises(UsageError, match="expected NAME=VALUE"):
        parse_vars(["novalue"])


def test_anchors_aliases_and_merge_keys(tmp_path):
    s = scenario.load(write(tmp_path, """\
version: 1
x-common: &common
  target: lab
  continue_on_error: true
x-limits: &limits {cpus: 0.5, memory: 256m}
steps:
  - <<: *common
    name: a
    do: model.deploy
    with: {<<: *limits, ref: "m:1"}
  - <<: *common
    name: b
    do: model.deploy
    with:
      <<: *limits
      ref: "m:2"
      cpus: 1.5
"""))  # fmt: skip
    a, b = s.steps
    assert a.target == b.target == "lab" and a.continue_on_error
    assert a.options.cpus == 0.5 and a.options.memory == "256m"
    assert b.options.cpus == 1.5 and b.options.ref == "m:2"


def test_unknown_keys_suggest_the_near_one_with_file_line_column(tmp_path):
    path = write(tmp_path, """\
version: 1
stepz: []
steps:
  - name: d
    do: model.deploy
    target: lab
    with: {ref: "m:1", serail: 1}
  - do: cert.push
    continue_on_eror: true
""")  # fmt: skip
    with pytest.raises(UsageError) as exc:
        scenario.load(path)
    msg = str(exc.value)
    assert f"{path}:2:1: stepz: unknown key 'stepz' (did you mean 'steps'?)" in msg
    assert f"{path}:7:24: steps[0].with.serail: unknown option 'serail' of model.deploy " \
           "(did you mean 'serial'?)" in msg  # fmt: skip
    assert f"{path}:9:5: steps[1].continue_on_eror: unknown key 'continue_on_eror' " \
           "(did you mean 'continue_on_error'?)" in msg  # fmt: skip
    assert "3 problems; nothing was run" in msg


def test_when_expressions(tmp_path):
    v = {"n": 3, "skip": False, "profile": "lab", "groups": ["a", "b"]}
    assert evaluate_when("n > 2 and not skip", v)
    assert evaluate_when("profile == 'lab' or skip", v)
    assert evaluate_when("'a' in groups", v)
    assert not evaluate_when("1 < n < 3", v)
    assert not evaluate_when(False, v)
    for bad, match in (("__import__('os')", "is not allowed"), ("nn > 1", "did you mean 'n'"),
                       ("n >", "not an expression"), ("n < 'a'", "cannot compare")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            evaluate_when(bad, v)
    s = scenario.load(write(tmp_path, """\
version: 1
vars: {with_yolo: false}
steps:
  - {name: a, do: model.push, with: {ref: "a:1"}, when: with_yolo}
  - {name: b, do: model.push, with: {ref: "b:1"}, when: "not with_yolo"}
"""))  # fmt: skip
    assert [st.run for st in s.steps] == [False, True]


def test_selection_from_and_only(tmp_path):
    s = scenario.load(RUN_CFG / "demo.yaml")
    names = [st.name for st in s.steps]
    assert [st.name for st in scenario.select(s)] == names
    assert [st.name for st in scenario.select(s, "infer-faces")] == names[names.index(
        "infer-faces"):]  # fmt: skip
    assert [st.name for st in scenario.select(s, only=["push-yolo", "registry"])] == [
        "registry", "push-yolo"]  # fmt: skip
    with pytest.raises(UsageError, match=r"--from 'infer-face': .* \(did you mean 'infer-faces'"):
        scenario.select(s, "infer-face")
    with pytest.raises(UsageError, match="--from and --only do not go together"):
        scenario.select(s, "registry", ["registry"])


def test_relative_paths_are_looked_up_next_to_the_file(tmp_path, monkeypatch):
    (tmp_path / "cfg" / "imgs").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    s = scenario.load(write(tmp_path / "cfg", """\
version: 1
steps:
  - {do: infer.run, with: {model: "m:1", data: imgs}}
"""))  # fmt: skip
    assert s.steps[0].options.data == tmp_path / "cfg" / "imgs"
    assert s.steps[0].options.target == "all"  # the command's default


# --------------------------------------------------------------------- through the CLI


def test_dry_run_prints_the_plan_with_hosts_and_changes_nothing(workspace):
    lab_like(workspace)
    db = evcdb.workspace_db(workspace)
    proc = evc("run", RUN_CFG / "retire-node.yaml", "--dry-run", "--var", "node=node2", check=0)
    for text in ("undeploy-faces", "node2", "evc model undeploy face-haar node2",
                 "evc cert revoke node2", "evc device remove node2"):  # fmt: skip
        assert text in proc.stdout
    plan = json.loads(evc("run", RUN_CFG / "demo.yaml", "--dry-run", "--json",
                          "--from", "deploy-faces", check=0).stdout)  # fmt: skip
    by_name = {st["name"]: st for st in plan["steps"]}
    assert by_name["deploy-faces"]["hosts"] == ["node1", "node2", "node3"]
    assert by_name["build-faces"]["hosts"] is None  # runs on the controller
    assert plan["selected"][0] == "deploy-faces" and "build-faces" not in plan["selected"]
    assert db["devices"].count == 3 and db["scenario_runs"].count == 0
    assert db["ansible_runs"].count == 0


def test_validate_works_without_a_workspace(tmp_path):
    # from a folder with no evc.yaml above it (a checkout may hold one from `make demo`)
    proc = evc(
        "run", "validate", RUN_CFG / "demo.yaml", env={"EVC_HOME": ""}, check=0, cwd=tmp_path
    )
    assert "valid, 17 steps (targets not resolved: no workspace)" in proc.stdout


def test_run_records_each_step_and_resumes_from_the_failed_one(workspace, tmp_path):
    """No fleet needed: device.remove is a database step; the second fails (no such device)."""
    lab_like(workspace)
    path = write(tmp_path, """\
version: 1
steps:
  - {name: drop-1, do: device.remove, with: {name: node1}}
  - {name: drop-9, do: device.remove, with: {name: node9}}
  - {name: drop-3, do: device.remove, with: {name: node3}}
""")  # fmt: skip
    run = json.loads(evc("run", path, "--json", check=1).stdout)
    assert run["state"] == "failed" and run["resume_from"] == "drop-9"
    states = [(s["name"], s["state"]) for s in run["steps"]]
    assert states == [("drop-1", "ok"), ("drop-9", "failed"), ("drop-3", "not_run")]
    assert "No device named 'node9'" in run["steps"][1]["summary"]
    db = evcdb.workspace_db(workspace)
    assert {r["name"] for r in db["devices"].rows} == {"node2", "node3"}
    # Resume from the step after the fixed one; the rows say what ran.
    again = json.loads(evc("run", path, "--json", "--from", "drop-3", check=0).stdout)
    assert [(s["name"], s["state"]) for s in again["steps"]] == [
        ("drop-1", "not_selected"), ("drop-9", "not_selected"), ("drop-3", "ok")]  # fmt: skip
    assert again["selection"] == "--from drop-3" and again["resume_from"] is None
    listed = json.loads(evc("run", "list", "--json", check=0).stdout)
    assert [r["id"] for r in listed] == [again["id"], run["id"]]
    shown = evc("run", "show", run["id"], check=0).stdout
    assert "resume with:" in shown and "--from drop-9" in shown
    assert "No scenario run 'nope'" in evc("run", "show", "nope", check=2).stderr


def test_grafana_build_step_writes_the_dashboards(workspace, tmp_path):
    """The step writes what `evc grafana build [--out DIR]` writes and reports where."""
    outcome = steps.run("grafana.build", workspace, grafana.BuildOptions(), SILENT)
    assert outcome.ok and outcome.detail and all(Path(p).is_file() for p in outcome.detail)
    assert all(Path(p).suffix in (".json", ".yaml", ".yml") for p in outcome.detail)
    out = tmp_path / "g"
    outcome = steps.run("grafana.build", workspace, grafana.BuildOptions(out=out), SILENT)
    assert outcome.ok and str(out) in outcome.summary
    assert any(p.endswith("fleet.json") for p in outcome.detail)
    assert all(Path(p).is_relative_to(out) and Path(p).is_file() for p in outcome.detail)


def _commented_commands() -> list[tuple[str, list[str]]]:
    """The `evc run ...` commands the run-configs' comments tell a user to type."""
    import shlex

    found = []
    for path in sorted(RUN_CFG.glob("*.yaml")):
        for line in path.read_text().splitlines():
            text = line.lstrip("# ").split("  #")[0].strip()
            if text.startswith("evc run "):
                found.append((path.name, shlex.split(text)[2:]))
    return found


@pytest.mark.parametrize("name, args", _commented_commands(), ids=lambda v: " ".join(v))
def test_every_command_in_a_run_config_comment_works(workspace, name, args, tmp_path):
    """Typed exactly as the comment shows (`--var version=1.1` is the string "1.1"; a PATH
    the user fills in is a file), each one is accepted; those that would run are run as
    --dry-run on a lab-like workspace."""
    lab_like(workspace)
    (tmp_path / "weights.onnx").write_bytes(b"onnx")
    args = [a.replace("=PATH", f"={tmp_path / 'weights.onnx'}") for a in args]
    if args[0] != "validate" and "--dry-run" not in args:
        args = [*args, "--dry-run"]
    root = RUN_CFG.parent
    proc = evc("run", *args, cwd=root, check=0)
    assert "Traceback" not in proc.stderr


def test_var_takes_the_declared_type(tmp_path):
    path = write(tmp_path, BASE.replace("${env.EVC_TEST_HOME}", "/h") + """\
  - {do: model.push, with: {ref: "m:${ver}"}}
""")  # fmt: skip
    s = scenario.load(path, parse_vars(["ver=1.10", "n=3", "group=lab"]))
    assert s.vars["ver"] == "1.10" and s.vars["n"] == 3 and s.steps[0].options.ref == "m:1.10"
    with pytest.raises(UsageError, match=r"--var n='many': n is declared as 2, so expected a wh"):
        scenario.load(path, parse_vars(["n=many"]))
