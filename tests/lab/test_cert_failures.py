"""Why a node cannot use the registry, per host and in plain words, from `evc cert push`
and `evc cert check`: wrong password, expired or not-yet-valid server certificate,
certificate for other names, unknown authority, registry down, node unreachable.

Each test breaks one thing for real (a certificate written into the lab workspace and
the registry restarted, the registry stopped, a node stopped), checks the per-host
reason and the exit code, checks that nothing else changed, and puts the good state
back in a ``finally``: the session lab is shared with the other test files.
"""

import datetime as dt
import hashlib
import json
import time

import pytest

from evc import pki, registry, registry_api, registry_server
from evc.engine import docker_client
from evc.lab.fleet import Lab
from evc.lab.nodes import Nodes, exec_read
from tests.conftest import evc, files_holding

NODES = ["node1", "node2", "node3"]


def _serve(ws):
    """Restart both registry endpoints on their files as they are now and wait until they
    serve them (unverified: they are meant to fail)."""
    want = pki.certificate_info(registry.files(ws).server_cert)["sha256"]
    settings = registry.load(ws)
    for name in (registry_server.container_name(ws), registry_server.ro_container_name(ws)):
        docker_client().containers.get(name).restart(timeout=5)
    deadline = time.monotonic() + 30
    for address in (settings.address, settings.ro_address):
        while (registry_api.served_certificate(address) or {}).get("sha256") != want:
            assert time.monotonic() < deadline, "the registry does not serve its new files"
            time.sleep(0.3)


def _state(ws):
    """What a failed push or check must not change: workspace registry files (the pull
    credentials' too), node certs.d and logins."""
    f = registry.files(ws)
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in f.root.rglob("*")
             if p.is_file() and p.name != "pull.lock"}  # fmt: skip
    addr = registry.load(ws).ro_address
    nodes = {}
    for c in Nodes(ws).containers():
        if c.status == "running":
            # one stream: docker exec may deliver stdout and stderr frames in either order
            cmd = (f"(cd '/etc/docker/certs.d/{addr}' && sha256sum * "
                   "&& cat /root/.docker/config.json) 2>&1")  # fmt: skip
            nodes[c.name] = exec_read(c, ["sh", "-c", cmd])[1]
    return files, nodes


def _unchanged(ws, before) -> None:
    """Assert that :func:`_state` is as ``before``, naming each file or node that changed
    with both values in full (pytest cuts a long comparison short)."""
    after = _state(ws)
    changed = [
        f"{name}: before {part[name]!r}, now {now.get(name)!r}"
        for part, now in zip(before, after, strict=True)
        for name in sorted(set(part) | set(now))
        if part.get(name) != now.get(name)
    ]
    assert not changed, "\n".join(changed)


def _push_and_check(env, target="lab", check_too=True):
    """(`cert push --json` per host, `cert check --json` per host); both must exit 1."""
    push = evc("cert", "push", target, "--json", env=env, check=1)
    pushed = {h: (r["state"], r["message"]) for h, r in json.loads(push.stdout)["hosts"].items()}
    if not check_too:
        return pushed, None, push.stdout + push.stderr
    chk = evc("cert", "check", target, "--json", env=env, check=1)
    checked = {c["host"]: (c["state"], c["message"]) for c in json.loads(chk.stdout)}
    return pushed, checked, push.stdout + push.stderr + chk.stdout + chk.stderr


def _when(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


def _this_minute() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)


# Each bad certificate: written into the workspace; returns (target, the reason expected).


def _expired(ws, tmp_path):
    start = _this_minute() - dt.timedelta(days=40)
    pki.make_server_cert(registry.files(ws), registry.load(ws).hosts, 10, valid_from=start)
    end = _when(start + dt.timedelta(days=10))
    return "lab", f"server certificate expired on {end} (renew it: `evc registry rotate`)"


def _not_yet_valid(ws, tmp_path):
    start = _this_minute() + dt.timedelta(days=3)
    pki.make_server_cert(registry.files(ws), registry.load(ws).hosts, 30, valid_from=start)
    return "node3", f"server certificate is not valid before {_when(start)}"


def _for_other_names(ws, tmp_path):
    pki.make_server_cert(registry.files(ws), ["registry.example.invalid", "10.9.9.9"], 30)
    names = "registry.example.invalid, 10.9.9.9"
    return "node2", f"certificate is for other names ({names}), not {registry.load(ws).hosts[0]}"


def _from_an_unknown_authority(ws, tmp_path):
    f, other = registry.files(ws), pki.RegistryFiles(tmp_path)
    pki.make_ca(other)
    pki.make_server_cert(other, registry.load(ws).hosts, 30)
    f.server_cert.write_bytes(other.server_cert.read_bytes())
    f.server_key.write_bytes(other.server_key.read_bytes())
    issuer = pki.certificate_info(other.ca_cert)["subject"]
    return "node1", (
        f"unknown authority: the registry's certificate (issued by {issuer}) is not signed by "
        "a CA the node trusts; run `evc cert push`"
    )


@pytest.mark.parametrize(
    "bad", [_expired, _not_yet_valid, _for_other_names, _from_an_unknown_authority]
)
def test_bad_server_certificate(trusted, lab_env, tmp_path, bad):
    """The registry serves a bad certificate: every targeted node fails with the reason,
    in `cert push` and `cert check` alike, and nothing changes."""
    ws = trusted
    try:
        target, why = bad(ws, tmp_path)
        _serve(ws)
        before = _state(ws)
        pushed, checked, _ = _push_and_check(lab_env, target)
        hosts = NODES if target == "lab" else [target]
        assert pushed == checked == dict.fromkeys(hosts, ("failed", why))
        _unchanged(ws, before)
    finally:
        registry_server.rotate(ws)  # a good certificate again


def test_wrong_password(trusted, lab_env):
    """The read-only endpoint accepts none of the nodes' credentials (its htpasswd holds
    other ones: read again at the next request, no restart). node1, node3 logged in before
    (the stale login is refused at the pull); node2 logs in afresh (the login itself is
    refused). The same reason either way, and no secret. node2 logs in again with the
    next push."""
    ws = trusted
    f = registry.files(ws)
    key = f.pull_key.read_text()
    htpasswd = pki.read_htpasswd(f.pull_htpasswd)
    other = {n: pki.bcrypt_hash("an-other-password-for-the-test", 5) for n in NODES}
    Nodes(ws).get("node2").exec_run(["rm", "-f", "/root/.docker/config.json"])
    try:
        pki.write_htpasswd(f.pull_htpasswd, other)
        before = _state(ws)
        pushed, _, output = _push_and_check(lab_env, check_too=False)
        assert pushed == dict.fromkeys(NODES, ("failed", "registry refused the credentials (401)"))
        _unchanged(ws, before)
        # The secret is in no output, artifact, inventory or database row.
        assert key not in output and not files_holding(ws, key, f.password.read_text())
    finally:
        pki.write_htpasswd(f.pull_htpasswd, htpasswd)


def test_registry_down(trusted, lab_env):
    ws = trusted
    settings = registry.load(ws)
    address = settings.address
    names = (registry_server.container_name(ws), registry_server.ro_container_name(ws))
    containers = [docker_client().containers.get(name) for name in names]
    try:
        for container in containers:
            container.stop(timeout=2)
        before = _state(ws)
        pushed, checked, _ = _push_and_check(lab_env)
        why = f"registry not answering at {settings.ro_address} (connection refused)"
        assert pushed == checked == dict.fromkeys(NODES, ("failed", why))
        # A rotation to a new CA stops before it makes one.
        rotate = evc("registry", "rotate", "--new-ca", env=lab_env, check=1)
        assert f"The registry https://{address}/v2/ does not answer" in rotate.stderr
        _unchanged(ws, before)
        assert not registry.rotation_pending(ws)
    finally:
        registry_server.up(ws)


def test_node_unreachable(trusted, lab_env):
    """A stopped node is reported by name; the others are pushed and checked as usual."""
    ws = trusted
    lab = Lab(ws)
    try:
        lab.stop("node3")
        push = evc("cert", "push", "lab", "--json", env=lab_env, check=1)
        hosts = json.loads(push.stdout)["hosts"]
        states = {h: r["state"] for h, r in hosts.items()}
        assert states.pop("node3") == "unreachable"
        assert set(states.values()) <= {"ok", "changed"}  # node2 logs in again: changed
        why = hosts["node3"]["message"]
        assert why in (
            "node unreachable over SSH (connection timed out)",
            "node unreachable over SSH (no route to host)",
        )
        assert hosts["node1"]["message"] is hosts["node2"]["message"] is None
        chk = evc("cert", "check", "lab", env=lab_env, check=1)  # the table, this time
        rows = {ln.split()[1]: ln for ln in chk.stdout.splitlines() if "│ node" in ln}
        assert "unreachable" in rows["node3"] and why in rows["node3"]
        assert all("ok" in rows[n] and "yes" in rows[n] for n in ("node1", "node2"))
    finally:
        lab.start("node3")
