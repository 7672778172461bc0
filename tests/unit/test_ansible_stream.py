"""A run through ansible-runner's ``transmit | worker | process`` for real: the worker is
``ansible-runner worker`` in a child process (loopback), ansible-playbook runs there
against local-connection hosts, and the controller gets the result a local run gives."""

import hashlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from evc import inventory
from evc.ansible import run_playbook
from evc.db import workspace_db
from evc.errors import EVCError
from evc.inventory import InventoryHost
from evc.keys import controller_key
from tests.conftest import files_holding
from tests.unit.test_ansible_run import LOCAL, PLAYBOOKS, ProcWatch, payload

BIN = Path(sys.executable).parent


def loopback(pdd: Path | None = None) -> list[str]:
    """``ansible-runner worker`` in a child process, with this venv's ansible-playbook."""
    where = ["--private-data-dir", str(pdd)] if pdd else []
    path = f"PATH={BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return ["env", path, str(BIN / "ansible-runner"), "worker", *where]


@pytest.fixture
def two(workspace):
    site = {"site": "{{ lookup('env', 'HOME') }}"}
    hosts = [InventoryHost(n, f"127.0.0.{i}", labels=site) for i, n in ((1, "box"), (2, "box2"))]
    inventory.write(workspace.inventory, hosts, {**LOCAL, "evc_note": "a {{ note }}"})
    return workspace


TIMES = ("start", "end", "delta")  # of a command's result: when it ran


def comparable(run):
    """Per-host results less the times a command ran."""
    out = {}
    for host, r in run.hosts.items():
        outputs = {t: {k: v for k, v in o.items() if k not in TIMES} for t, o in r.outputs.items()}
        out[host] = {**vars(r), "outputs": outputs}
    return out


def test_a_streamed_run_gives_what_a_local_run_gives(two, tmp_path):
    """Same hosts, states, counters and outputs (templates in the values still arrive as
    text: the inventory's unsafe marks survive the trip); the events and artifacts are on
    the controller, the run is recorded, and ansible-playbook ran in the worker's folder."""
    marker = tmp_path / "marker"
    values = {"evc_value": payload(marker), "evc_nested": {"inner": [payload(marker)]}}
    book = str(PLAYBOOKS / "values.yml")
    local = run_playbook(two, book, "all", extravars=values)
    worker_dir = tmp_path / "worker"
    streamed = run_playbook(two, book, "all", extravars=values, worker=loopback(worker_dir))
    assert local.ok and streamed.ok, streamed.hosts
    assert comparable(streamed) == comparable(local)
    assert sorted(streamed.hosts) == ["box", "box2"] and not marker.exists()
    arts = Path(streamed.artifacts_dir)
    assert arts.parent == Path(local.artifacts_dir).parent and arts.name == streamed.ident
    assert len(list((arts / "job_events").glob("*.json"))) >= 8
    assert (arts / "rc").read_text().strip() == "0"
    command = json.loads((arts / "command").read_text())
    assert command["cwd"] == str(worker_dir / "project")
    rows = list(workspace_db(two)["ansible_runs"].rows_where("id = ?", [streamed.ident]))
    assert len(rows) == 1 and rows[0]["status"] == "success"


def test_a_failing_host_fails_the_same_way(two, tmp_path):
    book = tmp_path / "fail.yml"
    task = {
        "name": "only box2",
        "ansible.builtin.fail": {"msg": "no"},
        "when": "inventory_hostname == 'box2'",
    }
    book.write_text(json.dumps([{"hosts": "all", "gather_facts": False, "tasks": [task]}]))
    local = run_playbook(two, str(book), "all")
    streamed = run_playbook(two, str(book), "all", worker=loopback())
    assert streamed.status == local.status == "partial"
    assert comparable(streamed) == comparable(local)
    assert streamed.hosts["box2"].message == "no" and streamed.rc == local.rc == 2


def test_a_secret_travels_in_the_stream_only(two, tmp_path):
    """The vars_prompt answer reaches the play through the worker's pty; it is in no file
    on the controller or in the worker's folder, and in no process's arguments or
    environment (it is in the stream's first line: the pipe, in memory)."""
    secret = "s3cret-" + os.urandom(8).hex() + payload(tmp_path / "marker")
    worker_dir = tmp_path / "worker"
    with ProcWatch(secret) as watch:
        run = run_playbook(
            two, str(PLAYBOOKS / "secret.yml"), "box", secrets={"evc_test_secret": secret},
            worker=loopback(worker_dir),
        )  # fmt: skip
    assert run.ok, run.hosts["box"].message
    assert run.hosts["box"].outputs["digest"]["msg"] == hashlib.sha256(secret.encode()).hexdigest()
    assert files_holding(two, secret) == []
    assert files_holding(two, secret, places=[worker_dir]) == []
    assert watch.scans > 10 and watch.seen == set()


def test_the_ssh_key_goes_to_the_worker_not_its_path(two, tmp_path):
    """The inventory's key path (a controller path) is replaced by the key itself, for the
    worker's ssh-agent; the inventory the worker gets names the known_hosts it carries."""
    key, _ = controller_key(two)
    hosts = [InventoryHost("box", "127.0.0.1")]
    inventory.write(two.inventory, hosts, {**LOCAL, "ansible_ssh_private_key_file": str(key)})
    worker_dir = tmp_path / "worker"
    run = run_playbook(two, "ping.yml", "box", worker=loopback(worker_dir))
    assert run.ok, run.hosts
    sent = json.loads((worker_dir / "inventory" / "hosts.yml").read_text())["all"]["vars"]
    assert "ansible_ssh_private_key_file" not in sent
    assert sent["ansible_ssh_common_args"].endswith("{{ inventory_dir }}/known_hosts")
    assert (worker_dir / "inventory" / "known_hosts").exists()
    assert not (worker_dir / "env" / "ssh_key").exists()
    command = json.loads((Path(run.artifacts_dir) / "command").read_text())
    assert command["command"][0] == "ssh-agent"  # ansible-runner fed it the key


def test_a_worker_that_cannot_run_says_why(two):
    with pytest.raises(EVCError, match=r"did not run ping.yml.*\n.*no execution node here"):
        run_playbook(two, "ping.yml", "all", worker=["sh", "-c", "echo no execution node here >&2"])
    with pytest.raises(EVCError, match="cannot start the worker"):
        run_playbook(two, "ping.yml", "all", worker=["/nonexistent/ansible-runner", "worker"])


def test_ctrl_c_during_a_streamed_run_ends_the_worker(two, tmp_path):
    """The worker runs in a session of its own (a terminal's Ctrl-C reaches EVC only);
    EVC's cancel ends it, the run stops at once and the Ctrl-C then reaches the caller."""
    kept = signal.signal(signal.SIGINT, signal.default_int_handler)
    pids = tmp_path / "pid"
    command = ["sh", "-c", f'echo $$ > {pids}; exec "$@"', "sh", *loopback()]
    try:
        timer = threading.Timer(4.0, os.kill, [os.getpid(), signal.SIGINT])
        timer.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            run_playbook(
                two, str(PLAYBOOKS / "artifacts_kept.yml"), "box",
                extravars={"evc_sleep": "60"}, worker=command,
            )  # fmt: skip
        assert time.monotonic() - started < 30
        with pytest.raises(ProcessLookupError):
            os.kill(int(pids.read_text()), 0)
    finally:
        signal.signal(signal.SIGINT, kept)


HOSTILE = r"""
import io, json, sys, zipfile
from ansible_runner.utils.base64io import Base64IO
target, out = sys.argv[1], sys.stdout.buffer
sys.stdin.buffer.read()
up = "/".join([".."] * 40)
def line(d):
    out.write(json.dumps(d).encode() + b"\n")
line({"status": "starting"})
line({"status": "running"})
line({"event": "verbose", "counter": f"{up}{target}/planted-by-event", "uuid": "u", "stdout": ""})
zipped = io.BytesIO()
with zipfile.ZipFile(zipped, "w") as z:
    link = zipfile.ZipInfo("evil")
    link.external_attr = (0o120777) << 16
    z.writestr(link, target)
    z.writestr("evil/planted-by-zip", "owned")
    z.writestr("rc", "0")
    z.writestr("status", "successful")
line({"status": "successful"})
line({"zipfile": len(zipped.getvalue())})
with Base64IO(out) as enc:
    enc.write(zipped.getvalue())
line({"eof": True})
"""


def test_a_hostile_worker_writes_nothing_outside_its_run_folder(two, tmp_path):
    """What a worker sends back is data: an event whose counter is a path, and an
    artifacts zip with a link to a folder and a file under that link (ansible-runner's
    own unpacking writes through it), plant nothing on the controller."""
    target = tmp_path / "target"
    target.mkdir()
    run = run_playbook(two, "ping.yml", "all", worker=[sys.executable, "-c", HOSTILE, str(target)])
    assert sorted(p.name for p in target.iterdir()) == []
    arts = Path(run.artifacts_dir)
    assert not (arts / "evil").exists() and not (arts / "evil").is_symlink()
    assert (arts / "rc").read_text() == "0" and run.rc == 0
