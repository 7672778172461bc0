"""A version built for several arches (issue 16): one catalogue row per variant, each node
sent its own arch's variant by digest, nodes without one skipped and reported."""

import sqlite3
import time

import pytest

from evc import db as evcdb
from evc.errors import UsageError
from evc.model import build, catalogue, deploy
from tests.unit.fake_fleet import add_model, variant_digest


def _sent(fleet) -> dict:
    (targets,) = [x["evc_targets"] for name, _, x in fleet.calls if name == "model_deploy.yml"]
    return targets


def test_each_node_is_sent_its_own_arch_by_digest(fleet, workspace):
    """node1 is arm64, node2 amd64 (fake_fleet.DEVICES): each gets its variant's digest."""
    result = deploy.deploy(workspace, deploy.DeployOptions(ref="faces:1.0", target="node1,node2"))
    assert result.ok and result.skipped == {}
    sent = _sent(fleet)
    assert sent["node1"]["image"] == f"registry:5001/evc/faces@{variant_digest('arm64')}"
    assert sent["node2"]["image"] == f"registry:5001/evc/faces@{variant_digest('amd64')}"


def test_a_node_whose_arch_has_no_build_is_skipped_with_a_message_and_exit_1(fleet, workspace):
    """faces:2.0 is built for amd64 only: the arm64 node1 is not sent it, says why, and
    keeps what it ran; node2 is deployed all the same."""
    add_model(workspace, "2.0", time.time(), arches=("amd64",))
    before = {r["node"]: r["version"] for r in deploy.current(workspace, "faces")}
    result = deploy.deploy(workspace, deploy.DeployOptions(ref="faces:2.0", target="node1,node2"))
    assert not result.ok and result.exit_code == 1
    assert result.skipped == {"node1": "no arm64 build of faces:2.0: build it with --arch arm64"}
    assert list(_sent(fleet)) == ["node2"]
    assert result.run.hosts["node1"].state == "skipped"
    assert "no arm64 build of faces:2.0" in result.run.hosts["node1"].message
    after = {r["node"]: r["version"] for r in deploy.current(workspace, "faces")}
    assert after == {**before, "node2": "2.0"} and after["node1"] == "1.0"


def test_only_skipped_nodes_run_no_playbook(fleet, workspace):
    add_model(workspace, "2.0", time.time(), arches=("amd64",))
    result = deploy.deploy(workspace, deploy.DeployOptions(ref="faces:2.0", target="node1"))
    assert result.exit_code == 1 and list(result.skipped) == ["node1"]
    assert [c for c in fleet.calls if c[0] == "model_deploy.yml"] == []


def test_a_node_of_unknown_arch_has_its_facts_gathered_first(fleet, workspace, monkeypatch):
    db = evcdb.workspace_db(workspace)
    db.execute("UPDATE devices SET arch = NULL WHERE name = 'node1'")
    gathered = []

    def facts(ws, target, progress):
        gathered.append(target)
        evcdb.workspace_db(ws).execute("UPDATE devices SET arch = 'aarch64' WHERE name = 'node1'")

    monkeypatch.setattr(deploy, "gather_facts", facts)
    deploy.deploy(workspace, deploy.DeployOptions(ref="faces:1.0", target="node1,node2"))
    assert gathered == ["node1"]
    assert _sent(fleet)["node1"]["image"].endswith(variant_digest("arm64"))


def test_catalogue_holds_a_row_per_arch_and_show_lists_them(fleet, workspace):
    assert [m.arch for m in catalogue.variants(workspace, "faces:1.0")] == ["amd64", "arm64"]
    model, _ = catalogue.show(workspace, "faces:1.0")
    assert model.arch == catalogue.native_arch()
    assert {v["arch"]: v["registry_digest"] for v in model.variants} == {
        a: variant_digest(a) for a in ("amd64", "arm64")
    }
    with pytest.raises(UsageError, match="no s390x build of faces:1.0"):
        catalogue.get(workspace, "faces:1.0", arch="s390x")


def test_migration_keeps_one_arch_rows_and_allows_a_second_arch(tmp_path):
    """A database from before 0009 keeps its models; then a second arch fits beside."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    import sqlite_utils

    db = sqlite_utils.Database(old)
    for name, apply in evcdb.MIGRATIONS:
        if name == "0009_variants":
            break
        apply(db)
        old.execute("INSERT INTO migrations VALUES (?, ?)", [name, 0])
    row = {"name": "faces", "version": "1.0", "runtime": "face-haar", "task": "detect",
           "arch": "amd64", "image": "r/evc/faces:1.0-amd64", "image_id": "sha256:1",
           "built_at": 1.0, "registry_digest": "sha256:" + "a" * 64}  # fmt: skip
    db["models"].insert(row)
    old.commit()
    old.close()
    new = evcdb.connect(path)
    assert [dict(r) for r in new.query("SELECT name, arch, registry_digest FROM models")] == [
        {"name": "faces", "arch": "amd64", "registry_digest": "sha256:" + "a" * 64}
    ]
    new["models"].insert({**row, "arch": "arm64", "image": "r/evc/faces:1.0-arm64"})
    assert new.execute("SELECT COUNT(*) FROM models").fetchone()[0] == 2
    assert new.execute("SELECT COUNT(*) FROM model_indexes").fetchone()[0] == 0


def test_arch_lists_and_base_images_per_arch(fleet, workspace):
    assert build.target_arches(workspace, "arm64,amd64") == ["arm64", "amd64"]
    # Enrolled devices are amd64 and arm64 (fake_fleet.DEVICES): both by default.
    assert build.target_arches(workspace, None) == ["amd64", "arm64"]
    assert build.base_images("img:1", ["amd64", "arm64"]) == {"amd64": "img:1", "arm64": "img:1"}
    assert build.base_images("arm64=l4t:r36", ["amd64", "arm64"]) == {
        "amd64": None,
        "arm64": "l4t:r36",
    }
    with pytest.raises(UsageError, match="ARCH=IMAGE"):
        build.base_images("arm=img", ["arm64"])
    for bad in ("s390", "amd64,amd64", "amd64,", ""):
        with pytest.raises(ValueError, match="not a list of arches"):
            build.BuildOptions(name="m", runtime="face-haar", version="1", arch=bad)
