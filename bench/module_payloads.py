"""Module payloads kept between runs by EVC's warm Ansible server, or built by each run.

Ansible builds each module's payload (AnsiballZ: a scan of its imports and a zip) once
per run; the warm server keeps the payloads that runs built and hands them to later
runs while the files they were built from are unchanged (evc/ansible_warm.py). Side by
side in one run, interleaved, median of ROUNDS: a run of two modules that change
nothing (community.docker's docker_container, stat; bench/playbooks/modules.yml) on
one node and on every node of a 3-node lab, with the payloads kept and with the kept
payloads removed before each run (as every run was before). Controller CPU-seconds
(bench/_util.py ``cpu``: this process, its children and the server's runs) and wall.

Uses its own lab ("evcpayloadbench") and removes it at the end; or, with
``--workspace DIR``, the lab of an existing workspace (not removed).
"""

import shutil
import statistics
import sys
import time
from pathlib import Path

from _util import bench_lab, cpu, lab_args

ROUNDS = 5
PLAYBOOK = str(Path(__file__).parent / "playbooks" / "modules.yml")


def main() -> int:
    from evc import ansible_warm
    from evc.ansible import run_playbook

    args = lab_args(__doc__, ROUNDS)
    kept = ansible_warm.folder() / ansible_warm.PAYLOADS
    found = {}
    with bench_lab(args.workspace, "evcpayloadbench", "172.31.229.0/24") as ws:
        for target in ("node1", "lab"):
            assert run_playbook(ws, PLAYBOOK, target).ok  # SSH masters up, payloads kept
        for _ in range(args.rounds):
            for target in ("node1", "lab"):
                for variant in ("kept", "built"):
                    if variant == "built":
                        shutil.rmtree(kept, ignore_errors=True)
                    cpu0, start = cpu(), time.perf_counter()
                    run = run_playbook(ws, PLAYBOOK, target)
                    wall, used = time.perf_counter() - start, cpu() - cpu0
                    if not run.ok:
                        sys.exit(f"{PLAYBOOK} on {target} failed: {run.to_dict()}")
                    found.setdefault((target, variant), []).append((wall, used))
    print(f"two module tasks, median of {args.rounds} (controller CPU-s, wall s)")
    for target in ("node1", "lab"):
        med = {}
        for variant in ("kept", "built"):
            walls, cpus = zip(*found[(target, variant)], strict=True)
            med[variant] = statistics.median(cpus)
            print(f"  {target:6} payloads {variant:5}  cpu {med[variant]:5.2f} s  "
                  f"wall {statistics.median(walls):5.2f} s")  # fmt: skip
        print(f"  {target:6} kept/built CPU: {med['kept'] / med['built']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
