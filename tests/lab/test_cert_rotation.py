"""`evc registry rotate --new-ca` on the real lab: every node pulls after every phase,
the old CA is gone at the end, a failed phase stops, rolls back and a re-run finishes,
an unreachable node is named, and no secret is anywhere.

Pulls are checked independently of the rotation's own verification: after each phase
(through the ``after_phase`` hook) a plain `docker pull` on every node, and the files in
each node's certs.d read with `docker exec`. Each test leaves every node trusting the
current CA, which is where the next one starts.
"""

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import requests

from evc import certs, pki, registry, registry_api, registry_server
from evc.ansible import run_playbook
from evc.lab.fleet import Lab
from evc.lab.nodes import Nodes, exec_read
from tests.conftest import evc, files_holding

PULL = str(Path(__file__).parent / "playbooks" / "pull_probe.yml")
NODES = ["node1", "node2", "node3"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def rotating(trusted):
    """The module's workspace; after a test that failed half-way, back to the current CA
    with every node running and trusting it."""
    ws = trusted
    yield ws
    lab = Lab(ws)
    stopped = [n.name for n in lab.nodes() if n.state != "running"]
    if not stopped and not registry.rotation_pending(ws):
        return
    for name in stopped:
        lab.start(name)
    f = registry.files(ws)
    f.next_ca().ca_key.unlink(missing_ok=True)
    f.next_ca().ca_cert.unlink(missing_ok=True)
    registry_server.rotate(ws)
    registry.trust_on_controller(ws, registry.load(ws))
    assert certs.push(ws, certs.PushOptions(target="lab")).ok


def _node_certs(ws) -> dict[str, dict[str, str]]:
    """node -> {file in certs.d/ADDR: sha256}, read inside each node container (ADDR: the
    read-only endpoint, the one nodes pull from)."""
    addr = registry.load(ws).ro_address
    out = {}
    for node in NODES:
        cmd = ["sh", "-c", f"cd '/etc/docker/certs.d/{addr}' && sha256sum *"]
        code, text = exec_read(Nodes(ws).get(node), cmd)  # may answer empty: asked again
        assert code == 0, text
        out[node] = {ln.split()[1]: ln.split()[0] for ln in text.splitlines()}
    return out


def _pulls(ws) -> dict[str, str]:
    settings = registry.load(ws)
    ref = registry_server.probe_ref(settings.ro_address)
    run = run_playbook(ws, PULL, "lab", extravars={"probe_ref": ref})
    return {h: r.message or r.state for h, r in sorted(run.hosts.items())}


def test_every_node_pulls_after_every_phase_and_the_old_ca_is_gone(rotating):
    ws = rotating
    f = registry.files(ws)
    settings = registry.load(ws)
    old_pem = f.ca_cert.read_bytes()
    old_ca = ws.root / "old-ca.crt"
    old_ca.write_bytes(old_pem)
    old, seen = _sha(f.ca_cert), []

    def after(phase):
        served = {
            registry_api.served_certificate(address)["issuer"]
            for address in (settings.address, settings.ro_address)
        }  # both endpoints serve the same certificate in every phase
        seen.append((phase.name, phase.status, _pulls(ws), _node_certs(ws), served))

    result = certs.rotate_ca(ws, after_phase=after)
    assert result.ok and result.status == "complete" and not result.resumed
    assert result.targets == NODES
    new = _sha(f.ca_cert)
    assert new != old and result.new_ca["sha256"] != result.old_ca["sha256"]
    new_subject = pki.certificate_info(f.ca_cert)["subject"]
    old_subject = pki.certificate_info(old_pem)["subject"]
    ok = dict.fromkeys(NODES, "ok")
    both = dict.fromkeys(NODES, {"ca.crt": old, registry.NEXT_CA_NAME: new})
    assert seen == [
        ("trust-both", "success", ok, both, {old_subject}),
        ("switch-server", "success", ok, both, {new_subject}),
        ("drop-old", "success", ok, dict.fromkeys(NODES, {"ca.crt": new}), {new_subject}),
    ]
    # The rotation's own verification: a real pull on every node in every phase.
    verified = [sorted(h for h, r in p.hosts.items() if r["verified"]) for p in result.phases]
    assert verified == [NODES] * 3
    # The old CA no longer verifies the server; the new one alone does.
    base = f"https://{settings.address}/v2/"
    new_ca = ws.root / "new-ca.crt"  # urllib3-future keeps a TLS context per CA file name
    new_ca.write_bytes(f.ca_cert.read_bytes())
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(base, verify=str(old_ca), timeout=10)
    assert requests.get(base, verify=str(new_ca), timeout=10).status_code == 401
    verify = ["openssl", "verify", "-CAfile", str(old_ca), str(f.server_cert)]
    assert subprocess.run(verify, capture_output=True).returncode != 0
    assert pki.signed_by(f.server_cert, f.ca_cert)
    # Nothing of the rotation is left: workspace, controller's certs.d.
    assert not registry.rotation_pending(ws)
    assert sorted(p.name for p in f.root.glob("ca*")) == ["ca.crt", "ca.key"]
    assert [p.read_bytes() for p in f.root.glob("trust-*.pem")] == [f.ca_cert.read_bytes()]
    controller = registry.CERTS_D / settings.address
    assert sorted(p.name for p in controller.iterdir()) == ["ca.crt"]
    assert _sha(controller / "ca.crt") == new
    assert result.server_cert["sans"] == settings.hosts and result.server_cert["days_left"] >= 824
    checked = certs.check(ws, certs.CheckOptions(target="lab")).checks
    assert all(c.state == "ok" and c.trusts_current_ca for c in checked)


def test_failed_phase_stops_rolls_back_and_a_rerun_finishes(rotating, lab_env):
    """node2 loses the new CA right after phase 1: the switch fails on node2 alone, the
    registry goes back to the old certificate (so node2 still pulls), the rotation stops
    and says where; `rotate --new-ca` again (the CLI, --json) finishes with the same new
    CA, and no password or private key is in its output, the inventory, the database
    or the Ansible artifacts."""
    ws = rotating
    f = registry.files(ws)
    addr = registry.load(ws).ro_address
    old = _sha(f.ca_cert)

    def sabotage(phase):
        if phase.name == "trust-both":
            Nodes(ws).get("node2").exec_run(["rm", f"/etc/docker/certs.d/{addr}/ca-next.crt"])

    first = certs.rotate_ca(ws, after_phase=sabotage)
    assert first.status == "stopped" and first.stopped_at == "switch-server" and not first.ok
    assert first.failed == {"node2": "the node lacks the registry CA file: run `evc cert push`"}
    switch = first.phases[-1]
    assert {h: r["state"] for h, r in switch.hosts.items()} == {
        "node1": "ok", "node2": "failed", "node3": "ok"}  # fmt: skip
    assert switch.note == "rolled back: the old certificate is served again"
    assert first.next_steps[0].startswith(
        "stopped at phase switch-server (serve a certificate from the new CA): failed on "
        "node2 (the node lacks the registry CA file"
    )
    # Rolled back: the old CA's certificate is served and every node pulls.
    assert pki.signed_by(f.server_cert, f.ca_cert) and _sha(f.ca_cert) == old
    assert _pulls(ws) == dict.fromkeys(NODES, "ok")
    assert registry.rotation_pending(ws)
    pending = _sha(f.next_ca().ca_cert)
    status = evc("registry", "status", env=lab_env, check=0).stdout
    assert "a rotation to a new CA" in status and "is under way" in status
    refused = evc("registry", "rotate", env=lab_env, check=2)  # same-CA rotate must wait
    assert "finish it with `evc registry rotate --new-ca`" in refused.stderr

    proc = evc("registry", "rotate", "--new-ca", "--json", env=lab_env, check=0)
    again = json.loads(proc.stdout)
    assert again["ok"] is True and again["resumed"] is True and again["status"] == "complete"
    assert again["targets"] == NODES and again["unreachable"] == again["failed"] == {}
    assert [p["name"] for p in again["phases"]] == list(certs.PHASES)
    for p in again["phases"]:
        assert p["status"] == "success" and Path(p["artifacts_dir"]).is_dir()
        assert {h: r["verified"] for h, r in p["hosts"].items()} == dict.fromkeys(NODES, True)
    assert again["new_ca"]["sha256"] == pki.certificate_info(f.ca_cert)["sha256"]
    assert _sha(f.ca_cert) == pending and not registry.rotation_pending(ws)
    assert _node_certs(ws) == dict.fromkeys(NODES, {"ca.crt": pending})
    status = evc("registry", "status", env=lab_env, check=0).stdout
    assert "rotation to a new CA" not in status
    # No secret anywhere: the password, the nodes' pull key, and a line of each private key.
    password = f.password.read_text()
    keys = [f.ca_key.read_text().splitlines()[1], f.server_key.read_text().splitlines()[1],
            f.pull_key.read_text()]  # fmt: skip
    outputs = proc.stdout + proc.stderr + status + refused.stdout + refused.stderr
    assert not [s for s in (password, *keys) if s in outputs]
    assert not files_holding(ws, password, *keys)


def test_unreachable_node_is_named_and_catches_up_with_cert_push(rotating, lab_env):
    ws = rotating
    lab = Lab(ws)
    lab.stop("node3")
    try:
        proc = evc("registry", "rotate", "--new-ca", env=lab_env, check=1)
    finally:
        lab.start("node3")
    assert "done: the registry and 2 nodes use the new CA" in proc.stdout
    assert (
        "not moved to the new CA, so unable to pull until pushed: node3; "
        "run `evc cert push node3` when they are back" in proc.stdout
    )
    assert "node unreachable over SSH" in proc.stdout
    assert not registry.rotation_pending(ws)
    nodes = _node_certs(ws)
    new = _sha(registry.files(ws).ca_cert)
    assert nodes["node1"] == nodes["node2"] == {"ca.crt": new} and nodes["node3"]["ca.crt"] != new
    assert "certificate signed by unknown authority" in _pulls(ws)["node3"]
    assert certs.push(ws, certs.PushOptions(target="node3")).ok  # verified by a real pull
    assert _node_certs(ws)["node3"] == {"ca.crt": new}
