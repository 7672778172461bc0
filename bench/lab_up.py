"""`evc lab up` for 3 nodes: cold (images built from debootstrap) vs cached, one run.

Target: the cached start is at least 5x faster than the cold one. Uses its own
lab ("evcbench", 172.31.250.0/24) and removes it at the end. The cold run
removes the lab images, so no other lab may be running.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _util import EVC, bench_workspace, run, timed


def main() -> int:
    others = subprocess.run(
        ["docker", "ps", "-q", "--filter", "label=evc.lab"], capture_output=True, text=True
    ).stdout.split()
    if others:
        print(
            "other lab nodes are running; `evc lab down` them first (the cold run "
            "removes the shared lab images)"
        )
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        env = bench_workspace(Path(tmp), "evcbench", "172.31.250.0/24")
        up = EVC + ["lab", "up", "--nodes", "3"]
        down = EVC + ["lab", "down"]
        try:
            timed(down + ["--purge"], env)
            cold = timed(up, env)
            timed(down, env)
            cached = timed(up, env)
            again, out = run(up + ["--json"], env)  # everything running: a no-op up
            phases = json.loads(out)["timings"]
        finally:
            timed(down, env)
            timed(EVC + ["registry", "down", "--purge"], env)
    ratio = cold / cached
    print(f"cold   (debootstrap, node + registry images, 3 nodes): {cold:6.1f} s")
    print(f"cached (images cached, 3 new nodes):         {cached:6.1f} s")
    print(f"no-op  (lab already up):                      {again:6.1f} s")
    print(f"no-op phases: {phases}")
    print(f"cold/cached {ratio:.1f}x  target >= 5x: {'PASS' if ratio >= 5 else 'FAIL'}")
    return 0 if ratio >= 5 else 1


if __name__ == "__main__":
    sys.exit(main())
