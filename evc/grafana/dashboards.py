"""The EVC dashboards: fleet, inference, models and deployments, operations.

Every query reads the workspace database as ``evc.db`` writes it (times in epoch
seconds). Node panels follow ``$node``, whose options follow ``$group`` (device
groups are JSON text in ``devices.groups``; "(none)" stands for devices in no
group).
"""

from __future__ import annotations

from evc.grafana.builder import (
    any_of,
    bucket,
    bucket_variable,
    dashboard,
    in_range,
    panel,
    query_variable,
    stat,
    table,
    timeseries,
)

NO_GROUP = "(none)"

GROUP = query_variable(
    "group", "Group",
    f"""SELECT g.value AS grp FROM devices, json_each(devices.groups) AS g
        UNION SELECT '{NO_GROUP}' FROM devices WHERE json_array_length(devices.groups) = 0
        ORDER BY 1""",
)  # fmt: skip
NODE = query_variable(
    "node", "Node",
    f"""SELECT name FROM devices
        WHERE EXISTS (SELECT 1 FROM json_each(devices.groups) AS g
                      WHERE {any_of("g.value", "group")})
           OR (json_array_length(devices.groups) = 0 AND {any_of(f"'{NO_GROUP}'", "group")})
        ORDER BY name""",
)  # fmt: skip
NODES = [GROUP, NODE]


def _metric(title: str, columns: str, unit: str, legend: str = "${__field.labels.node}",
            where: str = "") -> dict:  # fmt: skip
    """Per-node time series of ``metrics`` columns, averaged per bucket."""
    return timeseries(
        title,
        f"""SELECT {bucket("at")} AS time, node, {columns} FROM metrics
            WHERE {in_range("at")} AND {any_of("node", "node")} {where}
            GROUP BY 1, 2 ORDER BY 1, 2""",
        unit=unit, legend=legend,
    )  # fmt: skip


def fleet() -> dict:
    devices = f"FROM devices WHERE {any_of('name', 'node')}"
    geomap = panel(
        "geomap", "Where the nodes are",
        f"SELECT name AS node, status, lat, lon {devices} AND lat IS NOT NULL AND lon IS NOT NULL",
        h=10, defaults={"mappings": [], "color": {"mode": "thresholds"}},
        options={
            "view": {"id": "fit", "allLayers": True, "lat": 0, "lon": 0, "zoom": 2},
            "controls": {"showZoom": True, "mouseWheelZoom": True},
            "basemap": {"type": "default", "name": "Basemap"},
            "layers": [{
                "type": "markers", "name": "nodes", "tooltip": True,
                "location": {"mode": "coords", "latitude": "lat", "longitude": "lon"},
                "config": {"showLegend": False, "style": {
                    "size": {"fixed": 8}, "color": {"fixed": "green"},
                    "text": {"mode": "field", "field": "node", "fixed": ""},
                    "textConfig": {"fontSize": 11, "offsetY": -12},
                }},
            }],
            "tooltip": {"mode": "details"},
        },
    )  # fmt: skip
    panels = [
        stat("Online", f"SELECT COUNT(*) AS online {devices} AND status = 'online'", color="green"),
        stat("Offline or unreachable",
             f"SELECT COUNT(*) AS offline {devices} AND status IN ('offline', 'unreachable')",
             color="red"),
        stat("Nodes", f"SELECT COUNT(*) AS nodes {devices}"),
        stat("Status changes in range",
             f"""SELECT COUNT(*) AS changes FROM node_events
                 WHERE {in_range("at")} AND {any_of("node", "node")}""", color="orange"),
        _metric("CPU", "AVG(cpu_pct) AS cpu", "percent"),
        _metric("Memory", "AVG(mem_pct) AS memory", "percent"),
        _metric("Disk", "AVG(disk_pct) AS disk", "percent"),
        _metric("Temperature (hottest zone)", "AVG(temp_max_c) AS temp", "celsius",
                where="AND temp_max_c IS NOT NULL"),
        _metric("Network (all interfaces but lo)",
                "AVG(net_rx_bps) AS rx, AVG(net_tx_bps) AS tx", "Bps",
                legend="${__field.name} ${__field.labels.node}"),
        _metric("GPU / NPU utilisation", "AVG(gpu_util_pct) AS gpu, AVG(npu_util_pct) AS npu",
                "percent", legend="${__field.name} ${__field.labels.node}",
                where="AND (gpu_util_pct IS NOT NULL OR npu_util_pct IS NOT NULL)"),
        geomap,
        table("Status changes",
              f"""SELECT at, node, from_state, to_state FROM node_events
                  WHERE {in_range("at")} AND {any_of("node", "node")}
                  ORDER BY at DESC LIMIT 500""", time=("at",), w=12, h=10),
        table("Devices",
              f"""SELECT name AS node, status, host, role, groups, labels, arch, os, kernel,
                         cpu_count AS cpus, mem_bytes AS memory, disk_bytes AS disk,
                         accelerator, docker_version AS docker, lat, lon, last_seen, missed
                  {devices} ORDER BY node""",
              time=("last_seen",), units={"memory": "bytes", "disk": "bytes"}),
        table("Containers (latest sample per node)",
              f"""SELECT c.node, c.name, c.image, c.state, c.restarts, c.at
                  FROM container_status AS c
                  JOIN (SELECT node, MAX(at) AS at FROM container_status
                        WHERE {in_range("at")} AND {any_of("node", "node")} GROUP BY node)
                       AS last ON c.node = last.node AND c.at = last.at
                  ORDER BY c.node, c.name""", time=("at",), h=8),
    ]  # fmt: skip
    return dashboard(
        "evc-fleet", "EVC / Fleet",
        "Nodes online and offline, their samples (CPU, memory, disk, temperature, network, "
        "accelerators), where they are and what they are.",
        [*NODES, bucket_variable()], panels,
    )  # fmt: skip


# A job counts for the selected nodes when one of its shards ran there.
_JOB_FILTER = (
    f"{in_range('j.created')} AND {any_of('j.model', 'model')} AND EXISTS "
    f"(SELECT 1 FROM shards AS s WHERE s.job_id = j.id AND {any_of('s.node', 'node')})"
)
# Finished items of the selected nodes and models in range, with their shard's end time.
_ITEMS = f"""FROM results AS r JOIN shards AS s ON s.id = r.shard_id
    JOIN jobs AS j ON j.id = r.job_id WHERE {in_range("s.finished")}
    AND {any_of("r.node", "node")} AND {any_of("j.model", "model")}"""
# Failed items of the selected nodes and models; no node: no node was left to run them.
_FAILED = f"""FROM results AS r JOIN jobs AS j ON j.id = r.job_id
    LEFT JOIN shards AS s ON s.id = r.shard_id
    WHERE r.state = 'error' AND {in_range("j.created")} AND {any_of("j.model", "model")}
      AND (r.node IS NULL OR {any_of("r.node", "node")})"""
_PERCENTILES = ", ".join(
    f"MIN(CASE WHEN rn >= {q / 100} * n THEN ms END) AS p{q}" for q in (50, 90, 99)
)


def _latency(key: str, key_sql: str, extra: str = "") -> str:
    """Nearest-rank latency percentiles of ok items, per ``key``."""
    return f"""SELECT {key}, {_PERCENTILES}{extra} FROM (
        SELECT {key}, ms, ROW_NUMBER() OVER (PARTITION BY {key} ORDER BY ms) AS rn,
               COUNT(*) OVER (PARTITION BY {key}) AS n
        FROM (SELECT {key_sql} AS {key}, r.latency_ms AS ms {_ITEMS}
              AND r.state = 'ok' AND r.latency_ms IS NOT NULL))
        GROUP BY {key} ORDER BY {key}"""


def inference() -> dict:
    model = query_variable("model", "Model", "SELECT DISTINCT model FROM jobs ORDER BY 1")
    panels = [
        stat("Jobs", f"SELECT COUNT(*) AS jobs FROM jobs AS j WHERE {_JOB_FILTER}"),
        stat("Items ok", f"SELECT COUNT(*) AS ok {_ITEMS} AND r.state = 'ok'", color="green"),
        stat("Items failed", f"SELECT COUNT(*) AS failed {_FAILED}", color="red"),
        stat("Detections",
             f"""SELECT COUNT(*) AS detections FROM detections AS d
                 JOIN results AS r ON r.job_id = d.job_id AND r.item = d.item
                 JOIN shards AS s ON s.id = r.shard_id JOIN jobs AS j ON j.id = r.job_id
                 WHERE {in_range("s.finished")} AND {any_of("r.node", "node")}
                   AND {any_of("j.model", "model")}""", color="purple"),
        timeseries("Jobs over time",
                   f"""SELECT {bucket("j.created")} AS time, j.state, COUNT(*) AS jobs
                       FROM jobs AS j WHERE {_JOB_FILTER} GROUP BY 1, 2 ORDER BY 1, 2""",
                   bars=True, legend="${__field.labels.state}"),
        timeseries("Items per second per node",
                   f"""SELECT {bucket("s.finished")} AS time, s.node,
                              SUM(s.items) / SUM(s.finished - s.started) AS items_per_s
                       FROM shards AS s JOIN jobs AS j ON j.id = s.job_id
                       WHERE s.state = 'done' AND s.finished > s.started
                         AND {in_range("s.finished")} AND {any_of("s.node", "node")}
                         AND {any_of("j.model", "model")}
                       GROUP BY 1, 2 ORDER BY 1, 2""",
                   unit="reqps", legend="${__field.labels.node}"),
        timeseries("Latency percentiles (all selected nodes)",
                   _latency("time", bucket("s.finished")), unit="ms"),
        table("Latency percentiles per node",
              _latency("node", "r.node", ", MAX(ms) AS max, MAX(n) AS items"),
              units={q: "ms" for q in ("p50", "p90", "p99", "max")}, w=12, h=8),
        timeseries("Detections per label",
                   f"""SELECT {bucket("s.finished")} AS time, d.label, COUNT(*) AS detections
                       FROM detections AS d
                       JOIN results AS r ON r.job_id = d.job_id AND r.item = d.item
                       JOIN shards AS s ON s.id = r.shard_id JOIN jobs AS j ON j.id = r.job_id
                       WHERE {in_range("s.finished")} AND {any_of("r.node", "node")}
                         AND {any_of("j.model", "model")}
                       GROUP BY 1, 2 ORDER BY 1, 2""",
                   bars=True, legend="${__field.labels.label}"),
        panel("barchart", "Makespan of recent jobs",
              f"""SELECT job, makespan_s FROM (
                      SELECT j.id AS job, j.makespan_s, j.created FROM jobs AS j
                      WHERE j.makespan_s IS NOT NULL AND {_JOB_FILTER}
                      ORDER BY j.created DESC LIMIT 20) ORDER BY created""",
              unit="s", options={"xField": "job", "orientation": "auto", "showValue": "auto",
                                 "legend": {"showLegend": False, "displayMode": "list",
                                            "placement": "bottom"}}),
        table("Recent jobs",
              f"""SELECT j.id AS job, j.model, j.version, j.strategy, j.state, j.items, j.ok,
                         j.failed, j.makespan_s, ROUND(j.items / j.makespan_s, 2) AS items_per_s,
                         j.created, j.finished
                  FROM jobs AS j WHERE {_JOB_FILTER} ORDER BY j.created DESC LIMIT 100""",
              time=("created", "finished"), units={"makespan_s": "s"}),
        table("Failed items",
              f"""SELECT r.job_id AS job, r.item, r.node, r.attempt, r.error,
                         COALESCE(s.finished, j.finished) AS at
                  {_FAILED} ORDER BY at DESC LIMIT 500""",
              time=("at",), description="Items whose last attempt failed; no node means no "
              "node was left to run them."),
        table("Recent detections",
              f"""SELECT s.finished AS at, d.job_id AS job, d.item, r.node, d.label,
                         ROUND(d.score, 3) AS score, d.x, d.y, d.w, d.h, d.keypoints
                  FROM detections AS d
                  JOIN results AS r ON r.job_id = d.job_id AND r.item = d.item
                  JOIN shards AS s ON s.id = r.shard_id JOIN jobs AS j ON j.id = r.job_id
                  WHERE {in_range("s.finished")} AND {any_of("r.node", "node")}
                    AND {any_of("j.model", "model")}
                  ORDER BY d.id DESC LIMIT 200""", time=("at",),
              description="keypoints: the detection's named points, JSON [{name, x, y}] in "
              "pixels, for models that give them (face-blaze: eyes, nose, mouth, ears)."),
    ]  # fmt: skip
    return dashboard(
        "evc-inference", "EVC / Inference",
        "Inference jobs: throughput per node, latency percentiles, detections, failures and "
        "makespans.",
        [*NODES, model, bucket_variable()], panels,
    )  # fmt: skip


# What runs where: per (model, node) the latest row that is running or removed (as
# evc.model.deployments.current reads it), kept when it is running.
_RUNNING = f"""FROM deployments AS d
    JOIN (SELECT model, node, MAX(id) AS id FROM deployments
          WHERE state IN ('running', 'removed') GROUP BY model, node) AS last ON d.id = last.id
    WHERE d.state = 'running' AND {any_of("d.node", "node")} AND {any_of("d.model", "model")}"""
_DEPLOYS = f"""FROM deployments AS d WHERE {in_range("d.started")}
    AND {any_of("d.node", "node")} AND {any_of("d.model", "model")}"""


def models() -> dict:
    model = query_variable("model", "Model", "SELECT DISTINCT name FROM models ORDER BY 1")
    panels = [
        stat("Models (versions)",
             f"SELECT COUNT(*) AS versions FROM models WHERE {any_of('name', 'model')}"),
        stat("Nodes running a model", f"SELECT COUNT(DISTINCT d.node) AS nodes {_RUNNING}",
             color="green"),
        stat("Deployments in range", f"SELECT COUNT(*) AS deployments {_DEPLOYS}"),
        stat("Failed deployments in range",
             f"SELECT COUNT(*) AS failed {_DEPLOYS} AND d.state = 'failed'", color="red"),
        table("Catalogue",
              f"""SELECT m.name, m.version, m.runtime, m.task, m.arch, m.owner, m.image,
                         m.size_bytes AS size, m.pushed_size AS pushed,
                         m.registry_digest AS digest, m.build_s, m.built_at, m.pushed_at,
                         (SELECT COUNT(*) {_RUNNING} AND d.model = m.name
                          AND d.version = m.version) AS running_on
                  FROM models AS m WHERE {any_of("m.name", "model")}
                  ORDER BY m.name, m.built_at DESC""",
              time=("built_at", "pushed_at"),
              units={"size": "bytes", "pushed": "bytes", "build_s": "s"}),
        table("Running now: which version on which node",
              f"""SELECT d.node, d.model, d.version, d.image, d.cpus, d.memory,
                         d.started AS since, d.run_id
                  {_RUNNING} ORDER BY d.node, d.model""", time=("since",), w=12, h=9),
        timeseries("Deployments by outcome",
                   f"""SELECT {bucket("d.started")} AS time, d.state, COUNT(*) AS hosts
                       {_DEPLOYS} GROUP BY 1, 2 ORDER BY 1, 2""",
                   bars=True, legend="${__field.labels.state}"),
        table("Deployment history (one row per host)",
              f"""SELECT d.started, d.model, d.version, d.node, d.action, d.state,
                         ROUND(d.finished - d.started, 1) AS duration_s, d.error, d.run_id
                  {_DEPLOYS} ORDER BY d.id DESC LIMIT 500""",
              time=("started",), units={"duration_s": "s"}, h=10),
    ]  # fmt: skip
    return dashboard(
        "evc-models", "EVC / Models and deployments",
        "The model catalogue, which version runs on which node, and every deployment with "
        "its outcome per host.",
        [*NODES, model, bucket_variable("3600")], panels, time_from="now-7d",
    )  # fmt: skip


# Runs of the selected playbooks in range that touched one of the selected nodes.
_RUNS = f"""FROM ansible_runs AS r WHERE {in_range("r.started")}
    AND {any_of("r.playbook", "playbook")}
    AND EXISTS (SELECT 1 FROM host_results AS h WHERE h.run_id = r.id
                AND {any_of("h.host", "node")})"""


def operations() -> dict:
    playbook = query_variable(
        "playbook", "Playbook", "SELECT DISTINCT playbook FROM ansible_runs ORDER BY 1"
    )
    audit = f"FROM audit_log WHERE {in_range('at')}"
    panels = [
        stat("Ansible runs", f"SELECT COUNT(*) AS runs {_RUNS}"),
        stat("Runs with failures", f"SELECT COUNT(*) AS failed {_RUNS} AND r.status != 'success'",
             color="red"),
        stat("Hosts failed or unreachable",
             f"""SELECT COUNT(*) AS hosts FROM host_results AS h
                 JOIN ansible_runs AS r ON r.id = h.run_id
                 WHERE {in_range("r.started")} AND {any_of("r.playbook", "playbook")}
                   AND {any_of("h.host", "node")} AND h.state IN ('failed', 'unreachable')""",
             color="orange"),
        stat("CLI commands", f"SELECT COUNT(*) AS commands {audit}", color="purple"),
        timeseries("Ansible runs by status",
                   f"""SELECT {bucket("r.started")} AS time, r.status, COUNT(*) AS runs
                       {_RUNS} GROUP BY 1, 2 ORDER BY 1, 2""",
                   bars=True, legend="${__field.labels.status}"),
        timeseries("Run duration per playbook",
                   f"""SELECT {bucket("r.started")} AS time, r.playbook,
                              AVG(r.ended - r.started) AS duration
                       {_RUNS} AND r.ended IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2""",
                   unit="s", legend="${__field.labels.playbook}"),
        table("Ansible runs",
              f"""SELECT r.started, r.playbook, r.target, r.status,
                         ROUND(r.ended - r.started, 1) AS duration_s, r.hosts_total AS hosts,
                         r.hosts_total - r.hosts_failed AS hosts_ok,
                         r.hosts_failed, r.rc, r.id, r.artifacts_dir
                  {_RUNS} ORDER BY r.started DESC LIMIT 500""",
              time=("started",), units={"duration_s": "s"}, h=10),
        table("Per-host outcomes",
              f"""SELECT r.started, h.host AS node, r.playbook, h.state, h.ok, h.changed, h.failed,
                         h.unreachable, h.skipped, h.failed_task, h.message, r.id AS run
                  FROM host_results AS h JOIN ansible_runs AS r ON r.id = h.run_id
                  WHERE {in_range("r.started")} AND {any_of("r.playbook", "playbook")}
                    AND {any_of("h.host", "node")}
                  ORDER BY r.started DESC, node LIMIT 1000""", time=("started",), h=10),
        table("Audit log",
              f"""SELECT at, user, command, args, exit_code, duration_s
                  {audit} ORDER BY at DESC LIMIT 500""",
              time=("at",), units={"duration_s": "s"}, h=10),
    ]  # fmt: skip
    return dashboard(
        "evc-operations", "EVC / Operations",
        "Ansible runs with their per-host outcome, and the audit log of CLI commands.",
        [*NODES, playbook, bucket_variable("300")], panels, time_from="now-24h",
    )  # fmt: skip


def all_dashboards() -> list[dict]:
    return [fleet(), inference(), models(), operations()]
