"""10,000 devices: `evc device list` and inventory regeneration, each under 1 s; a
target resolved and handed to Ansible.

The commands run as the real CLI (process start-up included), beside `evc --version`
as the fixed cost of starting EVC, measured in the same run. Target resolution:
evc.targets against Ansible's InventoryManager (how EVC resolved before), then the
two ways to hand ansible-playbook a target's hosts (`--list-hosts`, no SSH): the
whole inventory with `--limit` of the names, or an inventory of those hosts alone
(what EVC does).
"""

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _util import EVC, run

N = 10_000
RUNS = 5


def populate(root: Path) -> None:
    from evc import db as evcdb
    from evc.config import init_workspace

    ws = init_workspace(root)
    db = evcdb.workspace_db(ws)
    now = time.time()
    rows = (
        evcdb.device_row(
            {
                "name": f"edge-{i:05d}", "host": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                "port": 22, "user": "root", "role": "worker",
                "groups": [("jetson", "rpi", "rk3588")[i % 3], f"site_{i % 40}"],
                "labels": {"rack": str(i % 97)}, "arch": ("arm64", "amd64")[i % 2],
                "os": "Debian GNU/Linux 12", "kernel": "6.1", "cpu_count": 4.0,
                "mem_bytes": 8 << 30, "disk_bytes": 64 << 30,
                "accelerator": ("jetson", "none", "rockchip-npu")[i % 3],
                "docker_version": "24.0", "added_at": now, "status": "online",
            }
        )
        for i in range(N)
    )  # fmt: skip
    with evcdb.transaction(db):
        db["devices"].insert_all(rows, batch_size=1000)


def median_time(cmd, env) -> float:
    return statistics.median(run(cmd, env)[0] for _ in range(RUNS))


def targets(root: Path, target: str = "rpi:&site_3") -> dict[str, float]:
    """Seconds to resolve ``target`` (EVC, InventoryManager) and to hand its hosts to
    ansible-playbook (--limit NAMES on the whole inventory, or an inventory of them)."""
    from evc import inventory
    from evc.config import Workspace
    from evc.targets import load, resolve_hosts

    ws = Workspace.load(root)
    out = {}
    t = time.perf_counter()
    hosts = resolve_hosts(ws.inventory, target)
    out[f"resolve {target} ({len(hosts)} hosts): evc.targets"] = time.perf_counter() - t
    t = time.perf_counter()
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    old = InventoryManager(loader=DataLoader(), sources=[str(ws.inventory)]).list_hosts(target)
    out[f"resolve {target}: InventoryManager (before)"] = time.perf_counter() - t
    assert [h.name for h in old] == hosts
    subset = root / "subset.json"
    subset.write_text(json.dumps(inventory.subset(load(ws.inventory), hosts)))
    playbook = root / "noop.yml"
    playbook.write_text("- hosts: all\n  gather_facts: false\n  tasks: []\n")
    book = [str(Path(sys.executable).parent / "ansible-playbook"), "--list-hosts"]
    limit = book + ["-i", str(ws.inventory), "--limit", ",".join(hosts), str(playbook)]
    alone = book + ["-i", str(subset), str(playbook)]
    out["ansible-playbook: whole inventory + --limit"] = median_time(limit, {})
    out["ansible-playbook: inventory of the hosts (EVC)"] = median_time(alone, {})
    return out


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        populate(Path(tmp))
        env = {"EVC_HOME": tmp}
        base = median_time(EVC + ["--version"], env)
        cases = {
            "device list --json": EVC + ["device", "list", "--json"],
            "device list (table)": EVC + ["device", "list"],
            "inventory show (regenerate)": EVC + ["inventory", "show"],
        }
        results = {name: median_time(cmd, env) for name, cmd in cases.items()}
        resolution = targets(Path(tmp))
    print(f"{N} devices, median of {RUNS}; `evc --version` (start-up) {base:.3f} s")
    ok = True
    for name, t in results.items():
        verdict = "PASS" if t < 1.0 else "FAIL"
        ok &= t < 1.0
        print(f"{name:30s} {t:6.3f} s  ({t / base:4.1f}x start-up)  target < 1 s: {verdict}")
    for name, t in resolution.items():
        print(f"{name:50s} {t:6.3f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
