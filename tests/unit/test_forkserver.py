"""The tests' fork server (tests/forkserver.py) answers as a new `python -m evc` does:
same exit code, output and error text, environment, working folder and stdin."""

import os
import subprocess
import sys
import time

import pytest

from tests import forkserver

CASES = [
    ["--version"],
    ["device", "list", "--json"],
    ["device", "add", "bad name!", "--host", "10.0.0.1"],  # a usage error: exit 2
    ["device", "list"],  # a table as wide as COLUMNS says
    ["no-such-command"],
    ["run", "validate", "-"],  # reads stdin
]


def _exec(args, env, cwd, input):
    return subprocess.run(
        [sys.executable, "-m", "evc", *args], capture_output=True, text=True, env=env,
        cwd=cwd, input=input, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("args", CASES, ids=lambda a: " ".join(a))
def test_a_forked_call_answers_as_a_new_process(workspace, tmp_path, args):
    env = {**os.environ, "EVC_HOME": str(workspace.root), "COLUMNS": "61"}
    given = "version: 1\nsteps: []\n" if args[-1] == "-" else None
    forked = forkserver.server().run(args, env=env, cwd=tmp_path, timeout=120, input=given)
    new = _exec(args, env, tmp_path, given)
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        new.returncode, new.stdout, new.stderr)  # fmt: skip


def test_a_call_past_its_timeout_is_killed(workspace, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "EVC_HOME": str(workspace.root)}
    with pytest.raises(subprocess.TimeoutExpired):  # serves until stopped
        forkserver.server().run(["serve", "--bind", f"127.0.0.1:{port}"], env=env, cwd=tmp_path,
                                timeout=3, input=None)  # fmt: skip
    for _ in range(50):  # killed: the port is free again
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return
            except OSError:
                time.sleep(0.1)
    raise AssertionError(f"port {port} still held 5 s after the timeout")
