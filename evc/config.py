"""Workspace: the folder that holds evc.yaml, the database, inventories and private state.

Commands find it from ``EVC_HOME`` or by walking up from the current directory to
the first folder with an ``evc.yaml``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evc.errors import UsageError

CONFIG_FILE = "evc.yaml"
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")

DEFAULTS: dict[str, Any] = {
    "name": "default",
    "lab": {"name": "evc", "subnet": "172.28.0.0/24"},
    # A node that misses this many checks in a row (telemetry rounds, pings) is offline.
    "telemetry": {"offline_after": 3},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(base[key], value) if isinstance(base.get(key), dict) else value
    return out


@dataclass(frozen=True)
class Workspace:
    root: Path
    settings: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS))

    @property
    def name(self) -> str:
        return self.settings["name"]

    @property
    def lab_name(self) -> str:
        return self.settings["lab"]["name"]

    @property
    def lab_subnet(self) -> str:
        return self.settings["lab"]["subnet"]

    @property
    def offline_after(self) -> int:
        return self.settings["telemetry"]["offline_after"]

    @property
    def inventory_dir(self) -> Path:
        return self.root / "inventories" / self.name

    @property
    def inventory(self) -> Path:
        return self.inventory_dir / "hosts.yml"

    @property
    def private_dir(self) -> Path:
        """Keys, known_hosts and run artifacts: 0700, never committed."""
        return self.root / ".evc"

    @property
    def known_hosts(self) -> Path:
        return self.private_dir / "known_hosts"

    def ensure_private_dir(self) -> Path:
        self.private_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.private_dir, 0o700)
        return self.private_dir

    @property
    def artifacts_dir(self) -> Path:
        return self.ensure_private_dir() / "runs"

    @classmethod
    def load(cls, root: Path) -> Workspace:
        path = root / CONFIG_FILE
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"{path}: not valid YAML ({exc}).") from None
        if not isinstance(raw, dict):
            raise UsageError(f"{path}: expected a mapping of settings, got {type(raw).__name__}.")
        settings = _merge(DEFAULTS, raw)
        for key, value in (("name", settings["name"]), ("lab.name", settings["lab"]["name"])):
            if not isinstance(value, str) or not _NAME_RE.match(value):
                raise UsageError(
                    f"{path}: {key} is {value!r}; expected lower-case letters, digits and "
                    "'-', starting with a letter, at most 31 characters."
                )
        after = (
            settings["telemetry"].get("offline_after")
            if isinstance(settings["telemetry"], dict)
            else None
        )
        if isinstance(after, bool) or not isinstance(after, int) or after < 1:
            raise UsageError(
                f"{path}: telemetry.offline_after is {after!r}; expected a whole number of "
                "missed checks, at least 1 (default 3)."
            )
        return cls(root=root.resolve(), settings=settings)

    @classmethod
    def find(cls, start: Path | None = None) -> Workspace:
        """The workspace named by EVC_HOME, else the nearest evc.yaml above ``start``."""
        home = os.environ.get("EVC_HOME")
        if home:
            root = Path(home)
            if not (root / CONFIG_FILE).is_file():
                raise UsageError(
                    f"EVC_HOME is {home!r} but it holds no {CONFIG_FILE}; run `evc init {home}`."
                )
            return cls.load(root)
        here = (start or Path.cwd()).resolve()
        for folder in (here, *here.parents):
            if (folder / CONFIG_FILE).is_file():
                return cls.load(folder)
        raise UsageError(
            f"No EVC workspace here: no {CONFIG_FILE} in {here} or above, and EVC_HOME is "
            "not set. Run `evc init [DIR]` to create one."
        )


def init_workspace(root: Path, name: str = "default") -> Workspace:
    """Create (or keep) a workspace at ``root``; an existing evc.yaml is left as it is."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / CONFIG_FILE
    if not config.exists():
        if not _NAME_RE.match(name):
            raise UsageError(f"Workspace name {name!r}: use lower-case letters, digits and '-'.")
        config.write_text(
            "# EVC workspace settings; see README.md.\n"
            + yaml.safe_dump({"name": name, "lab": dict(DEFAULTS["lab"])}, sort_keys=False)
        )
    for sub in ("db", "inventories"):
        (root / sub).mkdir(exist_ok=True)
    ws = Workspace.load(root)
    ws.ensure_private_dir()
    return ws
