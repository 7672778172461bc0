"""`evc cert push`: wall time for 1 node vs all nodes of a 3-node lab, one run.

Target: all nodes under 1.5x the single-node time (one parallel Ansible run,
not a loop over hosts). Uses its own lab ("evcbench", 172.31.250.0/24) and
removes it at the end.
"""

import sys
import tempfile
from pathlib import Path

from _util import EVC, lab_fleet, one_vs_all, timed

RUNS = 3


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        with lab_fleet(Path(tmp), "evcbench", "172.31.250.0/24") as env:
            one, all_ = [], []
            for _ in range(RUNS):  # interleaved, revoking in between so each push does work
                timed(EVC + ["cert", "revoke", "lab"], env)
                one.append(timed(EVC + ["cert", "push", "node1"], env))
                all_.append(timed(EVC + ["cert", "push", "lab"], env))
    return 0 if one_vs_all("cert push", one, all_, 1.5) else 1


if __name__ == "__main__":
    sys.exit(main())
