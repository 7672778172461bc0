"""Shared bits of the bench scripts: run evc in a workspace, time it."""

import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
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


@contextmanager
def lab_fleet(root: Path, lab: str, subnet: str, nodes: int = 3, profile: str | None = None):
    """A bench workspace with its own N-node lab (of one profile, or the default mix);
    yields its env, removes lab and registry."""
    env = bench_workspace(root, lab, subnet)
    try:
        run(EVC + ["lab", "up", "--nodes", str(nodes)] + (["-p", profile] if profile else []), env)
        yield env
    finally:
        timed(EVC + ["lab", "down"], env)
        timed(EVC + ["registry", "down", "--purge"], env)


def one_vs_all(
    what: str, one: list[float], all_: list[float], target: float, nodes: int = 3
) -> bool:
    """Print medians of 1-node and all-node timings and their ratio; True if under target."""
    a, b = statistics.median(one), statistics.median(all_)
    print(f"{what}, 1 node:  median {a:5.2f} s  {sorted(round(x, 2) for x in one)}")
    print(f"{what}, {nodes} nodes: median {b:5.2f} s  {sorted(round(x, 2) for x in all_)}")
    ratio = b / a
    print(f"all/one {ratio:.2f}x  target < {target:g}x: {'PASS' if ratio < target else 'FAIL'}")
    return ratio < target
