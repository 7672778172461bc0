"""The pull-mode protocol with real threads on a real redis-server (TLS, ACLs): each
worker connects as its device's ACL user, the dispatcher as the admin.

Planted: a worker that dies mid-shard, one that freezes past its lease and reports
late, a shard that always fails, a node reporting items of no shard of its own; and a
dispatcher with no workers at all (backpressure).
"""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from evc.queue import acl, server
from evc.queue.streams import GROUP, Dispatcher, Shard, Worker, results_key, work_key
from tests.unit import queue_support as qs

LEASE = 0.5


class Died(BaseException):
    """A node that stops: not an Exception, so nothing in the worker survives it."""


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    with qs.running(tmp_path_factory.mktemp("streams") / "ws") as ws:
        yield ws


class Results:
    """The controller's results table in small: ``(job_id, item)`` is the key, so a
    second report of an item is a no-op; every report is counted."""

    def __init__(self):
        self.db = sqlite3.connect(":memory:", check_same_thread=False)
        self.db.execute(
            "CREATE TABLE results (job_id TEXT, item TEXT, state TEXT, node TEXT, "
            "PRIMARY KEY (job_id, item))"
        )
        self.reports: list[tuple[str | None, int]] = []

    def ingest_for(self, job: str):
        def ingest(device, shard, results):
            self.reports.append((device, shard.index))
            self.db.executemany(
                "INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?)",
                [(job, r["item"], r["state"], device) for r in results],
            )

        return ingest

    def rows(self, job: str) -> list[tuple]:
        return self.db.execute(
            "SELECT item, state, node FROM results WHERE job_id = ? ORDER BY item", [job]
        ).fetchall()


def shards(count: int, per: int, size: int = 64) -> list[Shard]:
    return [
        Shard(s, [f"s{s:02d}i{i}.jpg" for i in range(per)], [bytes([s]) * size] * per)
        for s in range(count)
    ]


def ok(shard: Shard) -> list[dict]:
    return [
        {"item": item, "state": "ok", "bytes": len(data)}
        for item, data in zip(shard.items, shard.payloads or [], strict=True)
    ]


def start(ws, job: str, device: str, process, stop: threading.Event, lease: float = LEASE):
    worker = Worker(qs.device(ws, device), job, device, process, lease=lease, block=0.1)
    thread = threading.Thread(target=_run_until_dead, args=(worker, stop), daemon=True)
    thread.start()
    return worker, thread


def _run_until_dead(worker: Worker, stop: threading.Event) -> None:
    try:
        worker.run(stop)
    except Died:
        pass


def test_exactly_once_when_a_worker_dies_and_another_freezes_past_its_lease(ws):
    job = "die"
    acl.grant(ws, job, qs.WORKERS)
    server.sync_acl(ws)
    table = Results()
    stop = threading.Event()
    took: dict[str, int] = {}
    release = threading.Event()  # node2 wakes once another node took over its shard
    finished: list[int] = []

    def dies(shard):  # node1: dies in the middle of its first shard
        took["node1"] = shard.index
        raise Died

    def freezes(shard):  # node2: frozen, its heartbeat too, until its shard is taken over
        took.setdefault("node2", shard.index)
        release.wait(10)
        return ok(shard)

    def healthy(shard):
        if shard.index == took.get("node2"):
            release.set()
        time.sleep(0.02)
        finished.append(shard.index)
        return ok(shard)

    work = shards(12, 4)

    def feed():
        """All but the last shard; the last once node2's late report and its taker's are
        in, so that the dispatcher is still running to read both."""
        yield from work[:-1]
        deadline = time.monotonic() + 15
        while not (frozen.done and took["node2"] in finished) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        yield work[-1]

    dispatcher = Dispatcher(server.admin(ws), job, qs.WORKERS, table.ingest_for(job), window=4)
    dispatcher.setup()
    start(ws, job, "node1", dies, stop)
    # node2's own heartbeat would come every 20 s: the others see it idle after LEASE.
    frozen, _ = start(ws, job, "node2", freezes, stop, lease=60)
    runner = threading.Thread(
        target=dispatcher.run, args=(feed(),), kwargs={"deadline": time.monotonic() + 30}
    )
    runner.start()
    deadline = time.monotonic() + 10
    while len(took) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    others = [start(ws, job, d, healthy, stop)[0] for d in ("node4", "node5")]
    runner.join(30)
    stop.set()
    stats = dispatcher.stats
    assert stats.complete and stats.done == 12 and stats.given_up == 0
    rows = table.rows(job)
    assert [r[0] for r in rows] == sorted(i for s in work for i in s.items)  # each once
    assert {r[1] for r in rows} == {"ok"}
    assert sum(w.reclaimed for w in others) >= 2  # node1's shard and node2's
    # node2's shard was reported twice (by node2, late, and by its taker): the second
    # report reached ingest and changed nothing.
    assert frozen.done >= 1 and stats.duplicates == 1
    assert [i for _, i in table.reports].count(took["node2"]) == 2 and len(table.reports) == 13
    r = server.admin(ws)
    assert r.xlen(work_key(job)) == 0  # every entry deleted once its results were in
    dispatcher.cleanup()
    assert not r.exists(work_key(job), *(results_key(job, d) for d in qs.WORKERS))


def test_a_redis_restart_mid_job_loses_nothing(ws):
    """SIGTERM and start again mid-job: the append-only file keeps the streams, the group
    and its pending entries; workers and the dispatcher wait the restart out."""
    job = "restart"
    acl.grant(ws, job, ["node4", "node5"])
    server.sync_acl(ws)
    table = Results()
    stop = threading.Event()
    dispatcher = Dispatcher(
        server.admin(ws), job, ["node4", "node5"], table.ingest_for(job), window=4
    )
    runner = threading.Thread(
        target=dispatcher.run, args=(shards(16, 2),), kwargs={"deadline": time.monotonic() + 40}
    )
    runner.start()
    for device in ("node4", "node5"):
        start(ws, job, device, lambda s: (time.sleep(0.1), ok(s))[1], stop)
    deadline = time.monotonic() + 10
    while len(table.reports) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not dispatcher.stats.complete  # mid-job
    before = server.status(ws).pid
    assert server.down(ws).stopped
    assert server.up(ws).pid != before
    runner.join(40)
    stop.set()
    assert dispatcher.stats.complete
    rows = table.rows(job)
    assert [r[0] for r in rows] == sorted(i for s in shards(16, 2) for i in s.items)
    assert {r[1] for r in rows} == {"ok"}
    dispatcher.cleanup()


def test_a_lease_extended_by_its_worker_is_not_reclaimed(ws):
    job = "long"
    acl.grant(ws, job, ["node4", "node5"])
    server.sync_acl(ws)
    table = Results()
    stop = threading.Event()
    started = threading.Event()

    def slow(shard):
        started.set()
        time.sleep(LEASE * 4)
        return ok(shard)

    dispatcher = Dispatcher(server.admin(ws), job, ["node4", "node5"], table.ingest_for(job))
    dispatcher.setup()
    runner = threading.Thread(
        target=dispatcher.run, args=(shards(1, 3),), kwargs={"deadline": time.monotonic() + 20}
    )
    runner.start()
    slow_worker, slow_thread = start(ws, job, "node4", slow, stop)
    assert started.wait(10)
    idle, idle_thread = start(ws, job, "node5", ok, stop)
    runner.join(20)
    stop.set()
    for t in (slow_thread, idle_thread):  # a worker counts a shard done after its ack,
        t.join(10)  # which may come after the dispatcher has ingested the report
    assert dispatcher.stats.complete and dispatcher.stats.duplicates == 0
    assert idle.reclaimed == 0 and idle.done == 0 and slow_worker.done == 1
    assert table.reports == [("node4", 0)] and len(table.rows(job)) == 3
    dispatcher.cleanup()


def test_backpressure_never_more_than_the_window_in_redis(ws):
    job = "window"
    acl.grant(ws, job, ["node4"])
    server.sync_acl(ws)
    table = Results()
    stop = threading.Event()
    r = server.admin(ws)
    dispatcher = Dispatcher(r, job, ["node4"], table.ingest_for(job), window=3)
    lengths: list[int] = []
    runner = threading.Thread(
        target=dispatcher.run, args=(shards(15, 2, 1024),),
        kwargs={"deadline": time.monotonic() + 30},
    )  # fmt: skip
    runner.start()
    time.sleep(0.6)  # no worker yet: the dispatcher fills its window and waits
    assert r.xlen(work_key(job)) == 3 and dispatcher.stats.enqueued == 3

    def sample():
        while runner.is_alive():
            lengths.append(r.xlen(work_key(job)))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start(ws, job, "node4", lambda s: (time.sleep(0.01), ok(s))[1], stop)
    runner.join(30)
    sampler.join()
    stop.set()
    assert dispatcher.stats.complete and len(table.rows(job)) == 30
    assert max(lengths) <= 3 and dispatcher.stats.max_in_flight == 3
    assert r.xlen(work_key(job)) == 0 and r.xlen(results_key(job, "node4")) == 0
    dispatcher.cleanup()


def test_a_shard_that_always_fails_is_given_up_and_its_items_end_as_errors(ws):
    job = "poison"
    acl.grant(ws, job, ["node4", "node5"])
    server.sync_acl(ws)
    table = Results()
    stop = threading.Event()

    def fails_on_shard_1(shard):
        if shard.index == 1:
            raise RuntimeError("model crashed")
        return ok(shard)

    dispatcher = Dispatcher(
        server.admin(ws), job, ["node4", "node5"], table.ingest_for(job), max_deliveries=2
    )
    for device in ("node4", "node5"):
        start(ws, job, device, fails_on_shard_1, stop, lease=0.3)
    stats = dispatcher.run(shards(3, 2), deadline=time.monotonic() + 20)
    stop.set()
    assert stats.complete and stats.given_up == 1 and stats.done == 3
    rows = table.rows(job)
    assert len(rows) == 6
    assert [(item, state, node) for item, state, node in rows if item.startswith("s01")] == [
        ("s01i0.jpg", "error", None), ("s01i1.jpg", "error", None),
    ]  # fmt: skip
    dispatcher.cleanup()


def test_a_node_reports_only_items_of_the_shard_it_names(ws):
    """A node may lie about its own shard, not about items elsewhere: results for
    items of no shard of the run are dropped, items it leaves out become errors, a
    report naming no entry of the run is dropped."""
    job = "liar"
    acl.grant(ws, job, ["node4"])
    server.sync_acl(ws)
    table = Results()
    node = qs.device(ws, "node4")
    dispatcher = Dispatcher(server.admin(ws), job, ["node4"], table.ingest_for(job))
    dispatcher.setup()
    node.xadd(results_key(job, "node4"), {"entry": "1-1", "results": "[]"})  # no such entry
    node.xadd(results_key(job, "node4"), {"entry": "x", "results": "{not json"})

    def lie(shard):
        return [{"item": "elsewhere.jpg", "state": "ok"}, {"item": shard.items[0], "state": "ok"}]

    stop = threading.Event()
    start(ws, job, "node4", lie, stop)
    stats = dispatcher.run(shards(1, 2), deadline=time.monotonic() + 20)
    stop.set()
    assert stats.complete and stats.unknown == 2
    assert table.rows(job) == [("s00i0.jpg", "ok", "node4"), ("s00i1.jpg", "error", "node4")]
    dispatcher.cleanup()


def test_group_survives_setup_twice_and_shard_round_trips(ws):
    r = server.admin(ws)
    d = Dispatcher(r, "twice", [], lambda *a: None)
    d.setup()
    d.setup()  # BUSYGROUP: kept
    assert r.xinfo_groups(work_key("twice"))[0]["name"] in (GROUP, GROUP.encode())
    shard = Shard(7, ["a.jpg", "b.jpg"], [b"\x00\xff", b""])
    fields = {
        k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in shard.encode().items()
    }
    assert Shard.decode(fields) == shard
    refs = Shard(8, ["a.jpg"])
    fields = {k.encode(): v.encode() for k, v in refs.encode().items()}
    assert Shard.decode(fields) == refs
    d.cleanup()
