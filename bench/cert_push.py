"""`evc cert push`: wall time for 1 node vs all nodes of a 3-node lab, one run.

Target: all nodes under 1.5x the single-node time (one parallel Ansible run,
not a loop over hosts). Uses its own lab ("evcbench", 172.31.250.0/24) and
removes it at the end.
"""

import statistics
import sys
import tempfile
from pathlib import Path

from _util import EVC, bench_workspace, run, timed

RUNS = 3


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        env = bench_workspace(Path(tmp), "evcbench", "172.31.250.0/24")
        try:
            run(EVC + ["lab", "up", "--nodes", "3"], env)
            one, all_ = [], []
            for _ in range(RUNS):  # interleaved, revoking in between so each push does work
                timed(EVC + ["cert", "revoke", "lab"], env)
                one.append(timed(EVC + ["cert", "push", "node1"], env))
                all_.append(timed(EVC + ["cert", "push", "lab"], env))
        finally:
            timed(EVC + ["lab", "down"], env)
            timed(EVC + ["registry", "down", "--purge"], env)
    a, b = statistics.median(one), statistics.median(all_)
    print(f"cert push, 1 node:  median {a:5.2f} s  {sorted(round(x, 2) for x in one)}")
    print(f"cert push, 3 nodes: median {b:5.2f} s  {sorted(round(x, 2) for x in all_)}")
    ratio = b / a
    print(f"all/one {ratio:.2f}x  target < 1.5x: {'PASS' if ratio < 1.5 else 'FAIL'}")
    return 0 if ratio < 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
