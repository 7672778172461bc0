"""A small builder for Grafana dashboard JSON over the frser-sqlite-datasource plugin.

Panels are plain dicts; :func:`dashboard` numbers them and lays them out left to
right in rows of 24 grid units. Queries use the plugin's conventions: the SQL in
``queryText``/``rawQueryText``, epoch-second columns named in ``timeColumns``,
``queryType`` "time series" (long format: text columns become series labels, rows
sorted by time) or "table". Time filters use Grafana's ``$__from``/``$__to``
(milliseconds), which both the browser and the plugin's backend substitute.
"""

from __future__ import annotations

from typing import Any

PLUGIN = "frser-sqlite-datasource"
DATASOURCE_UID = "evc-sqlite"
DATASOURCE = {"type": PLUGIN, "uid": DATASOURCE_UID}
TAG = "evc"
BUCKETS = ("10", "60", "300", "900", "3600")  # seconds, for $__unixEpochGroupSeconds

# Status colours shared by the fleet map and tables.
STATUS_MAPPINGS = [
    {
        "type": "value",
        "options": {
            state: {"color": color, "index": i, "text": state}
            for i, (state, color) in enumerate(
                [
                    ("online", "green"),
                    ("offline", "red"),
                    ("unreachable", "purple"),
                    ("unknown", "text"),
                    ("running", "green"),
                    ("failed", "red"),
                    ("removed", "text"),
                    ("skipped", "text"),
                    ("success", "green"),
                    ("partial", "orange"),
                    ("error", "red"),
                ]
            )
        },  # fmt: skip
    }
]


def in_range(column: str) -> str:
    """SQL: ``column`` (epoch seconds) lies in the dashboard's time range."""
    return f"{column} >= $__from / 1000.0 AND {column} < $__to / 1000.0"


def any_of(column: str, variable: str) -> str:
    """SQL: ``column`` is one of the values picked in a multi-value variable."""
    return f"{column} IN (${{{variable}:singlequote}})"


def bucket(column: str) -> str:
    """SQL: ``column`` floored to the dashboard's bucket size (the plugin's macro)."""
    return f"$__unixEpochGroupSeconds({column}, $bucket)"


def target(sql: str, time_columns: tuple[str, ...] = (), series: bool = False) -> dict:
    sql = " ".join(sql.split())  # one line: reads better in Grafana's editor and in diffs
    return {
        "refId": "A",
        "datasource": DATASOURCE,
        "queryType": "time series" if series else "table",
        "rawQueryText": sql,
        "queryText": sql,
        "timeColumns": list(time_columns),
    }


def panel(
    kind: str,
    title: str,
    sql: str,
    *,
    w: int = 12,
    h: int = 8,
    time: tuple[str, ...] = (),
    unit: str | None = None,
    units: dict[str, str] | None = None,
    description: str = "",
    defaults: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> dict:
    """One panel with one query; ``units`` sets a unit per column, ``unit`` for all."""
    field_defaults = dict(defaults or {})
    if unit:
        field_defaults["unit"] = unit
    overrides = [
        {"matcher": {"id": "byName", "options": col},
         "properties": [{"id": "unit", "value": u}]}
        for col, u in (units or {}).items()
    ]  # fmt: skip
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [target(sql, time, series=kind == "timeseries")],
        "fieldConfig": {"defaults": field_defaults, "overrides": overrides},
        "options": options or {},
        "gridPos": {"h": h, "w": w, "x": 0, "y": 0},
    }


def stat(title: str, sql: str, *, color: str = "blue", unit: str | None = None) -> dict:
    return panel(
        "stat", title, sql, w=6, h=4, unit=unit,
        defaults={"color": {"mode": "fixed", "fixedColor": color}},
        options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                 "colorMode": "background", "graphMode": "none", "textMode": "value"},
    )  # fmt: skip


def timeseries(
    title: str, sql: str, *, unit: str | None = None, legend: str = "", bars: bool = False,
    w: int = 12,
) -> dict:  # fmt: skip
    """A time series from a query whose first column is ``time`` (epoch seconds)."""
    custom = {"drawStyle": "bars", "fillOpacity": 60, "stacking": {"mode": "normal"}} if bars else {
        "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "auto",
        "spanNulls": True,
    }  # fmt: skip
    defaults: dict[str, Any] = {"custom": custom}
    if legend:
        defaults["displayName"] = legend
    return panel(
        "timeseries", title, sql, w=w, time=("time",), unit=unit, defaults=defaults,
        options={"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                 "tooltip": {"mode": "multi", "sort": "desc"}},
    )  # fmt: skip


def table(
    title: str, sql: str, *, time: tuple[str, ...] = (), units: dict[str, str] | None = None,
    w: int = 24, h: int = 9, description: str = "",
) -> dict:  # fmt: skip
    return panel(
        "table", title, sql, w=w, h=h, time=time, units=units, description=description,
        defaults={"mappings": STATUS_MAPPINGS},
        options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
    )  # fmt: skip


def query_variable(name: str, label: str, sql: str, refresh: int = 1) -> dict:
    """A multi-value variable from a one-column query, "All" selected by default.

    ``refresh`` 1 reloads the options when the dashboard loads, 2 also when the
    time range changes.
    """
    sql = " ".join(sql.split())
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DATASOURCE,
        "query": sql,
        "definition": sql,
        "refresh": refresh,
        "multi": True,
        "includeAll": True,
        "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
    }


def bucket_variable(default: str = "60") -> dict:
    """``$bucket``: the width in seconds that time series group samples into."""
    return {
        "type": "custom",
        "name": "bucket",
        "label": "Bucket (s)",
        "query": ",".join(BUCKETS),
        "multi": False,
        "includeAll": False,
        "current": {"selected": True, "text": default, "value": default},
        "options": [{"selected": v == default, "text": v, "value": v} for v in BUCKETS],
    }


def _layout(panels: list[dict]) -> list[dict]:
    """Ids 1..n and grid positions, filling rows of 24 units left to right."""
    x = y = row_h = 0
    out = []
    for i, p in enumerate(panels, start=1):
        grid = dict(p["gridPos"])
        if x + grid["w"] > 24:
            x, y, row_h = 0, y + row_h, 0
        grid.update(x=x, y=y)
        x, row_h = x + grid["w"], max(row_h, grid["h"])
        out.append({"id": i, **p, "gridPos": grid})
    return out


def dashboard(
    uid: str, title: str, description: str, variables: list[dict], panels: list[dict],
    time_from: str = "now-6h",
) -> dict:  # fmt: skip
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": [TAG],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "timezone": "browser",
        "time": {"from": time_from, "to": "now"},
        "refresh": "1m",
        "links": [
            {
                "type": "dashboards",
                "tags": [TAG],
                "asDropdown": False,
                "title": "EVC",
                "includeVars": False,
                "keepTime": True,
            }
        ],  # fmt: skip
        "annotations": {"list": []},
        "templating": {"list": variables},
        "panels": _layout(panels),
    }
