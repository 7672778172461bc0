"""How EVC's Ansible runs reach nodes over SSH: strict pinned host keys, pipelining,
ControlPersist sockets in a folder that must be ours, and closing those connections
when nodes stop or change."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from pathlib import Path

from evc.config import Workspace
from evc.errors import EVCError


def private_dir(path: Path, use: str) -> Path:
    """``path``, made 0700 if missing, when it is a folder of ours closed to everyone else:
    it lives in the shared /tmp, and anyone who can write there could plant a socket
    that ``use`` (what connects there) would trust. A folder that fails is refused."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        problem = "not a folder (a link or a file)"
    elif info.st_uid != os.getuid():
        problem = f"owned by uid {info.st_uid}, not by you (uid {os.getuid()})"
    elif info.st_mode & 0o077:
        problem = f"open to group or others (mode {stat.S_IMODE(info.st_mode):04o}, not 0700)"
    else:
        return path
    raise EVCError(
        f"The folder {path} is {problem}: anyone who can write there could plant a socket "
        f"that {use} would use, so EVC will not use it. Remove it (as its owner or root: "
        f"rm -rf {path}) and run again; EVC makes it anew, yours and 0700."
    )


def control_dir(ws: Workspace) -> Path:
    """SSH ControlPersist sockets of this workspace: a short path (sockets max 108 chars),
    in the shared /tmp, so checked by :func:`private_dir`."""
    import hashlib
    import tempfile

    tag = hashlib.sha256(str(ws.root).encode()).hexdigest()[:10]
    return private_dir(Path(tempfile.gettempdir()) / f"evc-cp-{tag}", "EVC's SSH sessions")


def close_connections(ws: Workspace, address: str | None = None) -> int:
    """Close this workspace's persistent SSH connections (after nodes stop or change):
    those to ``address`` (a node's ansible_host) only, or all of them. Closing one ends
    every session running over it, so a node's stop must not close the others'."""
    import subprocess

    closed = 0
    for sock in control_dir(ws).iterdir():
        if address is not None and not sock.name.startswith(f"{address}-"):
            continue
        subprocess.run(
            ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "evc-control"],
            capture_output=True,
            timeout=10,
        )
        sock.unlink(missing_ok=True)
        closed += 1
    if address is None:
        with contextlib.suppress(OSError):  # made again by the next run
            control_dir(ws).rmdir()
    return closed


def ansible_env(
    ws: Workspace, forks: int, task_timeout: int, *, remote: bool = False
) -> dict[str, str]:
    """Environment for ansible-playbook: fast, strict about host keys, quiet.

    ``remote``: for a run on another machine (:mod:`evc.ansible_stream`), without this
    controller's paths (PATH, control sockets, known_hosts): the worker has its own
    PATH and socket folder, and the run's inventory names the known_hosts it carries.
    """
    ssh_args = [
        "-o ControlMaster=auto",
        "-o ControlPersist=60s",
        "-o ServerAliveInterval=5",
        "-o ServerAliveCountMax=2",
        "-o StrictHostKeyChecking=yes",
    ]
    env = {
        "ANSIBLE_FORKS": str(forks),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_SSH_ARGS": " ".join(ssh_args),
        # Named by host (not Ansible's hash), so close_connections can pick one node's.
        "ANSIBLE_SSH_CONTROL_PATH": "%(directory)s/%%h-%%p-%%r",
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_GATHERING": "explicit",
        "ANSIBLE_TIMEOUT": "10",
        "ANSIBLE_TASK_TIMEOUT": str(task_timeout),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        # Not discovered: discovery costs every module-running play one or two more
        # commands per host (a shell, then a Python) before its first task. EVC's
        # nodes run python3 from their PATH (ping, facts and telemetry call it so).
        "ANSIBLE_PYTHON_INTERPRETER": "python3",
        "ANSIBLE_NOCOLOR": "True",
    }
    if remote:
        return env
    env["ANSIBLE_SSH_ARGS"] += f" -o UserKnownHostsFile={ws.known_hosts}"
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
    env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(control_dir(ws))
    return env
