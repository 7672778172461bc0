"""Telemetry: one collection round on 1 node vs all 3 lab nodes, and bulk ingestion speed.

Targets: a round on all nodes under 2x a round on one (one parallel playbook run,
one task per node), and ``evc.logs.ingest`` at least 100,000 metric rows/s.
Rounds are timed in-process (``evc.logs.collect``: playbook, ingest,
liveness), interleaved, median of 5. Ingestion writes 200,000 realistic samples
(temperatures, three interfaces) into a fresh database, median of 3. Uses its own
lab ("evctelbench", the first free /24 from 172.31.240.0) and removes it at the end.
"""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _util import lab_fleet, one_vs_all

ROUNDS = 5
ROWS = 200_000


def samples(n: int) -> list[dict]:
    """Samples as collect() hands them over: temps and net are JSON text from the node."""
    net = '{"docker0":[0.0,0.0],"eth0":[51234.5,1200.0],"lo":[10.0,10.0]}'
    return [
        {"node": f"node{i % 50}", "at": 1e9 + i, "cpu_pct": 12.5, "load1": 0.5, "load5": 0.4,
         "load15": 0.3, "mem_total": 2**31, "mem_used": 2**29, "mem_pct": 25.0,
         "disk_total": 2**36, "disk_used": 2**34, "disk_pct": 25.0, "temp_max_c": 51.0,
         "temps": '{"gpu":48.5,"soc":51.0}', "net_rx_bps": 51244.5, "net_tx_bps": 1210.0,
         "net": net, "gpu_util_pct": None, "gpu_mem_used": None, "gpu_mem_total": None,
         "npu_util_pct": None}
        for i in range(n)
    ]  # fmt: skip


def ingest_rate(tmp: Path) -> float:
    from evc import db as evcdb
    from evc.logs import ingest

    rates = []
    batch = samples(ROWS)
    for i in range(3):
        db = evcdb.connect(tmp / f"ingest{i}.db")
        start = time.perf_counter()
        assert ingest(db, batch) == ROWS
        rates.append(ROWS / (time.perf_counter() - start))
        db.close()
    return statistics.median(rates)


def main() -> int:
    from evc.config import Workspace
    from evc.engine import docker_client
    from evc.lab.network import free_subnet
    from evc.logs import CollectOptions, collect

    with tempfile.TemporaryDirectory() as tmp:
        rate = ingest_rate(Path(tmp))
        subnet = free_subnet(docker_client(), "evc-evctelbench", "172.31.240.0/24")
        with lab_fleet(Path(tmp) / "ws", "evctelbench", subnet) as env:
            os.environ.update(env)
            ws = Workspace.find()
            collect(ws, CollectOptions(target="lab"))  # warm: state files on the nodes, SSH masters
            one, all_ = [], []
            for _ in range(ROUNDS):  # interleaved
                for target, into in (("node1", one), ("lab", all_)):
                    start = time.perf_counter()
                    result = collect(ws, CollectOptions(target=target))
                    into.append(time.perf_counter() - start)
                    if not result.ok:
                        sys.exit(f"telemetry round on {target} failed: {result.to_dict()}")
    fast = one_vs_all("telemetry round", one, all_, 2)
    print(
        f"ingest: {rate:,.0f} metric rows/s (median of 3 x {ROWS:,})  target >= 100,000: "
        f"{'PASS' if rate >= 100_000 else 'FAIL'}"
    )
    return 0 if fast and rate >= 100_000 else 1


if __name__ == "__main__":
    sys.exit(main())
