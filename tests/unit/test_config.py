import pytest

from evc.config import Workspace, init_workspace
from evc.errors import UsageError
from tests.conftest import write_settings


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
        ("name: [unclosed\n", "not valid YAML"),
        ("- a list\n", "expected a mapping"),
        ("name: Bad Name\n", "name is 'Bad Name'"),
        ("lab: {name: 'x;rm'}\n", "lab.name"),
    ],
)
def test_bad_settings_are_named(tmp_path, text, match):
    write_settings(tmp_path, text)
    with pytest.raises(UsageError, match=match):
        Workspace.load(tmp_path)


def test_settings_merge_over_defaults(tmp_path):
    write_settings(tmp_path, "lab: {name: t1}\n")
    ws = Workspace.load(tmp_path)
    assert ws.lab_name == "t1" and ws.lab_subnet == "172.28.0.0/24" and ws.name == "default"
