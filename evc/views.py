"""Paged, filtered reads of the fleet for the HTTP API and the web console.

Lists that can be long (10,000 devices, a 10,000-item job) are read a page at a time
with their total, through indexed queries, so a page costs the same whatever the size
of the fleet. Here: the generic page, devices, the map and the audit log; the jobs',
runs' and deployments' pages live with their records.
"""

from __future__ import annotations

from typing import Any

from evc import db as evcdb
from evc.config import Workspace

DEVICE_STATES = ("online", "unreachable", "offline", "unknown")


def page(
    db, source: str, args: list[Any], order: str, limit: int, offset: int, columns: str = "*"
) -> dict[str, Any]:
    """One page of ``SELECT columns source`` (``source`` is ``FROM ... WHERE ...`` with
    placeholders for ``args``; ``order`` a fixed ORDER BY): ``{items, total, limit, offset}``."""
    total = db.execute(f"SELECT COUNT(*) {source}", args).fetchone()[0]
    rows = db.query(
        f"SELECT {columns} {source} ORDER BY {order} LIMIT ? OFFSET ?", [*args, limit, offset]
    )
    return {"items": list(rows), "total": total, "limit": limit, "offset": offset}


def devices(
    ws: Workspace,
    limit: int,
    offset: int,
    *,
    status: str | None = None,
    group: str | None = None,
    search: str | None = None,
) -> dict[str, Any]:
    """Devices by name; ``search`` matches the start of a name or host."""
    where = ["(? IS NULL OR status = ?)"]
    args: list[Any] = [status, status]
    if group:
        where.append("EXISTS (SELECT 1 FROM json_each(devices.groups) WHERE value = ?)")
        args.append(group)
    if search:
        where.append("(name >= ? AND name < ? OR host LIKE ? ESCAPE '\\')")
        like = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        args += [search, search + "\U0010ffff", like]
    out = page(
        evcdb.workspace_db(ws), f"FROM devices WHERE {' AND '.join(where)}", args, "name",
        limit, offset,
    )  # fmt: skip
    out["items"] = [evcdb.device_from_row(r) for r in out["items"]]
    return out


def device_map(ws: Workspace) -> list[list[Any]]:
    """``[name, lat, lon, status]`` of every device with a position (compact: one map
    holds the whole fleet)."""
    return [
        list(r)
        for r in evcdb.workspace_db(ws).execute(
            "SELECT name, lat, lon, status FROM devices WHERE lat IS NOT NULL AND lon IS NOT NULL "
            "ORDER BY name"
        )
    ]


def fleet_summary(ws: Workspace) -> dict[str, Any]:
    """Devices per status, arch and accelerator, and the groups in use."""
    db = evcdb.workspace_db(ws)

    def counts(column: str) -> dict[str, int]:
        return {
            (k if k is not None else "unknown"): n
            for k, n in db.execute(f"SELECT {column}, COUNT(*) FROM devices GROUP BY {column}")
        }

    groups = [
        r[0]
        for r in db.execute(
            "SELECT DISTINCT j.value FROM devices, json_each(devices.groups) j ORDER BY 1"
        )
    ]
    total = db.execute("SELECT COUNT(*) FROM devices").fetchone()[0]
    return {"total": total, "status": counts("status"), "arch": counts("arch"),
            "accelerator": counts("accelerator"), "groups": groups}  # fmt: skip


def audit(ws: Workspace, limit: int, offset: int, user: str | None = None) -> dict[str, Any]:
    """The audit log, newest first."""
    return page(
        evcdb.workspace_db(ws), "FROM audit_log WHERE (? IS NULL OR user = ?)", [user, user],
        "id DESC", limit, offset,
    )  # fmt: skip
