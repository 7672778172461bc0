"""The lab's private registry, for real: TLS, auth, API, its read-only endpoint, and nodes
that do not trust it yet."""

import json
import subprocess
import time
from pathlib import Path

import pytest
import requests

from evc import db as evcdb
from evc import pki, pull_credentials, registry, registry_server
from evc.ansible import run_playbook
from evc.engine import docker_client
from evc.model import publish
from tests.conftest import evc, files_holding

PULL = str(Path(__file__).parent / "playbooks" / "pull_probe.yml")


@pytest.fixture
def reg(lab_ws):
    settings = registry.load(lab_ws)
    files = registry.files(lab_ws)
    return settings, files, f"https://{settings.address}/v2/"


def test_lab_registry_runs_at_the_gateway_with_the_probe(lab_session, lab_env):
    lab_ws, up = lab_session
    gateway = up["gateway"]
    assert up["registry"] == f"{gateway}:5001"  # where the nodes pull: the read-only endpoint
    st = json.loads(evc("registry", "status", "--json", env=lab_env, check=0).stdout)
    assert st["address"] == f"{gateway}:5000"
    assert st["state"] == "running" and st["image"].startswith("evc-lab/registry:")
    assert st["cert"]["sans"] == [gateway] and 820 <= st["cert"]["days_left"] <= 825
    assert "evc/probe" in st["repositories"]
    ro = st["read_only"]
    assert ro["address"] == f"{gateway}:5001" and ro["state"] == "running" and not ro["error"]
    assert ro["container"] == registry_server.ro_container_name(lab_ws)


def test_anonymous_and_wrong_password_are_refused(reg):
    settings, files, base = reg
    ca = str(files.ca_cert)
    assert requests.get(base, verify=ca, timeout=10).status_code == 401
    assert requests.get(base + "_catalog", verify=ca, timeout=10).status_code == 401
    push = requests.post(base + "evc/x/blobs/uploads/", verify=ca, timeout=10)
    assert push.status_code == 401
    wrong = requests.get(base, auth=(settings.user, "not-the-password"), verify=ca, timeout=10)
    assert wrong.status_code == 401
    right = requests.get(
        base, auth=(settings.user, files.password.read_text()), verify=ca, timeout=10
    )
    assert right.status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(base, timeout=10)  # the system trust store does not know our CA
    # The read-only endpoint: the same certificate, its own users (devices only).
    ro = f"https://{settings.ro_address}/v2/"
    assert requests.get(ro, verify=ca, timeout=10).status_code == 401
    evc_user = (settings.user, files.password.read_text())
    assert requests.get(ro, auth=evc_user, verify=ca, timeout=10).status_code == 401


def test_node_without_the_ca_cannot_pull(lab_ws, reg):
    settings, _, _ = reg
    ref = registry_server.probe_ref(settings.ro_address)
    run = run_playbook(lab_ws, PULL, "node1", extravars={"probe_ref": ref})
    assert run.hosts["node1"].state == "failed"
    assert "certificate signed by unknown authority" in run.hosts["node1"].message


def test_api_lists_tags_and_deletes_with_garbage_collection(lab_ws, reg, tmp_path):
    settings, _, _ = reg
    api = registry.api(lab_ws)
    assert api.tags(registry_server.PROBE_REPO) == [registry_server.PROBE_TAG]
    assert api.manifest_digest(registry_server.PROBE_REPO, registry_server.PROBE_TAG).startswith(
        "sha256:"
    )
    # A second, different image to delete (same-digest tags would go together).
    (tmp_path / "x").write_text("scratch\n")
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY x /x\n")
    client = docker_client()
    ref = f"{settings.address}/evc/scratch"
    client.images.build(path=str(tmp_path), tag=f"{ref}:gone", rm=True)
    registry.login(lab_ws, client)
    out = [ln for ln in client.images.push(ref, tag="gone", stream=True, decode=True)]
    assert not [ln for ln in out if "error" in ln], out
    assert api.tags("evc/scratch") == ["gone"]
    assert api.delete("evc/scratch", "gone") is True
    assert api.delete("evc/scratch", "gone") is False
    gc_log = registry_server.garbage_collect(lab_ws)
    assert "eligible for deletion" in gc_log, gc_log
    assert api.tags("evc/scratch") == []
    assert api.tags(registry_server.PROBE_REPO) == [registry_server.PROBE_TAG]


def _push_scratch(client, ref: str, tag: str, content: str, folder: Path) -> None:
    folder.mkdir()
    (folder / "x").write_text(content)
    (folder / "Dockerfile").write_text("FROM scratch\nCOPY x /x\n")
    client.images.build(path=str(folder), tag=f"{ref}:{tag}", rm=True)
    out = list(client.images.push(ref, tag=tag, stream=True, decode=True))
    assert not [ln for ln in out if "error" in ln], out


def test_garbage_collection_keeps_a_digest_a_node_is_declared_to_run(lab_ws, reg, tmp_path):
    """A version pushed again with --force moves its tag: the digest its nodes still run
    (and converge would pull) must survive the collection until no deployment names it."""
    settings, _, _ = reg
    api, client = registry.api(lab_ws), docker_client()
    repo = "evc/keepme"
    ref = f"{settings.address}/{repo}"
    registry.login(lab_ws, client)
    _push_scratch(client, ref, "1", "first\n", tmp_path / "a")
    deployed = api.manifest_digest(repo, "1")
    _push_scratch(client, ref, "1", "rebuilt\n", tmp_path / "b")  # the --force re-push
    assert api.manifest_digest(repo, "1") != deployed
    db = evcdb.workspace_db(lab_ws)
    row = {
        "model": "keepme",
        "version": "1",
        "node": "node1",
        "action": "deploy",
        "image": f"{settings.ro_address}/{repo}@{deployed}",
        "started": time.time(),
    }
    db["deployments"].insert({**row, "state": "running"})
    try:
        publish.collect_garbage(lab_ws)
        assert api.manifest_digest(repo, deployed) == deployed  # still pullable by digest
        keep = publish.KEEP_PREFIX + deployed.removeprefix("sha256:")[:32]
        assert api.tags(repo) == ["1", keep]
    finally:
        db["deployments"].insert({**row, "action": "undeploy", "state": "removed"})
    publish.collect_garbage(lab_ws)  # nothing declares it now: it goes
    assert api.manifest_digest(repo, deployed) is None
    assert api.tags(repo) == ["1"]
    api.delete(repo, "1")
    publish.collect_garbage(lab_ws)


def test_a_new_read_write_password_locks_the_old_one_out(lab_ws, lab_env, reg):
    settings, files, base = reg
    ca = str(files.ca_cert)
    old = files.password.read_text()
    out = evc("registry", "rotate", "--password", "--json", env=lab_env).stdout
    new = files.password.read_text()
    assert new != old and len(new) >= 24 and old not in out and new not in out
    assert files.password.stat().st_mode & 0o777 == 0o600
    assert json.loads(out)["state"] == "running"
    assert requests.get(base, auth=(settings.user, old), verify=ca, timeout=10).status_code == 401
    assert requests.get(base, auth=(settings.user, new), verify=ca, timeout=10).status_code == 200
    assert "evc/probe" in registry.api(lab_ws).catalog()  # the controller uses the new one
    both = evc("registry", "rotate", "--password", "--new-ca", env=lab_env, check=2)
    assert "one at a time" in both.stderr and files.password.read_text() == new


def test_registry_password_is_nowhere_evc_writes_in_clear(lab_ws, lab_env, reg):
    _, files, _ = reg
    password = files.password.read_text()
    assert files.password.stat().st_mode & 0o777 == 0o600
    outputs = evc("registry", "status", "--json", env=lab_env, check=0).stdout
    outputs += evc("lab", "status", "--json", env=lab_env).stdout
    assert password not in outputs
    assert not files_holding(lab_ws, password)
    if files.pull_key.exists():  # made at the first `cert push`
        assert files.pull_key.stat().st_mode & 0o777 == 0o600
        assert not files_holding(lab_ws, files.pull_key.read_text())
    # Nor in the repository itself.
    repo = Path(__file__).resolve().parents[2]
    tracked = subprocess.run(
        ["git", "-C", str(repo), "grep", "-l", password], capture_output=True, text=True
    )
    assert tracked.stdout == ""


def test_cert_push_then_revoke_on_every_node(lab_ws, lab_env, reg):
    """Unknown authority before, a real pull after push, refused again after revoke."""
    settings, files, _ = reg
    ref = registry_server.probe_ref(settings.ro_address)

    pushed = json.loads(evc("cert", "push", "lab", "--json", env=lab_env, check=0).stdout)
    assert pushed["status"] == "success" and sorted(pushed["hosts"]) == ["node1", "node2", "node3"]
    run = run_playbook(lab_ws, PULL, "lab", extravars={"probe_ref": ref})
    assert run.ok, {h: r.message for h, r in run.hosts.items()}

    again = json.loads(evc("cert", "push", "lab", "--json", env=lab_env, check=0).stdout)
    assert {h: r["changed"] for h, r in again["hosts"].items()} == {
        "node1": 0, "node2": 0, "node3": 0}  # fmt: skip

    nodes = ["node1", "node2", "node3"]
    key = files.pull_key.read_text()
    derived = [pull_credentials.password(key, h, n)
               for h, n in pull_credentials.nonces(lab_ws, nodes).items()]  # fmt: skip
    assert len(set(derived)) == 3

    checked = json.loads(evc("cert", "check", "lab", "--json", env=lab_env, check=0).stdout)
    assert all(c["trusts_current_ca"] and c["pull_credential"] for c in checked)
    assert {c["endpoint"] for c in checked} == {settings.ro_address}
    assert {c["server_cert_days_left"] for c in checked} <= {823, 824, 825}

    revoked = json.loads(evc("cert", "revoke", "node2", "--json", env=lab_env, check=0).stdout)
    assert revoked["hosts"]["node2"]["state"] in ("ok", "changed")
    run = run_playbook(lab_ws, PULL, "lab", extravars={"probe_ref": ref})
    assert run.hosts["node2"].state == "failed"
    assert "certificate signed by unknown authority" in run.hosts["node2"].message
    assert run.hosts["node1"].state == run.hosts["node3"].state == "ok"
    proc = evc("cert", "check", "lab", "--json", env=lab_env, check=1)
    checked = {c["host"]: c for c in json.loads(proc.stdout)}
    assert {h: c["trusts_current_ca"] for h, c in checked.items()} == {
        "node1": True, "node2": False, "node3": True}  # fmt: skip
    assert {h: c["pull_credential"] for h, c in checked.items()} == {
        "node1": True, "node2": False, "node3": True}  # fmt: skip

    # The key the nodes' passwords come from travelled to Ansible, and their passwords to
    # the nodes, but none is in an artifact or output; the controller's never left it.
    assert not files_holding(lab_ws, key, *derived, files.password.read_text())
    # Rotation (same CA): a new server certificate, and every trusting node still pulls.
    evc("cert", "push", "node2", env=lab_env, check=0)
    before = pki.certificate_info(files.server_cert)
    rotated = json.loads(evc("registry", "rotate", "--days", "90", "--json", env=lab_env,
                             check=0).stdout)  # fmt: skip
    assert rotated["state"] == "running" and 88 <= rotated["cert"]["days_left"] <= 90
    assert pki.certificate_info(files.server_cert)["not_before"] >= before["not_before"]
    run = run_playbook(lab_ws, PULL, "lab", extravars={"probe_ref": ref})
    assert run.ok, {h: r.message for h, r in run.hosts.items()}
    checked = json.loads(evc("cert", "check", "lab", "--json", env=lab_env, check=0).stdout)
    assert all(c["trusts_current_ca"] and c["server_cert_days_left"] <= 90 for c in checked)
    evc("cert", "revoke", "lab", env=lab_env, check=0)  # leave the nodes as they were
