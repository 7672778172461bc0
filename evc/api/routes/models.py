"""Models and deployments: the catalogue, what runs where, history; deploy, undeploy,
rollback (actions, with the same options as `evc model deploy|undeploy|rollback`)."""

from __future__ import annotations

from fastapi import APIRouter, Path, Query, Request

from evc.api.auth import OPERATOR, VIEWER
from evc.api.routes.common import ERRORS, LIMIT, OFFSET, WAIT, Accepted, Page, capability, workspace
from evc.model import catalogue, deploy, deployments

router = APIRouter(tags=["models"], responses=ERRORS)
MODEL = r"^[a-z0-9][a-z0-9._-]{0,63}$"


@router.get("/api/models")
def list_models(
    request: Request,
    check_registry: bool = Query(False, description="Ask the registry which tags it holds."),
    caller=VIEWER,
) -> dict:
    """The catalogue: every model version, its image, where it runs."""
    models, warning = catalogue.list_models(workspace(request), check_registry)
    return {"items": [m.to_dict() for m in models], "warning": warning}


@router.get("/api/models/{name}")
def model_versions(request: Request, name: str = Path(..., pattern=MODEL), caller=VIEWER) -> dict:
    """One model's versions (its variants by arch and runtime) and where each runs."""
    models, _ = catalogue.list_models(workspace(request), check_registry=False)
    versions = [m.to_dict() for m in models if m.name == name]
    return {"name": name, "versions": versions}


@router.get("/api/deployments")
def running(
    request: Request,
    model: str | None = Query(None, pattern=MODEL),
    node: str | None = Query(None, max_length=128),
    caller=VIEWER,
) -> dict:
    """What runs where: each node's current version of each model."""
    rows = deployments.current(workspace(request), model)
    return {"items": [r for r in rows if node in (None, r["node"])]}


@router.get("/api/deployments/history", response_model=Page)
def history(
    request: Request,
    limit: int = LIMIT,
    offset: int = OFFSET,
    model: str | None = Query(None, pattern=MODEL),
    node: str | None = Query(None, max_length=128),
    caller=VIEWER,
) -> dict:
    """Every deploy, rollback and undeploy on every node, newest first."""
    return deployments.history(workspace(request), limit, offset, model, node)


@router.post("/api/deployments/deploy", response_model=Accepted, status_code=202)
def deploy_model(
    request: Request, options: deploy.DeployOptions, wait: float = WAIT, caller=OPERATOR
) -> dict:
    """Pull NAME:VERSION and run it on the target's nodes (an action; `evc model deploy`)."""
    return capability(request, caller, "model.deploy", options, wait)


@router.post("/api/deployments/undeploy", response_model=Accepted, status_code=202)
def undeploy_model(
    request: Request, options: deploy.UndeployOptions, wait: float = WAIT, caller=OPERATOR
) -> dict:
    """Remove the model's container from the target's nodes (an action)."""
    return capability(request, caller, "model.undeploy", options, wait)


@router.post("/api/deployments/rollback", response_model=Accepted, status_code=202)
def rollback_model(
    request: Request, options: deploy.RollbackOptions, wait: float = WAIT, caller=OPERATOR
) -> dict:
    """Put each node back on the version it ran before (an action)."""
    return capability(request, caller, "model.rollback", options, wait)
