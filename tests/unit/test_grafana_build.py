"""The committed grafana/ folder is exactly what `evc grafana build` writes, and it
is consistent: datasource uids exist, uids and panel ids are unique, no path of
the machine that built it is baked in."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

from evc.grafana import files
from evc.grafana.provision import DASHBOARDS_ENV, DB_ENV
from tests.conftest import evc

REPO_GRAFANA = Path(__file__).resolve().parents[2] / "grafana"
FILES = files()
DASHBOARDS = [json.loads(text) for rel, text in FILES.items() if rel.endswith(".json")]


def test_committed_files_equal_a_fresh_build(workspace, tmp_path):
    proc = evc("grafana", "build", "--out", tmp_path / "g", "--json", check=0)
    written = {Path(p).relative_to(tmp_path / "g").as_posix() for p in json.loads(proc.stdout)}
    assert written == set(FILES)
    committed = {
        p.relative_to(REPO_GRAFANA).as_posix() for p in REPO_GRAFANA.rglob("*") if p.is_file()
    }
    assert committed == set(FILES), "stale or missing files in grafana/: run `evc grafana build`"
    for rel in FILES:
        fresh = (tmp_path / "g" / rel).read_bytes()
        assert (REPO_GRAFANA / rel).read_bytes() == fresh, f"{rel}: run `evc grafana build`"


def test_build_writes_the_workspace_folder_and_is_idempotent(workspace):
    first = evc("grafana", "build", check=0)
    target = workspace.root / "grafana" / "dashboards" / "evc-fleet.json"
    assert f"wrote {target}" in first.stdout
    mtime = target.stat().st_mtime_ns
    evc("grafana", "build", check=0)
    assert target.stat().st_mtime_ns == mtime  # unchanged files are not rewritten


def _provisioned_datasources() -> dict[str, dict]:
    data = yaml.safe_load(FILES["provisioning/datasources/evc.yaml"])
    return {ds["uid"]: ds for ds in data["datasources"]}


def _datasource_refs(node):
    if isinstance(node, dict):
        if "datasource" in node:
            yield node["datasource"]
        for value in node.values():
            yield from _datasource_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _datasource_refs(value)


def test_every_datasource_a_dashboard_names_is_provisioned():
    provisioned = _provisioned_datasources()
    refs = [ref for d in DASHBOARDS for ref in _datasource_refs(d)]
    assert refs
    for ref in refs:
        assert ref["uid"] in provisioned
        assert ref["type"] == provisioned[ref["uid"]]["type"] == "frser-sqlite-datasource"


def test_uids_ids_and_variable_names_are_unique():
    uids = [d["uid"] for d in DASHBOARDS]
    assert len(uids) == len(set(uids)) == 4
    for d in DASHBOARDS:
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), d["uid"]
        names = [v["name"] for v in d["templating"]["list"]]
        assert len(names) == len(set(names)) and "node" in names, d["uid"]


def test_panels_do_not_overlap_and_fit_the_grid():
    for d in DASHBOARDS:
        cells = set()
        for p in d["panels"]:
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                    for y in range(g["y"], g["y"] + g["h"])}  # fmt: skip
            assert not cells & mine, f"{d['uid']}: {p['title']} overlaps"
            cells |= mine


def test_no_path_of_the_build_machine_is_baked_in():
    here = Path(__file__).resolve()
    machine = {"/work", "/tmp", "/root", "/home", str(Path.home()), os.getcwd(),
               str(here.parents[2]), sys.prefix}  # fmt: skip
    for rel, text in FILES.items():
        for path in machine:
            assert path not in text, f"{rel} holds {path}"
    ds = _provisioned_datasources()["evc-sqlite"]
    assert ds["jsonData"]["path"] == f"${DB_ENV}"  # expanded by Grafana from its environment
    provider = yaml.safe_load(FILES["provisioning/dashboards/evc.yaml"])["providers"][0]
    assert provider["options"]["path"] == f"${DASHBOARDS_ENV}"
