"""The warm Ansible server (evc.ansible_warm) for real: runs forked from it give what a
fresh ansible-playbook gives, take their own per-run settings, fall back to a fresh
start when a setting read at import differs, answer a secret's prompt on their own
terminal, and end when ansible-runner kills them."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from evc import ansible_warm, inventory
from evc.ansible import run_playbook
from evc.inventory import InventoryHost

PLAYBOOK_DIR = Path(__file__).parent / "playbooks"
PLAYBOOK = str(PLAYBOOK_DIR / "warm.yml")
PLUGINS = PLAYBOOK_DIR / "filter_plugins_elsewhere"
LOCAL = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}


def _until(check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.1)
    return got


def _answers() -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(ansible_warm.folder() / "sock"))
        except OSError:
            return False
    return True


def _said(ident: str, ended: bool = False) -> list[list[str]]:
    """What the server's log says of run ``ident``: [its worker's pid, warm] or [pid,
    cold: the settings that differed]; ``ended``: [pid, ended STATUS CPU-S] instead."""
    log = (ansible_warm.folder() / "server.log").read_text()
    said = [line.split(" ", 2)[::2] for line in log.splitlines() if f" {ident} " in line]
    return [s for s in said if s[1].startswith("ended") == ended]


@pytest.fixture
def warm(workspace, monkeypatch):
    """A workspace with one host, ``box`` (this machine, no SSH), and a server that
    answers (the first run without one starts it)."""
    monkeypatch.delenv("EVC_ANSIBLE_SERVER", raising=False)
    inventory.write(workspace.inventory, [InventoryHost("box", "127.0.0.1")], LOCAL)
    if not _answers():
        run_playbook(workspace, PLAYBOOK, "box")
        _until(_answers, "server")
    return workspace


def _view(run) -> dict:
    return {h: (r.state, r.outputs["say"]["msg"]) for h, r in run.hosts.items()}


def test_a_run_through_the_server_gives_what_a_fresh_start_gives(warm, monkeypatch):
    served = run_playbook(warm, PLAYBOOK, "box")
    assert [mode for _, mode in _said(served.ident)] == ["warm"]
    ((_, ended),) = _said(served.ident, ended=True)
    assert ended.split()[1] == "0" and float(ended.split()[2]) > 0  # exit 0, CPU-s
    monkeypatch.setenv("EVC_ANSIBLE_SERVER", "0")
    fresh = run_playbook(warm, PLAYBOOK, "box")
    assert _said(fresh.ident) == []
    assert _view(served) == _view(fresh) == {"box": ("ok", "plain")}
    assert Path(served.artifacts_dir, "stdout").read_text().count("ok: [box]") == 2


def test_the_server_parses_the_plugin_docs_every_run_loads_first():
    """A run's executor first loads all of ansible-core's connection, shell and become
    plugins for their option definitions; the server has parsed their docs already, so a
    run forked from it parses none (a third of a one-host ping's CPU)."""
    code = (
        "import yaml\n"
        "from evc.ansible_warm import _warm_up\n"
        "_warm_up()\n"
        "from ansible.plugins import loader\n"
        "parsed, real = [], yaml.load\n"
        "yaml.load = lambda *a, **k: parsed.append(1) or real(*a, **k)\n"
        "for name in ('connection_loader', 'shell_loader', 'become_loader'):\n"
        "    assert list(getattr(loader, name).all(class_only=True))\n"
        "print(len(parsed))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["0"], done.stderr


def test_a_task_timeout_is_the_runs_own(warm):
    """TASK_TIMEOUT becomes each task's default when Ansible is imported: a worker puts
    the run's value in place of the server's."""
    short = run_playbook(warm, PLAYBOOK, "box", extravars={"evc_sleep": 4}, task_timeout=1)
    assert [mode for _, mode in _said(short.ident)] == ["warm"]
    assert short.hosts["box"].state == "failed"
    assert "timed out after 1 second" in short.hosts["box"].message.lower()
    assert run_playbook(warm, PLAYBOOK, "box", extravars={"evc_sleep": 2}, task_timeout=30).ok


def test_a_plugin_path_the_server_lacks_makes_a_fresh_start(warm, monkeypatch):
    """Plugin paths are read when Ansible is imported: a run with another one is not
    forked from the server (which would not find the filter) but started afresh."""
    monkeypatch.setenv("ANSIBLE_FILTER_PLUGINS", str(PLUGINS))
    run = run_playbook(warm, PLAYBOOK, "box", extravars={"evc_filter": True})
    assert _view(run) == {"box": ("ok", "abab")}
    ((_, mode),) = _said(run.ident)
    assert mode.startswith("cold:") and "DEFAULT_FILTER_PLUGIN_PATH" in mode


def test_a_killed_client_takes_its_run_along(warm):
    """ansible-runner kills its ansible-playbook (here: the client) with SIGKILL when
    a cancel is not obeyed: the worker forked for it goes too, with its play."""
    runs = warm.artifacts_dir / "artifacts"

    def made() -> set[str]:
        return {f for f in os.listdir(runs) if not f.startswith(".")} if runs.exists() else set()

    before = made()
    done = []
    thread = threading.Thread(
        target=lambda: done.append(run_playbook(warm, PLAYBOOK, "box", extravars={"evc_sleep": 60}))
    )
    thread.start()
    (ident,) = _until(lambda: made() - before, "run")
    ((worker, mode),) = _until(lambda: _said(ident), "worker")
    assert mode == "warm"
    client = str(ansible_warm.folder() / "ansible-playbook")

    def clients():
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if client.encode() in argv and any(ident.encode() in a for a in argv):
                found.append(int(pid))
        return found

    (pid,) = _until(clients, "client")
    os.kill(pid, signal.SIGKILL)
    _until(lambda: not Path(f"/proc/{worker}").exists(), "end of the worker", timeout=10)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert done and not done[0].ok


def test_a_secret_is_asked_on_the_runs_terminal_by_the_forked_worker(warm):
    """A vars_prompt is answered over the run's pty as for a fresh ansible-playbook: the
    worker reads it there (no controlling terminal needed), the server's log has no trace."""
    secret = "s3cret-" + os.urandom(8).hex()
    run = run_playbook(
        warm, str(PLAYBOOK_DIR / "secret.yml"), "box", secrets={"evc_test_secret": secret}
    )
    assert [mode for _, mode in _said(run.ident)] == ["warm"]
    assert run.hosts["box"].outputs["digest"]["msg"] == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in (ansible_warm.folder() / "server.log").read_text()


def test_a_noexec_temporary_folder_means_fresh_starts(warm, monkeypatch):
    """The client is a script in the temporary folder: where that is mounted noexec (a
    hardened /tmp), runs start ansible-playbook afresh instead of failing to start."""
    real = os.statvfs

    class NoExec:
        def __init__(self, path):
            self.f_flag = real(path).f_flag | os.ST_NOEXEC

    monkeypatch.setattr(os, "statvfs", NoExec)
    assert ansible_warm.binary() is None
    run = run_playbook(warm, PLAYBOOK, "box")
    assert run.ok and _said(run.ident) == []


def test_a_module_payload_is_built_once_and_again_when_its_sources_change(warm):
    """The command module's payload (warm.yml) is kept after a run, taken as it is by the
    next run, and built anew once a file it was built from differs from what is kept."""
    assert run_playbook(warm, PLAYBOOK, "box").ok  # built here, or kept by an earlier run
    kept = ansible_warm.folder() / ansible_warm.PAYLOADS
    (recipe,) = kept.glob("ansible.modules.command-*.json")
    payload = recipe.with_suffix("")
    built, sources = payload.stat().st_ino, json.loads(recipe.read_text())
    assert any(str(path).endswith("/ansible/module_utils/basic.py") for _, path, *_ in sources)
    assert run_playbook(warm, PLAYBOOK, "box").ok
    assert payload.stat().st_ino == built  # taken, not built again
    sources[0][3] -= 1  # a file it was built from changed since (its mtime)
    recipe.write_text(json.dumps(sources))
    served = run_playbook(warm, PLAYBOOK, "box")
    assert _view(served) == {"box": ("ok", "plain")}
    assert payload.stat().st_ino != built  # built anew, with what it is built from now
    sources[0][3] += 1
    assert json.loads(recipe.read_text()) == sources


def test_a_payload_that_cannot_be_kept_fails_no_run(warm):
    """Where the kept payloads cannot be written (here a file stands where their folder
    goes), the run builds its own and ends as it would without the server."""
    kept = ansible_warm.folder() / ansible_warm.PAYLOADS
    aside = kept.with_name("payloads.aside")
    if kept.exists():
        kept.rename(aside)
    kept.write_text("not a folder")
    try:
        served = run_playbook(warm, PLAYBOOK, "box")
        assert _view(served) == {"box": ("ok", "plain")}
        assert [mode for _, mode in _said(served.ident)] == ["warm"]
    finally:
        kept.unlink()
        if aside.exists():
            aside.rename(kept)
