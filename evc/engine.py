"""The controller's Docker engine: the client, Docker errors as EVC errors, and the
images EVC builds from Debian packages (no Docker Hub).

Every image carries a content hash label, so an unchanged image is never rebuilt.
The base is a Debian minbase from debootstrap; ``base_images/<name>/`` holds the
build contexts of the images built FROM it (lab nodes, the lab registry, the base
of model images).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from evc.cache import build_once
from evc.errors import EVCError, UsageError

SUITE = "bookworm"
IMAGE_REPO = "evc-lab"
HASH_LABEL = "evc.lab.hash"
IMAGE_DIR = Path(__file__).parent / "base_images"  # one build context per image

Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def docker_client():
    """A Docker SDK client, or a clear error when no engine answers."""
    import docker

    try:
        client = docker.from_env(version="auto", timeout=120)
        client.ping()
    except Exception as exc:  # the SDK raises several types for "no engine"
        raise EVCError(
            "No Docker engine answers (DOCKER_HOST="
            f"{os.environ.get('DOCKER_HOST', 'unix:///var/run/docker.sock')}): {exc}. "
            "Start one as root (`make demo` and `make test` start dockerd if none runs)."
        ) from None
    return client


def explain(exc: Exception) -> str:
    """The engine's own words for a Docker SDK error, on one line."""
    text = str(getattr(exc, "explanation", None) or exc)
    return " ".join(text.split())[:500]


@contextmanager
def engine_errors(what: str) -> Iterator[None]:
    """Docker SDK errors inside the block become EVC errors that say what was being done:
    a missing image or container is the user's to fix (exit 2), the rest exit 1."""
    import docker.errors

    try:
        yield
    except docker.errors.NotFound as exc:
        raise UsageError(f"{what}: {explain(exc)}") from None
    except docker.errors.DockerException as exc:
        raise EVCError(f"{what}: {explain(exc)}") from None


def as_evc_error(exc: BaseException) -> EVCError | None:
    """An EVC error for a Docker SDK or engine failure that escaped the code around it
    (exit 1, the engine's own words), so it never reads as an internal error; None for
    anything else. Imports the SDK only when it is already loaded."""
    import sys

    docker_errors = sys.modules.get("docker.errors")
    if docker_errors is None or not isinstance(exc, docker_errors.DockerException):
        return None
    return EVCError(f"the Docker engine said: {explain(exc)}")


def find_image(client, ref: str):
    """The image ``ref`` (a tag or an id), or None where the engine has none."""
    import docker.errors

    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None


def image_with_hash(client, tag: str, digest: str):
    """The image ``tag`` if it carries the content hash ``digest``, else None."""
    image = find_image(client, tag)
    return image if image is not None and (image.labels or {}).get(HASH_LABEL) == digest else None


def list_images(client, name: str | None = None) -> list[tuple[str, list[str]]]:
    """(id, tags) of the engine's images, from one listing call. The SDK's
    ``images.list`` inspects each image after listing, so an image another process
    removes in between fails the whole call with "no such image"."""
    return [(i["Id"], i.get("RepoTags") or []) for i in client.api.images(name=name)]


def apt_mirror(root: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's own apt sources use for the main suite."""
    files = [root / "sources.list"] + sorted((root / "sources.list.d").glob("*"))
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.+)$", stanza, re.M))
                if SUITE in fields.get("Suites", "").split() and "URIs" in fields:
                    return fields["URIs"].split()[0]
        else:
            for line in text.splitlines():
                parts = re.sub(r"\[[^]]*\]", "", line).split()
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                    return parts[1]
    raise EVCError(
        f"No Debian {SUITE} mirror found in {root}/sources.list or sources.list.d: the lab "
        "builds its base image with debootstrap from the machine's own apt mirror."
    )


def content_digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def native_arch() -> str:
    """This engine's architecture in Docker's words (amd64, arm64)."""
    import platform

    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def engine_arch(client) -> str:
    """The architecture of the engine ``client`` talks to, in Docker's words."""
    return client.version().get("Arch") or native_arch()


def ensure_base_image(client, log: Log = _quiet, arch: str | None = None) -> tuple[str, bool]:
    """Debian minbase from debootstrap for ``arch`` (default: native), imported;
    returns (tag, built_now).

    A foreign arch is bootstrapped under qemu-user (binfmt) and loaded as a one-layer
    image whose config names that arch: ``docker import`` of Debian's Docker 20.10
    ignores ``--platform``, and a build FROM an image of the wrong arch fails."""
    mirror = apt_mirror()
    arch = arch or native_arch()
    native = arch == native_arch()
    parts = ("base-v1", SUITE, "minbase", mirror) + (() if native else (arch,))
    digest = content_digest(*parts)
    tag = f"{IMAGE_REPO}/base:{digest}"
    if image_with_hash(client, tag, digest):
        return tag, False
    if not shutil.which("debootstrap"):
        raise EVCError(
            "debootstrap is not installed (apt-get install debootstrap; `make` does it)."
        )

    def build() -> None:
        log(f"building {arch} base image {tag} with debootstrap from {mirror} "
            f"({'about 35 s' if native else 'about 2 minutes under emulation'})")  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="evc-rootfs-", dir="/var/tmp") as tmp:
            rootfs = Path(tmp) / "rootfs"
            proc = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--arch={arch}", SUITE, str(rootfs),
                 mirror],
                capture_output=True,
                text=True,
            )  # fmt: skip
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
                raise EVCError(f"debootstrap failed (exit {proc.returncode}):\n{tail}")
            if native:
                _import(client, rootfs, digest)
            else:
                _load(client, rootfs, Path(tmp), arch, tag, digest)

    return tag, build_once(tag, lambda: image_with_hash(client, tag, digest), build, log)


def _import(client, rootfs: Path, digest: str) -> None:
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    try:
        client.api.import_image(
            src=tar.stdout,
            repository=f"{IMAGE_REPO}/base",
            tag=digest,
            changes=[f"LABEL {HASH_LABEL}={digest}"],
        )
    finally:
        tar.stdout.close()
        tar.wait()


def _load(client, rootfs: Path, tmp: Path, arch: str, tag: str, digest: str) -> None:
    """``docker load`` of ``rootfs`` as one layer, in the image-archive format, with
    ``arch`` in its config."""
    import json

    layer = tmp / "layer.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(layer), "."], check=True)
    diff_id = "sha256:" + _sha256(layer)
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/bash"],
                "Labels": {HASH_LABEL: digest},
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    (tmp / config_name).write_bytes(config)
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": ["layer.tar"]}]
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    archive = tmp / "image.tar"
    subprocess.run(
        ["tar", "-C", str(tmp), "-cf", str(archive), "manifest.json", config_name, "layer.tar"],
        check=True,
    )
    with archive.open("rb") as f:
        client.api.load_image(f)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ensure_image(
    client,
    name: str,
    base_tag: str,
    log: Log = _quiet,
    arch: str | None = None,
    extra: Callable[[], Path] | None = None,
    extra_key: str = "",
) -> tuple[str, bool]:
    """Image ``name`` built FROM the base from base_images/<name>; (tag, built_now).
    A foreign ``arch`` (its base built by :func:`ensure_base_image`) builds under
    emulation. ``extra``: called only to build, a folder that joins the context
    (its content is named by ``extra_key``, which joins the hash)."""
    context = IMAGE_DIR / name
    files = sorted(p for p in context.iterdir() if p.is_file())
    digest = content_digest(
        f"{name}-v1",
        base_tag,
        *(p.name + p.read_text() for p in files),
        *([extra_key] if extra else []),
    )
    tag = f"{IMAGE_REPO}/{name}:{digest}"

    def build() -> None:
        log(f"building image {tag} (apt-get inside, about 40 s)")
        if extra is None:
            _build(client, context, tag, base_tag, digest, arch, what=f"{name} image")
            return
        with tempfile.TemporaryDirectory(prefix=f"evc-{name}-", dir="/var/tmp") as tmp:
            root = Path(tmp)
            for f in files:
                shutil.copy(f, root / f.name)
            shutil.copytree(extra(), root / "extra", copy_function=_link_or_copy)
            _build(client, root, tag, base_tag, digest, arch, what=f"{name} image")

    return tag, build_once(tag, lambda: image_with_hash(client, tag, digest), build, log)


def _build(client, context: Path, tag: str, base: str, digest: str, arch: str | None,
           what: str) -> None:  # fmt: skip
    """``docker build`` of ``context`` FROM ``base`` (build arg BASE), labelled with its
    content hash; a failure is an EVCError with the log's last lines."""
    import docker.errors

    try:
        client.images.build(
            path=str(context),
            tag=tag,
            buildargs={"BASE": base},
            labels={HASH_LABEL: digest},
            rm=True,
            forcerm=True,
            platform=f"linux/{arch}" if arch and arch != native_arch() else None,
        )
    except docker.errors.BuildError as exc:
        lines = [c.get("stream", c.get("error", "")) for c in exc.build_log]
        tail = "".join(lines).strip().splitlines()[-8:]
        raise EVCError(f"{what} build failed:\n" + "\n".join(tail)) from None


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


# The amd64 node's container engine, as an arm64 lab node carries it (see
# base_images/node-arm64/Dockerfile): the binaries, then every library they load.
ENGINE_BINARIES = (
    "/usr/sbin/dockerd", "/usr/bin/docker", "/usr/bin/containerd",
    "/usr/bin/containerd-shim-runc-v2", "/usr/sbin/runc", "/usr/sbin/docker-proxy",
)  # fmt: skip
_CUT_ENGINE = (
    'set -e; files=$( (for b in "$@"; do echo "$b"; done; ldd "$@" | '
    "awk '/=>/ {print $3} /ld-linux/ {print $1}') | sort -u); "
    "tar -chf /out/engine.tar $files 2>/dev/null"
)


def ensure_arm64_node_image(client, log: Log = _quiet) -> tuple[str, list[str]]:
    """The arm64 lab node image (a hybrid: arm64 userland, amd64 engine); returns (tag,
    images built now). Built under emulation once, then cached by content hash, FROM the
    arm64 model base: python3 and ca-certificates, the costliest packages to install
    under emulation, are installed once for both (an arm64 lab runs arm64 models)."""
    built = []
    base, now = ensure_base_image(client, log)
    built += [base] if now else []
    node, now = ensure_image(client, "node", base, log)
    built += [node] if now else []
    arm_base, now = ensure_base_image(client, log, arch="arm64")
    built += [arm_base] if now else []
    model_base, now = ensure_image(client, "model-base", arm_base, log, arch="arm64")
    built += [model_base] if now else []
    context = IMAGE_DIR / "node-arm64"
    scripts = [IMAGE_DIR / "node" / "node-init", IMAGE_DIR / "node" / "node-ready"]
    files = [context / "Dockerfile", *scripts]
    digest = content_digest(
        "node-arm64-v2", model_base, node, *(p.name + p.read_text() for p in files)
    )
    tag = f"{IMAGE_REPO}/node-arm64:{digest}"

    def build() -> None:
        log(f"building the arm64 lab node image {tag} under emulation (a few minutes, once)")
        with tempfile.TemporaryDirectory(prefix="evc-node-arm64-", dir="/var/tmp") as tmp:
            root = Path(tmp)
            for f in files:
                shutil.copy(f, root / f.name)
            client.containers.run(  # into a bind mount: logs would mangle binary output
                node, ["sh", "-c", _CUT_ENGINE, "cut", *ENGINE_BINARIES],
                entrypoint=[], remove=True, network_disabled=True,
                volumes={str(root): {"bind": "/out", "mode": "rw"}},
            )  # fmt: skip
            _build(client, root, tag, model_base, digest, "arm64", what="node-arm64 image")

    if build_once(tag, lambda: image_with_hash(client, tag, digest), build, log):
        built.append(tag)
    return tag, built
