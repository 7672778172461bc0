"""Shared bits of the bench scripts: run evc in a workspace, time it."""

import os
import subprocess
import sys
import time
from pathlib import Path

EVC = [sys.executable, "-m", "evc"]


def timed(cmd, env=None) -> float:
    return run(cmd, env)[0]


def run(cmd, env=None) -> tuple[float, str]:
    """(wall seconds, stdout) of a command that must succeed."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start, proc.stdout


def bench_workspace(root: Path, lab: str, subnet: str) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    (root / "evc.yaml").write_text(f"name: bench\nlab: {{name: {lab}, subnet: {subnet}}}\n")
    return {"EVC_HOME": str(root)}
