"""Pull mode (``evc infer run --mode pull``, issue 19): the nodes take a job's shards from
the workspace's queue (:mod:`evc.queue`) instead of the controller pushing each one over
SSH.

The controller grants the job's nodes its streams (:func:`evc.queue.acl.grant`),
announces the job on each node's ``evc:node:DEVICE:jobs`` stream (the puller in the
node's model image starts a worker for it), and runs a :class:`~evc.queue.streams.Dispatcher`
over shards that carry the items' bytes. A shard costs the controller one XADD and one
report read, not an ``ansible-playbook`` process; a fast node simply takes more. Every
report goes through the same exactly-once UPDATE as push mode's
(:func:`evc.infer.ingest.store_item`), so a shard reported twice (reclaimed after its
lease from a node that stalled, then reported by both) changes nothing the second time.

The run ends when every shard is in; on Ctrl-C, ``stop``, a queue error, or no report
from any node for ``STALL_S`` while shards are pending, it stops the way push mode's
Ctrl-C does: pending items stay pending and ``evc infer resume`` runs them. Either way
the announcements are withdrawn, the grant revoked (before the streams are deleted, so
that a late worker cannot re-create them) and the job's streams deleted.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from evc import db as evcdb
from evc import pull_credentials
from evc.config import Workspace
from evc.errors import EVCError, Interrupted, UsageError
from evc.infer import ingest
from evc.infer.data import open_item
from evc.infer.jobs import JobResult, status
from evc.infer.shards import Record
from evc.progress import Progress
from evc.queue import acl, server
from evc.queue.streams import Dispatcher, Shard, announce_key

STALL_S = 300.0  # no report from any node for this long while shards are pending: stop
LEASE_S = 30.0  # a node's worker extends its lease on a shard every LEASE_S / 3
MAX_SHARD_BYTES = 4 << 20
GUIDE = 4  # auto shard size: what is left / (GUIDE x nodes), so the last shards are small
# A pull shard costs the controller ~1.5 ms, so shards stay small: the slowest node's
# last one is what the job waits for (32 left 1.25x ideal on the unequal lab, bench/infer_modes.py).
MAX_AUTO_SHARD = 8


def check_queue(ws: Workspace) -> None:
    if not server.running(ws):
        raise UsageError(
            "Pull mode needs the workspace's queue: run `evc queue up` first "
            "(`evc lab up` starts it in a lab), or use --mode push."
        )


def pullers(ws: Workspace, nodes: list[str], skipped: dict[str, str]) -> list[str]:
    """Of ``nodes``, those with a queue user (they hold a pull credential); the others
    join ``skipped``. None is an error."""
    held = pull_credentials.nonces(ws, nodes)
    for n in nodes:
        if n not in held:
            skipped[n] = f"{n} holds no queue credential: run `evc cert push {n}`"
    if not held:
        raise UsageError("; ".join(skipped[n] for n in nodes) + ".")
    return [n for n in nodes if n in held]


def announcement(job: dict) -> dict[str, str]:
    """What a node's puller reads about ``job`` (the contract's fields, all strings)."""
    params = json.loads(job["params"])
    return {
        "job": job["id"], "model": job["model"], "version": job["version"],
        "params": json.dumps({k: params.get(k) for k in ("conf", "iou", "imgsz")}),
        "lease": str(LEASE_S),
    }  # fmt: skip


def _announced_key(job_id: str) -> str:
    """The nodes ``job_id`` was announced to (a set: no device's ACL names it)."""
    return f"evc:job:{job_id}:announced"


def announce(r, job: dict, nodes: list[str]) -> None:
    """One announcement of ``job`` per node, the nodes remembered first, so that the
    next run withdraws exactly those after a run killed outright."""
    if nodes:
        r.sadd(_announced_key(job["id"]), *nodes)
    for n in nodes:
        r.xadd(announce_key(n), announcement(job))


def withdraw(r, job_id: str) -> int:
    """XDEL ``job_id``'s announcements from the nodes it was announced to (this run's and
    any a killed run left): O(the job's nodes), not a scan of every node's stream (10,000
    devices, two scans a job); how many."""
    key = _announced_key(job_id)
    gone = 0
    for node in sorted(n.decode() for n in r.smembers(key)):
        stream = announce_key(node)
        ids = [i for i, f in r.xrange(stream) if f.get(b"job") == job_id.encode()]
        gone += r.xdel(stream, *ids) if ids else 0
    r.delete(key)
    return gone


def _record(result: dict) -> Record:
    """A report's dict as a Record: the Dispatcher's verdict ``{"item", "state": "error",
    "error"}``, else one results.jsonl line, checked as push mode checks it."""
    item = result["item"]
    if result.get("state") == "error":
        return Record(item=item, ok=False, error=str(result.get("error") or "failed"))
    try:
        return Record.model_validate_json(json.dumps(result))
    except ValueError as exc:  # ValidationError, or a NaN json.dumps wrote
        error = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        return Record(item=item, ok=False, error=f"unusable result from the node: {error}")


class _Run:
    """One run of a pull job: the shards it feeds the Dispatcher, what it stores."""

    def __init__(self, ws: Workspace, job: dict, nodes: list[str], pending: list[str]):
        self.ws, self.job, self.nodes, self.pending = ws, job, nodes, pending
        self.fixed = json.loads(job["params"]).get("shard_size")
        self.sent: dict[int, float] = {}  # shard index -> when it was enqueued
        self.reports: dict[int, int] = {}  # shard index -> reports stored
        self.done = 0
        self.last_report = time.monotonic()
        self.error: BaseException | None = None
        self._db = None  # the dispatcher thread's connection, for the run

    @property
    def db(self):
        """One connection for the run's many shards (opening one costs ~1 ms): made and
        used in the dispatcher's thread only, closed when it ends."""
        if self._db is None:
            self._db = evcdb.workspace_db(self.ws)
        return self._db

    def shards(self) -> Iterator[Shard]:
        """The pending items' bytes, read as the Dispatcher has room (its window bounds
        what is read ahead); an item that cannot be read ends as an error at once."""
        root, left = Path(self.job["data_dir"]), list(self.pending)
        index = 0
        while left:
            guided = math.ceil(len(left) / (GUIDE * len(self.nodes)))
            size = self.fixed or min(MAX_AUTO_SHARD, guided)
            items, payloads, total = [], [], 0
            while left and len(items) < size:
                opened = open_item(root, left[0])
                if not isinstance(opened, str) and opened[1] > MAX_SHARD_BYTES:
                    opened[0].close()
                    opened = f"{opened[1]} bytes, over a pull shard's {MAX_SHARD_BYTES >> 20} MiB"
                if isinstance(opened, str):
                    self._refused(left.pop(0), opened)
                    continue
                if items and total + opened[1] > MAX_SHARD_BYTES:
                    opened[0].close()
                    break
                with opened[0] as fh:
                    payloads.append(fh.read())
                total += len(payloads[-1])
                items.append(left.pop(0))
            if items:
                self.sent[index] = time.time()
                yield Shard(index, items, payloads)
                index += 1

    def _refused(self, item: str, why: str) -> None:
        db = self.db
        with evcdb.transaction(db):
            rec = Record(item=item, ok=False, error=f"not sent: {why}")
            self.done += ingest.store_item(db, self.job["id"], rec, None, None, None)

    def ingest(self, device: str | None, shard: Shard, results: list[dict]) -> None:
        """A node's report (or the Dispatcher's verdict, ``device`` None), stored in one
        transaction with its shard row (node = the reporting device)."""
        records = [_record(r) for r in results]
        db = self.db
        now = time.time()
        shard_id, attempt = None, None
        with evcdb.transaction(db):
            if device is not None:
                attempt = self.reports.get(shard.index, 0) + 1
                shard_id = db["shards"].insert({
                    "job_id": self.job["id"], "idx": shard.index, "node": device,
                    "attempt": attempt, "items": len(shard.items), "state": "done",
                    "started": self.sent.get(shard.index, now), "finished": now,
                }).last_pk  # fmt: skip
            stored = sum(
                ingest.store_item(db, self.job["id"], rec, shard_id, device, attempt)
                for rec in records
            )
            if shard_id is not None and not stored:
                db["shards"].update(shard_id, {"state": "lost", "error": (
                    "a second report of a shard already stored (reclaimed after its "
                    "lease): it changed nothing")})  # fmt: skip
        if device is not None:
            self.reports[shard.index] = attempt or 0
            self.last_report = time.monotonic()
        self.done += stored

    def dispatch(self, dispatcher: Dispatcher, halt: threading.Event) -> None:
        try:
            dispatcher.run(self.shards(), stop=halt)
        except BaseException as exc:  # noqa: BLE001 - handed to the job's thread
            self.error = exc
        finally:
            if self._db is not None:
                self._db.close()


class _Stopped(Exception):
    """Handled like Ctrl-C: ``stop`` set (no reason), or why the run cannot go on (the
    nodes stalled, the dispatcher failed)."""


def execute(
    ws: Workspace, job: dict, nodes: list[str], pending: list[str], progress: Progress,
    stop: threading.Event | None,
) -> JobResult:  # fmt: skip
    """Run the job's ``pending`` items on ``nodes`` through the queue (the caller holds
    the job's lock and has marked it running)."""
    job_id = job["id"]
    db = evcdb.workspace_db(ws)
    run = _Run(ws, job, nodes, pending)
    r = server.admin(ws)
    # two shards a node (one worked, one waiting), within a quarter of Redis' memory
    room = (ws.settings.queue.maxmemory_mb << 20) // (4 * MAX_SHARD_BYTES)
    window = max(1, min(max(4, 2 * len(nodes)), room))
    dispatcher = Dispatcher(r, job_id, nodes, run.ingest, window=window,
                            max_shard_bytes=MAX_SHARD_BYTES)  # fmt: skip
    halt = threading.Event()
    thread = threading.Thread(target=run.dispatch, args=(dispatcher, halt), daemon=True)
    try:  # a Ctrl-C from here on ends in the cleanup below
        withdraw(r, job_id)  # what a killed run of the job left
        dispatcher.cleanup()
        acl.grant(ws, job_id, nodes)
        server.sync_acl(ws)
        announce(r, job, nodes)
        with progress.task(f"job {job_id} (pull, {len(nodes)} nodes)") as line:
            thread.start()
            while thread.is_alive():
                if stop is not None and stop.is_set():
                    raise _Stopped()
                if time.monotonic() - run.last_report > STALL_S:
                    raise _Stopped(f"no node reported for {STALL_S:.0f} s")
                s = dispatcher.stats
                line.status(f"{run.done}/{len(pending)} items, "
                            f"{s.enqueued - s.done} shards in the queue")  # fmt: skip
                thread.join(timeout=0.5)
        if run.error is not None:
            raise _Stopped(f"{type(run.error).__name__}: {run.error}")
        ingest.finish(db, job_id, [])  # its makespan ends with the last report, not the cleanup
    except (KeyboardInterrupt, _Stopped) as exc:
        _halt(db, job_id, halt, thread)
        resume = f"its pending items stay pending: `evc infer resume {job_id}` runs them."
        if isinstance(exc, _Stopped) and exc.args:
            raise EVCError(f"Job {job_id} stopped ({exc.args[0]}); {resume}") from None
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else "stopped"
        raise Interrupted(f"Job {job_id} {what}; {resume}") from None
    except Exception:  # the queue refused the setup: the job is resumable all the same
        _halt(db, job_id, halt, thread)
        raise
    finally:
        halt.set()
        with contextlib.suppress(Exception, KeyboardInterrupt):  # best effort, as push's cleanup
            _end(ws, r, dispatcher)
    return status(ws, job_id)


def _halt(db, job_id: str, halt: threading.Event, thread: threading.Thread) -> None:
    halt.set()
    if thread.ident is not None:
        thread.join(timeout=10)
    ingest.interrupt(db, job_id)


def _end(ws: Workspace, r, dispatcher: Dispatcher) -> None:
    """Withdraw the announcements, revoke the grant (a late worker's report is then
    refused rather than re-creating a stream), delete the job's streams."""
    withdraw(r, dispatcher.job)
    acl.grant(ws, dispatcher.job, [])
    server.sync_acl(ws)
    dispatcher.cleanup()
