"""The model catalogue (the ``models`` table): names, references, one row per version.

A version is ``NAME:VERSION``; its image is ``REGISTRY/evc/NAME:VERSION-ARCH`` (the tag
the controller builds and pushes), and once pushed, nodes run it by the digest recorded
at push (:func:`pull_reference`).
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass

from evc import db as evcdb
from evc import names, registry
from evc.config import Workspace
from evc.errors import EVCError, UsageError
from evc.model.deployments import current, deployed_on

REPO_PREFIX = "evc/"
ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}
_MACHINE_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def repository(name: str) -> str:
    return REPO_PREFIX + name


def parse_ref(ref: str) -> tuple[str, str]:
    """``NAME:VERSION`` -> (name, version), or a usage error saying what is expected."""
    names.check(names.MODEL_REF, ref, "model reference")
    name, _, version = ref.partition(":")
    return name, version


def native_arch() -> str:
    return _MACHINE_ARCH.get(platform.machine(), platform.machine())


@dataclass
class Model:
    """A catalogue row."""

    name: str
    version: str
    runtime: str
    task: str
    arch: str
    owner: str | None
    image: str
    image_id: str
    size_bytes: int | None
    weights_source: str | None
    weights_digest: str | None
    built_at: float
    build_s: float | None = None
    selftest: dict | None = None
    registry_digest: str | None = None
    pushed_size: int | None = None
    pushed_at: float | None = None
    in_registry: bool | None = None  # filled by list_models/show, not stored
    deployed_on: list[str] | None = None  # likewise, from the deployments table

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def tag(self) -> str:
        return f"{self.version}-{self.arch}"

    @classmethod
    def from_row(cls, row: dict) -> Model:
        row = dict(row)
        row["selftest"] = json.loads(row["selftest"]) if row.get("selftest") else None
        return cls(**row)

    def to_row(self) -> dict:
        row = asdict(self)
        row.pop("in_registry")
        row.pop("deployed_on")
        row["selftest"] = json.dumps(self.selftest) if self.selftest is not None else None
        return row

    def to_dict(self) -> dict:
        return {"ref": self.ref, **asdict(self)}


def pull_reference(ws: Workspace, model: Model) -> str:
    """What a node pulls and runs: the manifest recorded at push, by digest, at the
    registry's read-only endpoint. A tag pushed again (rebuilt, or by anyone holding
    write access) cannot change it; a new push records a new digest."""
    address = registry.load(ws).ro_address
    return f"{address}/{repository(model.name)}@{model.registry_digest}"


def get(ws: Workspace, ref: str) -> Model:
    name, version = parse_ref(ref)
    rows = list(
        evcdb.workspace_db(ws).query(
            "SELECT * FROM models WHERE name = ? AND version = ?", [name, version]
        )
    )
    if not rows:
        raise UsageError(f"no model {ref} in the catalogue; `evc model list` shows what there is")
    return Model.from_row(rows[0])


def save(ws: Workspace, model: Model) -> None:
    db = evcdb.workspace_db(ws)
    with evcdb.transaction(db):
        db.execute("DELETE FROM models WHERE name = ? AND version = ?", [model.name, model.version])
        db["models"].insert(model.to_row())


def mark_in_registry(ws: Workspace, models: list[Model]) -> str | None:
    """Set in_registry on pushed models from the registry's tags; a warning if it is down."""
    pushed = [m for m in models if m.registry_digest]
    if not pushed:
        return None
    try:
        api = registry.api(ws)
        tags = {name: set(api.tags(repository(name))) for name in {m.name for m in pushed}}
    except EVCError as exc:
        return f"registry not checked: {exc}"
    for m in pushed:
        m.in_registry = m.tag in tags[m.name]
    return None


def list_models(ws: Workspace, check_registry: bool = True) -> tuple[list[Model], str | None]:
    """The catalogue (newest first) and a warning when the registry could not be checked."""
    rows = evcdb.workspace_db(ws).query("SELECT * FROM models ORDER BY name, built_at DESC")
    models = [Model.from_row(r) for r in rows]
    where: dict[tuple[str, str], list[str]] = {}
    for row in current(ws):
        where.setdefault((row["model"], row["version"]), []).append(row["node"])
    for m in models:
        m.deployed_on = where.get((m.name, m.version), [])
    warning = mark_in_registry(ws, models) if check_registry else None
    return models, warning


def show(ws: Workspace, ref: str) -> tuple[Model, str | None]:
    model = get(ws, ref)
    model.deployed_on = deployed_on(ws, model.name, model.version)
    return model, mark_in_registry(ws, [model])
