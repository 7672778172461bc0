"""Shard planning and the runtime work queue of a distributed inference job.

Strategies (``plan``):

- ``round-robin``: an equal split, one shard per node.
- ``load``: one shard per node, sized by spare capacity ``1 - load_score`` from the
  latest telemetry.
- ``proportional``: one shard per node, sized by the node's measured throughput for
  this model (items/s, from a calibration run or earlier jobs).
- ``dynamic``: work stealing. Items stay in one unassigned pool and each node cuts
  its next shard when it asks (``Pacer``): about a quarter of its fair share of
  the time left, never under ``MIN_SHARD_S`` of its own work, so shards shrink
  towards the end and a slow or failing node holds up at most one small shard; a
  node whose hand-over alone outlasts the time left gets one item at a time, or none.
  With ``shard_size`` the pool is cut into fixed shards instead.

``WorkQueue`` runs either kind of plan: it hands shards out, re-queues failed ones
onto other nodes, takes work back from lost nodes, and accepts exactly one final
outcome per shard, so every input item ends with exactly one result.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from evc.errors import UsageError

STRATEGIES = ("round-robin", "load", "proportional", "dynamic")

# Weights of the load score's terms; they sum to 1.
LOAD_WEIGHTS = {"cpu": 0.3, "mem": 0.1, "xpu": 0.4, "bandwidth": 0.1, "latency": 0.1}
BANDWIDTH_REF_BPS = 100e6  # spare bandwidth at which the bandwidth term is 0.5
LATENCY_REF_MS = 50.0  # latency at which the latency term is 0.5
NEUTRAL_LOAD = 0.5  # score of a node that reports no telemetry at all
LOAD_FLOOR = 0.05  # smallest spare capacity a node counts with under `load`
MIN_SHARD_S = 15.0  # a shard costs ~2-3 s of controller CPU to hand over: keep them few
SHARE = 0.3  # of a node's fair share of the time left, per shard
LEAD_S = 5.0  # a node takes its next shard when it has this much work left: > a hand-over
PACED_POLL_S = 0.5  # a paced node may take more as time passes, not only on events


@dataclass(frozen=True)
class NodeStats:
    """Latest telemetry of one node; None means not measured.

    ``bandwidth_bps`` is the spare network bandwidth between the controller and the
    node in bits/s (link speed minus current rx+tx, or the link speed alone when usage
    is unknown). ``throughput`` is items/s measured for the job's model.
    """

    name: str
    cpu_pct: float | None = None
    mem_pct: float | None = None
    xpu_pct: float | None = None
    bandwidth_bps: float | None = None
    latency_ms: float | None = None
    throughput: float | None = None


@dataclass
class Shard:
    """A slice of the job's items; ``node`` is None while anyone may take it.

    ``error`` is the last failure (``"NODE: message"``), kept across retries.
    """

    index: int
    items: list[str]
    node: str | None
    attempt: int = 1
    error: str | None = None


def _measured(value: float | None) -> float | None:
    """A usable measurement (finite, negatives read as 0), or None."""
    if value is None or not math.isfinite(value):
        return None
    return max(float(value), 0.0)


def load_score(stats: NodeStats) -> float:
    """How busy a node is, from 0 (idle) to 1 (saturated).

    A weighted mean (``LOAD_WEIGHTS``) of terms that each lie in [0, 1]: cpu, memory
    and accelerator utilisation as pct/100; bandwidth as ``ref / (ref + bw)`` with
    ``BANDWIDTH_REF_BPS``, so more spare bandwidth lowers the load; latency as
    ``ms / (ms + LATENCY_REF_MS)``. A missing metric (None or NaN; ``xpu_pct`` is None
    on a node with no accelerator) is left out and the weights are renormalised over
    the metrics present, so it neither helps nor hurts; with no metric at all the
    score is ``NEUTRAL_LOAD``.
    """
    metrics = {
        "cpu": stats.cpu_pct,
        "mem": stats.mem_pct,
        "xpu": stats.xpu_pct,
        "bandwidth": stats.bandwidth_bps,
        "latency": stats.latency_ms,
    }
    present: dict[str, float] = {}
    for key, raw in metrics.items():
        if (value := _measured(raw)) is None:
            continue
        if key == "bandwidth":
            present[key] = BANDWIDTH_REF_BPS / (BANDWIDTH_REF_BPS + value)
        elif key == "latency":
            present[key] = value / (value + LATENCY_REF_MS)
        else:
            present[key] = min(value, 100.0) / 100
    if not present:
        return NEUTRAL_LOAD
    total = sum(LOAD_WEIGHTS[k] for k in present)
    return sum(LOAD_WEIGHTS[k] * v for k, v in present.items()) / total


def _check(strategy: str, nodes: list[NodeStats]) -> None:
    if strategy not in STRATEGIES:
        raise UsageError(
            f"Unknown scheduling strategy {strategy!r}; expected one of: {', '.join(STRATEGIES)}."
        )
    if not nodes:
        raise UsageError("No nodes to schedule on: the target group has no live node.")
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise UsageError(f"Node names must be unique, got {names}.")


def weights(strategy: str, nodes: list[NodeStats]) -> dict[str, float]:
    """Each node's share of the items (in node order, summing to 1).

    ``round-robin`` and ``dynamic``: equal. ``load``: proportional to
    ``max(1 - load_score, LOAD_FLOOR)``, so a saturated node still gets a little work
    (telemetry is a snapshot) and an all-saturated fleet splits equally.
    ``proportional``: by ``throughput``; a node without a positive measurement counts
    with the mean of the measured ones, and with none measured the split is equal.
    """
    _check(strategy, nodes)
    if strategy == "load":
        raw = [max(1.0 - load_score(n), LOAD_FLOOR) for n in nodes]
    elif strategy == "proportional":
        rates = [_measured(n.throughput) or None for n in nodes]
        known = [r for r in rates if r is not None]
        mean = sum(known) / len(known) if known else 1.0
        raw = [mean if r is None else r for r in rates]
    else:
        raw = [1.0] * len(nodes)
    total = sum(raw)
    return {n.name: r / total for n, r in zip(nodes, raw, strict=True)}


def _apportion(total: int, shares: list[float]) -> list[int]:
    """Largest-remainder split of ``total`` by ``shares`` (ties go to the earlier one)."""
    whole = sum(shares)
    quotas = [total * s / whole for s in shares]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(shares)), key=lambda i: counts[i] - quotas[i])
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def plan(
    items: list[str], nodes: list[NodeStats], strategy: str, shard_size: int | None = None
) -> list[Shard]:
    """Split ``items`` into shards, each item in exactly one, order preserved.

    Static strategies: one shard per node, sized by largest-remainder apportionment of
    ``weights``; a node whose count is 0 gets no shard; ``shard_size`` is not used.
    ``dynamic``: unassigned shards of ``shard_size`` items, or without it one
    unassigned shard of every item, which a ``WorkQueue`` with a ``Pacer`` cuts as
    nodes ask for work.
    """
    w = weights(strategy, nodes)
    if shard_size is not None and shard_size < 1:
        raise UsageError(f"shard_size must be at least 1, got {shard_size}.")
    if not items:
        return []
    if strategy == "dynamic":
        size = shard_size or len(items)
        starts = range(0, len(items), size)
        return [Shard(i, items[s : s + size], None) for i, s in enumerate(starts)]
    shards: list[Shard] = []
    start = 0
    for node, count in zip(w, _apportion(len(items), list(w.values())), strict=True):
        if count:
            shards.append(Shard(len(shards), items[start : start + count], node))
            start += count
    return shards


class Pacer:
    """Cuts dynamic shards as nodes ask for work: guided self-scheduling, weighted by pace.

    ``T`` is how long the whole remainder (unassigned and in flight) takes on the
    live nodes together. A node gets ``pace * max(min_s, share * T)`` items, but no
    more than it can finish by ``T`` after its queued work (at least ``lead_s``), where
    ``pace`` (items/s) is its measured throughput (from earlier jobs, then from each
    shard it completes). A node with none measured gets one probe of ``min_s`` items
    at a time (counted at the others' mean pace) until its first shard reports. A
    node gets nothing while it still has ``lead_s`` or half a shard of work queued
    (its shards in flight, less the time since the one running started): a second
    runner per node sends the next shard before the node runs dry, which hides the
    hand-over, and no node hoards work.

    ``costs`` (seconds) is what a shard costs a node on top of its items' work when
    nothing hides it: the hand-over and the answer (measured on earlier jobs). The
    pace leaves it out, so a node whose items are quick but whose hand-over is slow
    (an emulated or distant node) would be given a full share it delivers late. A
    node whose cost exceeds the cheapest live node's by the estimated time left gets
    one item at a time, and none while the others would finish everything before that
    one item is done; where every node's hand-over costs about the same, nothing changes.
    """

    def __init__(
        self, rates: dict[str, float | None] | None = None, min_s: float = MIN_SHARD_S,
        share: float = SHARE, lead_s: float = LEAD_S,
        costs: dict[str, float | None] | None = None,
    ):  # fmt: skip
        self.rates = {n: float(r) for n, r in (rates or {}).items() if r and r > 0}
        self.costs = {n: float(c) for n, c in (costs or {}).items() if c and c > 0}
        self.min_s, self.share, self.lead_s = min_s, share, lead_s

    def observe(self, node: str, items: int, busy_s: float) -> None:
        """A shard of ``items`` kept ``node`` busy for ``busy_s`` seconds."""
        if items > 0 and busy_s > 0:  # smoothed: one shard's pace is noisy on shared CPUs
            rate = items / busy_s
            self.rates[node] = (self.rates[node] + rate) / 2 if node in self.rates else rate

    def _pace(self, node: str, live: list[str]) -> float:
        known = [self.rates[n] for n in live if n in self.rates] or list(self.rates.values())
        return self.rates.get(node) or (sum(known) / len(known) if known else 1.0)

    def size(
        self, node: str, unassigned: int, in_flight: dict[str, list[tuple[int, float]]],
        now: float,
    ) -> int:  # fmt: skip
        """Items for ``node``'s next shard, 0 for "not now". ``in_flight`` maps every
        live node to its running shards as (items, taken at or, for one waiting behind
        another, when that one was done)."""
        live = list(in_flight)
        paces = {n: self._pace(n, live) for n in live}

        def queued_s(n: str) -> float:  # seconds of work still queued on node n
            shards = in_flight.get(n, [])
            since = now - min((t for _, t in shards), default=now)
            return max(0.0, sum(i for i, _ in shards) / paces[n] - since)

        queued = {n: queued_s(n) for n in live}
        left = unassigned + sum(queued[n] * paces[n] for n in live)
        end_s = left / sum(paces.values())  # everything left, every node busy to the end
        if node not in self.rates:  # one probe at a time until its pace is measured
            return 0 if in_flight.get(node) else min(unassigned, math.ceil(self.min_s))
        backlog = queued[node]
        # never past the common end: the last shards are split between the nodes
        chunk_s = min(max(self.min_s, self.share * end_s), max(self.lead_s, end_s - backlog))
        if backlog >= max(self.lead_s, chunk_s / 2):
            return 0
        # what its hand-over costs beyond the cheapest live node's (who always takes work)
        extra = self.costs.get(node, 0.0) - min(self.costs.get(n, 0.0) for n in live)
        if extra >= end_s:  # it outlasts the rest of the job
            others = sum(p for n, p in paces.items() if n != node)
            if in_flight.get(node) or (others and left / others < extra + 1 / paces[node]):
                return 0  # one item at a time, and none when the others end it sooner
            return min(unassigned, 1)
        return min(unassigned, max(1, math.ceil(paces[node] * chunk_s)))


class WorkQueue:
    """The runtime state of one job's shards; thread-safe (one runner thread per node).

    A shard planned for a node is handed only to that node (while it lives); an
    unassigned shard (dynamic, or re-queued work) goes to any node that asks. A failed
    shard is re-queued unassigned with ``attempt + 1`` and is never handed again to any
    node it failed on; after ``retries + 1`` attempts it fails for good. A lost node's
    shards (planned or in flight) are re-queued unassigned *without* using an attempt
    (the node went away, the shard did not fail; each loss removes a node, so this is
    bounded), and any later report from that node is refused. Only the node currently
    holding a shard can report it, and once, so each shard gets exactly one outcome.

    With a ``Pacer``, an unassigned shard is cut when a node takes it: the node gets
    the pacer's size from its front and the rest stays unassigned (a new index).
    """

    def __init__(
        self, shards: list[Shard], nodes: list[str], retries: int, pacer: Pacer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):  # fmt: skip
        if retries < 0:
            raise UsageError(f"retries must be 0 or more, got {retries}.")
        if len({s.index for s in shards}) != len(shards):
            raise UsageError("Shard indexes must be unique.")
        self._cond = threading.Condition(threading.Lock())
        self._retries = retries
        self._pacer, self._clock = pacer, clock
        self._items = sum(len(s.items) for s in shards)
        self._next_index = max((s.index for s in shards), default=-1) + 1
        self._taken_at: dict[int, float] = {}
        self._last_done: dict[str, float] = {}  # a node runs its shards one after another
        self._live = set(nodes)
        self._own: dict[str, dict[int, Shard]] = {n: {} for n in nodes}
        self._open: dict[int, Shard] = {}  # unassigned, in queue order
        self._running: dict[int, Shard] = {}
        self._excluded: dict[int, set[str]] = {}
        self._done: list[Shard] = []
        self._failed: list[Shard] = []
        for s in shards:
            if s.node in self._own:
                self._own[s.node][s.index] = s
            else:  # unassigned, or planned for a node not in this job
                self._open[s.index] = replace(s, node=None)

    def _next(self, node: str) -> Shard | None:
        if node not in self._live:
            return None
        own = self._own[node]
        if own:
            shard = own.pop(next(iter(own)))
        else:
            index = next((i for i in self._open if node not in self._excluded.get(i, ())), None)
            if index is None or (size := self._size(node, index)) == 0:
                return None
            shard = replace(self._open.pop(index), node=node)
            if size < len(shard.items):  # cut: the rest stays unassigned, in front
                rest = replace(shard, index=self._next_index, items=shard.items[size:], node=None)
                self._excluded[rest.index] = set(self._excluded.get(index, ()))
                self._open = {rest.index: rest, **self._open}
                self._next_index += 1
                shard.items = shard.items[:size]
        self._running[shard.index] = shard
        self._taken_at[shard.index] = self._clock()
        return shard

    def _size(self, node: str, index: int) -> int:
        """How many items of unassigned shard ``index`` ``node`` takes now (0: none yet)."""
        if self._pacer is None:
            return len(self._open[index].items)
        in_flight: dict[str, list[tuple[int, float]]] = {n: [] for n in self._live}
        for i, s in self._running.items():
            # a shard waiting behind another starts when that one is done, not when taken
            started = max(self._taken_at[i], self._last_done.get(s.node, 0.0))
            in_flight.setdefault(s.node, []).append((len(s.items), started))
        unassigned = sum(len(s.items) for s in self._open.values())
        size = self._pacer.size(node, unassigned, in_flight, self._clock())
        return min(size, len(self._open[index].items))

    def next_for(self, node: str) -> Shard | None:
        """A shard for ``node`` to run now (its own planned shard first, else the
        first unassigned one it has not failed), or None (nothing suitable, or the
        node is lost or unknown). The returned shard has ``node`` set to ``node``."""
        with self._cond:
            return self._next(node)

    def take(self, node: str, timeout: float | None = None) -> Shard | None:
        """Like ``next_for`` but waits until a shard for ``node`` is available. None
        means stop: the job is finished, the node is lost, or ``timeout`` passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not (node not in self._live or self._finished() or self._can_take(node)):
                wait = None if deadline is None else deadline - time.monotonic()
                if self._pacer is not None:  # its answer also changes as time passes
                    wait = PACED_POLL_S if wait is None else min(wait, PACED_POLL_S)
                if wait is not None and wait <= 0:
                    break
                self._cond.wait(wait)
            return self._next(node)

    def _can_take(self, node: str) -> bool:
        if self._own[node]:
            return True
        index = next((i for i in self._open if node not in self._excluded.get(i, ())), None)
        return index is not None and self._size(node, index) > 0

    def _holds(self, shard: Shard, node: str | None) -> bool:
        current = self._running.get(shard.index)
        return current is not None and (current.node, current.attempt) == (node, shard.attempt)

    def holds(self, shard: Shard) -> bool:
        """Whether ``shard.node`` still holds ``shard``: whether its report would count."""
        with self._cond:
            return self._holds(shard, shard.node)

    def done(self, shard: Shard, busy_s: float | None = None) -> bool:
        """Record ``shard`` as completed by ``shard.node`` (``busy_s``: the node's time
        on it, which paces its next shards). False when the report is stale (that node
        no longer holds the shard, e.g. it was lost): drop its results."""
        with self._cond:
            if not self._holds(shard, shard.node):
                return False
            if self._pacer is not None and busy_s is not None:
                self._pacer.observe(shard.node, len(shard.items), busy_s)
            self._done.append(self._running.pop(shard.index))
            self._last_done[shard.node] = self._clock()
            self._cond.notify_all()
            return True

    def failed(self, shard: Shard, node: str, error: object) -> Shard | None:
        """Record that ``shard`` failed on ``node``. Returns the re-queued shard, or
        None when it is not re-queued: out of attempts (it is then in ``failures()``),
        or a stale report from a node that no longer holds it, which changes nothing."""
        with self._cond:
            if not self._holds(shard, node):
                return None
            current = self._running.pop(shard.index)
            self._cond.notify_all()
            message = f"{node}: {error}"
            if current.attempt > self._retries:
                self._failed.append(replace(current, error=message))
                return None
            retry = Shard(current.index, current.items, None, current.attempt + 1, message)
            self._excluded.setdefault(current.index, set()).add(node)
            self._open = {current.index: retry, **self._open}  # retried first: no late tail
            return retry

    def node_lost(self, node: str) -> None:
        """``node`` is gone: its planned and in-flight shards are re-queued unassigned
        (same attempt) and it gets no more work. Calling it again does nothing."""
        with self._cond:
            if node not in self._live:
                return
            self._live.discard(node)
            moved = list(self._own.pop(node).values())
            moved += [s for s in self._running.values() if s.node == node]
            for s in moved:
                self._running.pop(s.index, None)
                self._open[s.index] = replace(s, node=None)
            self._cond.notify_all()

    def _stranded(self) -> list[Shard]:
        return [s for i, s in self._open.items() if not self._live - self._excluded.get(i, set())]

    def stranded(self) -> list[Shard]:
        """Pending shards that no live node may take (all lost, or every live node
        already failed them); they stay so, and the runner records them as failed."""
        with self._cond:
            return self._stranded()

    def _finished(self) -> bool:
        return (
            not self._running
            and not any(self._own.values())
            and len(self._stranded()) == len(self._open)
        )

    def finished(self) -> bool:
        """True when nothing runs and nothing left can run (only stranded shards)."""
        with self._cond:
            return self._finished()

    def failures(self) -> list[Shard]:
        """Shards that failed for good, each with its last ``error``."""
        with self._cond:
            return list(self._failed)

    def summary(self) -> dict[str, int]:
        """Counts of shards and items by state; ``pending`` includes ``stranded``."""
        with self._cond:
            pending = [s for own in self._own.values() for s in own.values()]
            pending += self._open.values()
            return {
                "shards": len(self._done) + len(self._failed) + len(self._running) + len(pending),
                "shards_done": len(self._done),
                "shards_failed": len(self._failed),
                "shards_running": len(self._running),
                "shards_pending": len(pending),
                "shards_stranded": len(self._stranded()),
                "items": self._items,
                "items_done": sum(len(s.items) for s in self._done),
                "items_failed": sum(len(s.items) for s in self._failed),
            }
