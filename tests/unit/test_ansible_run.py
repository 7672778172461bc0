"""run_playbook for real (ansible-playbook against this machine, connection local):
values are data, a secret goes through the pty only, run folders survive other runs'
pruning, and the SSH control socket folder must be ours and closed."""

import hashlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from evc import ansible, inventory
from evc.ansible import prune_runs, run_playbook
from evc.connections import control_dir
from evc.errors import EVCError
from evc.inventory import InventoryHost
from tests.conftest import files_holding

PLAYBOOKS = Path(__file__).parent / "playbooks"
LOCAL = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}


def payload(marker: Path) -> str:
    return "{{ lookup('pipe', 'touch " + str(marker) + "') }}"


@pytest.fixture
def local(workspace):
    """The workspace with one host, ``box``: this machine, reached without SSH."""
    inventory.write(workspace.inventory, [InventoryHost("box", "127.0.0.1")], LOCAL)
    return workspace


# ------------------------------------------------------------------ values are data


def test_every_value_reaches_the_play_as_literal_text(workspace, tmp_path):
    """A template in an extra var (top level, nested), a label value, ansible_host,
    ansible_user or an all.vars string is never rendered: no marker file appears, and
    the play sees the text itself."""
    markers = {k: tmp_path / f"marker-{k}" for k in ("value", "nested", "label", "note")}
    # host and user: rendered for the connection even by a play that only debugs.
    markers |= {k: tmp_path / f"marker-{k}" for k in ("host", "user")}
    box = InventoryHost(
        "box", payload(markers["host"]), user=payload(markers["user"]),
        labels={"site": payload(markers["label"])},
    )  # fmt: skip
    inventory.write(workspace.inventory, [box], {**LOCAL, "evc_note": payload(markers["note"])})
    run = run_playbook(
        workspace,
        str(PLAYBOOKS / "values.yml"),
        "box",
        extravars={
            "evc_value": payload(markers["value"]),
            "evc_nested": {"inner": [payload(markers["nested"]), 3, True]},
        },
    )
    assert sorted(m.name for m in markers.values() if m.exists()) == []
    assert run.ok, run.hosts["box"].message
    out = run.hosts["box"].outputs
    assert out["echo"]["stdout"] == " ".join(
        payload(markers[k]) for k in ("value", "nested", "label")
    )
    said = out["say"]["msg"]
    for marker in markers.values():
        assert payload(marker) in said


# ------------------------------------------------------------------ secrets


class ProcWatch(threading.Thread):
    """Looks for a text in every process's arguments and environment until stopped."""

    def __init__(self, text: str):
        super().__init__(daemon=True)
        self.text = text.encode()
        self.seen: set[str] = set()
        self.scans = 0
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or int(pid) == os.getpid():
                    continue  # this process holds the secret in memory, as it must
                for what in ("cmdline", "environ"):
                    try:
                        if self.text in Path(f"/proc/{pid}/{what}").read_bytes():
                            self.seen.add(f"{pid}/{what}")
                    except OSError:
                        pass
            self.scans += 1
            time.sleep(0.02)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.halt.set()
        self.join()


def test_a_secret_reaches_the_play_and_nothing_else(local, tmp_path):
    marker = tmp_path / "marker"
    secret = "s3cret-" + os.urandom(8).hex() + payload(marker)
    with ProcWatch(secret) as watch:
        run = run_playbook(
            local, str(PLAYBOOKS / "secret.yml"), "box", secrets={"evc_test_secret": secret}
        )
    assert run.ok, run.hosts["box"].message
    # The play had the secret, exactly (braces and all, not rendered)...
    assert run.hosts["box"].outputs["digest"]["msg"] == hashlib.sha256(secret.encode()).hexdigest()
    assert not marker.exists()
    # ...and it is in no file EVC writes (inventory, database, the whole private data
    # dir of ansible-runner), no process's arguments or environment. The prompt is in the
    # run's stdout: the search does read the artifacts.
    assert files_holding(local, secret) == []
    assert Path(run.artifacts_dir) / "stdout" in files_holding(local, "EVC_TEST_SECRET")
    assert watch.scans > 10 and watch.seen == set()


def test_a_run_that_fails_before_the_prompt_leaves_no_secret(local):
    secret = "s3cret-" + os.urandom(8).hex()
    run = run_playbook(
        local, str(PLAYBOOKS / "secret_broken.yml"), "box", secrets={"evc_test_secret": secret}
    )
    assert not run.ok and run.rc != 0
    assert files_holding(local, secret) == []


GOOD = {"name": "evc_test_secret", "prompt": "EVC_TEST", "private": True, "unsafe": True}


@pytest.mark.parametrize(
    "asks, extravars",
    [
        pytest.param([], {}, id="no-prompt"),
        pytest.param([{**GOOD, "private": False}], {}, id="echoed"),
        pytest.param([{**GOOD, "unsafe": False}], {}, id="rendered-as-template"),
        pytest.param([{**GOOD, "default": "x"}], {}, id="default"),
        pytest.param([{k: v for k, v in GOOD.items() if k != "prompt"}], {}, id="prompt-is-name"),
        pytest.param([{**GOOD, "prompt": "EVC_{{ x }}"}], {}, id="templated-prompt"),
        pytest.param([GOOD], {"evc_test_secret": "x"}, id="extra-var-skips-prompt"),
        pytest.param(
            [GOOD, {**GOOD, "name": "evc_other", "prompt": "MY_EVC_TEST"}], {}, id="overlap"
        ),
    ],
)
def test_a_secret_needs_a_private_unsafe_prompt_of_its_own(local, tmp_path, asks, extravars):
    book = tmp_path / "ask.yml"
    play = {"hosts": "all", "gather_facts": False, "tasks": [{"ansible.builtin.ping": {}}]}
    book.write_text(json.dumps([{**play, "vars_prompt": asks}]))
    secrets = {a["name"]: "x" for a in asks} or {"evc_test_secret": "x"}
    with pytest.raises(EVCError, match="must ask for the secret 'evc_test_secret'"):
        run_playbook(local, str(book), "box", extravars=extravars, secrets=secrets)
    assert not (local.artifacts_dir / "artifacts").exists()  # refused before any run


def test_the_command_file_is_scrubbed_before_ansible_starts(local, monkeypatch):
    """An inherited variable from the user's shell is cut from the command file before
    ansible-playbook starts, not at its first event (which a failed run may never send)."""
    monkeypatch.setenv("EVC_TEST_SHELL_TOKEN", "tok-" + os.urandom(6).hex())
    seen = []
    real = ansible._scrub_when_running

    def spy(status, runner_config):
        real(status, runner_config)
        if status["status"] == "running":
            seen.append((Path(runner_config.artifact_dir) / "command").read_text())

    monkeypatch.setattr(ansible, "_scrub_when_running", spy)
    run = run_playbook(local, str(PLAYBOOKS / "secret_broken.yml"), "box")
    assert not run.ok
    assert len(seen) == 1 and "EVC_TEST_SHELL_TOKEN" not in seen[0] and '"PATH"' in seen[0]


# ------------------------------------------------------------------ run folders


def _aged(folder: Path, age_s: float) -> Path:
    t = time.time() - age_s
    os.utime(folder, (t, t))
    return folder


def test_prune_keeps_the_newest_and_every_run_in_progress(tmp_path):
    arts = tmp_path / "artifacts"
    locks = {}
    for i, ident in enumerate(["old-running", "old-done", "mid-done", "new1", "new2"]):
        locks[ident] = ansible._start_run(arts, ident)
        _aged(arts / ident, 100 - i)
    for ident in ("old-done", "mid-done", "new1", "new2"):
        locks.pop(ident).close()  # those runs ended
    legacy = arts / "before-locks"  # from before runs were locked
    legacy.mkdir()
    (legacy / "stdout").write_text("x")
    _aged(legacy, 200)
    (arts / ".being-made").mkdir()
    prune_runs(arts, keep=2)
    assert sorted(p.name for p in arts.iterdir()) == [".being-made", "new1", "new2", "old-running"]
    locks.pop("old-running").close()
    prune_runs(arts, keep=2)
    assert sorted(p.name for p in arts.iterdir()) == [".being-made", "new1", "new2"]


def test_parallel_runs_across_a_rotation_all_keep_their_folders(local, monkeypatch):
    """Runs in four threads, keeping one folder: every run's folder outlives the run
    (its last task checks), every run succeeds, and old folders still go."""
    monkeypatch.setattr(ansible, "KEEP_RUNS", 1)
    results, errors = [], []

    def worker(sleeps):
        for s in sleeps:
            try:
                results.append(
                    run_playbook(
                        local,
                        str(PLAYBOOKS / "artifacts_kept.yml"),
                        "box",
                        extravars={"evc_sleep": s},
                    )
                )
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))

    threads = [
        threading.Thread(target=worker, args=(s,))
        for s in (["6"], ["1", "1"], ["0.5", "2"], ["1", "0.2"])
    ]
    for t in threads:
        t.start()
        time.sleep(0.3)
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 7
    assert [r.hosts["box"].message for r in results if not r.ok] == []
    left = list((local.artifacts_dir / "artifacts").iterdir())
    assert len(left) < 7 and all((p / ansible.RUN_LOCK).exists() for p in left)


# ------------------------------------------------------------------ control sockets


@pytest.fixture
def cp_dir(workspace):
    path = control_dir(workspace)
    assert (path.stat().st_mode & 0o777) == 0o700 and path.stat().st_uid == os.getuid()
    yield path
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        os.chown(path, os.getuid(), -1)
        path.rmdir()


@pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's folder needs root")
def test_a_control_folder_of_another_user_is_refused(workspace, cp_dir):
    os.chown(cp_dir, 65534, -1)
    with pytest.raises(EVCError, match=f"{cp_dir} is owned by uid 65534.*rm -rf {cp_dir}"):
        control_dir(workspace)


def test_an_open_or_linked_control_folder_is_refused(workspace, cp_dir, tmp_path):
    cp_dir.chmod(0o777)
    with pytest.raises(EVCError, match=r"open to group or others \(mode 0777"):
        control_dir(workspace)
    cp_dir.chmod(0o750)
    with pytest.raises(EVCError, match="mode 0750"):
        control_dir(workspace)
    cp_dir.rmdir()
    cp_dir.symlink_to(tmp_path)
    with pytest.raises(EVCError, match="not a folder"):
        control_dir(workspace)


def test_a_run_from_the_main_thread_keeps_the_signal_handlers_and_defers_ctrl_c(local):
    """ansible-runner, left to itself, replaces SIGINT/SIGTERM's handlers for good when
    called from the main thread, so a later Ctrl-C (an inference job's, after its check
    of the nodes) was swallowed. The handlers stay; a Ctrl-C during a run cancels it and
    then reaches them. (Python's own Ctrl-C handler is set first, as under a terminal:
    a background job of a shell, as in `make test`, starts with SIGINT ignored.)"""
    kept = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        book = str(PLAYBOOKS / "artifacts_kept.yml")
        run_playbook(local, book, "box", extravars={"evc_sleep": "0"})
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before

        timer = threading.Timer(2.0, os.kill, [os.getpid(), signal.SIGINT])
        timer.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            run_playbook(local, book, "box", extravars={"evc_sleep": "30"})
        assert time.monotonic() - started < 25  # the run was cancelled, not waited out
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    finally:
        signal.signal(signal.SIGINT, kept)


def test_an_ignored_ctrl_c_neither_cancels_a_run_nor_is_unignored(local):
    """A process that ignores SIGINT (a background job of a shell, nohup) is not the one
    a Ctrl-C was meant for: a SIGINT during its run leaves the run to finish, and SIGINT
    is still ignored afterwards. (Before, the run was cancelled, and the re-raised signal
    then met the restored SIG_IGN: a run failed for a signal nobody sent it.)"""
    kept = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        book = str(PLAYBOOKS / "artifacts_kept.yml")
        timer = threading.Timer(1.0, os.kill, [os.getpid(), signal.SIGINT])
        timer.start()
        result = run_playbook(local, book, "box", extravars={"evc_sleep": "3"})
        timer.join()
        assert result.ok, result.hosts
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, kept)


def test_a_run_that_stops_before_its_recap_fails_every_host_saying_why(local, tmp_path):
    """A playbook Ansible cannot load ends the run before any host event: no host may
    read as ok (a ping, a deploy would claim it), each failed with Ansible's error."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "- name: broken\n  hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: no such module\n      evc_no_such_module_anywhere: {}\n"
    )
    run = run_playbook(local, str(broken), "box")
    assert run.status == "error" and run.rc != 0
    box = run.hosts["box"]
    assert box.state == "failed"
    assert f"stopped (exit {run.rc})" in box.message
    assert "evc_no_such_module_anywhere" in box.message
