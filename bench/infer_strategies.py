"""`evc infer run`: makespan / ideal of each strategy on nodes of unequal speed, one run.

A 3-node lab; the face-haar model is deployed with unequal CPU limits (0.2, 0.4
and 0.8 CPU: their sum stays below this machine's cores so that nodes measured
alone and together see the same CPU). Each node first runs a job alone, sized to
take it about 40 s; its throughput is items / makespan, hand-over included, and
ideal = items / (sum of those throughputs). Then one job of ITEMS runs on all
nodes under each strategy. Targets: proportional and dynamic at most 1.15x
ideal; round-robin is printed beside them as the seed's baseline. The alone runs
are also the history that `proportional` and `dynamic` start from.

Run it on a quiet machine: the nodes and the controller share its 2 cores, so
anything else running slows the nodes unevenly.
"""

import json
import sys
import tempfile
from pathlib import Path

from _util import EVC, bench_workspace, run, timed

ITEMS = 480
CPUS = {"node1": 0.2, "node2": 0.4, "node3": 0.8}
ALONE = {"node1": 48, "node2": 96, "node3": 192}  # about 40 s each
TARGET = 1.15
STRATEGIES = ("round-robin", "proportional", "dynamic")


def _dataset(root: Path, items: int) -> Path:
    from PIL import Image
    from skimage import data

    pictures = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    folder = root / f"data{items}"
    folder.mkdir()
    for i in range(items):
        Image.fromarray(pictures[i % len(pictures)]).save(folder / f"{i:04d}.jpg")
    return folder


def _job(env, folder, *args) -> dict:
    out = run(EVC + ["infer", "run", "bfaces:1", "--data", str(folder), "--json", *args], env)[1]
    return json.loads(out)


def unequal_lab(env, subsets: dict[str, Path]) -> dict[str, float]:
    """The 3-node lab with bfaces:1 deployed under CPUS; each node's items/s alone."""
    run(EVC + ["lab", "up", "--nodes", "3"], env)  # the queue too (pull mode)
    run(EVC + ["cert", "push", "all"], env)
    run(EVC + ["model", "build", "bfaces", "--runtime", "face-haar", "--version", "1"], env)
    run(EVC + ["model", "push", "bfaces:1"], env)
    for node, cpus in CPUS.items():
        run(EVC + ["model", "deploy", "bfaces:1", node, "--cpus", str(cpus)], env)
    alone = {}
    for node in CPUS:
        job = _job(env, subsets[node], node, "--strategy", "round-robin")
        alone[node] = ALONE[node] / job["makespan_s"]
    return alone


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        env = bench_workspace(Path(tmp), "evcbench", "172.31.250.0/24")
        folder = _dataset(Path(tmp), ITEMS)
        subsets = {n: _dataset(Path(tmp), k) for n, k in ALONE.items()}
        try:
            alone = unequal_lab(env, subsets)
            ideal = ITEMS / sum(alone.values())
            jobs = {s: _job(env, folder, "--strategy", s) for s in STRATEGIES}
        finally:
            timed(EVC + ["lab", "down"], env)
            timed(EVC + ["registry", "down", "--purge"], env)
    for node, tput in alone.items():
        print(f"{node} alone ({CPUS[node]} CPU, {ALONE[node]} items): {tput:5.2f} items/s")
    print(f"ideal makespan for {ITEMS} items: {ideal:6.1f} s")
    ok = True
    for strategy, job in jobs.items():
        makespan = job["makespan_s"]
        ratio = makespan / ideal
        goal = (
            ""
            if strategy == "round-robin"
            else f"  target <= {TARGET}: " + ("PASS" if ratio <= TARGET else "FAIL")
        )
        ok &= strategy == "round-robin" or ratio <= TARGET
        print(f"{strategy:>12}: makespan {makespan:6.1f} s  = {ratio:4.2f}x ideal{goal}")
        for node, n in sorted(job["nodes"].items()):  # where the time went
            print(f"{'':>14}{node}: {n['items']:3d} items in {n['shards']:2d} shards, "
                  f"busy {n['busy_s']:5.1f} s")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
