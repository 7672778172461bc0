"""Long actions of `evc serve`: run in the server's worker threads, recorded as they go.

An action is one call of a core function for an API caller: a deploy, an inference job,
a run-config. Its ``actions`` row says what it is (its parameters with secrets masked),
who asked, its state and its outcome; its state changes and progress lines are
``action_events`` rows, reported through :class:`ActionProgress`. The core functions
record their own work as it happens (jobs, shards and results; deployments; run steps;
Ansible runs), so the database holds everything an action did: a server that restarts
loses nothing, a job it was running is resumable, and the event stream of any server
(fed from the database) shows any action, whichever process runs it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from evc import db as evcdb
from evc import redact, views
from evc.config import Workspace
from evc.errors import EVCError, Interrupted, UsageError
from evc.progress import Progress
from evc.run.capabilities import Outcome

FINAL = ("ok", "failed", "cancelled", "interrupted")
STATUS_EVERY_S = 0.5  # a status line changes at most this often in the database
MAX_MESSAGE = 4000  # characters of one progress line kept
HOST = socket.gethostname()

# run(progress, stop) -> Outcome; ``stop`` is set by a cancel or the server's shutdown
Run = Callable[[Progress, threading.Event], Outcome]


def new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def _event(ws: Workspace, action_id: str, kind: str, message: str) -> None:
    db = evcdb.workspace_db(ws)
    with evcdb.transaction(db):
        db["action_events"].insert(
            {
                "action_id": action_id,
                "at": time.time(),
                "kind": kind,
                "message": redact.text(message[:MAX_MESSAGE]),
            }  # fmt: skip
        )


class ActionProgress(Progress):
    """Progress lines of an action as ``action_events`` rows: every ``log`` and task
    title, and the status line when it changes (at most every ``STATUS_EVERY_S``)."""

    def __init__(self, ws: Workspace, action_id: str):
        self.ws, self.action_id = ws, action_id
        self._last_status = ("", 0.0)
        self._lock = threading.Lock()

    def log(self, message: str) -> None:
        _event(self.ws, self.action_id, "log", message)

    def status(self, text: str) -> None:
        with self._lock:
            last, at = self._last_status
            now = time.monotonic()
            if text == last or now - at < STATUS_EVERY_S:
                return
            self._last_status = (text, now)
        _event(self.ws, self.action_id, "status", text)

    @contextmanager
    def task(self, title: str) -> Iterator[Progress]:
        self.log(title)
        yield self


class Worker:
    """Runs actions on a few threads; each action can be told to stop."""

    def __init__(self, ws: Workspace, threads: int = 4):
        self.ws = ws
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="evc-action")
        self._stops: dict[str, threading.Event] = {}
        self._futures: dict[str, Future] = {}
        self._cancellable: set[str] = set()
        self._lock = threading.Lock()

    def submit(
        self,
        kind: str,
        params: dict[str, Any],
        who: str,
        run: Run,
        *,
        ref: str | None = None,
        cancellable: bool = False,
    ) -> str:
        """Record a queued action and hand it to a thread; returns its id."""
        action_id = new_id()
        db = evcdb.workspace_db(self.ws)
        with evcdb.transaction(db):
            db["actions"].insert(
                {
                    "id": action_id,
                    "kind": kind,
                    "who": who,
                    "state": "queued",
                    "ref": ref,
                    "params": json.dumps(redact.data(params), default=str),
                    "created": time.time(),
                    "host": HOST,
                    "pid": os.getpid(),
                }  # fmt: skip
            )
        _event(self.ws, action_id, "state", "queued")
        stop = threading.Event()
        with self._lock:
            self._stops[action_id] = stop
            if cancellable:
                self._cancellable.add(action_id)
            self._futures[action_id] = self._pool.submit(self._run, action_id, run, stop)
        return action_id

    def set_ref(self, action_id: str, ref: str) -> None:
        """Name what the action made (a run-config's run id, known once it starts)."""
        db = evcdb.workspace_db(self.ws)
        with evcdb.transaction(db):
            db["actions"].update(action_id, {"ref": ref})

    def cancel(self, action_id: str) -> bool:
        """Ask a running cancellable action of this server to stop; False if it is not one."""
        with self._lock:
            stop = self._stops.get(action_id)
            if stop is None or action_id not in self._cancellable:
                return False
        stop.set()
        return True

    def running(self) -> list[str]:
        with self._lock:
            return list(self._stops)

    def shutdown(self, wait_s: float = 60.0) -> None:
        """Stop every action (a job ends as after Ctrl-C: resumable) and wait for them."""
        with self._lock:
            stops, futures = list(self._stops.values()), list(self._futures.values())
        for stop in stops:
            stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + wait_s
        for future in futures:
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # each action records its own end
                pass

    def _run(self, action_id: str, run: Run, stop: threading.Event) -> None:
        db = evcdb.workspace_db(self.ws)
        state, summary, detail = "failed", "", None
        try:
            if stop.is_set():
                state, summary = "cancelled", "stopped before it started"
                return
            with evcdb.transaction(db):
                db["actions"].update(action_id, {"state": "running", "started": time.time()})
            _event(self.ws, action_id, "state", "running")
            outcome = run(ActionProgress(self.ws, action_id), stop)
            state = "ok" if outcome.ok else "failed"
            summary, detail = outcome.summary, {"detail": outcome.detail, "hosts": outcome.hosts}
        except Interrupted as exc:
            state, summary = "cancelled", str(exc)
        except EVCError as exc:
            state, summary = "failed", str(exc)
        except Exception as exc:  # a bug: the action fails with its reason, the server lives
            summary = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            self._finish(db, action_id, state, summary, detail)

    def _finish(self, db, action_id: str, state: str, summary: str, detail: Any) -> None:
        result = json.loads(json.dumps(redact.data(_plain(detail)), default=str))
        with evcdb.transaction(db):
            db["actions"].update(
                action_id,
                {
                    "state": state,
                    "ended": time.time(),
                    "summary": redact.text(summary),
                    "result": json.dumps(result),
                },  # fmt: skip
            )
        _event(self.ws, action_id, "state", state)
        with self._lock:
            self._stops.pop(action_id, None)
            self._futures.pop(action_id, None)
            self._cancellable.discard(action_id)


def _plain(detail: Any) -> Any:
    return json.loads(json.dumps(detail, default=str))


def recover(ws: Workspace) -> list[str]:
    """At a server's start: its own actions that a dead server left queued or running
    are 'interrupted' (a job among them stays resumable; its rows say how far it got)."""
    db = evcdb.workspace_db(ws)
    dead = []
    with evcdb.transaction(db):
        rows = db.query(
            "SELECT id, pid FROM actions WHERE host = ? AND state IN ('queued', 'running')",
            [HOST],
        )
        for row in list(rows):
            if row["pid"] == os.getpid() or not _alive(row["pid"]):
                dead.append(row["id"])
                db["actions"].update(
                    row["id"],
                    {
                        "state": "interrupted",
                        "ended": time.time(),
                        "summary": "the server running it stopped",
                    },  # fmt: skip
                )
    for action_id in dead:
        _event(ws, action_id, "state", "interrupted")
    return dead


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def get(ws: Workspace, action_id: str, lines: int = 200) -> dict[str, Any]:
    """An action with its last ``lines`` progress lines."""
    db = evcdb.workspace_db(ws)
    row = next(db.query("SELECT * FROM actions WHERE id = ?", [action_id]), None)
    if row is None:
        raise UsageError(f"No action {action_id!r}.")
    events = list(
        db.query(
            "SELECT id, at, kind, message FROM action_events WHERE action_id = ? "
            "ORDER BY id DESC LIMIT ?",
            [action_id, lines],
        )
    )
    return {**_decoded(row), "events": events[::-1]}


def _decoded(row: dict) -> dict:
    out = dict(row)
    for key in ("params", "result"):
        out[key] = json.loads(out[key]) if out.get(key) else None
    return out


def page(
    ws: Workspace, limit: int, offset: int, state: str | None = None, ref: str | None = None
) -> dict[str, Any]:
    """Actions, newest first."""
    out = views.page(
        evcdb.workspace_db(ws),
        "FROM actions WHERE (? IS NULL OR state = ?) AND (? IS NULL OR ref = ?)",
        [state, state, ref, ref], "created DESC", limit, offset,
    )  # fmt: skip
    out["items"] = [_decoded(r) for r in out["items"]]
    return out
