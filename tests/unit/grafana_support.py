"""Test support for the dashboards: a database filled by EVC's own code, and the
query rendering that Grafana and frser-sqlite-datasource do before SQLite sees a
panel's SQL.

Rendering, as the plugin's sources do it: the browser's template service
replaces ``$var``/``${var}``/``${var:format}`` and ``$__from``/``$__to``
(epoch milliseconds); unknown ``$names`` stay. Then the plugin's backend
replaces ``$__from``/``$__to`` again and applies its macros, matched by
``\\$__(\\w+)\\(([^)]*)\\)``: ``$__unixEpochGroupSeconds(col, N[, NULL])`` ->
``cast((col / N) as int) * N`` and ``$__timeFilter(col)``; other macros stay
(and then fail in SQLite, as they would in Grafana).
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

from evc import db as evcdb
from evc import devices
from evc import logs as telemetry
from evc.ansible import HostResult, RunResult
from evc.infer import nodes
from evc.infer import runner as jobs
from evc.model import deploy
from tests.unit.fake_fleet import FakeFleet, add_devices, add_model

# ----------------------------------------------------------------- rendering

_TEMPLATE = re.compile(r"\$(\w+)|\$\{(\w+)(?::(\w+))?\}")
_MACRO = re.compile(r"\$__([_a-zA-Z0-9]+)\(([^\)]*)\)")


def _format(values: list[str], fmt: str | None, multi: bool) -> str:
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
    if fmt is None and not multi:
        return values[0] if values else ""
    if fmt is None:  # Grafana's default for a multi-value variable here: glob
        return values[0] if len(values) == 1 else "{" + ",".join(values) + "}"
    raise AssertionError(f"format {fmt!r} is not emulated; use singlequote")


def render(sql: str, variables: dict[str, list[str]], t_from: float, t_to: float) -> str:
    """``sql`` as SQLite receives it; ``variables``: name -> selected values."""
    builtin = {"__from": str(int(t_from * 1000)), "__to": str(int(t_to * 1000))}

    def template(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name in builtin:
            return builtin[name]
        if name not in variables:
            return m.group(0)
        return _format(variables[name], m.group(3), multi=name != "bucket")

    sql = _TEMPLATE.sub(template, sql)

    def macro(m: re.Match) -> str:
        name, args = m.group(1), [a.strip() for a in m.group(2).split(",")]
        if name == "unixEpochGroupSeconds":
            assert len(args) in (2, 3), f"unixEpochGroupSeconds takes 2 or 3 arguments: {args}"
            interval = int(args[1])  # the plugin fails on anything but an integer
            return f"cast(({args[0]} / {interval}) as int) * {interval}"
        if name == "timeFilter":
            col, lo, hi = args[0], int(t_from), int(t_to)
            return (
                f"CAST(CASE WHEN typeof({col}) = 'integer' THEN {col} "
                f'ELSE strftime("%s", {col}) END AS INTEGER) BETWEEN {lo} AND {hi}'
            )
        return m.group(0)

    return _MACRO.sub(macro, sql)


def variable_values(db, dashboard: dict, t_from: float, t_to: float, pick=None) -> dict:
    """Each variable's values, resolved in order as Grafana does: a query variable's
    options come from its SQL (exactly one column); "All" (or ``pick[name]``) is selected."""
    values: dict[str, list[str]] = {}
    for var in dashboard["templating"]["list"]:
        if var["type"] == "custom":
            values[var["name"]] = [var["current"]["value"]]
            continue
        cursor = db.execute(render(var["query"], values, t_from, t_to))
        assert len(cursor.description) == 1, f"variable {var['name']}: not one column"
        options = [str(r[0]) for r in cursor.fetchall()]
        values[var["name"]] = (pick or {}).get(var["name"], options)
    return values


# ----------------------------------------------------------------- a filled database


def record_telemetry(db, now: float) -> None:
    """90 one-minute telemetry rounds through ``evc.logs.ingest`` and
    ``evc.devices.record_liveness``; node3 stops answering near the end (offline)."""
    for k in range(90):
        at = now - 5400 + 60 * k
        samples, hosts = [], {}
        for n, node in enumerate(("node1", "node2", "node3")):
            if node == "node3" and k > 80:  # went offline
                hosts[node] = HostResult(node, "unreachable", unreachable=1, message="no route")
                continue
            hosts[node] = HostResult(node, "ok", ok=1)
            samples.append({
                "node": node, "at": at, "cpu_pct": 10.0 + n * 20 + k % 7,
                "load1": 0.5 + n, "load5": 0.4 + n, "load15": 0.3 + n,
                "mem_total": 4 << 30, "mem_used": (1 + n) << 29, "mem_pct": 12.5 * (1 + n),
                "disk_total": 64 << 30, "disk_used": 20 << 30, "disk_pct": 31.25,
                "temp_max_c": None if node == "node2" else 45.0 + n + k % 3,
                "temps": None if node == "node2" else {"cpu-thermal": 45.0 + n},
                "net_rx_bps": 1000.0 * (k + 1), "net_tx_bps": 500.0 * (k + 1),
                "net": {"eth0": [1000.0 * (k + 1), 500.0 * (k + 1)]},
                "gpu_util_pct": 40.0 + k % 10 if node == "node1" else None,
                "gpu_mem_used": 1 << 30 if node == "node1" else None,
                "gpu_mem_total": 8 << 30 if node == "node1" else None,
                "containers": [{"name": "evc-model-faces", "state": "running", "restarts": 0,
                                "image": "registry:5001/evc/faces@sha256:" + "cd" * 32}],
            })  # fmt: skip
        telemetry.ingest(db, samples)
        run = RunResult("telemetry.yml", "all", uuid.uuid4().hex[:12], "", at, at, 0, hosts)
        devices.record_liveness(db, run, offline_after=3, now=at)


def populate(ws, monkeypatch, data: Path) -> float:
    """Fill the workspace database through EVC's functions; returns the time they ran."""
    now = time.time()
    db = evcdb.workspace_db(ws)
    add_devices(ws, db, now)
    record_telemetry(db, now)
    fleet = FakeFleet(down={"node3"}, flaky={"node2"})
    monkeypatch.setattr(deploy, "run_playbook", fleet)
    monkeypatch.setattr(jobs, "run_playbook", fleet)
    monkeypatch.setattr(nodes, "run_playbook", fleet)
    fleet(ws, "facts.yml", "all")
    add_model(ws, "1.0", now)
    add_model(ws, "1.1", now)
    deploy.deploy(
        ws, deploy.DeployOptions(ref="faces:1.0", target="all")
    )  # node3 unreachable: failed row
    data.mkdir()
    for i in range(12):
        (data / f"img{i:02d}.jpg").write_bytes(b"\xff\xd8 not decoded by the fake fleet")
    (data / "corrupt.jpg").write_bytes(b"")
    jobs.run(ws, jobs.RunOptions(model="faces:1.0", data=data, retries=2, shard_size=2))
    deploy.deploy(ws, deploy.DeployOptions(ref="faces:1.1", target="node1"))
    jobs.run(
        ws, jobs.RunOptions(model="faces:1.1", data=data, target="node1", strategy="round-robin")
    )
    evcdb.audit(db, "model deploy", ["model", "deploy", "faces:1.0", "all"], 1, 2.5)
    evcdb.audit(db, "infer run", ["infer", "run", "faces:1.0", "--data", "imgs"], 1, 4.0)
    evcdb.audit(db, "grafana build", ["grafana", "build"], 0, 0.2)
    return now
