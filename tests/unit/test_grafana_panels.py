"""Every dashboard query, rendered as Grafana and frser-sqlite-datasource render it,
runs against a database that EVC's own code filled, and returns what its panel
type needs."""

from __future__ import annotations

import sqlite3

import pytest

from evc.config import init_workspace
from evc.grafana.dashboards import all_dashboards
from tests.unit.grafana_support import populate, render, variable_values

DASHBOARDS = all_dashboards()
PANELS = [(d, p) for d in DASHBOARDS for p in d["panels"]]
IDS = [f"{d['uid']}:{p['title']}" for d, p in PANELS]


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """(read-only connection, time range) over a populated workspace database."""
    root = tmp_path_factory.mktemp("grafana")
    ws = init_workspace(root / "ws")
    with pytest.MonkeyPatch.context() as mp:
        now = populate(ws, mp, root / "data")
    db = sqlite3.connect(f"file:{ws.root / 'db' / 'evc.db'}?mode=ro", uri=True)
    yield db, (now - 2 * 3600, now + 600)
    db.close()


@pytest.fixture(scope="module")
def empty(tmp_path_factory):
    ws = init_workspace(tmp_path_factory.mktemp("grafana-empty") / "ws")
    from evc.db import workspace_db

    workspace_db(ws)
    return sqlite3.connect(f"file:{ws.root / 'db' / 'evc.db'}?mode=ro", uri=True)


def _run(db, dashboard, panel, time_range, pick=None):
    values = variable_values(db, dashboard, *time_range, pick=pick)
    (target,) = panel["targets"]
    cursor = db.execute(render(target["queryText"], values, *time_range))
    columns = [c[0] for c in cursor.description]
    return target, columns, cursor.fetchall()


def _numeric(rows, i) -> bool:
    return any(isinstance(r[i], (int, float)) for r in rows) and all(
        r[i] is None or isinstance(r[i], (int, float)) for r in rows
    )


def _check_time_series(target, columns, rows, time_range):
    assert target["queryType"] == "time series"
    time_cols = [c for c in target["timeColumns"] if c in columns]
    assert time_cols, f"no declared time column among {columns}"
    t = columns.index(time_cols[0])
    stamps = [r[t] for r in rows]
    assert all(isinstance(s, (int, float)) for s in stamps), "time must be epoch seconds"
    assert stamps == sorted(stamps), "the plugin's long-to-wide needs rows sorted by time"
    lo, hi = time_range
    assert all(lo - 3600 <= s <= hi for s in stamps), "seconds, inside the range's buckets"
    others = [i for i in range(len(columns)) if i != t]
    assert any(_numeric(rows, i) for i in others), f"no numeric value column in {columns}"
    for i in others:  # text columns label the series; the others are numbers (or all NULL)
        kinds = {type(r[i]) for r in rows} - {type(None)}
        assert kinds <= {str} or kinds <= {int, float}, f"{columns[i]} mixes {kinds}"


@pytest.mark.parametrize("dashboard, panel", PANELS, ids=IDS)
def test_panel_query_returns_what_its_panel_needs(filled, dashboard, panel):
    db, time_range = filled
    target, columns, rows = _run(db, dashboard, panel, time_range)
    assert target["datasource"]["uid"] == panel["datasource"]["uid"]
    assert rows, f"no rows for {panel['title']}: {target['queryText']}"
    kind = panel["type"]
    if kind == "timeseries":
        _check_time_series(target, columns, rows, time_range)
    elif kind == "stat":
        assert len(columns) == 1 and isinstance(rows[0][0], int) and rows[0][0] > 0
    elif kind == "geomap":
        lat, lon = columns.index("lat"), columns.index("lon")
        assert all(isinstance(r[lat], float) and isinstance(r[lon], float) for r in rows)
    elif kind == "barchart":
        x = columns.index(panel["options"]["xField"])
        assert all(isinstance(r[x], str) for r in rows)
        assert any(_numeric(rows, i) for i in range(len(columns)) if i != x)
    else:
        assert kind == "table" and columns
    for col in target["timeColumns"]:
        if col in columns:  # epoch seconds (the plugin reads numbers as seconds), or NULL
            i = columns.index(col)
            assert all(r[i] is None or 1e9 < r[i] < 1e10 for r in rows), col


@pytest.mark.parametrize("dashboard, panel", PANELS, ids=IDS)
def test_panel_follows_the_node_variable(filled, dashboard, panel):
    db, time_range = filled
    _, columns, rows = _run(db, dashboard, panel, time_range, pick={"node": ["node2"]})
    if "node" in columns:
        i = columns.index("node")
        assert {r[i] for r in rows} <= {"node2", None}, "the node column ignores $node"
    if panel["type"] == "stat" and "node" in panel["targets"][0]["queryText"]:
        _, _, all_rows = _run(db, dashboard, panel, time_range)
        assert rows[0][0] <= all_rows[0][0]


def test_variables_cascade_from_group_to_node(filled):
    db, time_range = filled
    fleet = DASHBOARDS[0]
    assert variable_values(db, fleet, *time_range)["group"] == ["(none)", "cam", "edge"]
    picked = variable_values(db, fleet, *time_range, pick={"group": ["cam"]})
    assert picked["node"] == ["node1"]
    ungrouped = variable_values(db, fleet, *time_range, pick={"group": ["(none)"]})
    assert ungrouped["node"] == ["node3"]


def test_running_now_shows_the_latest_version_per_node(filled):
    db, time_range = filled
    models = next(d for d in DASHBOARDS if d["uid"] == "evc-models")
    panel = next(p for p in models["panels"] if p["title"].startswith("Running now"))
    _, columns, rows = _run(db, models, panel, time_range)
    got = {(r[columns.index("node")], r[columns.index("version")]) for r in rows}
    assert got == {("node1", "1.1"), ("node2", "1.0")}  # node3 failed: runs nothing


@pytest.mark.parametrize("dashboard, panel", PANELS, ids=IDS)
def test_panel_query_runs_on_an_empty_database(empty, dashboard, panel):
    _run(empty, dashboard, panel, (0, 2e9))  # no error: a fresh workspace shows empty panels


def test_recent_detections_show_the_keypoints_a_node_reported(filled):
    """Keypoints go from a node's results through ingestion to the panel, as JSON text;
    a detection without them shows NULL."""
    import json

    db, time_range = filled
    inference = next(d for d in DASHBOARDS if d["uid"] == "evc-inference")
    panel = next(p for p in inference["panels"] if p["title"] == "Recent detections")
    _, columns, rows = _run(db, inference, panel, time_range)
    label, points = columns.index("label"), columns.index("keypoints")
    faces = [json.loads(r[points]) for r in rows if r[label] == "face"]
    assert faces and all([p["name"] for p in f] == ["right_eye", "left_eye"] for f in faces)
    assert faces[0][0] == {"name": "right_eye", "x": 203.3, "y": 100.9}
    assert {r[points] for r in rows if r[label] == "person"} == {None}
