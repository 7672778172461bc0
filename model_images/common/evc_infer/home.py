"""The model home: model.yaml, runtime/runtime.py and model/ under one folder."""

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import yaml

from evc_infer import ModelError, UsageError, one_line

DEFAULT_HOME = "/opt/evc"
BUILTIN_DEFAULTS = {"conf": 0.25, "iou": 0.45, "imgsz": 640}
IMGSZ_RANGE = (32, 4096)
# What one input or one shard may cost the node, so that a hostile one is refused rather
# than exhausting memory or disk; model.yaml `limits` overrides any of them.
BUILTIN_LIMITS = {
    "max_pixels": 40_000_000,  # 120 MB as an RGB array, a few times that while decoding
    "shard_entries": 100_000,  # entries of one shard archive (items and shard.json)
    "shard_bytes": 4 * 1024**3,  # the extracted files of one shard together
}


def default_home() -> Path:
    return Path(os.environ.get("EVC_HOME_DIR") or DEFAULT_HOME)


def load_config(home: Path) -> dict:
    """The parsed model.yaml of ``home``; UsageError when it is missing or not a mapping."""
    path = home / "model.yaml"
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"no model.yaml in {home} (set --home or EVC_HOME_DIR)") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read {path}: {one_line(exc)}") from None
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise UsageError(f"{path}: expected a mapping with a `name`")
    limits = config.get("limits") or {}
    if not isinstance(limits, dict) or set(limits) - set(BUILTIN_LIMITS):
        allowed = ", ".join(BUILTIN_LIMITS)
        raise UsageError(f"{path}: `limits` must be a mapping of {allowed}; got {limits!r}")
    for key, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{path}: limits.{key} must be a positive integer, not {value!r}")
    config["limits"] = {**BUILTIN_LIMITS, **limits}
    return config


def resolve_params(config: dict, conf=None, iou=None, imgsz=None) -> dict:
    """conf/iou/imgsz: the given value, else model.yaml `defaults`, else the built-in default."""
    defaults = {**BUILTIN_DEFAULTS, **(config.get("defaults") or {})}
    params = {
        "conf": defaults["conf"] if conf is None else conf,
        "iou": defaults["iou"] if iou is None else iou,
        "imgsz": defaults["imgsz"] if imgsz is None else imgsz,
    }
    for key in ("conf", "iou"):
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise UsageError(f"{key} must be a number from 0 to 1, not {value!r}")
        params[key] = float(value)
    imgsz, (low, high) = params["imgsz"], IMGSZ_RANGE
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or not low <= imgsz <= high:
        raise UsageError(f"imgsz must be an integer from {low} to {high}, not {imgsz!r}")
    return params


def import_runtime(path: Path) -> ModuleType:
    """Import a runtime.py from its file (registered as module ``evc_runtime``)."""
    spec = importlib.util.spec_from_file_location("evc_runtime", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_model(home: Path, config: dict) -> tuple[object, dict[str, str]]:
    """The runtime's model and its versions; ModelError when either cannot be had."""
    model_dir = home / "model"
    weights = config.get("weights") or {}
    if weights.get("required") and not (model_dir / str(weights.get("file"))).is_file():
        raise ModelError(f"weights file missing: {model_dir / str(weights.get('file'))}")
    try:
        model = import_runtime(home / "runtime" / "runtime.py").load(model_dir, config)
        versions = {str(k): str(v) for k, v in model.versions().items()}
    except Exception as exc:
        raise ModelError(f"{type(exc).__name__}: {one_line(exc)}") from exc
    return model, versions
