"""The model images' package, run for real: helpers shared by the evc_infer tests.

pytest puts model_images/common on the path (pyproject.toml), so tests import evc_infer
as an image does; a subprocess gets it through PYTHONPATH.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

MODEL_IMAGES = Path(__file__).resolve().parents[2] / "model_images"
COMMON = MODEL_IMAGES / "common"
ASTRONAUT_FACE = (177, 66, 95, 95)  # x, y, w, h of the one face in skimage's astronaut


def evc_infer(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m evc_infer ARGS` with only the shared package on the path."""
    env = {**{k: v for k, v in os.environ.items() if k != "EVC_HOME_DIR"}, **(env or {})}
    env["PYTHONPATH"] = str(COMMON)
    return subprocess.run(
        [sys.executable, "-m", "evc_infer", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def make_home(root: Path, runtime: str, weights: Path | None = None, **overrides) -> Path:
    """A model home like /opt/evc: model.yaml (with overrides), runtime/runtime.py, model/."""
    src = MODEL_IMAGES / runtime
    config = yaml.safe_load((src / "model.yaml").read_text())
    config.update(overrides)
    (root / "runtime").mkdir(parents=True)
    (root / "model").mkdir()
    (root / "model.yaml").write_text(yaml.safe_dump(config))
    shutil.copy(src / "runtime.py", root / "runtime" / "runtime.py")
    if weights is not None:
        shutil.copy(weights, root / "model" / config["weights"]["file"])
    return root


def near(box, ref, tol=10) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(box, ref, strict=True))
