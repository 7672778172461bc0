import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import forkserver

EVC = [sys.executable, "-m", "evc"]
# `evc` calls run in a child forked from a server that has imported EVC once
# (tests/forkserver.py: a seventh of the suite's CPU was `evc` starting up);
# EVC_TEST_FORK=0 starts each one as a new process instead.
FORK = os.environ.get("EVC_TEST_FORK", "1") != "0"


def evc(*args, env=None, check=None, timeout=600, input=None, cwd=None):
    """Run the real `evc` command (see FORK); returns CompletedProcess (text). Tables are 200
    columns wide unless ``env`` says otherwise: what a test looks for is not cut by a
    long temporary path."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    if FORK:
        proc = forkserver.server().run(
            list(map(str, args)), env=full_env, cwd=cwd, timeout=timeout, input=input
        )
    else:
        proc = subprocess.run(
            [*EVC, *map(str, args)], capture_output=True, text=True, env=full_env,
            timeout=timeout, input=input, cwd=cwd,
        )  # fmt: skip
    if check is not None and proc.returncode != check:
        raise AssertionError(
            f"evc {' '.join(map(str, args))} exited {proc.returncode}, expected {check}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A fresh workspace, selected through EVC_HOME."""
    from evc.config import init_workspace

    ws = init_workspace(tmp_path / "ws")
    monkeypatch.setenv("EVC_HOME", str(ws.root))
    return ws


def write_settings(root: Path, text: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "evc.yaml").write_text(text)


# Reads the files in a child process: a process that opens and closes the database's
# files drops its own SQLite locks on them (POSIX locks belong to the process, and
# any close releases them), and its connection then reads a stale database (and can
# corrupt it by writing). The secrets go on stdin, never on a command line.
_FIND = """
import json, sys
from pathlib import Path
places, secrets = json.load(sys.stdin)
found = []
for place in map(Path, places):
    for path in [place, *sorted(place.rglob("*"))] if place.is_dir() else [place]:
        try:
            text = path.read_bytes().decode("latin-1")
        except (IsADirectoryError, FileNotFoundError):  # a folder; a WAL file just merged
            continue
        if any(s in text for s in secrets):
            found.append(str(path))
print(json.dumps(found))
"""


def files_holding(ws, *secrets: str, places: list[Path] | None = None) -> list[Path]:
    """Files EVC writes in clear (inventory, database, Ansible artifacts; or the files
    and folders in ``places``) that hold a secret."""
    if places is None:
        places = [ws.inventory, *(ws.root / "db").glob("evc.db*"), ws.private_dir / "runs"]
    proc = subprocess.run(
        [sys.executable, "-c", _FIND],
        input=json.dumps([list(map(str, places)), list(secrets)]),
        capture_output=True,
        text=True,
        check=True,
    )
    return [Path(p) for p in json.loads(proc.stdout)]
