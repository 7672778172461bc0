import re

import pytest

from evc.config import Workspace, init_workspace
from evc.errors import UsageError
from tests.conftest import evc, write_settings


def test_init_creates_layout_and_is_idempotent(tmp_path):
    ws = init_workspace(tmp_path / "w", name="edge")
    assert ws.name == "edge"
    for sub in ("db", "inventories"):
        assert (ws.root / sub).is_dir()
    assert ws.private_dir.stat().st_mode & 0o777 == 0o700
    (ws.root / "evc.yaml").write_text("name: kept\n")
    assert init_workspace(tmp_path / "w", name="other").name == "kept"
    assert ws.inventory == ws.root / "inventories" / "edge" / "hosts.yml"


def test_find_walks_up_from_a_subfolder(tmp_path, monkeypatch):
    monkeypatch.delenv("EVC_HOME", raising=False)
    init_workspace(tmp_path / "w")
    deep = tmp_path / "w" / "a" / "b"
    deep.mkdir(parents=True)
    assert Workspace.find(deep).root == (tmp_path / "w").resolve()


def test_evc_home_wins_and_must_hold_a_workspace(tmp_path, monkeypatch):
    init_workspace(tmp_path / "home")
    monkeypatch.setenv("EVC_HOME", str(tmp_path / "home"))
    assert Workspace.find(tmp_path).root == (tmp_path / "home").resolve()
    monkeypatch.setenv("EVC_HOME", str(tmp_path / "nothing"))
    with pytest.raises(UsageError, match="holds no evc.yaml"):
        Workspace.find()


def test_no_workspace_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.delenv("EVC_HOME", raising=False)
    with pytest.raises(UsageError, match="evc init"):
        Workspace.find(tmp_path)


@pytest.mark.parametrize(
    "text, match",
    [
        ("name: [unclosed\n", ":2:1: not valid YAML"),
        ("- a list\n", ":1:1: expected a mapping of settings, got a list"),
        ("name: Bad Name\n", ":1:1: name: 'Bad Name' is not a name of lower-case letters"),
        ("lab: {name: 'x;rm'}\n", ":1:7: lab.name: 'x;rm' is not a name"),
        ("telemetry:\n  offline_after: yes\n", ":2:3: telemetry.offline_after: Input should "
         "be a valid integer"),
        ("telemtry: {offline_after: 5}\n", ":1:1: telemtry: unknown key 'telemtry' "
         r"\(did you mean 'telemetry'\?\)\. Allowed: name, lab, telemetry, queue\."),
        ("lab:\n  name: t1\n  sbnet: 10.0.0.0/24\n", ":3:3: lab.sbnet: unknown key 'sbnet' "
         r"\(did you mean 'subnet'\?\)"),
        ("name: a\nname: b\n", ":2:1: key 'name' appears twice"),
        ("queue: {host: gateway}\n", ":1:9: queue.host: 'gateway' is not an IP address"),
        ("queue: {port: 70000}\n", ":1:9: queue.port: 70000 is not a TCP port"),
    ],
)  # fmt: skip
def test_bad_settings_are_located_and_named(tmp_path, text, match):
    write_settings(tmp_path, text)
    with pytest.raises(UsageError, match="is not a valid workspace settings file") as caught:
        Workspace.load(tmp_path)
    assert re.search(f"evc.yaml{match}", str(caught.value)), str(caught.value)


def test_an_unknown_setting_stops_any_command_with_exit_2_and_no_traceback(workspace):
    settings = workspace.root / "evc.yaml"
    settings.write_text(settings.read_text() + "telemtry:\n  offline_after: 5\n")
    line = len(settings.read_text().splitlines()) - 1
    proc = evc("device", "list", check=2)
    assert f"{settings}:{line}:1: telemtry: unknown key 'telemtry' (did you mean 'telemetry'?)" in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr + proc.stdout and proc.stdout == ""


def test_settings_merge_over_defaults(tmp_path):
    write_settings(tmp_path, "lab: {name: t1}\n")
    ws = Workspace.load(tmp_path)
    assert ws.lab_name == "t1" and ws.lab_subnet == "172.28.0.0/24" and ws.name == "default"
