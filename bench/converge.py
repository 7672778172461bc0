"""Desired state: `evc fleet status` (the drift check of the whole lab) and `evc fleet
converge` of the lab with one node re-imaged, each as a ratio to one `evc device ping`
of the same nodes, measured side by side.

Status and ping are timed in-process (``evc.fleet.status``, ``evc.devices.ping``: one
parallel run each), interleaved, median of 5. The re-image removes one node's container
and its Docker volume and brings the lab back up (as a re-flashed board comes back);
converge then pushes its CA and login and deploys its model by digest again: timed
once per re-image, ROUNDS_REIMAGE times, each beside a ping. Uses its own lab
("evcconvbench", the first free /24 from 172.31.232.0, 3 nodes or --nodes N), builds one
small model (face-haar) and removes lab and registry at the end.

Targets: status under 3x a ping (one task per node, read-only); converge of one
re-imaged node reported (its pull and health check dominate).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _util import EVC, lab_fleet, run

ROUNDS = 5
ROUNDS_REIMAGE = 2
MODEL = "benchfaces"


def _timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def main() -> int:
    from evc import devices, fleet
    from evc.config import Workspace
    from evc.engine import docker_client
    from evc.lab.network import free_subnet
    from evc.lab.nodes import Nodes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    nodes = parser.parse_args().nodes
    with tempfile.TemporaryDirectory() as tmp:
        subnet = free_subnet(docker_client(), "evc-evcconvbench", "172.31.232.0/24")
        with lab_fleet(Path(tmp) / "ws", "evcconvbench", subnet, nodes) as env:
            os.environ.update(env)
            ws = Workspace.find()
            run(EVC + ["cert", "push", "all"], env)
            run(EVC + ["model", "build", MODEL, "--runtime", "face-haar", "--version", "1"], env)
            run(EVC + ["model", "push", f"{MODEL}:1"], env)
            run(EVC + ["model", "deploy", f"{MODEL}:1", "all"], env)
            opts = fleet.StatusOptions(target="all")
            fleet.status(ws, opts)  # warm: SSH masters
            ping, status = [], []
            for _ in range(ROUNDS):  # interleaved
                ping.append(_timed(lambda: devices.ping(ws, "all"))[0])
                took, result = _timed(lambda: fleet.status(ws, opts))
                status.append(took)
                if not result.ok:
                    sys.exit(f"the lab drifted before the bench: {result.to_dict()}")
            ping_c, converge = [], []
            victim = f"node{nodes}"
            for _ in range(ROUNDS_REIMAGE):
                lab = Nodes(ws)
                lab.remove(lab.get(victim))
                run(EVC + ["lab", "up", "--nodes", str(nodes)], env)
                ping_c.append(_timed(lambda: devices.ping(ws, "all"))[0])
                took, result = _timed(
                    lambda: fleet.converge(ws, fleet.ConvergeOptions(target="all"))
                )
                converge.append(took)
                if not (result.ok and result.changed):
                    sys.exit(f"converge did not repair {victim}: {result.to_dict()}")
    p, s = statistics.median(ping), statistics.median(status)
    print(f"device ping, {nodes} nodes:  median {p:5.2f} s  {sorted(round(x, 2) for x in ping)}")
    print(f"fleet status, {nodes} nodes: median {s:5.2f} s  {sorted(round(x, 2) for x in status)}")
    ok = s / p < 3
    print(f"status/ping {s / p:.2f}x  target < 3x: {'PASS' if ok else 'FAIL'}")
    pc, c = statistics.median(ping_c), statistics.median(converge)
    took = sorted(round(x, 2) for x in converge)
    beside = sorted(round(x, 2) for x in ping_c)
    print(f"fleet converge, 1 of {nodes} re-imaged: {took} s; ping beside it {beside} s; "
          f"converge/ping {c / pc:.1f}x")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
