"""The live event stream: server-sent events fed from the database (:mod:`evc.api.feed`).

One hub thread per server polls the database every ``POLL_S`` and hands each event to
the streams that want it, so the cost of a poll does not grow with the listeners, and
an event reaches a browser well within a second of being recorded, whichever process
recorded it. A stream starts with a ``hello`` event; what a client fetches after it
is current, and every later change follows as an event. A client too slow to keep up
gets a ``reset`` event and the stream ends (it reconnects and fetches again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from evc.api.auth import VIEWER
from evc.api.feed import Feed, event
from evc.config import Workspace

POLL_S = 0.25
KEEPALIVE_S = 15.0
QUEUE = 2000  # events a stream may fall behind by before it is reset
TYPES = ("hello", "node", "devices", "telemetry", "deployment", "action", "log", "job", "run",
         "step")  # fmt: skip


@dataclass(eq=False)
class Subscriber:
    loop: asyncio.AbstractEventLoop
    types: frozenset[str]
    job: str | None = None
    run: str | None = None
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(QUEUE))
    greeted: bool = False

    def wants(self, ev: dict[str, Any]) -> bool:
        kind, data = ev["type"], ev["data"]
        if self.types and kind not in self.types:
            return False
        if self.job and kind == "job" and data.get("id") != self.job:
            return False
        return not (self.run and kind in ("run", "step") and
                    data.get("id", data.get("run_id")) != self.run)  # fmt: skip

    def offer(self, ev: dict[str, Any] | None) -> None:
        """From the hub thread: queue ``ev`` (None ends the stream) on the stream's loop."""
        with contextlib.suppress(RuntimeError):  # the loop is gone: so is the stream
            self.loop.call_soon_threadsafe(self._put, ev)

    def _put(self, ev: dict[str, Any] | None) -> None:
        if ev is None or self.queue.full():
            if ev is not None:  # fallen too far behind: start again
                while not self.queue.empty():
                    self.queue.get_nowait()
                self.queue.put_nowait(event("reset", {"reason": "too slow: fetch again"}))
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(None)
            return
        self.queue.put_nowait(ev)


class Hub:
    """Polls the database while the server runs and fans events out to the streams."""

    def __init__(self, ws: Workspace, poll_s: float = POLL_S):
        self.ws, self.poll_s = ws, poll_s
        self._subs: set[Subscriber] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="evc-events", daemon=True)
        self._thread.start()

    def subscribe(self, sub: Subscriber) -> Subscriber:
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subs.discard(sub)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.offer(None)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        feed = None
        while not self._closed.is_set():
            try:
                feed = feed or Feed(self.ws)
                with self._lock:
                    subs = list(self._subs)
                for sub in subs:  # greeted before this poll: what it fetches next is current
                    if not sub.greeted:
                        sub.greeted = True
                        sub.offer(event("hello", {"poll_s": self.poll_s}))
                events = feed.poll()
            except Exception:  # a locked or busy database: try again on the next tick
                self.errors += 1
                events = []
            for ev in events:
                for sub in subs:
                    if sub.wants(ev):
                        sub.offer(ev)
            self._closed.wait(self.poll_s)


def sse(ev: dict[str, Any]) -> str:
    """One event as text/event-stream (the data is one line of JSON)."""
    return f"event: {ev['type']}\ndata: {json.dumps(ev['data'], default=str)}\n\n"


router = APIRouter(tags=["events"])


@router.get(
    "/api/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                     "description": "Server-sent events, one JSON object per event."}},
)  # fmt: skip
async def events(
    request: Request,
    types: str | None = Query(
        None,
        max_length=200,
        pattern=r"^[a-z,]*$",
        description=f"Comma-separated event types to receive (default all): {', '.join(TYPES)}.",
    ),
    job: str | None = Query(None, max_length=64, description="Only this job's job events."),
    run: str | None = Query(None, max_length=64, description="Only this run's run/step events."),
    caller=VIEWER,
) -> StreamingResponse:
    """Live changes: nodes going on- or offline, job progress, run steps, deployments,
    actions and their progress lines, new telemetry. Send the token in the header (a
    browser reads this stream with fetch(), not EventSource, which cannot send one)."""
    hub: Hub = request.app.state.hub
    wanted = frozenset(t for t in (types or "").split(",") if t)
    sub = hub.subscribe(Subscriber(asyncio.get_running_loop(), wanted, job, run))

    async def stream() -> AsyncIterator[str]:
        try:
            yield "retry: 2000\n\n"
            while True:
                try:
                    ev = await asyncio.wait_for(sub.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if ev is None:
                    return
                yield sse(ev)
        finally:
            hub.unsubscribe(sub)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
