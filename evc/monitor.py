"""`evc monitor`: telemetry rounds on a fixed tick until told to stop.

Rounds never overlap: the next starts on the first tick after the previous one
ended (ticks it overran are skipped and counted). A round that fails, or a node
that fails in it, is reported and the loop goes on. SIGINT or SIGTERM lets the
current round finish, then the loop ends cleanly; a second signal aborts at once.

Each round runs in a worker thread: ansible-runner installs its own SIGINT and
SIGTERM handlers when called from the main thread (and never restores them),
which would take the signals away from the monitor.

With ``converge``, a round is followed by `evc fleet converge` of the nodes that need
it (:func:`needs_converge`): those back online after being unreachable or offline (a
reboot or a re-image loses what a node held), and those whose sample shows a declared
model not running. Converge observes them first, so a false alarm costs one status run.
"""

from __future__ import annotations

import math
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evc import fleet, logs
from evc.config import Workspace
from evc.model.deployments import CONTAINER_PREFIX, current
from evc.targets import resolve_hosts


@dataclass
class RoundReport:
    number: int
    started: float  # epoch seconds
    duration_s: float
    skipped_ticks: int  # ticks this round overran
    result: Any = None  # evc.logs.CollectResult, or None when the round failed
    error: str | None = None
    converge_why: dict[str, str] | None = None  # node -> why it was converged
    converged: Any = None  # evc.fleet.ConvergeResult

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k not in ("result", "converged")}
        out["duration_s"] = round(self.duration_s, 3)
        out["result"] = self.result.to_dict() if self.result is not None else None
        out["converged"] = self.converged.to_dict() if self.converged is not None else None
        return out


@dataclass
class MonitorSummary:
    rounds: int = 0
    failed_rounds: int = 0  # rounds that raised (hosts failing inside a round do not count)
    skipped_ticks: int = 0
    stopped_by: str | None = None  # signal name, or None when --rounds ran out


def next_tick(tick: float, interval: float, now: float) -> tuple[float, int]:
    """The next tick after ``tick`` that is not yet past at ``now``, and the ticks skipped."""
    tick += interval
    if now <= tick:
        return tick, 0
    skipped = math.floor((now - tick) / interval) + 1
    return tick + skipped * interval, skipped


def needs_converge(result: logs.CollectResult, deployments: list[dict]) -> dict[str, str]:
    """{node: why} for the nodes of a telemetry round that need `evc fleet converge`: back
    online after being unreachable or offline, or a declared model (``deployments``: the
    current rows) not running in the node's sample."""
    out = {}
    for e in result.events:
        if e["to_state"] == "online" and e["from_state"] in ("unreachable", "offline"):
            out[e["node"]] = f"back online after being {e['from_state']}"
    for row in deployments:
        sample = result.samples.get(row["node"])
        if sample is None or row["node"] in out:
            continue
        running = {c.get("name") for c in sample.get("containers") or ()
                   if isinstance(c, dict) and c.get("state") == "running"}  # fmt: skip
        if CONTAINER_PREFIX + row["model"] not in running:
            out[row["node"]] = f"{row['model']}:{row['version']} is not running"
    return out


def _in_thread(fn: Callable[[], Any]) -> Any:
    """fn() in a daemon thread; the main thread keeps handling signals while it runs."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    worker = threading.Thread(target=target, name="evc-monitor-round", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
    if "error" in box:
        raise box["error"]
    return box["value"]


class _Signals:
    """SIGINT/SIGTERM set ``stop``; a second one raises KeyboardInterrupt (abort now)."""

    def __init__(self, stop: threading.Event, on_signal: Callable[[str, bool], None]):
        self.stop, self.on_signal, self.name, self.saved = stop, on_signal, None, {}

    def _handle(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        again = self.stop.is_set()
        self.on_signal(name, again)
        if again:
            raise KeyboardInterrupt  # exit 130, the round left unfinished
        self.name = name
        self.stop.set()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def run(
    ws: Workspace,
    interval: float,
    target: str = "all",
    *,
    rounds: int | None = None,
    offline_after: int | None = None,
    on_round: Callable[[RoundReport], None] = lambda _r: None,
    on_signal: Callable[[str, bool], None] = lambda _name, _again: None,
    stop: threading.Event | None = None,
    converge: bool = False,
) -> MonitorSummary:
    """Collect telemetry every ``interval`` seconds until a signal, ``stop``, or ``rounds``;
    with ``converge``, repair the nodes that need it after each round."""
    options = logs.CollectOptions.of(target=target, offline_after=offline_after)
    resolve_hosts(ws.inventory, target)  # a bad target is an error now, not every round
    stop = stop or threading.Event()
    summary = MonitorSummary()
    with _Signals(stop, on_signal) as signals:
        tick = time.monotonic()
        while not stop.is_set():
            started, t0 = time.time(), time.monotonic()
            report = RoundReport(summary.rounds + 1, started, 0.0, 0)
            try:
                report.result = _in_thread(lambda: logs.collect(ws, options))
            except Exception as exc:  # the monitor outlives any one round
                report.error = f"{type(exc).__name__}: {exc}"
                summary.failed_rounds += 1
            if converge and report.result is not None:
                _converge(ws, report)
            summary.rounds += 1
            report.duration_s = time.monotonic() - t0
            tick, report.skipped_ticks = next_tick(tick, interval, time.monotonic())
            summary.skipped_ticks += report.skipped_ticks
            on_round(report)
            if rounds is not None and summary.rounds >= rounds:
                break
            stop.wait(max(0.0, tick - time.monotonic()))
        summary.stopped_by = signals.name
    return summary


def _converge(ws: Workspace, report: RoundReport) -> None:
    """Converge the nodes the round says need it; a failure is the round's error (the
    telemetry it stored stands)."""
    try:
        why = needs_converge(report.result, current(ws))
        if why:
            report.converge_why = why
            options = fleet.ConvergeOptions(target=",".join(sorted(why)))
            report.converged = _in_thread(lambda: fleet.converge(ws, options))
    except Exception as exc:  # the monitor outlives any one repair
        report.error = f"converge: {type(exc).__name__}: {exc}"


def evc_command() -> list[str]:
    """How to start this same evc: the console script beside this Python, else ``python -m evc``."""
    script = Path(sys.executable).parent / "evc"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "evc"]


def systemd_unit(
    ws: Workspace,
    interval: float,
    target: str = "all",
    offline_after: int | None = None,
    converge: bool = False,
) -> str:
    """A systemd service unit that runs this monitor for this workspace."""
    args = ["monitor", target, "--interval", f"{interval:g}"]
    if offline_after:
        args += ["--offline-after", str(offline_after)]
    if converge:
        args.append("--converge")
    return service_unit(
        ws, "monitor", "fleet monitor", args, "SIGTERM to evc only: it finishes the current "
        "round and exits 0.",
    )  # fmt: skip


def service_unit(ws: Workspace, service: str, what: str, args: list[str], on_stop: str) -> str:
    """A systemd service unit ``evc-SERVICE-WORKSPACE`` that runs ``evc ARGS`` for this
    workspace (`evc monitor --systemd-unit`, `evc serve --systemd-unit`)."""
    return f"""\
# EVC {what} for workspace {ws.name!r} ({ws.root}).
# Install: save as /etc/systemd/system/evc-{service}-{ws.name}.service, then
#   systemctl daemon-reload && systemctl enable --now evc-{service}-{ws.name}
[Unit]
Description=EVC {what} (workspace {ws.name})
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
Environment={shlex.quote(f"EVC_HOME={ws.root}")}
WorkingDirectory={ws.root}
ExecStart={shlex.join([*evc_command(), *args])}
# {on_stop}
KillMode=mixed
TimeoutStopSec=120
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
"""
