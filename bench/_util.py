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


def cpu() -> float:
    """CPU-seconds of this process and its children (once reaped), and of the playbook
    runs that EVC's warm Ansible server ended meanwhile (none of them a child of ours):
    a difference of two calls, as the server's log is read from where the first left it."""
    import resource

    from evc import ansible_warm

    global _LOG_AT, _SERVED
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    size = ansible_warm.log_size()
    if size < _LOG_AT:  # the log was cut
        _LOG_AT = 0
    _SERVED += ansible_warm.cpu_since(_LOG_AT) if size else 0.0
    _LOG_AT = size
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime + _SERVED


_LOG_AT, _SERVED = 0, 0.0


def lab_args(doc: str, rounds: int, extend=None):
    """--workspace DIR (use that workspace's lab, kept), --rounds N, and what
    ``extend(parser)`` adds."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--workspace", type=Path, help="use this workspace's lab (kept)")
    parser.add_argument("--rounds", type=int, default=rounds)
    if extend:
        extend(parser)
    return parser.parse_args()


@contextmanager
def bench_lab(workspace: Path | None, lab: str, start: str, nodes: int = 3):
    """The Workspace of ``workspace`` (its lab kept), or else of a lab of its own
    (:func:`lab_fleet`, on the first free subnet from ``start``); EVC_HOME names it."""
    import tempfile
    from contextlib import nullcontext

    from evc.config import Workspace
    from evc.engine import docker_client
    from evc.lab.network import free_subnet

    with tempfile.TemporaryDirectory() as tmp:
        if workspace:
            fleet = nullcontext({"EVC_HOME": str(workspace)})
        else:
            subnet = free_subnet(docker_client(), f"evc-{lab}", start)
            fleet = lab_fleet(Path(tmp) / "ws", lab, subnet, nodes)
        with fleet as env:
            os.environ.update(env)
            yield Workspace.find()


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
