"""The read-only endpoint's htpasswd and the per-device pull credentials (no Docker).

The last test runs the real ansible-playbook on this machine (connection local): the
key reaches a vars_prompt through ``run_playbook(secrets=...)``, the play derives the
password exactly as cert_push.yml does, and the registry's bcrypt line accepts it.
"""

import json
import stat
import sys
from pathlib import Path

import bcrypt
import pytest
import yaml

from evc import pki, pull_credentials, registry
from evc.ansible import run_playbook
from evc.queue import acl
from evc.resources import playbook
from tests.conftest import files_holding


def _checks(hashed: str, password: str) -> bool:
    return bcrypt.checkpw(password.encode(), hashed.replace("$2y$", "$2b$", 1).encode())


def _local_inventory(tmp_path: Path, host: str) -> Path:
    """An inventory of one host that is this machine (connection local)."""
    path = tmp_path / "hosts.yml"
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    path.write_text(json.dumps({"all": {"hosts": {host: local}}}))
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_htpasswd_is_replaced_atomically_0600_and_round_trips(tmp_path):
    path = tmp_path / "htpasswd"
    assert pki.read_htpasswd(path) == {}
    pki.write_htpasswd(path, {})
    assert path.read_text() == "" and _mode(path) == 0o600
    before = path.stat().st_ino
    entries = {"node2": pki.bcrypt_hash("pw2", 5), "node1": pki.bcrypt_hash("pw1", 5)}
    pki.write_htpasswd(path, entries)
    # A new file renamed over the old (never a half-written one); mtime moves, which
    # is what makes distribution read it again.
    assert path.stat().st_ino != before and _mode(path) == 0o600
    assert path.read_text().splitlines()[0].startswith("node1:$2y$05$")
    assert pki.read_htpasswd(path) == entries
    assert _checks(entries["node1"], "pw1") and not _checks(entries["node1"], "pw2")
    assert not list(tmp_path.glob(".*.tmp"))
    for bad in ("a:b", "x\ny", ""):
        with pytest.raises(ValueError):
            pki.write_htpasswd(path, {bad: entries["node1"]})
    assert pki.read_htpasswd(path) == entries  # a refused write changes nothing


def test_controller_htpasswd_still_holds_only_evc(tmp_path):
    f = pki.RegistryFiles(tmp_path)
    pki.make_credentials(f, "a-password-of-the-test")
    users = pki.read_htpasswd(f.htpasswd)
    assert list(users) == ["evc"] and _checks(users["evc"], "a-password-of-the-test")


@pytest.fixture
def files(workspace):
    return registry.files(workspace)


def test_issue_makes_one_credential_per_device_and_is_idempotent(workspace, files):
    nonces = pull_credentials.issue(workspace, ["node1", "node2"])
    key = files.pull_key.read_text()
    assert len(key) >= 43 and set(nonces) == {"node1", "node2"}
    users = pki.read_htpasswd(files.pull_htpasswd)
    assert set(users) == {"node1", "node2"} == pull_credentials.holders(workspace)
    for device, nonce in nonces.items():
        assert _checks(users[device], pull_credentials.password(key, device, nonce))
    # Each device's password is its own.
    assert not _checks(users["node1"], pull_credentials.password(key, "node2", nonces["node2"]))
    for path in (files.pull_key, files.pull_nonces, files.pull_htpasswd):
        assert _mode(path) == 0o600, path
    # The key and the passwords are in neither file the registry or Ansible sees.
    secrets = [key, *(pull_credentials.password(key, d, n) for d, n in nonces.items())]
    for path in (files.pull_htpasswd, files.pull_nonces):
        assert not [s for s in secrets if s in path.read_text()]

    state = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files.root.rglob("*")
             if p.is_file()}  # fmt: skip
    assert pull_credentials.issue(workspace, ["node2", "node1"]) == nonces  # changes nothing
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in state} == state
    more = pull_credentials.issue(workspace, ["node3", "node1"])
    assert more["node1"] == nonces["node1"]
    assert pki.read_htpasswd(files.pull_htpasswd)["node2"] == users["node2"]
    assert pull_credentials.holders(workspace) == {"node1", "node2", "node3"}


def test_revoke_refuses_the_old_password_for_good(workspace, files):
    nonces = pull_credentials.issue(workspace, ["node1", "node2"])
    key = files.pull_key.read_text()
    old = pull_credentials.password(key, "node1", nonces["node1"])
    node2 = pki.read_htpasswd(files.pull_htpasswd)["node2"]

    assert pull_credentials.revoke(workspace, ["node1", "nobody"]) == ["node1"]
    assert pki.read_htpasswd(files.pull_htpasswd) == {"node2": node2}
    assert json.loads(files.pull_nonces.read_text()) == {"node2": nonces["node2"]}
    assert pull_credentials.holders(workspace) == {"node2"}
    assert pull_credentials.revoke(workspace, ["node1"]) == []

    again = pull_credentials.issue(workspace, ["node1"])  # re-enrolled: a new credential
    users = pki.read_htpasswd(files.pull_htpasswd)
    assert again["node1"] != nonces["node1"] and not _checks(users["node1"], old)
    assert pull_credentials.nonces(workspace, ["node1", "node2", "node9"]) == {
        "node1": again["node1"], "node2": nonces["node2"]}  # fmt: skip


def test_half_a_credential_gets_a_new_nonce(workspace, files):
    """An interrupted revoke leaves a nonce without its line: issuing again must not bring
    the revoked password back."""
    nonces = pull_credentials.issue(workspace, ["node1"])
    key = files.pull_key.read_text()
    pki.write_htpasswd(files.pull_htpasswd, {})
    fresh = pull_credentials.issue(workspace, ["node1"])
    assert fresh["node1"] != nonces["node1"]
    line = pki.read_htpasswd(files.pull_htpasswd)["node1"]
    assert _checks(line, pull_credentials.password(key, "node1", fresh["node1"]))


def test_device_remove_deletes_its_credential(workspace, files):
    from evc import db as evcdb
    from evc import devices

    db = evcdb.workspace_db(workspace)
    with evcdb.transaction(db):
        db["devices"].insert_all(
            evcdb.device_row({"name": n, "host": f"10.0.0.{i}", "added_at": 0.0})
            for i, n in enumerate(("node1", "node2"), 1)
        )
    pull_credentials.issue(workspace, ["node1", "node2"])
    devices.remove(workspace, "node1")
    assert pull_credentials.holders(workspace) == {"node2"}
    assert set(json.loads(files.pull_nonces.read_text())) == {"node2"}


def test_the_play_derives_the_password_the_registry_holds(workspace, files, tmp_path):
    """cert_push.yml's vars_prompt and password template, run for real through
    run_playbook(secrets=): the derived password passes the device's bcrypt line, and the
    key is in no artifact (ansible-runner's command file included) and no database row."""
    play = yaml.safe_load(playbook("cert_push.yml").read_text())[0]
    tasks = {t["name"]: t for t in play["tasks"] if "name" in t}  # not the import
    (access,) = tasks["registry access"]["block"]
    assert access["no_log"] is True
    stdin = access["ansible.builtin.shell"]["stdin"]  # the password, then the queue's JSON
    out = tmp_path / "stdin"
    test_play = [{
        "name": "derive", "hosts": "all", "gather_facts": False,
        "vars_prompt": play["vars_prompt"], "vars": play["vars"],
        "tasks": [{"ansible.builtin.copy": {"content": stdin, "dest": str(out), "mode": "0600"},
                   "vars": access["vars"], "no_log": True}],
    }]  # fmt: skip
    path = tmp_path / "derive.yml"
    path.write_text(yaml.safe_dump(test_play))
    inventory = _local_inventory(tmp_path, "node1")

    nonces = pull_credentials.issue(workspace, ["node1"])
    key = pull_credentials.key(workspace)
    run = run_playbook(
        workspace, str(path), "node1", inventory=inventory,
        extravars={"registry_pull_nonce": nonces, "queue_host": "10.9.0.1", "queue_port": 6380},
        secrets={pull_credentials.PROMPT: key},
    )  # fmt: skip
    assert run.ok, run.hosts["node1"].message
    login, queue_json = out.read_text().split("\n")
    line = pki.read_htpasswd(files.pull_htpasswd)["node1"]
    assert _checks(line, login)
    # The queue's ACL user for node1 has the password the play writes on the node.
    password = acl.device_password(key, "node1", nonces["node1"])
    assert json.loads(queue_json) == {
        "host": "10.9.0.1", "port": 6380, "user": "node1", "password": password,
    }  # fmt: skip
    assert password != login  # not the registry's
    assert not files_holding(workspace, key) and not files_holding(workspace, password)


def test_a_secret_is_data_never_a_template(workspace, tmp_path):
    """An answer with Jinja in it reaches the play literally (unsafe: true): nothing runs."""
    marker = tmp_path / "MARKER"
    secret = "{{ lookup('pipe', 'touch " + str(marker) + "') }}"
    out = tmp_path / "seen"
    path = tmp_path / "prompt.yml"
    path.write_text(yaml.safe_dump([{
        "hosts": "all", "gather_facts": False,
        "vars_prompt": [{"name": "evc_test_secret", "prompt": "EVC_TEST_SECRET",
                         "private": True, "unsafe": True}],
        "tasks": [{"ansible.builtin.copy": {"content": "{{ evc_test_secret }}",
                                            "dest": str(out)}, "no_log": True}],
    }]))  # fmt: skip
    inventory = _local_inventory(tmp_path, "here")
    run = run_playbook(
        workspace, str(path), "here", inventory=inventory, secrets={"evc_test_secret": secret}
    )
    assert run.ok, run.hosts["here"].message
    assert out.read_text() == secret and not marker.exists()
    assert not files_holding(workspace, secret)
