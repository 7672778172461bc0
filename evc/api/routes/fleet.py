"""Devices and telemetry: list, show, map, ping, facts, add, remove; samples and series."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Path, Query, Request

from evc import db as evcdb
from evc import devices, logs, views
from evc.api.auth import ADMIN, OPERATOR, VIEWER
from evc.api.routes import common
from evc.logs import CollectOptions
from evc.model.deployments import current

router = APIRouter(tags=["fleet"], responses=common.ERRORS)
STATUS = Query(None, pattern="^(online|unreachable|offline|unknown)$")


@router.get("/api/devices", response_model=common.Page)
def list_devices(
    request: Request,
    limit: int = common.LIMIT,
    offset: int = common.OFFSET,
    status: str | None = STATUS,
    group: str | None = Query(None, pattern="^[a-z][a-z0-9_]{0,62}$"),
    q: str | None = Query(None, max_length=64, description="Start of a name, or of a host."),
    caller=VIEWER,
) -> dict:
    """Devices by name, a page at a time, with their status and last check."""
    return views.devices(
        common.workspace(request), limit, offset, status=status, group=group, search=q or None
    )


@router.get("/api/devices/summary")
def summary(request: Request, caller=VIEWER) -> dict:
    """Devices per status, arch and accelerator; the groups in use."""
    return views.fleet_summary(common.workspace(request))


@router.get("/api/devices/map")
def device_map(request: Request, caller=VIEWER) -> dict:
    """Every device with a position, as ``[name, lat, lon, status]``."""
    return {"points": views.device_map(common.workspace(request))}


@router.get("/api/devices/{name}")
def show_device(
    request: Request, name: str = Path(..., pattern=common.NAME), caller=VIEWER
) -> dict:
    """A device: its record, status, latest sample and containers, CPU/memory over the
    last hour, recent status changes and what runs on it."""
    ws = common.workspace(request)
    db = evcdb.workspace_db(ws)
    device = common.found(devices.get, db, name)
    view = logs.show(ws, name, 3600.0, 24)[0]
    events = list(
        db.query("SELECT * FROM node_events WHERE node = ? ORDER BY id DESC LIMIT 20", [name])
    )
    running = [r for r in current(ws) if r["node"] == name]
    return {**device, **{k: view[k] for k in ("sample", "containers", "series")},
            "events": events, "deployments": running}  # fmt: skip


@router.post("/api/devices", response_model=common.Accepted, status_code=202)
def add_device(
    request: Request, options: devices.AddOptions, wait: float = common.WAIT, caller=ADMIN
) -> dict:
    """Enrol a device: pin its SSH host key, gather its facts (an action)."""
    return common.capability(request, caller, "device.add", options, wait)


@router.delete("/api/devices/{name}")
def remove_device(request: Request, name: str = Path(..., max_length=128), caller=ADMIN) -> dict:
    """Forget a device; its registry pull credential is deleted at once."""
    options = common.found(devices.RemoveOptions.of, name=name)
    common.audit(request, {"name": name})
    return common.found(devices.remove, common.workspace(request), options.name)


@router.post("/api/devices/ping", response_model=common.Accepted, status_code=202)
def ping(
    request: Request, options: devices.PingOptions, wait: float = common.WAIT, caller=OPERATOR
):
    """Reach the targeted devices; updates status and last seen (an action)."""
    return common.capability(request, caller, "device.check", options, wait)


@router.post("/api/devices/facts", response_model=common.Accepted, status_code=202)
def facts(
    request: Request, options: devices.FactsOptions, wait: float = common.WAIT, caller=OPERATOR
):
    """Gather the targeted devices' facts again (an action)."""
    return common.capability(request, caller, "device.facts", options, wait)


# ------------------------------------------------------------------ telemetry


@router.get("/api/telemetry/latest")
def latest(
    request: Request, node: list[str] = Query(..., max_length=500), caller=VIEWER
) -> dict[str, Any]:
    """The latest sample of each node named (a page of the fleet: up to 500)."""
    return logs.latest(evcdb.workspace_db(common.workspace(request)), node)


@router.get("/api/telemetry/series")
def series(
    request: Request,
    node: list[str] = Query(..., max_length=500),
    metric: list[str] = Query(["cpu_pct", "mem_pct"], max_length=len(logs.SERIES_METRICS)),
    since: float = Query(3600.0, gt=0, le=366 * 86400, description="Seconds back from now."),
    buckets: int = Query(24, ge=1, le=500),
    caller=VIEWER,
) -> dict[str, Any]:
    """Per node, each metric's mean in ``buckets`` slices of the last ``since`` seconds."""
    now = time.time()
    db = evcdb.workspace_db(common.workspace(request))
    return {
        "start": now - since, "since": since, "buckets": buckets,
        "series": logs.series(db, node, now - since, since, buckets, tuple(dict.fromkeys(metric))),
    }  # fmt: skip


@router.post("/api/telemetry/collect", response_model=common.Accepted, status_code=202)
def collect(request: Request, options: CollectOptions, wait: float = common.WAIT, caller=OPERATOR):
    """One telemetry round on the targeted nodes (an action)."""
    return common.capability(request, caller, "logs.collect", options, wait)
