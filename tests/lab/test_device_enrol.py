"""Enrolling devices on the real lab: import in one run, --copy-key with a password."""

import json

import pytest

from evc import db as evcdb
from evc.lab.nodes import Nodes, exec_read
from tests.conftest import evc, files_holding

PASSWORD = "Lab-only-S3cret-4-test"


def _ip(lab_ws, node):
    return Nodes(lab_ws).get(node).labels["evc.lab.ip"]


def test_import_gathers_facts_in_one_parallel_run(lab_ws, lab_env, tmp_path):
    f = tmp_path / "fleet.yaml"
    f.write_text(
        "devices:\n"
        f"  - {{name: imp1, host: {_ip(lab_ws, 'node1')}, groups: [imported]}}\n"
        f"  - {{name: imp2, host: {_ip(lab_ws, 'node2')}, groups: [imported], role: builder}}\n"
    )
    db = evcdb.workspace_db(lab_ws)
    before = db["ansible_runs"].count
    try:
        proc = evc("device", "import", f, "--json", env=lab_env, check=0)
        assert {r["name"]: r["state"] for r in json.loads(proc.stdout)} == {
            "imp1": "ok",
            "imp2": "ok",
        }
        runs = list(db.query("select * from ansible_runs order by started desc"))
        assert db["ansible_runs"].count == before + 1  # facts for both in one run
        assert runs[0]["playbook"] == "facts.yml" and runs[0]["hosts_total"] == 2
        devs = {
            d["name"]: d
            for d in json.loads(
                evc("device", "list", "--group", "imported", "--json", env=lab_env, check=0).stdout
            )
        }
        assert sorted(devs) == ["imp1", "imp2"] and devs["imp2"]["role"] == "builder"
        assert devs["imp1"]["cpu_count"] == 0.5 and devs["imp2"]["cpu_count"] == 1.0
    finally:
        for name in ("imp1", "imp2"):
            evc("device", "remove", name, env=lab_env)


@pytest.fixture
def password_user(lab_ws):
    node = Nodes(lab_ws).get("node2")
    setup = f"useradd -m edge && echo 'edge:{PASSWORD}' | chpasswd"
    assert node.exec_run(["sh", "-c", setup]).exit_code == 0
    yield node
    node.exec_run(["userdel", "-r", "edge"])


def test_copy_key_installs_the_controller_key_and_stores_no_password(
    lab_ws, lab_env, password_user
):
    ip = _ip(lab_ws, "node2")

    def add_edge(password, check):
        args = ["device", "add", "edge2", "--host", ip, "--user", "edge", "--copy-key"]
        args += ["--password-stdin", "--json"]
        return evc(*args, env=lab_env, input=password + "\n", check=check)

    wrong = add_edge("wrong-password", 1)
    assert "Could not install the controller key" in wrong.stderr
    assert "Permission denied" in wrong.stderr and "Traceback" not in wrong.stderr
    assert "edge2" not in lab_ws.inventory.read_text()
    try:
        ok = add_edge(PASSWORD, 0)
        assert json.loads(ok.stdout)[0]["state"] == "ok"
        keys = exec_read(password_user, ["cat", "/home/edge/.ssh/authorized_keys"])[1]
        pub = (lab_ws.private_dir / "keys" / "id_ed25519.pub").read_text().split()[1]
        assert pub in keys
        evc("device", "ping", "edge2", env=lab_env, check=0)  # key login works now
        # The password is nowhere EVC writes: database, inventory, artifacts, output.
        assert PASSWORD not in ok.stdout + ok.stderr
        assert files_holding(lab_ws, PASSWORD, places=[lab_ws.root]) == []
    finally:
        evc("device", "remove", "edge2", env=lab_env)
