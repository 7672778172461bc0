"""`evc queue up|down|status` and the ACLs, against a real redis-server on loopback.

The ACL test plants what a stolen node's credential would try: another job's stream,
writing work or another node's results, KEYS/FLUSHALL/CONFIG/DEL/EVAL/ACL, and using a
revoked credential.
"""

from __future__ import annotations

import json
import ssl
import stat

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from evc import pki, pull_credentials, registry
from evc.config import Workspace
from evc.queue import acl, server
from evc.queue.files import files
from evc.queue.streams import GROUP, announce_key, results_key, work_key
from tests.conftest import evc
from tests.unit import queue_support as qs


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    with qs.running(tmp_path_factory.mktemp("queue") / "ws") as ws:
        yield ws


ONCE = Retry(NoBackoff(), 0)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_up_twice_changes_nothing_down_stops_and_no_secret_is_exposed(tmp_path):
    ws = qs.make_workspace(tmp_path / "ws")
    env = {"EVC_HOME": str(ws.root)}
    first = json.loads(evc("queue", "up", "--json", env=env, check=0).stdout)
    assert first["state"] == "running" and first["changed"] and first["version"] >= "7"
    assert set(first["users"]) == {"default", acl.ADMIN, *qs.WORKERS}  # node3: no credential
    again = server.up(ws)
    assert again.pid == first["pid"] and not again.changed and again.ok
    f = files(ws)
    for secret in (f.config, f.acl, f.admin_password, f.server_key, f.grants.parent):
        assert _mode(secret) in (0o600, 0o700), secret
    password = acl.admin_password(ws)
    cmdline = open(f"/proc/{first['pid']}/cmdline", "rb").read().decode()
    for place in (f.config.read_text(), f.acl.read_text(), cmdline):
        assert password not in place
    assert "port 0\n" in f.config.read_text() and "protected-mode yes" in f.config.read_text()
    assert pki.signed_by(f.server_cert, registry.files(ws).ca_cert)
    assert "running" in evc("queue", "status", env=env, check=0).stdout
    # A changed setting restarts it with the new config.
    with (ws.root / "evc.yaml").open("a") as fh:
        fh.write("  maxmemory_mb: 64\n")
    ws = Workspace.load(ws.root)
    restarted = server.up(ws)
    assert restarted.changed and restarted.pid != first["pid"] and restarted.ok
    assert server.admin(ws).config_get("maxmemory") == {"maxmemory": str(64 << 20)}
    down = json.loads(evc("queue", "down", "--json", env=env, check=0).stdout)
    assert down == {"stopped": True, "pid": restarted.pid}
    assert not f.pid.exists() and not server._alive(restarted.pid)
    assert server.status(ws).state == "stopped" and server.status(ws).exit_code == 1
    assert not server.down(ws).stopped


def test_up_needs_the_workspace_ca(tmp_path):
    from evc.config import init_workspace

    ws = init_workspace(tmp_path / "ws")
    proc = evc("queue", "up", env={"EVC_HOME": str(ws.root)}, check=2)
    assert "evc registry init" in proc.stderr and "Traceback" not in proc.stderr


def test_plaintext_wrong_ca_and_anonymous_clients_are_refused(ws, tmp_path):
    host, port = server.address(ws)
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host=host, port=port, socket_timeout=1, retry=ONCE).ping()
    other = pki.RegistryFiles(tmp_path)
    pki.make_ca(other)
    stranger = redis.Redis(
        host=host, port=port, ssl=True, ssl_ca_certs=str(other.ca_cert), retry=ONCE,
        socket_timeout=2, username=acl.ADMIN, password=acl.admin_password(ws),
    )  # fmt: skip
    with pytest.raises(redis.ConnectionError) as caught:
        stranger.ping()
    assert "certificate verify failed" in str(caught.value)
    anonymous = redis.Redis(
        host=host, port=port, ssl=True, ssl_ca_certs=str(registry.trusted_cas(ws)),
        ssl_cert_reqs=ssl.CERT_REQUIRED, socket_timeout=2, retry=ONCE,
    )  # fmt: skip
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()  # as `default`: off
    with pytest.raises(redis.AuthenticationError):
        server.client(ws, "default", "anything", retries=0).ping()
    with pytest.raises(redis.AuthenticationError):
        server.client(ws, acl.ADMIN, "not-the-password", retries=0).ping()
    assert server.admin(ws).ping()


def _refused(call) -> str:
    with pytest.raises((redis.exceptions.NoPermissionError, redis.AuthenticationError)) as c:
        call()
    return str(c.value)


def test_a_device_user_reaches_only_its_jobs_work_and_its_own_results(ws):
    r = server.admin(ws, retries=0)
    bystander = qs.device(ws, "node5", retries=0)
    assert bystander.ping() and r.ping()
    acl.grant(ws, "j1", ["node1", "node4"])
    acl.grant(ws, "j2", ["node2"])
    assert server.sync_acl(ws) and not server.sync_acl(ws)  # changed once, then kept
    # User by user, not ACL LOAD: other users' connections (the controller's, another
    # job's workers) stay open (no retries: a closed one would raise).
    assert bystander.ping() and r.ping()
    for job in ("j1", "j2"):
        r.delete(work_key(job))
        r.xgroup_create(work_key(job), GROUP, id="0", mkstream=True)
        r.xadd(work_key(job), {"shard": "0", "items": "[]"})
    node1 = qs.device(ws, "node1")
    entries = node1.xreadgroup(GROUP, "node1", {work_key("j1"): ">"}, count=1)
    entry = entries[0][1][0][0]
    assert node1.xadd(results_key("j1", "node1"), {"entry": entry, "results": "[]"})
    assert node1.xack(work_key("j1"), GROUP, entry) == 1
    attempts = {
        "another job's work": lambda: node1.xreadgroup(GROUP, "node1", {work_key("j2"): ">"}),
        "another job's pending": lambda: node1.xautoclaim(work_key("j2"), GROUP, "node1", 0),
        "writing work": lambda: node1.xadd(work_key("j1"), {"shard": "9", "items": "[]"}),
        "another node's results": lambda: node1.xadd(results_key("j1", "node4"), {"a": "b"}),
        "results of a job not granted": lambda: node1.xadd(results_key("j2", "node1"), {"a": "b"}),
        "reading results": lambda: node1.xrange(results_key("j1", "node1")),
        "KEYS": lambda: node1.keys("*"),
        "SCAN": lambda: node1.scan(),
        "FLUSHALL": lambda: node1.flushall(),
        "CONFIG": lambda: node1.config_get("*"),
        "CONFIG SET": lambda: node1.config_set("dir", "/tmp"),
        "DEL": lambda: node1.delete(work_key("j1")),
        "XGROUP DESTROY": lambda: node1.xgroup_destroy(work_key("j1"), GROUP),
        "XTRIM": lambda: node1.xtrim(work_key("j1"), maxlen=0),
        "EVAL": lambda: node1.eval("return redis.call('flushall')", 0),
        "ACL": lambda: node1.acl_list(),
        "SHUTDOWN": lambda: node1.shutdown(),
        "SUBSCRIBE/PUBLISH": lambda: node1.publish("evc", "x"),
        # It names its own connection (what its puller serves), nothing more: it can
        # neither see who else is connected nor cut another node's puller.
        "CLIENT LIST": lambda: node1.client_list(),
        "CLIENT KILL": lambda: node1.client_kill_filter(user="node4"),
        "CLIENT INFO": lambda: node1.client_info(),
    }
    assert node1.client_setname("evc-pull:ready:faces:1.0:x")
    for what, call in attempts.items():
        assert "no permissions" in _refused(call), what
    assert r.xlen(work_key("j1")) == 1 and r.ping()  # nothing was destroyed
    # node3 is enrolled but holds no credential: no user at all.
    with pytest.raises(redis.AuthenticationError):
        server.client(
            ws, "node3", acl.device_password(pull_credentials.key(ws), "node3", "x")
        ).ping()
    # Revoking the device's credential ends its user: the open connection is cut and
    # the same password no longer logs in.
    node4 = qs.device(ws, "node4")
    assert node4.ping()
    try:
        pull_credentials.revoke(ws, ["node4"])
        assert server.sync_acl(ws)
        with pytest.raises((redis.AuthenticationError, redis.ConnectionError)):
            node4.ping()
    finally:
        pull_credentials.issue(ws, ["node4"])
        acl.grant(ws, "j1", [])
        acl.grant(ws, "j2", [])
        server.sync_acl(ws)
    # Released jobs: the device is back to PING only.
    assert "no permissions" in _refused(
        lambda: node1.xreadgroup(GROUP, "node1", {work_key("j1"): ">"})
    )


def test_bad_job_ids_and_device_names_never_reach_the_acl_file(ws):
    from evc.errors import UsageError

    for job, devices in (("j*", ["node1"]), ("a b", ["node1"]), ("j1", ["node1 ~*"])):
        with pytest.raises(UsageError):
            acl.grant(ws, job, devices)
    assert "~*" not in files(ws).acl.read_text().split(acl.ADMIN)[1].split("\n", 1)[1]


def test_a_device_reads_its_own_announcements_only_and_writes_none(ws):
    """Planted: a node reading another node's announcements (which jobs it runs, their
    models) and a node forging or deleting announcements, its own included."""
    r = server.admin(ws, retries=0)
    for device in ("node1", "node2"):
        r.xadd(announce_key(device), {"job": f"job-{device}", "model": "m", "version": "1"})
    node1 = qs.device(ws, "node1")
    own = node1.xread({announce_key("node1"): "0-0"}, count=10)
    assert [f[b"job"] for _, f in own[0][1]] == [b"job-node1"]
    assert [f[b"job"] for _, f in node1.xrange(announce_key("node1"))] == [b"job-node1"]
    entry = own[0][1][0][0]
    attempts = {
        "another node's announcements": lambda: node1.xread({announce_key("node2"): "0-0"}),
        "another node's, by XRANGE": lambda: node1.xrange(announce_key("node2")),
        "announcing to itself": lambda: node1.xadd(announce_key("node1"), {"job": "x"}),
        "announcing to another": lambda: node1.xadd(announce_key("node2"), {"job": "x"}),
        "deleting its announcement": lambda: node1.xdel(announce_key("node1"), entry),
        "trimming them": lambda: node1.xtrim(announce_key("node1"), maxlen=0),
        "DEL": lambda: node1.delete(announce_key("node1")),
        "a consumer group on them": lambda: node1.xgroup_create(announce_key("node1"), "g"),
    }
    for what, call in attempts.items():
        assert "no permissions" in _refused(call), what
    assert r.xlen(announce_key("node1")) == 1 and r.xlen(announce_key("node2")) == 1
    r.delete(announce_key("node1"), announce_key("node2"))
