"""A node cannot write to the registry, and its pull credential is its own.

Every test works with exactly what a node holds: the logins in its
/root/.docker/config.json and the CA in its certs.d, used from inside the node (its
own python3-requests and Docker CLI, through `docker exec`) or, to see whether a
credential still pulls, from the controller.
"""

import base64
import json
import shlex

import requests

from evc import registry, registry_server
from evc.engine import docker_client
from evc.lab.fleet import Lab
from evc.lab.nodes import Nodes
from tests.conftest import evc
from tests.lab.conftest import on_node

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
# Run on a node: a request with the node's own login for CRED_ADDRESS, verified with
# the CA the node holds; prints the HTTP status.
_NODE_REQUEST = f"""
import base64, glob, json, sys
import requests
cred, method, url = sys.argv[1:4]
auth = json.load(open('/root/.docker/config.json'))['auths'][cred]['auth']
user, _, password = base64.b64decode(auth).decode().partition(':')
ca = glob.glob('/etc/docker/certs.d/*/ca.crt')[0]
r = requests.request(method, url, auth=(user, password), verify=ca, timeout=10,
                     headers={{'Accept': '{MANIFEST}'}})
print(r.status_code)
"""


def _exec(ws, node: str, *cmd: str) -> tuple[int, str]:
    res = Nodes(ws).get(node).exec_run(list(cmd))
    return res.exit_code, res.output.decode(errors="replace")


def _logins(ws, node: str) -> dict[str, tuple[str, str]]:
    """address -> (user, password): the registry logins the node holds."""
    code, out = on_node(ws, node, "cat", "/root/.docker/config.json")
    auths = json.loads(out).get("auths", {}) if code == 0 else {}
    return {
        address: tuple(base64.b64decode(a["auth"]).decode().split(":", 1))
        for address, a in auths.items()
    }


def _pulls(ws, address: str, login: tuple[str, str]) -> int:
    """HTTP status of a manifest GET of the probe with ``login`` (from the controller)."""
    url = f"https://{address}/v2/{registry_server.PROBE_REPO}/manifests/{registry_server.PROBE_TAG}"
    response = requests.get(
        url, auth=login, verify=str(registry.trusted_cas(ws)), headers={"Accept": MANIFEST},
        timeout=10,
    )  # fmt: skip
    return response.status_code


def _started(ws) -> dict[str, str]:
    """When each registry container last started (a restart changes it)."""
    client = docker_client()
    return {
        name: client.containers.get(name).attrs["State"]["StartedAt"]
        for name in (registry_server.container_name(ws), registry_server.ro_container_name(ws))
    }


def _probe(ws):
    api = registry.api(ws)
    return api.tags(registry_server.PROBE_REPO), api.manifest_digest(
        registry_server.PROBE_REPO, registry_server.PROBE_TAG
    )


def test_a_node_cannot_push_or_delete_with_what_it_holds(trusted, lab_env):
    """node1 first holds what an older EVC gave every node (the read-write `evc` login
    and the CA for that endpoint): `cert push` takes both away. Then, with the login it
    holds, a push and a delete are refused on both endpoints: on the read-write one its
    credential is not valid (401), the read-only one refuses every write (405). The
    probe in the registry is untouched."""
    ws = trusted
    settings, f = registry.load(ws), registry.files(ws)
    rw = settings.address
    legacy = base64.b64encode(f"evc:{f.password.read_text()}".encode()).decode()
    plant = (
        f"mkdir -p /etc/docker/certs.d/{rw} && cp /etc/docker/certs.d/*/ca.crt "
        f'/etc/docker/certs.d/{rw}/ 2>/dev/null; python3 -c "import json; p='
        f"'/root/.docker/config.json'; c=json.load(open(p)); "
        f"c['auths']['{rw}']={{'auth': '{legacy}'}}; json.dump(c, open(p, 'w'))\""
    )
    assert _exec(ws, "node1", "sh", "-c", plant)[0] == 0
    evc("cert", "push", "node1", env=lab_env, check=0)
    logins = _logins(ws, "node1")

    tags, digest = _probe(ws)
    endpoints = {rw, settings.ro_address, *logins}
    status = {}
    for cred in logins:
        for address in endpoints:
            base = f"https://{address}/v2/{registry_server.PROBE_REPO}"
            for method, url in (("POST", f"{base}/blobs/uploads/"),
                                ("DELETE", f"{base}/manifests/{digest}")):  # fmt: skip
                code, out = _exec(ws, "node1", "python3", "-c", _NODE_REQUEST, cred, method, url)
                assert code == 0, out
                status[address, method] = int(out.split()[-1])
            # and the Docker CLI: a push of a new tag
            ref = f"{address}/{registry_server.PROBE_REPO}:pwned"
            _exec(ws, "node1", "docker", "tag", "evc/probe:1", ref)
            # to a file, then read: docker-py can lose an exec's last output (exec_read)
            push = f"docker push {shlex.quote(ref)} >/tmp/push.log 2>&1; echo $? >>/tmp/push.log"
            _exec(ws, "node1", "sh", "-c", push)
            code, out = on_node(ws, "node1", "cat", "/tmp/push.log")
            assert code == 0 and out.splitlines()[-1] != "0", f"node1 pushed {ref}: {out}"
            out = "\n".join(out.splitlines()[:-1])
            status[address, "docker push"] = out.strip().splitlines()[-1]
    assert {k: v for k, v in status.items() if isinstance(v, int) and v < 400} == {}
    assert _probe(ws) == (tags, digest) == ([registry_server.PROBE_TAG], digest)
    ro = settings.ro_address
    assert status[rw, "POST"] == status[rw, "DELETE"] == 401  # not a credential there
    assert status[ro, "POST"] == status[ro, "DELETE"] == 405  # no writes at all
    assert "405" in status[ro, "docker push"] or "not allowed" in status[ro, "docker push"]
    assert "unknown authority" in status[rw, "docker push"]  # the node does not even trust it
    # What the node holds: a login for the read-only endpoint, as itself, and its CA.
    assert list(logins) == [ro] and logins[ro][0] == "node1"
    assert on_node(ws, "node1", "ls", "/etc/docker/certs.d")[1].split() == [ro]


def test_cert_revoke_kills_that_nodes_credential_at_once(trusted, lab_env):
    """node2's credential, taken from the node, pulls; after `cert revoke node2` it gets
    401 at the next request (no registry restart) while node1's still pulls. A new push
    gives node2 a new credential, never the old one back."""
    ws = trusted
    [(address, node2)] = _logins(ws, "node2").items()
    [(_, node1)] = _logins(ws, "node1").items()
    assert _pulls(ws, address, node2) == _pulls(ws, address, node1) == 200
    started = _started(ws)
    evc("cert", "revoke", "node2", env=lab_env, check=0)
    assert _pulls(ws, address, node2) == 401
    assert _pulls(ws, address, node1) == 200
    assert _started(ws) == started  # no restart: the registry read its htpasswd again
    assert node1[0] == "node1" and node2[0] == "node2" and node1[1] != node2[1]
    assert _logins(ws, "node2") == {}  # logged out on the node too
    evc("cert", "push", "node2", env=lab_env, check=0)
    [(_, renewed)] = _logins(ws, "node2").items()
    assert renewed[1] != node2[1] and _pulls(ws, address, renewed) == 200
    assert _pulls(ws, address, node2) == 401


def test_device_remove_kills_its_credential(trusted, lab_env):
    ws = trusted
    [(address, node3)] = _logins(ws, "node3").items()
    [(_, node1)] = _logins(ws, "node1").items()
    assert _pulls(ws, address, node3) == 200
    try:
        evc("device", "remove", "node3", env=lab_env, check=0)
        assert _pulls(ws, address, node3) == 401  # the node still holds it: useless now
        assert _pulls(ws, address, node1) == 200
        status = json.loads(evc("registry", "status", "--json", env=lab_env, check=0).stdout)
        assert status["read_only"]["devices"] == ["node1", "node2"]
    finally:
        Lab(ws).register()  # node3 is a device again
        evc("cert", "push", "node3", env=lab_env, check=0)
    [(_, again)] = _logins(ws, "node3").items()
    assert _pulls(ws, address, again) == 200 and again != node3
