"""Model images: runtimes, wheelhouse, build with a smoke test, push, catalogue.

A model image is built from ``model_images/<runtime>/`` (Dockerfile, runtime.py,
model.yaml) plus the shared ``evc_infer`` package, the weights, and a wheelhouse
of the runtime's Python packages downloaded on the controller for the target
platform, so the build itself needs no network. An image counts as built only
after ``evc-infer --selftest`` passed inside it; only then is it tagged
``REGISTRY/evc/NAME:VERSION-ARCH`` and written to the ``models`` catalogue.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from evc import db as evcdb
from evc import registry, resources
from evc.config import Workspace
from evc.errors import EVCError, UsageError

REPO_PREFIX = "evc/"
ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}
_MACHINE_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# The base image's interpreter and C library decide which wheels fit it.
_PROBE = "import sys, platform; print(*sys.version_info[:2], platform.libc_ver()[1])"
# Runs in a subprocess on the controller: ultralytics is slow to import and writes settings.
_EXPORT = """
import shutil, sys
from ultralytics import YOLO
src, dest, imgsz = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    model = YOLO(src)
except Exception as exc:
    print("not a YOLO model: " + " ".join(str(exc).split())[:300], file=sys.stderr)
    sys.exit(3)
if model.task != "detect":
    print(f"a {model.task} model, not a detection model", file=sys.stderr)
    sys.exit(3)
shutil.move(model.export(format="onnx", imgsz=imgsz), dest)
"""


# --------------------------------------------------------------------- runtimes


@dataclass
class Runtime:
    """One folder of model_images/: what the runtime needs and defaults to."""

    name: str
    path: Path
    task: str
    weights: dict[str, Any]
    defaults: dict[str, Any]
    requirements: list[str]

    @classmethod
    def load(cls, name: str) -> Runtime:
        root = resources.data_dir("model_images")
        if name not in available_runtimes():
            raise UsageError(
                f"unknown runtime {name!r}; expected one of: {', '.join(available_runtimes())}"
            )
        spec = yaml.safe_load((root / name / "model.yaml").read_text())
        return cls(
            name=name,
            path=root / name,
            task=spec.get("task", "detect"),
            weights=spec.get("weights") or {"required": False, "formats": []},
            defaults=spec.get("defaults") or {},
            requirements=list(spec.get("requirements") or []),
        )


def available_runtimes() -> list[str]:
    root = resources.data_dir("model_images")
    return sorted(p.parent.name for p in root.glob("*/model.yaml"))


# --------------------------------------------------------------------- names


def repository(name: str) -> str:
    return REPO_PREFIX + name


def parse_ref(ref: str) -> tuple[str, str]:
    """``NAME:VERSION`` -> (name, version), or a usage error saying what is expected."""
    name, sep, version = ref.partition(":")
    if not sep or not _NAME_RE.match(name) or not _VERSION_RE.match(version):
        raise UsageError(f"bad model reference {ref!r}; expected NAME:VERSION, e.g. faces:1.0")
    return name, version


def _check_name(name: str, version: str) -> None:
    if not _NAME_RE.match(name):
        raise UsageError(
            f"bad model name {name!r}; expected lower-case letters, digits, '.', '_' or '-'"
        )
    if not _VERSION_RE.match(version):
        raise UsageError(f"bad version {version!r}; expected letters, digits, '.', '_' or '-'")


def native_arch() -> str:
    return _MACHINE_ARCH.get(platform.machine(), platform.machine())


def _check_arch(arch: str, base_image: str | None) -> None:
    if arch not in ARCHES:
        raise UsageError(f"unknown arch {arch!r}; expected one of: {', '.join(ARCHES)}")
    if arch == native_arch():
        return
    if not Path(f"/proc/sys/fs/binfmt_misc/qemu-{ARCHES[arch]}").exists():
        raise UsageError(
            f"this {native_arch()} builder cannot run {arch} images (no qemu-{ARCHES[arch]} "
            "emulation registered). Build on an arm64 builder device, or install "
            "qemu-user-static and binfmt-support here."
        )
    if base_image is None:
        raise UsageError(f"building for {arch} under emulation needs --base-image for {arch}")


# --------------------------------------------------------------------- catalogue


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


def _save(ws: Workspace, model: Model) -> None:
    db = evcdb.workspace_db(ws)
    with evcdb.transaction(db):
        db.execute("DELETE FROM models WHERE name = ? AND version = ?", [model.name, model.version])
        db["models"].insert(model.to_row())


# --------------------------------------------------------------------- wheelhouse


def cache_dir() -> Path:
    """Per-user cache shared by workspaces (EVC_CACHE_DIR, else ~/.cache/evc)."""
    base = (
        os.environ.get("EVC_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "evc"
    )
    return Path(base)


def _platform_args(arch: str, libc: str) -> list[str]:
    major, minor = (int(x) for x in (libc or "2.17").split(".")[:2])
    tags = [f"manylinux_{major}_{m}_{ARCHES[arch]}" for m in range(17, minor + 1)]
    tags.append(f"manylinux2014_{ARCHES[arch]}")
    return [a for tag in tags for a in ("--platform", tag)]


def wheelhouse(requirements: list[str], arch: str, python: str, libc: str, log=print) -> Path:
    """Wheels for ``requirements`` (and pip) for the target; downloaded once, then cached."""
    key = hashlib.sha256(json.dumps([requirements, arch, python, libc]).encode()).hexdigest()[:16]
    dest = cache_dir() / "wheels" / key
    if (dest / ".complete").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    log(f"downloading wheels for {arch} / Python {python}: {', '.join(requirements)}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=dest.parent))
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--dest", str(tmp), "--only-binary=:all:", *_platform_args(arch, libc),
        "--python-version", python, "--implementation", "cp", "pip", *requirements,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = [ln for ln in proc.stderr.splitlines() if not ln.startswith("WARNING")][-5:]
        raise EVCError(
            f"downloading the image's Python packages failed ({', '.join(requirements)}); "
            "the builder needs a package index or a filled cache at "
            f"{cache_dir() / 'wheels'}:\n" + "\n".join(tail)
        )
    (tmp / ".complete").write_text("\n".join(requirements) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


# --------------------------------------------------------------------- weights


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _check_weights(rt: Runtime, weights: Path | None) -> None:
    formats = rt.weights.get("formats") or []
    if weights is None:
        if rt.weights.get("required"):
            raise UsageError(
                f"runtime {rt.name} needs --weights ({', '.join(formats)}); none was given"
            )
        return
    if not formats:
        raise UsageError(f"runtime {rt.name} takes no --weights (its model ships with it)")
    if not weights.is_file():
        raise UsageError(
            f"weights file {weights} does not exist (nor is it the name of a model config "
            "that ultralytics ships, such as yolov8n.yaml)"
        )
    if weights.suffix.lower() not in formats:
        raise UsageError(
            f"weights file {weights} is a {weights.suffix or 'file without extension'}; "
            f"runtime {rt.name} takes {', '.join(formats)}"
        )
    if weights.suffix.lower() == ".onnx" and importlib.util.find_spec("onnx"):
        import onnx

        try:
            graph = onnx.load(str(weights), load_external_data=False).graph
        except Exception as exc:
            raise UsageError(f"weights file {weights} is not an ONNX model: {exc}") from None
        if not graph.input or not graph.output:
            raise UsageError(f"weights file {weights} is an ONNX file with no inputs or outputs")


def builtin_config(weights: Path) -> Path | None:
    """The model config that ultralytics ships for a bare ``yolov8n.yaml``-style name that
    is no file here (the scale letter picks the size, as in ultralytics). None when
    ``weights`` is a path, an existing file, or no such config."""
    if weights.is_file() or str(weights) != weights.name or weights.suffix != ".yaml":
        return None
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return None
    unified = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", weights.stem) + ".yaml"
    models = Path(spec.submodule_search_locations[0]) / "cfg" / "models"
    return next(iter(sorted(models.rglob(unified))), None)


def _builtin_weights(weights: Path) -> Path:
    """``weights``, or its built-in config copied to the cache under the name asked for
    (the name carries the scale letter the export reads)."""
    source = builtin_config(weights)
    if source is None:
        return weights
    dest = cache_dir() / "ultralytics-cfg" / weights.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, dest)
    return dest


def _export_onnx(weights: Path, dest: Path, imgsz: int, log=print) -> None:
    """YOLO .pt/.yaml -> ONNX with ultralytics on the controller (offline)."""
    if not importlib.util.find_spec("ultralytics"):
        raise UsageError(
            f"exporting {weights.name} to ONNX needs ultralytics on the controller: install "
            "the export extra (pip install torch==2.13.0 'evc[export]'), or pass an .onnx"
        )
    log(f"exporting {weights.name} to ONNX (imgsz {imgsz})")
    with tempfile.TemporaryDirectory(prefix="evc-export-") as tmp:
        src = Path(tmp) / weights.name  # ultralytics writes next to its input
        shutil.copy(weights, src)
        proc = subprocess.run(
            [sys.executable, "-c", _EXPORT, str(src), str(dest), str(imgsz)],
            capture_output=True,
            text=True,
            cwd=tmp,
            env={**os.environ, "YOLO_OFFLINE": "1"},
        )
    if proc.returncode == 3:
        raise UsageError(f"weights file {weights}: {proc.stderr.strip().splitlines()[-1]}")
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise EVCError(f"exporting {weights} to ONNX failed:\n{tail}")


def _stage_weights(rt: Runtime, weights: Path | None, model_dir: Path, log) -> None:
    model_dir.mkdir()
    if weights is None:
        return
    dest = model_dir / rt.weights.get("file", weights.name)
    if dest.suffix == weights.suffix.lower():
        shutil.copy(weights, dest)
    elif dest.suffix == ".onnx":
        _export_onnx(weights, dest, int(rt.defaults.get("imgsz", 640)), log)
    else:
        raise UsageError(f"runtime {rt.name} cannot use {weights.suffix} weights")


# --------------------------------------------------------------------- build


def _model_base(client, log) -> str:
    from evc.lab import ensure_base_image, ensure_image

    base, _ = ensure_base_image(client, log)
    tag, _ = ensure_image(client, "model-base", base, log)
    return tag


def _probe_base(client, image: str) -> tuple[str, str]:
    """(python "X.Y", glibc "2.N") of the base image."""
    try:
        out = client.containers.run(
            image, ["python3", "-c", _PROBE], remove=True, network_disabled=True, entrypoint=[]
        )
    except Exception as exc:
        raise EVCError(f"base image {image} cannot run python3: {exc}") from None
    major, minor, libc = out.decode().split()
    return f"{major}.{minor}", libc


def _context(rt: Runtime, wheels: Path, root: Path) -> None:
    """The build context (weights already staged in root/model): model_images/README.md."""
    common = resources.data_dir("model_images") / "common" / "evc_infer"
    shutil.copytree(common, root / "evc_infer", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(rt.path / "Dockerfile", root / "Dockerfile")
    shutil.copy(rt.path / "model.yaml", root / "model.yaml")
    (root / "runtime").mkdir()
    shutil.copy(rt.path / "runtime.py", root / "runtime" / "runtime.py")
    (root / "requirements.txt").write_text("\n".join(rt.requirements) + "\n")
    (root / "wheels").mkdir()
    for whl in wheels.glob("*.whl"):
        os.link(whl, root / "wheels" / whl.name)  # same file system: no copy


def _docker_build(client, context: Path, base: str, labels: dict, arch: str, log) -> str:
    """Build; returns the image id. On failure, the last lines of the build log."""
    lines: list[str] = []
    image_id = None
    stream = client.api.build(
        path=str(context),
        buildargs={"BASE": base},
        labels=labels,
        rm=True,
        forcerm=True,
        decode=True,
        platform=f"linux/{arch}" if arch != native_arch() else None,
    )
    for chunk in stream:
        if "stream" in chunk:
            lines.extend(chunk["stream"].rstrip("\n").splitlines())
            if chunk["stream"].startswith("Step "):
                log(chunk["stream"].strip())
        if "aux" in chunk and "ID" in chunk["aux"]:
            image_id = chunk["aux"]["ID"]
        if "error" in chunk:
            lines.append(chunk["error"].strip())
            tail = "\n".join(lines[-12:])
            raise EVCError(f"image build failed; last lines of the build log:\n{tail}")
    if image_id is None:
        raise EVCError("image build ended without an image id:\n" + "\n".join(lines[-12:]))
    return image_id


def _selftest(client, image_id: str) -> dict:
    """``evc-infer --selftest`` in a throwaway container without network; its JSON line."""
    container = client.containers.run(image_id, ["--selftest"], detach=True, network_disabled=True)
    try:
        code = container.wait(timeout=300)["StatusCode"]
        output = container.logs().decode(errors="replace").strip()
    finally:
        container.remove(force=True)
    last = output.splitlines()[-1] if output else ""
    try:
        report = json.loads(last)
    except json.JSONDecodeError:
        report = {"selftest": "failed", "reason": last or "no output"}
    if code != 0 or report.get("selftest") != "ok":
        tail = "\n".join(output.splitlines()[-10:])
        raise EVCError(f"the image's selftest failed (exit {code}); nothing was tagged:\n{tail}")
    return report


def build(
    ws: Workspace,
    name: str,
    runtime: str,
    version: str,
    weights: Path | None = None,
    arch: str | None = None,
    owner: str | None = None,
    task: str | None = None,
    base_image: str | None = None,
    force: bool = False,
    log=print,
) -> Model:
    """Build, smoke-test, tag and catalogue one model image."""
    from evc.lab import docker_client

    started = time.monotonic()
    _check_name(name, version)
    rt = Runtime.load(runtime)
    arch = arch or native_arch()
    _check_arch(arch, base_image)
    if task and task != rt.task:
        raise UsageError(f"runtime {rt.name} does {rt.task!r}, not {task!r}")
    weights = Path(weights) if weights else None
    weights = _builtin_weights(weights) if weights else None
    _check_weights(rt, weights)
    existing = list(
        evcdb.workspace_db(ws).query(
            "SELECT 1 FROM models WHERE name = ? AND version = ?", [name, version]
        )
    )
    if existing and not force:
        raise UsageError(
            f"{name}:{version} is already in the catalogue; choose a new version or pass --force"
        )
    address = registry.load(ws).address
    ref = f"{address}/{repository(name)}:{version}-{arch}"
    digest = _sha256(weights) if weights else None
    labels = {
        "org.opencontainers.image.title": name,
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.created": datetime.now(UTC).isoformat(timespec="seconds"),
        "evc.model.name": name,
        "evc.model.version": version,
        "evc.model.runtime": rt.name,
        "evc.model.task": rt.task,
        "evc.model.arch": arch,
        "evc.model.weights.digest": digest or "builtin",
        **({"evc.model.owner": owner, "org.opencontainers.image.authors": owner} if owner else {}),
    }
    cache_dir().mkdir(parents=True, exist_ok=True)  # the context hard-links cached wheels
    with tempfile.TemporaryDirectory(prefix="evc-build-", dir=cache_dir()) as tmp:
        _stage_weights(rt, weights, Path(tmp) / "model", log)  # may export: input errors first
        client = docker_client()
        base = base_image or _model_base(client, log)
        python, libc = _probe_base(client, base)
        _context(rt, wheelhouse(rt.requirements, arch, python, libc, log), Path(tmp))
        image_id = _docker_build(client, Path(tmp), base, labels, arch, log)
    try:
        log("running evc-infer --selftest in the image")
        report = _selftest(client, image_id)
    except EVCError:
        client.images.remove(image_id, force=True, noprune=False)
        raise
    image = client.images.get(image_id)
    repo, _, tag = ref.rpartition(":")
    image.tag(repo, tag)
    model = Model(
        name=name,
        version=version,
        runtime=rt.name,
        task=rt.task,
        arch=arch,
        owner=owner,
        image=ref,
        image_id=image_id,
        size_bytes=image.attrs.get("Size"),
        weights_source=weights.name if weights else None,
        weights_digest=digest,
        built_at=time.time(),
        build_s=round(time.monotonic() - started, 2),
        selftest=report,
    )
    _save(ws, model)
    return model


# --------------------------------------------------------------------- registry


def push(ws: Workspace, ref: str, log=print) -> Model:
    """Push a built model; records the registry digest and size. Nothing changes on failure."""
    import docker.errors

    from evc.lab import docker_client

    model = get(ws, ref)
    client = docker_client()
    try:
        client.images.get(model.image)
    except docker.errors.ImageNotFound:
        raise UsageError(
            f"the image {model.image} of {ref} is not on this builder; rebuild it with "
            f"`evc model build {model.name} --runtime {model.runtime} --version "
            f"{model.version} --force`"
        ) from None
    api = registry.RegistryClient.for_workspace(ws)
    api.ping()  # a clear "does not answer" / TLS / credentials error before pushing
    registry.login(ws, client)
    repo, _, tag = model.image.rpartition(":")
    log(f"pushing {model.image}")
    for line in client.images.push(repo, tag=tag, stream=True, decode=True):
        if "error" in line:
            raise EVCError(f"pushing {model.image} failed: {line['error']} (catalogue unchanged)")
    digest = api.manifest_digest(repository(model.name), model.tag)
    if digest is None:
        raise EVCError(f"the registry has no {model.image} after the push (catalogue unchanged)")
    model.registry_digest = digest
    model.pushed_size = api.image_size(repository(model.name), model.tag)
    model.pushed_at = time.time()
    _save(ws, model)
    model.in_registry = True
    return model


def _mark_in_registry(ws: Workspace, models: list[Model]) -> str | None:
    """Set in_registry on pushed models from the registry's tags; a warning if it is down."""
    pushed = [m for m in models if m.registry_digest]
    if not pushed:
        return None
    try:
        api = registry.RegistryClient.for_workspace(ws)
        tags = {name: set(api.tags(repository(name))) for name in {m.name for m in pushed}}
    except EVCError as exc:
        return f"registry not checked: {exc}"
    for m in pushed:
        m.in_registry = m.tag in tags[m.name]
    return None


def list_models(ws: Workspace, check_registry: bool = True) -> tuple[list[Model], str | None]:
    """The catalogue (newest first) and a warning when the registry could not be checked."""
    from evc.deploy import current

    rows = evcdb.workspace_db(ws).query("SELECT * FROM models ORDER BY name, built_at DESC")
    models = [Model.from_row(r) for r in rows]
    where: dict[tuple[str, str], list[str]] = {}
    for row in current(ws):
        where.setdefault((row["model"], row["version"]), []).append(row["node"])
    for m in models:
        m.deployed_on = where.get((m.name, m.version), [])
    warning = _mark_in_registry(ws, models) if check_registry else None
    return models, warning


def show(ws: Workspace, ref: str) -> tuple[Model, str | None]:
    from evc.deploy import deployed_on

    model = get(ws, ref)
    model.deployed_on = deployed_on(ws, model.name, model.version)
    return model, _mark_in_registry(ws, [model])


def delete(ws: Workspace, ref: str, force: bool = False, log=print) -> Model:
    """Delete the tag in the registry, collect garbage, drop the local tag and the row.

    Refused while the version is deployed, unless ``force``.
    """
    import docker.errors

    from evc.deploy import deployed_on
    from evc.lab import docker_client

    model = get(ws, ref)
    nodes = deployed_on(ws, model.name, model.version)
    if nodes and not force:
        raise UsageError(
            f"{ref} is deployed on {', '.join(nodes)}; undeploy it first "
            f"(`evc model undeploy {model.name} TARGET`) or pass --force"
        )
    client = docker_client()
    if model.registry_digest:
        api = registry.RegistryClient.for_workspace(ws)
        if api.delete(repository(model.name), model.tag):
            log(f"deleted {model.image} in the registry; collecting garbage")
            registry.garbage_collect(ws, client)
    try:
        client.images.remove(model.image)
    except docker.errors.ImageNotFound:
        pass
    db = evcdb.workspace_db(ws)
    with evcdb.transaction(db):
        db.execute("DELETE FROM models WHERE name = ? AND version = ?", [model.name, model.version])
    return model
