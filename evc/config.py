"""Workspace: the folder that holds evc.yaml, the database, inventories and private state.

Commands find it from ``EVC_HOME`` or by walking up from the current directory to
the first folder with an ``evc.yaml``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, ValidationError

from evc import names, yamlpos
from evc.errors import UsageError
from evc.problems import Problems, pydantic_problems

CONFIG_FILE = "evc.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabSettings(_Section):
    name: names.WorkspaceName = "evc"  # prefix of the lab's containers and network
    subnet: str = "172.28.0.0/24"


def _missed_checks(value: int) -> int:
    if value < 1:
        raise ValueError(
            f"{value} is not a number of missed checks: expected a whole number, at least 1"
        )
    return value


class TelemetrySettings(_Section):
    # A node that misses this many checks in a row (telemetry rounds, pings) is offline.
    offline_after: Annotated[StrictInt, AfterValidator(_missed_checks)] = 3


def _ip(value: str | None) -> str | None:
    import ipaddress

    if value is not None:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value[:80]!r} is not an IP address to listen on") from None
    return value


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"{value} is not a TCP port: expected 1 to 65535")
    return value


class QueueSettings(_Section):
    """EVC's Redis (`evc queue up`): TLS only, on ``port`` at ``host``."""

    # None: the registry's address (the lab gateway: what the nodes reach), else loopback.
    host: Annotated[str | None, AfterValidator(_ip)] = None
    port: Annotated[StrictInt, AfterValidator(_port)] = 6380
    # A hard cap (noeviction: a write past it fails rather than dropping a shard).
    maxmemory_mb: StrictInt = Field(512, ge=16)


class Settings(_Section):
    """``evc.yaml``: every key is known (a misspelt one is an error, not a silent default)."""

    name: names.WorkspaceName = "default"
    lab: LabSettings = Field(default_factory=LabSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)


def _allowed(loc: tuple) -> list[str]:
    model: type[BaseModel] = Settings
    for key in loc:
        annotation = model.model_fields[key].annotation if key in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def load_settings(path: Path) -> Settings:
    """Read and check ``evc.yaml``; a UsageError lists every problem, located."""
    problems = Problems(path, kind="workspace settings file")
    try:
        problems.located = yamlpos.load(path)
    except yamlpos.YamlProblem as exc:
        problems.items.append((exc.line, exc.column, "", exc.message + "."))
        problems.raise_if_any()
    data = problems.located.data
    if data is not None and not isinstance(data, dict):
        problems.add((), f"expected a mapping of settings, got a {type(data).__name__}.")
        problems.raise_if_any()
    try:
        return Settings.model_validate(data or {})
    except ValidationError as exc:
        pydantic_problems(problems, exc, (), _allowed)
        problems.raise_if_any()
        raise


@dataclass(frozen=True)
class Workspace:
    root: Path
    settings: Settings = field(default_factory=Settings)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def lab_name(self) -> str:
        return self.settings.lab.name

    @property
    def lab_subnet(self) -> str:
        return self.settings.lab.subnet

    @property
    def offline_after(self) -> int:
        return self.settings.telemetry.offline_after

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
        return cls(root=root.resolve(), settings=load_settings(root / CONFIG_FILE))

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
        names.check(names.WORKSPACE_NAME, name, "workspace name")
        config.write_text(
            "# EVC workspace settings; see README.md.\n"
            + yaml.safe_dump({"name": name, "lab": LabSettings().model_dump()}, sort_keys=False)
        )
    for sub in ("db", "inventories"):
        (root / sub).mkdir(exist_ok=True)
    ws = Workspace.load(root)
    ws.ensure_private_dir()
    return ws
