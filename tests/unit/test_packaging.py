"""Playbooks, model images and grafana files ship in the wheel, not only in a checkout."""

import subprocess
import sys
import zipfile
from pathlib import Path

from evc.resources import data_dir, playbook

ROOT = Path(__file__).resolve().parents[2]


def test_resources_resolve_from_checkout():
    assert playbook("ping.yml").is_file()
    assert data_dir("playbooks") == ROOT / "playbooks"


def test_wheel_carries_data_folders(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("evc-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "evc/_data/playbooks/ping.yml" in names
    assert "evc/base_images/node/Dockerfile" in names
    assert "evc/base_images/node/node-init" in names
    assert "evc/base_images/registry/Dockerfile" in names
    assert any(n.startswith("evc/_data/grafana/") for n in names)
    assert "evc/_data/model_images/common/Dockerfile" in names  # the runtimes' shared one
    assert "evc/_data/model_images/ultralytics/Dockerfile" in names
    for name in ("index.html", "console.js", "console.css", "favicon.svg"):  # evc serve's console
        assert f"evc/api/static/{name}" in names
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert entry and "evc = evc.cli:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()
