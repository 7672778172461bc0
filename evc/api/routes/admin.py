"""The server itself: health, who am I, actions; for admins: tokens, the audit log and
the registry."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam

from evc import __version__, registry_server, views
from evc.api import actions, tokens
from evc.api.auth import ADMIN, OPERATOR, VIEWER, Caller
from evc.api.routes import common
from evc.errors import EVCError, UsageError

router = APIRouter(tags=["server"], responses=common.ERRORS)
ACTION = PathParam(..., pattern=common.NAME, description="Action id.")


@router.get("/api/health")
def health(request: Request) -> dict:
    """The server answers (no token needed)."""
    return {"ok": True, "version": __version__, "workspace": common.workspace(request).name}


@router.get("/api/me")
def me(caller: Caller = VIEWER) -> dict:
    """The caller's token name and role."""
    return {"name": caller.name, "role": caller.role, "anonymous": caller.anonymous}


@router.get("/api/actions", response_model=common.Page)
def list_actions(
    request: Request,
    limit: int = common.LIMIT,
    offset: int = common.OFFSET,
    state: str | None = Query(None, pattern=f"^(queued|running|{'|'.join(actions.FINAL)})$"),
    ref: str | None = Query(None, pattern=common.NAME, description="A job or run id."),
    caller=VIEWER,
) -> dict:
    """What the server's worker ran or runs (deploys, jobs, run-configs), newest first."""
    return actions.page(common.workspace(request), limit, offset, state, ref)


@router.get("/api/actions/{action_id}")
def show_action(request: Request, action_id: str = ACTION, caller=VIEWER) -> dict:
    """An action: parameters, who asked, state, outcome and its last progress lines."""
    return common.found(actions.get, common.workspace(request), action_id)


@router.post("/api/actions/{action_id}/cancel", response_model=common.Accepted, status_code=202)
def cancel_action(request: Request, action_id: str = ACTION, caller=OPERATOR) -> dict:
    """Stop a job or a run-config this server runs (other actions cannot be stopped)."""
    common.found(actions.get, common.workspace(request), action_id)
    common.audit(request, {"action": action_id})
    if not request.app.state.worker.cancel(action_id):
        raise HTTPException(409, f"Action {action_id} is not a job or run this server runs.")
    return {"action": actions.get(common.workspace(request), action_id, lines=0)}


@router.get("/api/tokens")
def list_tokens(request: Request, caller=ADMIN) -> dict:
    """Tokens: name, role, state, times (never a secret)."""
    return {"items": [t.to_dict() for t in tokens.list_tokens(common.workspace(request))]}


@router.post("/api/tokens", status_code=201)
def create_token(request: Request, options: tokens.CreateOptions, caller=ADMIN) -> dict:
    """Create a token; the answer holds it, once (it is stored only as a hash)."""
    common.audit(request, options.model_dump(mode="json"))
    secret, token = tokens.create(common.workspace(request), options)
    return {**token.to_dict(), "token": secret}


@router.delete("/api/tokens/{name}")
def revoke_token(
    request: Request, name: str = PathParam(..., max_length=128), caller=ADMIN
) -> dict:
    """Revoke a token: refused from its next request."""
    common.audit(request, {"name": name})
    return common.found(tokens.revoke, common.workspace(request), name).to_dict()


@router.get("/api/audit", response_model=common.Page)
def audit_log(
    request: Request,
    limit: int = common.LIMIT,
    offset: int = common.OFFSET,
    user: str | None = Query(None, max_length=200),
    caller=ADMIN,
) -> dict:
    """Who did what (CLI and API), newest first; the API's rows name the token."""
    return views.audit(common.workspace(request), limit, offset, user)


@router.get("/api/registry")
def registry_status(request: Request, caller=ADMIN) -> dict:
    """The registry's endpoints, certificates, repositories and pull credentials."""
    try:
        status = registry_server.status(common.workspace(request))
    except UsageError as exc:  # no registry set up here
        raise HTTPException(409, str(exc)) from None
    except EVCError as exc:
        raise HTTPException(503, str(exc)) from None
    return asdict(status)
