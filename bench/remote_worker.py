"""A fleet run on the controller vs the same run through a worker container
(ansible-runner ``transmit | worker | process``, README "Beyond one controller").

Side by side in one run, on the same lab nodes and playbooks (ping, facts): wall time
and controller CPU-seconds (this process plus its children's rusage: with a worker,
ansible-playbook's CPU is spent in the worker's container and is not counted),
interleaved, median of ROUNDS. No target: it shows what the stream costs.

Uses its own lab ("evcworkerbench", 3 nodes) and removes it at the end; or, with
``--workspace DIR``, the lab of an existing workspace (not removed).
"""

import statistics
import sys
import time

from _util import bench_lab, cpu, lab_args

ROUNDS = 5
PLAYBOOKS = ("ping.yml", "facts.yml")


def main() -> int:
    args = lab_args(__doc__, ROUNDS)
    from evc.ansible import run_playbook
    from evc.lab import worker

    with bench_lab(args.workspace, "evcworkerbench", "172.31.240.0/24") as ws:
        command = worker.start(ws)
        try:
            ways = {"local": None, "worker": command}
            found = {(w, p): ([], []) for w in ways for p in PLAYBOOKS}
            for n in range(args.rounds + 1):  # the first round warms up (not counted)
                for playbook in PLAYBOOKS:
                    for way, through in ways.items():
                        cpu0, start = cpu(), time.perf_counter()
                        result = run_playbook(ws, playbook, "all", worker=through)
                        wall, used = time.perf_counter() - start, cpu() - cpu0
                        if not result.ok:
                            sys.exit(f"{playbook} ({way}) failed: {result.to_dict()}")
                        if n:
                            found[(way, playbook)][0].append(wall)
                            found[(way, playbook)][1].append(used)
            hosts = len(result.hosts)
        finally:
            worker.stop(ws)
    print(
        f"{hosts} nodes, median of {args.rounds} interleaved "
        "(controller CPU: this process and its children)"
    )
    for playbook in PLAYBOOKS:
        base = statistics.median(found[("local", playbook)][0])
        for way in ways:
            wall, used = found[(way, playbook)]
            w, c = statistics.median(wall), statistics.median(used)
            print(
                f"  {playbook:10} {way:7} wall {w:6.2f} s  cpu {c:5.2f} s"
                f"  x{w / base:4.2f} of local"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
