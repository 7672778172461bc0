"""The pull-mode protocol on Redis streams: the controller enqueues shards, nodes pull them.

Keys (a job id holds no glob character, :data:`evc.names.JOB_ID`, so it is safe in ACL
key patterns):

- ``evc:node:DEVICE:jobs``: the jobs announced to DEVICE, one entry each (fields ``job``,
  ``model``, ``version``, ``params``, ``lease``), added by the controller when a job starts
  and deleted when it ends. DEVICE may only read it; its puller runs a :class:`Worker` for
  each announced job of its model.

- ``evc:job:JOB:work``: the job's shards, one entry each, read by the job's nodes in the
  consumer group ``workers`` (consumer name: the device's name). One stream per job, so
  a fast node simply takes more (work stealing falls out of pulling).
- ``evc:node:DEVICE:jobs``: the jobs announced to DEVICE (:func:`announce_key`); its worker
  reads it to know which job streams to pull from, and stops when its job's entry goes.
- ``evc:job:JOB:results:DEVICE``: what DEVICE reports. Only DEVICE's ACL user may XADD
  there (:mod:`evc.queue.acl`), so the key, not a field a node writes, says who reported.

Life of a shard:

1. :class:`Dispatcher` XADDs it while fewer than ``window`` shards are in flight
   (backpressure: Redis never holds more than ``window`` shards of a job).
2. A :class:`Worker` XREADGROUPs it (now pending on that consumer) and processes it while
   a lease thread resets its idle time every ``lease / 3`` (``XCLAIM ... JUSTID`` on its
   own entry, after ``XPENDING`` says it still holds it); then XADDs its results, XACKs.
3. An idle worker first XAUTOCLAIMs entries idle for longer than the lease (their
   consumer died or hangs), then reads new ones: no shard is lost with its node.
4. The dispatcher hands every report to an ``ingest`` callback that must be idempotent
   (in EVC the ``results`` table's ``(job_id, item)`` key makes a second report of an
   item a no-op), then XACKs and XDELs the entry and the report. A shard reclaimed after
   its first node reported but before it acked is reported twice: the second report
   reaches ``ingest`` again and changes nothing.
5. An entry delivered more than ``max_deliveries`` times is given up: its items are
   ingested as errors, so every item ends.

Payloads travel inline, in the work entry (``Shard.payloads``), not through a second
store. The nodes already reach this Redis over TLS with a credential per device; the
other stores they reach serve other things (the registry holds images behind a read-only
endpoint; the controller's HTTP API takes operator tokens), and giving nodes a data store
would add a second credential, a second exposure and a second thing to clean up. Inline
payloads cost Redis memory, which the window bounds: at most ``window`` shards of at most
``max_shard_bytes`` each per job (``maxmemory`` with ``noeviction`` caps the server
whatever the jobs), and each is deleted once its results are in. A shard may instead
carry references only (``payloads=None``): item names the node resolves itself.

This module is shipped into every model image as ``evc_infer/streams.py`` (the nodes'
puller, model_images/common/evc_infer/pull.py): it imports the standard library and
redis-py only.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

GROUP = "workers"


def announce_key(device: str) -> str:
    """Where the controller announces the pull jobs ``device`` may work on (one entry per
    job: ``job``, ``model``, ``version``, ``params``, ``lease``), XDELed when the job ends."""
    return f"evc:node:{device}:jobs"


def puller_name(model: str, version: str, image: str, *, ready: bool) -> str:
    """The name a node's puller gives its connection (``CLIENT SETNAME``): the model
    version and image (``REPO@sha256:...``) it serves and whether its model server
    answers, renamed when that changes. The controller's ``CLIENT LIST`` then finds a
    job's usable nodes without an ``ansible-playbook`` run; the device is the connection's
    authenticated user, never a part of the name."""
    return ":".join(("evc-pull", "ready" if ready else "silent", model, version, image))


def work_key(job: str) -> str:
    return f"evc:job:{job}:work"


def results_key(job: str, device: str) -> str:
    return f"evc:job:{job}:results:{device}"


@dataclass(frozen=True)
class Shard:
    index: int
    items: list[str]
    payloads: list[bytes] | None = None  # None: the items are references

    def encode(self) -> dict[str, bytes | str]:
        fields: dict[str, bytes | str] = {"shard": str(self.index), "items": json.dumps(self.items)}
        for i, data in enumerate(self.payloads or []):
            fields[f"p{i}"] = data
        return fields

    @classmethod
    def decode(cls, fields: dict[bytes, bytes]) -> Shard:
        items = json.loads(fields[b"items"])
        has = b"p0" in fields or not items
        payloads = [fields[f"p{i}".encode()] for i in range(len(items))] if has else None
        return cls(int(fields[b"shard"]), items, payloads)

    @property
    def size(self) -> int:
        return sum(map(len, self.payloads or []))


# (the reporting device, or None for the controller's verdict; the shard, without its
# payloads; one result dict per item of the shard)
Ingest = Callable[[str | None, Shard, list[dict]], None]


@dataclass
class DispatchStats:
    enqueued: int = 0
    done: int = 0
    reports: int = 0
    duplicates: int = 0  # reports of a shard already done: ingested again, changed nothing
    unknown: int = 0  # reports of no shard of this run, or malformed: dropped
    given_up: int = 0
    max_in_flight: int = 0
    complete: bool = False


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Dispatcher:
    """The controller's side of one job: keeps at most ``window`` shards in Redis and
    ingests what the job's ``devices`` report. ``r`` is the admin's connection."""

    def __init__(
        self, r, job: str, devices: Iterable[str], ingest: Ingest, *,
        window: int = 8, max_deliveries: int = 3, max_shard_bytes: int = 8 << 20,
    ):  # fmt: skip
        if window < 1:
            raise ValueError("the window holds at least one shard")
        self.r, self.job, self.ingest = r, job, ingest
        self.devices = sorted(devices)
        self.window, self.max_deliveries, self.max_shard_bytes = (
            window, max_deliveries, max_shard_bytes,
        )  # fmt: skip
        self.stats = DispatchStats()
        self._shards: dict[str, Shard] = {}  # entry id -> shard, for every entry of this run
        self._in_flight: set[str] = set()
        self._cursors = {results_key(job, d): "0-0" for d in self.devices}

    def setup(self) -> None:
        """The work stream and its consumer group (kept if they exist)."""
        import redis

        try:
            self.r.xgroup_create(work_key(self.job), GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def run(
        self, shards: Iterable[Shard], *, deadline: float | None = None, poll: float = 0.2,
        stop: threading.Event | None = None,
    ) -> DispatchStats:  # fmt: skip
        """Until every shard is done or given up (``complete``), ``deadline`` (monotonic)
        passes, or ``stop`` is set. A lost connection (Redis restarting: its append-only
        file keeps the streams and the group) is waited out."""
        import redis

        self.setup()
        todo: Iterator[Shard] = iter(shards)
        shard: Shard | None = None  # taken from ``shards``, kept until it is enqueued
        exhausted = False
        last_check = 0.0
        while not (stop and stop.is_set()) and not (deadline and time.monotonic() > deadline):
            try:
                while not exhausted and len(self._in_flight) < self.window:
                    shard = shard or next(todo, None)
                    if shard is None:
                        exhausted = True
                    else:
                        self._enqueue(shard)
                        shard = None
                if exhausted and not self._in_flight:
                    self.stats.complete = True
                    break
                self._read_reports(poll)
                if time.monotonic() - last_check > poll:
                    self._give_up_poison()
                    last_check = time.monotonic()
            except redis.ConnectionError:
                time.sleep(poll)
        return self.stats

    def _enqueue(self, shard: Shard) -> None:
        if shard.size > self.max_shard_bytes:
            raise ValueError(
                f"shard {shard.index} holds {shard.size} bytes, over {self.max_shard_bytes}"
            )
        entry = _text(self.r.xadd(work_key(self.job), shard.encode()))
        self._shards[entry] = Shard(shard.index, shard.items)  # its payloads are Redis' now
        self._in_flight.add(entry)
        self.stats.enqueued += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, len(self._in_flight))

    def _read_reports(self, poll: float) -> None:
        if not self._cursors:
            time.sleep(poll)
            return
        answer = self.r.xread(self._cursors, count=64, block=max(1, int(poll * 1000)))
        for key, entries in answer or []:
            key = _text(key)
            device = key.rsplit(":", 1)[1]
            for report_id, fields in entries:
                self._cursors[key] = _text(report_id)
                self._report(device, fields)
            self.r.xdel(key, *[report_id for report_id, _ in entries])

    def _report(self, device: str, fields: dict[bytes, bytes]) -> None:
        """Ingest one node report: only items of the shard it names, each once at most;
        items it leaves out are errors. Malformed or foreign reports are dropped."""
        self.stats.reports += 1
        try:
            entry = fields[b"entry"].decode()
            results = json.loads(fields[b"results"])
            shard = self._shards[entry]
            if not isinstance(results, list):
                raise TypeError
        except (KeyError, ValueError, TypeError, UnicodeDecodeError):
            self.stats.unknown += 1
            return
        expected = set(shard.items)
        kept = {}
        for r in results:
            if isinstance(r, dict) and isinstance(r.get("item"), str) and r["item"] in expected:
                kept.setdefault(r["item"], r)
        missing = [
            {"item": i, "state": "error", "error": "not in the node's report"}
            for i in shard.items
            if i not in kept
        ]
        if entry not in self._in_flight:
            self.stats.duplicates += 1
        self.ingest(device, shard, [*kept.values(), *missing])
        self._finish(entry)

    def _finish(self, entry: str) -> None:
        if entry in self._in_flight:
            self._in_flight.discard(entry)
            self.stats.done += 1
        pipe = self.r.pipeline(transaction=False)
        pipe.xack(work_key(self.job), GROUP, entry)
        pipe.xdel(work_key(self.job), entry)
        pipe.execute()

    def _give_up_poison(self) -> None:
        """Shards delivered more than ``max_deliveries`` times: their items end as errors."""
        pending = self.r.xpending_range(work_key(self.job), GROUP, min="-", max="+", count=1000)
        for p in pending:
            entry = _text(p["message_id"])
            if p["times_delivered"] > self.max_deliveries and entry in self._in_flight:
                shard = self._shards[entry]
                error = f"given up after {self.max_deliveries} deliveries"
                self.ingest(None, shard, [
                    {"item": i, "state": "error", "error": error} for i in shard.items
                ])  # fmt: skip
                self.stats.given_up += 1
                self._finish(entry)

    def cleanup(self) -> None:
        """Delete the job's streams (its work, every device's results)."""
        self.r.delete(work_key(self.job), *(results_key(self.job, d) for d in self.devices))


Process = Callable[[Shard], list[dict]]  # a shard -> one result dict per item ("item": name)


class Worker:
    """A node's side: pull shards of ``job`` as consumer ``device``, process, report, ack.

    ``r`` is a connection as the device's ACL user. A shard whose processing raises stays
    pending: after the lease another worker (or this one) reclaims it.
    """

    def __init__(
        self, r, job: str, device: str, process: Process, *, lease: float = 30.0,
        block: float = 1.0,
    ):  # fmt: skip
        self.r, self.job, self.device, self.process = r, job, device, process
        self.lease, self.block = lease, block
        self.key = work_key(job)
        self.done = 0
        self.reclaimed = 0
        self.failed = 0

    def run(self, stop: threading.Event) -> int:
        """Until ``stop`` is set (whoever runs the worker knows when its job is over; a
        job's stream that is not there yet, or no longer, is waited for); the number of
        shards it reported."""
        while not stop.is_set():
            self.step(stop)
        return self.done

    def step(self, stop: threading.Event) -> bool:
        """One round: a stale entry, else a new one (waiting up to ``block``), handled.
        Whether it handled one (a node's puller runs its jobs' workers step by step, so
        that it holds one shard at most)."""
        import redis

        try:
            entry = self._claim_stale() or self._read_new()
            if entry is not None:
                self._handle(*entry)
                return True
        except redis.ConnectionError:
            stop.wait(self.block)  # Redis restarting: its AOF keeps the pending entries
        except redis.ResponseError as exc:
            if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                raise
            stop.wait(self.block)  # the job is not set up yet, or over and deleted
        return False

    def _claim_stale(self) -> tuple[str, dict] | None:
        answer = self.r.xautoclaim(
            self.key, GROUP, self.device, int(self.lease * 1000), start_id="0-0", count=1
        )
        claimed = [(i, f) for i, f in answer[1] if f]  # deleted entries come back empty
        if claimed:
            self.reclaimed += 1
            return _text(claimed[0][0]), claimed[0][1]
        return None

    def _read_new(self) -> tuple[str, dict] | None:
        answer = self.r.xreadgroup(
            GROUP, self.device, {self.key: ">"}, count=1, block=max(1, int(self.block * 1000))
        )
        for _key, entries in answer or []:
            for entry, fields in entries:
                return _text(entry), fields
        return None

    def _handle(self, entry: str, fields: dict) -> None:
        shard = Shard.decode(fields)
        with _Lease(self, entry):
            try:
                results = self.process(shard)
            except Exception:
                self.failed += 1
                return  # left pending: reclaimed after the lease
        self._report(entry, shard, results)
        self._ack(entry)
        self.done += 1

    def _report(self, entry: str, shard: Shard, results: list[dict]) -> None:
        fields = {"entry": entry, "shard": str(shard.index), "results": json.dumps(results)}
        self.r.xadd(results_key(self.job, self.device), fields)

    def _ack(self, entry: str) -> None:
        self.r.xack(self.key, GROUP, entry)

    def holds(self, entry: str) -> bool:
        """Whether ``entry`` is still pending on this consumer."""
        pending = self.r.xpending_range(self.key, GROUP, min=entry, max=entry, count=1)
        return bool(pending) and _text(pending[0]["consumer"]) == self.device


class _Lease:
    """While a shard is processed, reset its idle time every ``lease / 3`` so that no one
    reclaims it; stop once another consumer holds it (it was reclaimed while this one
    stalled: both may then report, and ingestion makes the second a no-op)."""

    def __init__(self, worker: Worker, entry: str):
        self.worker, self.entry = worker, entry
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._extend, daemon=True)
        self.lost = False

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _extend(self) -> None:
        import redis

        w = self.worker
        while not self._done.wait(w.lease / 3):
            try:
                if not w.holds(self.entry):
                    self.lost = True
                    return
                w.r.xclaim(w.key, GROUP, w.device, 0, [self.entry], justid=True)
            except redis.ConnectionError:
                continue
