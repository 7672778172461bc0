"""The FastAPI application of `evc serve`: routes, the console, guards, and its lifetime.

Every request passes :class:`Guard` first: bodies are bounded before they are read (an
upload by ``--max-upload``, anything else by ``MAX_BODY``), every answer gets security
headers (a strict Content-Security-Policy on the console: scripts and styles from this
server only, no inline code), and every request that changes something (not GET) is
written to the audit log with the caller's token name, its path and arguments as
``NAME=VALUE`` words (secrets masked: :mod:`evc.redact`) and its HTTP status as the
exit code.
"""

from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from evc import __version__, redact
from evc import db as evcdb
from evc.api import actions, events
from evc.api.routes import admin, fleet, jobs, models, runs
from evc.config import Workspace
from evc.errors import EVCError, UsageError

STATIC = Path(__file__).parent / "static"
MAX_BODY = 1 << 20  # a JSON body; options are small
UPLOAD_PATHS = ("/api/jobs/upload",)
SAFE = ("GET", "HEAD", "OPTIONS")
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"


@dataclass(frozen=True)
class ServeSettings:
    """How `evc serve` was started."""

    host: str = "127.0.0.1"
    port: int = 8080
    tls: bool = False
    allow_anonymous_read: bool = False
    data_roots: tuple[Path, ...] = ()
    max_upload: int = 2 << 30
    run_configs: Path = field(default_factory=lambda: Path("run_cfg"))

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"


async def _reply(send, status: int, message: str, extra: list | None = None) -> None:
    body = json.dumps({"detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Pure ASGI middleware (it must not buffer the event stream): body limits, security
    headers, the audit log."""

    def __init__(self, app, ws: Workspace, settings: ServeSettings):
        self.app, self.ws, self.settings = app, ws, settings

    def _headers(self, path: str, present: set[bytes]) -> list[tuple[bytes, bytes]]:
        api = path.startswith("/api/")
        headers = {
            b"x-content-type-options": b"nosniff",
            b"referrer-policy": b"no-referrer",
            b"x-frame-options": b"DENY",
            b"cross-origin-opener-policy": b"same-origin",
            b"cross-origin-resource-policy": b"same-origin",
            b"permissions-policy": b"camera=(), microphone=(), geolocation=()",
            b"content-security-policy": (API_CSP if api else CONSOLE_CSP).encode(),
            b"cache-control": b"no-store" if api else b"no-cache",
        }
        if self.settings.tls:
            headers[b"strict-transport-security"] = b"max-age=31536000"
        return [(k, v) for k, v in headers.items() if k not in present]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"]
        headers = dict(scope["headers"])
        upload = path in UPLOAD_PATHS
        limit = self.settings.max_upload + (64 << 10) if upload else MAX_BODY
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _reply(send, 413, f"The body is over {limit} bytes.")
        if length is None and b"chunked" in headers.get(b"transfer-encoding", b"") and not upload:
            return await _reply(send, 411, "Send a Content-Length with the body.")
        started, status = time.monotonic(), [500]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                present = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                   *self._headers(path, present)]}  # fmt: skip
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if method not in SAFE:
                state = scope.get("state", {})
                route = getattr(scope.get("route"), "path", path)
                await anyio.to_thread.run_sync(
                    self._audit, method, route, path, state, status[0], time.monotonic() - started
                )

    def _audit(self, method, route, path, state, status, duration) -> None:
        caller = state.get("caller")
        params = redact.data(state.get("audit") or {})
        words = [f"{k}={v if isinstance(v, str) else json.dumps(v, default=str)}"
                 for k, v in params.items()]  # fmt: skip
        evcdb.audit(
            evcdb.workspace_db(self.ws), f"api {method} {route}", [path, *words], status,
            duration, user=caller.who if caller else "unauthenticated",
        )  # fmt: skip


def _errors(app: FastAPI) -> None:
    @app.exception_handler(UsageError)
    async def usage(_request: Request, exc: UsageError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(EVCError)
    async def environment(_request: Request, exc: EVCError):
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(Exception)
    async def internal(_request: Request, exc: Exception):
        from evc.engine import as_evc_error

        known = as_evc_error(exc)
        if known is not None:
            return JSONResponse({"detail": str(known)}, status_code=503)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)


def create_app(ws: Workspace, settings: ServeSettings) -> FastAPI:
    """The application for workspace ``ws``; its worker and event hub start with it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        actions.recover(ws)
        app.state.hub.start()
        try:
            yield
        finally:
            app.state.hub.close()
            await anyio.to_thread.run_sync(app.state.worker.shutdown)

    app = FastAPI(
        title="EVC",
        version=__version__,
        description="The fleet over HTTP: the same library as the `evc` command. Send a "
        "token from `evc token create` as `Authorization: Bearer TOKEN`.",
        openapi_url="/api/openapi.json",
        docs_url=None,  # Swagger UI would load from a CDN; the console works offline
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.ws, app.state.settings = ws, settings
    app.state.worker = actions.Worker(ws)
    app.state.hub = events.Hub(ws)
    _errors(app)
    for module in (admin, fleet, models, jobs, runs, events):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def console() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.add_middleware(Guard, ws=ws, settings=settings)
    return app
