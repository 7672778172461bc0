"""The one place that runs Ansible: ansible-runner, live progress, a typed result.

Every fleet operation calls :func:`run_playbook` and gets a :class:`RunResult` that
says, per host, ok / changed / failed / unreachable / skipped, with the failing
task's message. Fast defaults: forks scaled to the targets, SSH pipelining,
ControlPersist, no fact gathering unless a playbook asks, a per-task timeout.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evc.config import Workspace
from evc.db import record_run, workspace_db
from evc.errors import EVCError, Result, UsageError
from evc.progress import SILENT, Progress
from evc.resources import playbook as bundled_playbook

MAX_FORKS = 100
HOST_STATES = ("ok", "changed", "failed", "unreachable", "skipped")
# Keys of a module result that are noise in a stored result.
_DROP = ("invocation", "diff", "stdout_lines", "stderr_lines")


@dataclass
class HostResult:
    host: str
    state: str = "ok"  # one of HOST_STATES
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    failed_task: str | None = None
    message: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)  # task name -> module result


@dataclass
class RunResult(Result):
    playbook: str
    target: str
    ident: str
    artifacts_dir: str
    started: float
    ended: float
    rc: int
    hosts: dict[str, HostResult]

    @property
    def failed_hosts(self) -> list[str]:
        return [h for h, r in self.hosts.items() if r.state in ("failed", "unreachable")]

    @property
    def status(self) -> str:
        """success (every host fine), partial (some failed) or error (none fine)."""
        bad = len(self.failed_hosts)
        if bad == 0 and self.rc == 0:
            return "success"
        return "partial" if bad < len(self.hosts) else "error"

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = self.status
        out["duration_s"] = round(self.ended - self.started, 3)
        return out


def resolve_hosts(inventory: Path, target: str) -> list[str]:
    """Hosts the Ansible pattern ``target`` matches; a clear error if it matches none."""
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    if not inventory.is_file():
        raise UsageError(f"No inventory at {inventory}: add devices or run `evc lab up` first.")
    manager = InventoryManager(loader=DataLoader(), sources=[str(inventory)])
    try:
        hosts = [h.name for h in manager.list_hosts(target)]
    except (AnsibleError, IndexError) as exc:  # '~(', 'lab[99]'; IndexError: a bare '!' or '&'
        why = exc if isinstance(exc, AnsibleError) else "'!' and '&' need a name after them"
        raise UsageError(
            f"Target {target!r} is not a pattern Ansible can use ({why}). Use a host name, "
            "a group or an Ansible pattern such as 'group:&other'."
        ) from None
    if not hosts:
        groups = sorted(g for g in manager.groups if g not in ("all", "ungrouped"))
        known = ", ".join(groups) if groups else "none"
        raise UsageError(
            f"Target {target!r} matches no host in {inventory}. Use a host name, a group or an "
            f"Ansible pattern such as 'group:&other'. Known groups: {known}."
        )
    return hosts


def control_dir(ws: Workspace) -> Path:
    """SSH ControlPersist sockets of this workspace: a short path (sockets max 108 chars)."""
    import hashlib
    import tempfile

    tag = hashlib.sha256(str(ws.root).encode()).hexdigest()[:10]
    path = Path(tempfile.gettempdir()) / f"evc-cp-{tag}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


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


def ansible_env(ws: Workspace, forks: int, task_timeout: int) -> dict[str, str]:
    """Environment for ansible-playbook: fast, strict about host keys, quiet."""
    ssh_args = " ".join(
        [
            "-o ControlMaster=auto",
            "-o ControlPersist=60s",
            "-o ServerAliveInterval=5",
            "-o ServerAliveCountMax=2",
            f"-o UserKnownHostsFile={ws.known_hosts}",
            "-o StrictHostKeyChecking=yes",
        ]
    )
    venv_bin = str(Path(sys.executable).parent)
    return {
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_FORKS": str(forks),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_SSH_ARGS": ssh_args,
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir(ws)),
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
        "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        "ANSIBLE_NOCOLOR": "True",
    }


_KEEP_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")


def scrub_command_file(artifact_dir: Path) -> None:
    """Cut the environment that ansible-runner stores in ``<artifacts>/command``.

    ansible-runner writes the whole process environment there (whatever
    suppress_env_files says), so any credential in the user's environment would
    land on disk. Only the settings EVC chose and a few harmless names are kept.
    """
    import json

    path = artifact_dir / "command"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    env = data.get("env") or {}
    data["env"] = {k: v for k, v in env.items() if k in _KEEP_ENV or k.startswith("ANSIBLE_")}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.chmod(0o600)
    os.replace(tmp, path)


class _Collector:
    """Turns ansible-runner events into per-host results and a progress status."""

    def __init__(self, hosts: list[str], progress: Progress, artifact_dir: Path):
        self.hosts = {h: HostResult(host=h) for h in hosts}
        self.task = ""
        self.progress = progress
        self.done: set[str] = set()
        self.artifact_dir = artifact_dir
        self.scrubbed = False

    def _update(self) -> None:
        counts = {s: 0 for s in ("failed", "unreachable")}
        for r in self.hosts.values():
            if r.state in counts:
                counts[r.state] += 1
        self.progress.status(
            f"{self.task}: {len(self.done)}/{len(self.hosts)} hosts"
            f"  failed {counts['failed']}  unreachable {counts['unreachable']}"
        )

    def __call__(self, event: dict) -> bool:
        if not self.scrubbed:  # the command file is written just before the first event
            scrub_command_file(self.artifact_dir)
            self.scrubbed = True
        kind = event.get("event", "")
        data = event.get("event_data", {})
        host = data.get("host")
        if kind == "playbook_on_task_start":
            self.task = data.get("task", "")
            self.done = set()
        elif kind == "playbook_on_stats":
            self._stats(data)
        elif host is not None and kind.startswith("runner_on_"):
            r = self.hosts.setdefault(host, HostResult(host=host))
            res = data.get("res") or {}
            if kind in ("runner_on_failed", "runner_on_unreachable") and not data.get(
                "ignore_errors"
            ):
                r.state = "unreachable" if kind == "runner_on_unreachable" else "failed"
                r.failed_task = data.get("task")
                r.message = _message(res)
            elif kind == "runner_on_ok":
                r.outputs[data.get("task", "")] = {
                    k: v for k, v in res.items() if k not in _DROP and not k.startswith("_ansible")
                }
            self.done.add(host)
        self._update()
        return True  # keep the event in the artifacts

    def _stats(self, stats: dict) -> None:
        for host, r in self.hosts.items():
            r.ok = stats.get("ok", {}).get(host, 0)
            r.changed = stats.get("changed", {}).get(host, 0)
            r.failed = stats.get("failures", {}).get(host, 0)
            r.unreachable = stats.get("dark", {}).get(host, 0)
            r.skipped = stats.get("skipped", {}).get(host, 0)
            if r.unreachable:
                r.state = "unreachable"
            elif r.failed:
                r.state = "failed"
            elif r.changed:
                r.state = "changed"
            elif r.ok:
                r.state = "ok"
            else:  # skipped every task, or never ran (a rollout that stopped early)
                r.state = "skipped"


def _message(res: dict) -> str:
    """The reason a task failed: its stderr's last line beats a generic module message."""
    stderr = str(res.get("stderr") or res.get("module_stderr") or "").strip()
    msg = str(res.get("msg") or "").strip()
    if stderr and (not msg or msg == "non-zero return code"):
        text = stderr
    else:
        text = msg or stderr or str(res.get("stdout") or "").strip()
    return text.splitlines()[-1][:500] if text else "failed"


def run_playbook(
    ws: Workspace,
    name: str,
    target: str = "all",
    *,
    extravars: dict[str, Any] | None = None,
    secrets: dict[str, str] | None = None,
    inventory: Path | None = None,
    task_timeout: int = 300,
    progress: Progress = SILENT,
) -> RunResult:
    """Run a bundled playbook (or a path) against ``target`` and return per-host results.

    Secrets never go in ``extravars`` (ansible-runner puts them on the command line and
    in ``artifacts/*/command``) nor in the environment (also in ``command``). Each one of
    ``secrets`` answers the play's ``vars_prompt`` of that name, declared with
    ``prompt: NAME``, ``private: true`` and ``unsafe: true`` (else the answer is a
    template): ansible-runner types it into ansible-playbook's terminal, so it is in no
    argument, environment or file (with ``suppress_env_files``, which keeps it out of
    ``env/passwords``). An answer is one terminal line: at most 4095 characters.
    """
    import ansible_runner

    inventory = inventory or ws.inventory
    hosts = resolve_hosts(inventory, target)
    if any(len(v) > 4095 or "\n" in v for v in (secrets or {}).values()):
        raise EVCError("a secret for a vars_prompt must be one line of at most 4095 characters")
    path = Path(name) if os.sep in name else bundled_playbook(name)
    forks = max(1, min(len(hosts), MAX_FORKS))
    ws.artifacts_dir.mkdir(parents=True, exist_ok=True)
    ident = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    started = time.time()
    with progress.task(f"{path.name} on {target}") as line:
        collector = _Collector(hosts, line, ws.artifacts_dir / "artifacts" / ident)
        runner = ansible_runner.run(
            private_data_dir=str(ws.artifacts_dir),
            ident=ident,
            playbook=str(path),
            inventory=str(inventory),
            limit=target,
            extravars=extravars or {},
            envvars=ansible_env(ws, forks, task_timeout),
            passwords={rf"{re.escape(k)}: ?$": v for k, v in (secrets or {}).items()},
            event_handler=collector,
            quiet=True,
            suppress_env_files=True,
            rotate_artifacts=200,
        )
    scrub_command_file(Path(runner.config.artifact_dir))
    if runner.status not in ("successful", "failed"):
        raise EVCError(
            f"ansible-playbook {path.name} did not run ({runner.status}, rc={runner.rc}); "
            f"see {Path(runner.config.artifact_dir) / 'stdout'}."
        )
    result = RunResult(
        playbook=path.name,
        target=target,
        ident=ident,
        artifacts_dir=str(runner.config.artifact_dir),
        started=started,
        ended=time.time(),
        rc=runner.rc,
        hosts=collector.hosts,
    )
    record_run(workspace_db(ws), result)
    return result
