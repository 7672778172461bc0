"""A run executed by a worker elsewhere: ansible-runner's ``transmit | worker | process``.

The mechanism AWX uses (with Receptor) for remote execution nodes. On the controller,
*transmit* writes the job (the runner's arguments as one JSON line, then a zip of a
private data folder: the playbook's folder, the inventory, the pinned host keys) to
the worker command's stdin; the worker (``ansible-runner worker``, in a container, in
another network namespace, behind ``ssh``...) unpacks it, runs ansible-playbook
against its slice of the fleet and writes the events back on its stdout, then a zip of
its artifacts; *process*, on the controller, replays those events into the same event
handler and artifacts folder as a local run, so the caller gets the same typed result.

What travels in the stream, in clear (ansible-runner neither encrypts nor signs it):
the runner's arguments, secrets included (``passwords``: the vars_prompt answers, and
``ssh_key``: the workspace's private SSH key, which the worker hands to an ssh-agent
through a fifo), so the transport must be private and authenticated (a local pipe,
``docker exec``, SSH). The worker writes neither to its disk (``suppress_env_files``).
What comes back is data from a machine EVC does not control: events that would name a
file outside the run's folder are dropped, and of the artifacts only the plain result
files are kept (:func:`_processor`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from evc.config import Workspace
from evc.errors import EVCError

# The run's inventory names the known_hosts that travels with it, wherever the worker
# unpacks it. EVC's own text: the only template in the inventory.
KNOWN_HOSTS_ARG = "-o UserKnownHostsFile={{ inventory_dir }}/known_hosts"
KEY_VAR = "ansible_ssh_private_key_file"


def _plain(value: Any) -> Any:
    """A value of EVC's inventory without its unsafe mark (:func:`evc.inventory.unsafe`)."""
    return value.get("__ansible_unsafe", value) if isinstance(value, dict) else value


def _job_folder(ws: Workspace, root: Path, playbook: Path, inventory: Path) -> str | None:
    """Fill ``root`` as the worker's private data folder; returns the SSH key to send.

    The playbook's folder (its modules, action plugins, files) becomes ``project/``; the
    inventory keeps its hosts but loses the controller's key path (the worker gets the
    key itself, for its ssh-agent) and names the pinned host keys it carries.
    """
    shutil.copytree(playbook.parent, root / "project", ignore=shutil.ignore_patterns("__pycache__"))
    try:
        tree = json.loads(inventory.read_text())
    except (OSError, ValueError) as exc:
        raise EVCError(f"{inventory}: cannot read it as EVC's JSON inventory ({exc}).") from None
    all_vars = tree.setdefault("all", {}).setdefault("vars", {})
    key_path = _plain(all_vars.pop(KEY_VAR, None))
    all_vars["ansible_ssh_common_args"] = KNOWN_HOSTS_ARG
    (root / "inventory").mkdir(mode=0o700)
    (root / "inventory" / "hosts.yml").write_text(json.dumps(tree))
    known = root / "inventory" / "known_hosts"
    known.write_bytes(ws.known_hosts.read_bytes() if ws.known_hosts.is_file() else b"")
    if not key_path:
        return None
    try:
        return Path(key_path).read_text()
    except OSError as exc:
        raise EVCError(f"cannot read the SSH key the inventory names ({exc}).") from None


RESULT_FILES = ("rc", "status", "stdout", "command")  # what is kept of a worker's artifacts
MAX_RESULT_FILE = 256 << 20
_EVENT_ID = re.compile(r"[0-9A-Za-z-]{1,64}")


def _unpack_results(stream: BinaryIO, length: int, dest: Path) -> None:
    """The worker's artifacts zip (``length`` bytes, base64 on ``stream``): only its
    top-level plain result files, each at most MAX_RESULT_FILE, never through a link.
    The events are in the stream already."""
    from ansible_runner.utils.base64io import Base64IO

    if not 0 <= length <= 4 * MAX_RESULT_FILE:
        raise EVCError(f"the worker's artifacts zip is {length} bytes: too large")
    with tempfile.TemporaryFile() as tmp:
        with Base64IO(stream) as source:  # leaves ``stream`` open
            left = length
            while left:
                chunk = source.read(min(left, 1 << 20))
                if not chunk:
                    raise EVCError("the worker's artifacts stream ended early")
                tmp.write(chunk)
                left -= len(chunk)
        tmp.seek(0)
        with zipfile.ZipFile(tmp) as archive:
            for info in archive.infolist():
                mode = info.external_attr >> 16
                plain = stat.S_IFMT(mode) in (0, stat.S_IFREG)  # not a link, not a folder
                if info.filename in RESULT_FILES and plain and info.file_size <= MAX_RESULT_FILE:
                    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                    fd = os.open(dest / info.filename, flags, 0o600)
                    with os.fdopen(fd, "wb") as out, archive.open(info) as data:
                        shutil.copyfileobj(data, out)


def _processor(stream: BinaryIO, ws: Workspace, ident: str, events, states: list):
    """ansible-runner's Processor, taking from the worker's answer data only: events
    whose counter and uuid name a file in the run's job_events (a counter such as
    ``../../x`` would write elsewhere), and :func:`_unpack_results` for its artifacts
    (ansible-runner's unpacking recreates the zip's links, then writes through them)."""
    from ansible_runner.streaming import Processor

    def on_event(event: dict) -> bool:
        ids = (str(event.get("counter")), str(event.get("uuid")))
        return all(_EVENT_ID.fullmatch(i) for i in ids) and events(event)

    class SafeProcessor(Processor):
        def artifacts_callback(self, artifacts_data):
            _unpack_results(self._input, int(artifacts_data["zipfile"]), Path(self.artifact_dir))

    return SafeProcessor(
        _input=stream,
        private_data_dir=str(ws.artifacts_dir),
        ident=ident,
        event_handler=on_event,
        status_handler=lambda status, runner_config: states.append(status),
        quiet=True,
    )


def _stopper(proc: subprocess.Popen, cancelled: Callable[[], bool] | None, done: threading.Event):
    """Ends the worker (its whole session) when the caller's run is cancelled."""
    while cancelled is not None and not done.wait(0.2):
        if cancelled():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            return


def run_streamed(
    ws: Workspace,
    worker: Sequence[str],
    *,
    playbook: Path,
    inventory: Path,
    ident: str,
    runner_args: dict[str, Any],
    event_handler: Callable[[dict], bool],
    cancelled: Callable[[], bool] | None = None,
) -> tuple[str, int | None]:
    """Run ``playbook`` through the worker command ``worker`` (an argument list that
    speaks ansible-runner's worker protocol on its stdin and stdout); events reach
    ``event_handler`` and the artifacts land in ``<ws.artifacts_dir>/artifacts/<ident>``
    as for a local run. ``runner_args`` must say ``suppress_env_files=True``, else the
    secrets are written to the worker's disk. Returns (status, rc) as ansible-runner
    reports them."""
    import ansible_runner

    artifacts = ws.artifacts_dir / "artifacts" / ident
    with (
        tempfile.TemporaryDirectory(prefix="evc-transmit-") as tmp,
        tempfile.TemporaryFile() as stderr,
    ):
        root = Path(tmp)
        ssh_key = _job_folder(ws, root, playbook, inventory)
        try:
            proc = subprocess.Popen(
                list(worker),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,  # a Ctrl-C reaches EVC, which ends the worker
            )
        except OSError as exc:
            raise EVCError(f"cannot start the worker {worker[0]!r}: {exc}") from None
        done, finished = threading.Event(), False
        stopper = threading.Thread(target=_stopper, args=(proc, cancelled, done), daemon=True)
        stopper.start()
        try:
            with contextlib.suppress(BrokenPipeError):  # a worker that died: process says so
                ansible_runner.run(
                    streamer="transmit",
                    _output=proc.stdin,
                    private_data_dir=str(root),
                    ident=ident,
                    playbook=str(root / "project" / playbook.name),
                    inventory=str(root / "inventory" / "hosts.yml"),
                    ssh_key=ssh_key,
                    cancel_callback=lambda: False,  # else the runner takes over the signals
                    **runner_args,
                )
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            states: list[dict] = []
            processor = _processor(proc.stdout, ws, ident, event_handler, states)
            processor.run()
            finished = True
        finally:
            done.set()
            if not finished:  # an error or a Ctrl-C here: the worker need not finish
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            proc.stdout.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            stopper.join()
        if processor.status not in ("successful", "failed"):
            stderr.seek(0)
            said = stderr.read().decode(errors="replace").strip().splitlines()[-5:]
            why = (states[-1].get("job_explanation") if states else None) or "no status"
            raise EVCError(
                f"the worker {' '.join(worker)[:200]} did not run {playbook.name} "
                f"({processor.status}: {why}; worker exit {proc.returncode})"
                + (":\n" + "\n".join(said) if said else ".")
            )
    try:
        rc: int | None = int((artifacts / "rc").read_text())
    except (OSError, ValueError):
        rc = None
    return processor.status, rc
