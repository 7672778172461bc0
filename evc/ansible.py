"""The one place that runs Ansible: ansible-runner, live progress, a typed result.

Every fleet operation calls :func:`run_playbook` and gets a :class:`RunResult` that
says, per host, ok / changed / failed / unreachable / skipped, with the failing
task's message. Fast defaults: forks scaled to the targets, SSH pipelining,
ControlPersist, no fact gathering unless a playbook asks, a per-task timeout.

What reaches a play is data: every string in the extra vars (and in the inventory,
:mod:`evc.inventory`) is marked unsafe, so a value is never rendered as a template on
the controller. A secret reaches a play through a ``vars_prompt`` answered over
ansible-runner's pty, never through the environment, the command line or a file.
Each run's artifacts folder is locked while the run lasts, and EVC prunes old ones
itself (:func:`prune_runs`): ansible-runner's own rotation deletes folders of other
processes' runs in progress. A run can execute on a worker elsewhere
(:mod:`evc.ansible_stream`) and give the same result.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from evc import ansible_warm
from evc.ansible_stream import run_streamed
from evc.config import Workspace
from evc.connections import ansible_env
from evc.db import record_run, workspace_db
from evc.errors import EVCError, Result
from evc.inventory import subset, unsafe
from evc.progress import SILENT, Progress
from evc.resources import playbook as bundled_playbook
from evc.targets import select

MAX_FORKS = 100
KEEP_RUNS = 200  # run folders kept in .evc/runs/artifacts
RUN_LOCK = ".evc-run.lock"  # in a run's folder, locked (flock) while the run lasts
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

    def printed(self, task: str) -> dict | None:
        """The JSON object ``task`` printed on stdout (facts, telemetry, the fleet state:
        stdlib scripts run by a raw command); None when it did not run. A host whose
        task printed anything else is marked failed, with what it printed."""
        out = (self.outputs.get(task) or {}).get("stdout")
        if not out:
            return None
        try:
            value = json.loads(out)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
        self.state, self.message = "failed", f"{task}: printed no JSON object: {out[:200]}"
        return None


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


_KEEP_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")


def scrub_command_file(artifact_dir: Path) -> None:
    """Cut the environment that ansible-runner stores in ``<artifacts>/command``.

    ansible-runner writes the whole process environment there (whatever
    suppress_env_files says), so any credential in the user's environment would
    land on disk. Only the settings EVC chose and a few harmless names are kept.
    """

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


def _scrub_when_running(status: dict, runner_config: Any) -> None:
    """ansible-runner writes the command file just before it reports 'running' and
    starts ansible-playbook: cut it then, so no event (or lack of one) is waited for."""
    if status.get("status") == "running":
        scrub_command_file(Path(runner_config.artifact_dir))


def _passwords(path: Path, secrets: dict[str, str], extravars: dict) -> dict[str, str]:
    """ansible-runner ``passwords``: each secret answers the play's ``vars_prompt`` of its name.

    The value goes through the pty to ansible-playbook's prompt (no echo), so it is in
    no environment, command line or artifact. The prompt must be private, unsafe (else
    a value with braces is rendered as a template), without a default, with a prompt
    text of its own (the pattern answers wherever that text is printed), and its name
    must not be an extra var (Ansible then skips the prompt).
    """
    if not secrets:
        return {}
    from ansible.module_utils.parsing.convert_bool import boolean
    from ansible.parsing.dataloader import DataLoader

    try:
        plays = DataLoader().load_from_file(str(path)) or []
        asks = {i.get("name"): i for play in plays for i in play.get("vars_prompt") or []}
    except Exception as exc:  # noqa: BLE001 - any parse problem: say which playbook
        raise EVCError(f"{path}: cannot read its vars_prompt ({exc}).") from None
    texts = [str(asks.get(n, {}).get("prompt", n)) + ": " for n in secrets]
    out = {}
    for (name, value), text in zip(secrets.items(), texts, strict=True):
        ask = asks.get(name, {})
        if (
            not ask
            or name in extravars
            or not boolean(ask.get("private", True), strict=False)
            or not boolean(ask.get("unsafe", False), strict=False)
            or "default" in ask
            or text == name + ": "
            or "{" in text
            or sum(text in t for t in texts) > 1
        ):
            raise EVCError(
                f"{path.name} must ask for the secret {name!r} with a vars_prompt of that "
                "name that is private and unsafe, has no default and a prompt text of its "
                "own (not the name, no braces, not part of another prompt); and "
                f"{name!r} must not be an extra var."
            )
        out[re.escape(text)] = value
    return out


def _start_run(artifacts: Path, ident: str) -> BinaryIO:
    """Make the run's artifacts folder, locked: it is made under a hidden name, its lock
    taken, then renamed into place, so no pruner ever sees it unlocked. The lock lasts
    until the returned file is closed (or the process ends)."""
    hidden = artifacts / f".{ident}"
    hidden.mkdir(mode=0o700, parents=True)
    lock = open(hidden / RUN_LOCK, "wb")  # noqa: SIM115 - closed by the caller's with
    fcntl.flock(lock, fcntl.LOCK_EX)
    os.rename(hidden, artifacts / ident)
    return lock


def prune_runs(artifacts: Path, keep: int = KEEP_RUNS) -> None:
    """Delete the run folders older than the newest ``keep``, except those whose run
    is still going (its lock is held, by any process).

    Several EVC processes prune at once: a folder another one is deleting may vanish
    at any point, which is fine. A folder without a lock file is from before runs
    were locked, or is being deleted.
    """
    found = []
    for entry in os.scandir(artifacts):
        if entry.name.startswith("."):  # a run being made
            continue
        with contextlib.suppress(FileNotFoundError):
            found.append((entry.stat(follow_symlinks=False).st_mtime, entry.path))
    found.sort(reverse=True)
    for _, folder in found[keep:]:
        try:
            fd = os.open(os.path.join(folder, RUN_LOCK), os.O_RDONLY)
        except FileNotFoundError:
            shutil.rmtree(folder, ignore_errors=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its run is going on
            continue
        else:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)


class _Collector:
    """Turns ansible-runner events into per-host results and a progress status."""

    def __init__(self, hosts: list[str], progress: Progress):
        self.hosts = {h: HostResult(host=h) for h in hosts}
        self.task = ""
        self.progress = progress
        self.done: set[str] = set()
        self.recap = False  # playbook_on_stats came: every host's outcome is known

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

    def stopped_early(self, rc: int, stdout: Path) -> None:
        """A run that ended without its recap (a playbook Ansible cannot load, a crash)
        did not do its work on the hosts it gave no outcome for: they failed, with
        Ansible's error (its first ERROR line, else its last line)."""
        if self.recap or rc == 0:
            return
        try:
            said = [line.strip() for line in stdout.read_text().splitlines() if line.strip()]
        except OSError:
            said = []
        errors = [line for line in said if "ERROR" in line[:12]] or said[-1:]
        why = f"ansible-playbook stopped (exit {rc}) before a result for this host"
        for r in self.hosts.values():
            if r.state not in ("failed", "unreachable"):
                r.state, r.message = "failed", f"{why}: {errors[0][:400]}" if errors else why

    def _stats(self, stats: dict) -> None:
        self.recap = True
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


@contextlib.contextmanager
def _signals_deferred():
    """ansible-runner's cancel callback for a run from the main thread: SIGINT or SIGTERM
    cancels the run, then reaches the handlers in place before (left to itself, it
    installs handlers that never go away, and a later Ctrl-C is swallowed)."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    got: list[int] = []
    kept = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    # An ignored signal stays ignored (a background job of a shell starts with SIGINT
    # ignored, nohup with SIGHUP): such a Ctrl-C was never meant for this process.
    watched = [s for s, handler in kept.items() if handler is not signal.SIG_IGN]
    for s in watched:
        signal.signal(s, lambda n, _frame: got.append(n))
    try:
        yield lambda: bool(got)
    finally:
        for s in watched:
            signal.signal(s, signal.SIG_DFL if kept[s] is None else kept[s])
        if got:
            signal.raise_signal(got[0])


def run_playbook(
    ws: Workspace,
    name: str,
    target: str = "all",
    *,
    extravars: dict[str, Any] | None = None,
    secrets: dict[str, str] | None = None,
    inventory: Path | None = None,
    task_timeout: int = 300,
    worker: Sequence[str] | None = None,
    progress: Progress = SILENT,
) -> RunResult:
    """Run a bundled playbook (or a path) against ``target`` and return per-host results.

    Every string in ``extravars`` reaches the play as data, never as a template.
    ``extravars`` are stored in the artifacts and on the command line, so a secret goes
    in ``secrets`` (name -> value): each answers the play's private, unsafe
    ``vars_prompt`` of that name (:func:`_passwords`), typed into ansible-playbook's
    terminal, so it is in no argument, environment or file. An answer is one terminal
    line: at most 4095 characters. ``worker``: a command (argument list) that runs
    the play elsewhere, through ansible-runner's streaming (:mod:`evc.ansible_stream`).
    """
    import ansible_runner

    hosts, tree = select(inventory or ws.inventory, target)
    if any(len(v) > 4095 or "\n" in v for v in (secrets or {}).values()):
        raise EVCError("a secret for a vars_prompt must be one line of at most 4095 characters")
    path = Path(name) if os.sep in name else bundled_playbook(name)
    extravars = extravars or {}
    passwords = _passwords(path, secrets or {}, extravars)
    forks = max(1, min(len(hosts), MAX_FORKS))
    artifacts = ws.artifacts_dir / "artifacts"
    ident = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    started = time.time()
    with _start_run(artifacts, ident):
        try:
            with contextlib.suppress(OSError):  # housekeeping only: the next run tries again
                prune_runs(artifacts, KEEP_RUNS)
            run_inventory = artifacts / ident / "hosts.json"  # the targeted hosts alone
            run_inventory.write_text(json.dumps(subset(tree, hosts)))
            with progress.task(f"{path.name} on {target}") as line:
                collector = _Collector(hosts, line)
                args = {
                    "extravars": unsafe(extravars),
                    "envvars": ansible_env(ws, forks, task_timeout, remote=bool(worker)),
                    "passwords": passwords,
                    "quiet": True,
                    "suppress_env_files": True,  # else env/passwords holds the secrets in clear
                }
                with _signals_deferred() as cancelled:
                    if worker:
                        status, rc = run_streamed(
                            ws, worker, playbook=path, inventory=run_inventory, ident=ident,
                            runner_args=args, event_handler=collector, cancelled=cancelled,
                        )  # fmt: skip
                    else:
                        binary = ansible_warm.binary()
                        if binary:  # ansible-runner names the playbook only to its own
                            args["cmdline"] = shlex.quote(str(path))
                        runner = ansible_runner.run(
                            private_data_dir=str(ws.artifacts_dir), ident=ident,
                            playbook=str(path), inventory=str(run_inventory),
                            event_handler=collector, status_handler=_scrub_when_running,
                            cancel_callback=cancelled, binary=binary, **args,
                        )  # fmt: skip
                        status, rc = runner.status, runner.rc
        finally:
            scrub_command_file(artifacts / ident)  # again, should the run have stopped early
    if status not in ("successful", "failed"):
        raise EVCError(
            f"ansible-playbook {path.name} did not run ({status}, rc={rc}); "
            f"see {artifacts / ident / 'stdout'}."
        )
    collector.stopped_early(rc, artifacts / ident / "stdout")
    result = RunResult(
        playbook=path.name,
        target=target,
        ident=ident,
        artifacts_dir=str(artifacts / ident),
        started=started,
        ended=time.time(),
        rc=rc,
        hosts=collector.hosts,
    )
    record_run(workspace_db(ws), result)
    return result
