"""Locate the data folders (playbooks, model_images, grafana, run_cfg) shipped with EVC.

An installed wheel carries them as ``evc/_data/<name>``; a source checkout or an
editable install has them at the top of the repository.
"""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the folder ``name`` from the installed package or the checkout."""
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"EVC data folder {name!r} is missing from this installation")


def playbook(name: str) -> Path:
    """Path of a bundled playbook, e.g. ``playbook("ping.yml")``."""
    path = data_dir("playbooks") / name
    if not path.is_file():
        raise FileNotFoundError(f"bundled playbook {name!r} not found in {path.parent}")
    return path
