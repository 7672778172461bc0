"""What every route module shares: the workspace, paging parameters, not-found, and
starting an action in the server's worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, Query, Request
from pydantic import BaseModel

from evc.api import actions
from evc.api.auth import Caller
from evc.config import Workspace
from evc.errors import UsageError
from evc.options import Options
from evc.run import capabilities

MAX_LIMIT = 500
LIMIT = Query(100, ge=1, le=MAX_LIMIT, description="Items per page.")
OFFSET = Query(0, ge=0, le=100_000_000, description="Items to skip.")
WAIT = Query(
    0.0, ge=0, le=600, description="Seconds to wait for the action to end before answering."
)
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"  # ids and names in paths and filters

ERRORS = {
    400: {"description": "Bad input: the message says what is expected."},
    401: {"description": "No token, or a token that is unknown, revoked or expired."},
    403: {"description": "The token's role is too low."},
    404: {"description": "No such thing."},
    422: {"description": "A value failed validation."},
}


class Page(BaseModel):
    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int


class Accepted(BaseModel):
    """An action the server's worker runs: follow it at /api/actions/{id} or the events."""

    action: dict[str, Any]
    job: str | None = None
    run: str | None = None


def workspace(request: Request) -> Workspace:
    return request.app.state.ws


def found(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call(...)``, with an unknown name (a UsageError of the library) as 404."""
    try:
        return call(*args, **kwargs)
    except UsageError as exc:
        raise HTTPException(404, str(exc)) from None


def audit(request: Request, params: dict[str, Any]) -> None:
    """What the audit log records as this request's arguments (secrets are masked there)."""
    request.state.audit = params


def start(
    request: Request,
    caller: Caller,
    kind: str,
    params: dict[str, Any],
    run: actions.Run,
    *,
    ref: str | None = None,
    cancellable: bool = False,
    wait: float = 0.0,
) -> dict[str, Any]:
    """Hand ``run`` to the worker as an action; with ``wait``, answer once it ends (or
    the wait is over)."""
    worker: actions.Worker = request.app.state.worker
    ws = workspace(request)
    action_id = worker.submit(kind, params, caller.who, run, ref=ref, cancellable=cancellable)
    deadline = time.monotonic() + wait
    row = actions.get(ws, action_id, lines=0)
    while row["state"] not in actions.FINAL and time.monotonic() < deadline:
        time.sleep(0.1)
        row = actions.get(ws, action_id, lines=0)
    return {"action": row}


def capability(
    request: Request, caller: Caller, kind: str, options: Options, wait: float = 0.0
) -> dict[str, Any]:
    """Run capability ``kind`` (a CLI command: evc.run.capabilities) with its options."""
    params = options.model_dump(mode="json")
    audit(request, params)
    ws = workspace(request)
    return start(
        request, caller, kind, params,
        lambda progress, _stop: capabilities.run(kind, ws, options, progress), wait=wait,
    )  # fmt: skip


def cancel(request: Request, ref: str) -> dict[str, Any] | None:
    """Stop this server's running action for job or run ``ref``; None if it runs none."""
    ws = workspace(request)
    worker: actions.Worker = request.app.state.worker
    for action in actions.page(ws, 10, 0, ref=ref)["items"]:
        if worker.cancel(action["id"]):
            return {"action": actions.get(ws, action["id"], lines=0)}
    return None
