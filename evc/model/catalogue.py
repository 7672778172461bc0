"""The model catalogue (the ``models`` table): names, references, one row per variant.

A version is ``NAME:VERSION``, built for one or more arches; each variant's image is
``REGISTRY/evc/NAME:VERSION-ARCH`` (the tag the controller builds and pushes), and once
pushed, a node runs its own arch's variant by the digest recorded at push
(:func:`pull_reference`). The version tag itself is an image index of every variant
(``model_indexes``), so a plain pull by tag gets the puller's arch.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from evc import db as evcdb
from evc import engine, names, registry
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
    return engine.native_arch()


def docker_arch(machine: str | None) -> str | None:
    """A device's arch as facts report it (x86_64, aarch64) in Docker's words."""
    return _MACHINE_ARCH.get(machine, machine) if machine else None


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
    built_on: str | None = None  # a builder device, "emulated" or "controller" (native)
    in_registry: bool | None = None  # filled by list_models/show, not stored
    deployed_on: list[str] | None = None  # likewise, from the deployments table
    index_digest: str | None = None  # likewise: the version tag's image index, once pushed
    variants: list[dict] | None = None  # filled by show: every arch of the version

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
        for key in ("in_registry", "deployed_on", "index_digest", "variants"):
            row.pop(key)
        row["selftest"] = json.dumps(self.selftest) if self.selftest is not None else None
        return row

    def to_dict(self) -> dict:
        return {"ref": self.ref, **asdict(self)}


def summary(models: list[Model]) -> dict:
    """A version's variants as one dict: the first variant's fields (what a one-arch
    version has always shown) and ``variants``, every variant's."""
    return {**models[0].to_dict(), "variants": [m.to_dict() for m in models]}


def pull_reference(ws: Workspace, model: Model) -> str:
    """What a node pulls and runs: the manifest recorded at push, by digest, at the
    registry's read-only endpoint. A tag pushed again (rebuilt, or by anyone holding
    write access) cannot change it; a new push records a new digest."""
    address = registry.load(ws).ro_address
    return f"{address}/{repository(model.name)}@{model.registry_digest}"


def variants(ws: Workspace, ref: str) -> list[Model]:
    """Every arch of NAME:VERSION (sorted by arch), or a usage error if there is none."""
    name, version = parse_ref(ref)
    rows = evcdb.workspace_db(ws).query(
        "SELECT * FROM models WHERE name = ? AND version = ? ORDER BY arch", [name, version]
    )
    found = [Model.from_row(r) for r in rows]
    if not found:
        raise UsageError(f"no model {ref} in the catalogue; `evc model list` shows what there is")
    index = index_of(ws, name, version)
    for m in found:
        m.index_digest = index["digest"] if index else None
    return found


def get(ws: Workspace, ref: str, arch: str | None = None) -> Model:
    """One variant of NAME:VERSION: ``arch``'s, else this builder's, else the first."""
    found = variants(ws, ref)
    by_arch = {m.arch: m for m in found}
    if arch is not None:
        if arch not in by_arch:
            raise UsageError(f"no {arch} build of {ref}: build it with --arch {arch}")
        return by_arch[arch]
    return by_arch.get(native_arch(), found[0])


def save(ws: Workspace, model: Model) -> None:
    db = evcdb.workspace_db(ws)
    with evcdb.transaction(db):
        db.execute(
            "DELETE FROM models WHERE name = ? AND version = ? AND arch = ?",
            [model.name, model.version, model.arch],
        )
        db["models"].insert(model.to_row())


def index_of(ws: Workspace, name: str, version: str) -> dict | None:
    """The image index pushed under NAME:VERSION's tag (digest, media_type), if any."""
    rows = evcdb.workspace_db(ws).query(
        "SELECT * FROM model_indexes WHERE name = ? AND version = ?", [name, version]
    )
    return next(iter(rows), None)


def save_index(ws: Workspace, name: str, version: str, digest: str | None, media_type: str = ""):
    """Record the version's pushed index; ``digest`` None forgets it (a variant changed)."""
    db = evcdb.workspace_db(ws)
    with evcdb.transaction(db):
        db.execute("DELETE FROM model_indexes WHERE name = ? AND version = ?", [name, version])
        if digest is not None:
            db["model_indexes"].insert(
                {"name": name, "version": version, "digest": digest,
                 "media_type": media_type, "pushed_at": time.time()}
            )  # fmt: skip


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
    rows = evcdb.workspace_db(ws).query("SELECT * FROM models ORDER BY name, built_at DESC, arch")
    models = [Model.from_row(r) for r in rows]
    where: dict[tuple[str, str], list[str]] = {}
    for row in current(ws):
        where.setdefault((row["model"], row["version"]), []).append(row["node"])
    indexes = {
        (r["name"], r["version"]): r["digest"]
        for r in evcdb.workspace_db(ws).query("SELECT name, version, digest FROM model_indexes")
    }
    for m in models:
        m.deployed_on = where.get((m.name, m.version), [])
        m.index_digest = indexes.get((m.name, m.version))
    warning = mark_in_registry(ws, models) if check_registry else None
    return models, warning


def show(ws: Workspace, ref: str) -> tuple[Model, str | None]:
    """This builder's variant (or the first), with every variant's arch, image and digest."""
    model = get(ws, ref)
    every = variants(ws, ref)
    model.deployed_on = deployed_on(ws, model.name, model.version)
    warning = mark_in_registry(ws, every)
    model.in_registry = next(m.in_registry for m in every if m.arch == model.arch)
    model.variants = [
        {k: getattr(m, k) for k in ("arch", "image", "image_id", "size_bytes", "build_s",
                                    "built_on", "registry_digest", "pushed_size", "in_registry")}
        for m in every
    ]  # fmt: skip
    return model, warning
