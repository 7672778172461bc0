"""`evc infer run --mode push|pull`: makespan / ideal and controller CPU-seconds per item
of the same 480-item job in push-dynamic and pull mode, side by side in one run.

On the lab (default): 3 nodes with the face-haar model deployed under unequal CPU
limits, as bench/infer_strategies.py (its alone runs give each node's throughput and
ideal = items / their sum). The controller's CPU is that of the `evc infer run` process
and every process it waited for (RUSAGE_CHILDREN before and after), and of the
playbook runs EVC's warm Ansible server forked meanwhile (its log says each one's).
Pull mode needs the node side (the puller in the model images, started by deploy);
`evc lab up` starts the queue. Targets (issue 19): pull at most 1.05x ideal;
pull's CPU per item at most 1/20 of push's.

CPU per item is the cost of one more item: each mode also runs a job of SMALL items, and
(CPU of the full job - CPU of the small one) / (ITEMS - SMALL) is compared. A job's fixed
cost (the `evc` process starting, the usable-nodes check, the queue's set-up: the same
for 48 items as for 480) is printed beside it, as is the whole job's CPU / ITEMS.

``--standin``: no lab. The controller runs in this process against a redis-server on
loopback (TLS, ACLs) and a fake fleet for the deploy and the usable-nodes check; three
stand-in nodes (tests/unit/pull_support.py: real streams.Worker threads logged in as
device users, another process) answer after 0.2, 0.1 and 0.05 s an item, so ideal =
items / (5 + 10 + 20 items/s). Only pull mode is measured there: push mode's cost is
ansible's, which needs real nodes. CPU: time.process_time() of this process.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ITEMS, SMALL = 480, 48
PULL_TARGET, CPU_TARGET = 1.05, 1 / 20
STANDIN_S = {"node1": 0.2, "node2": 0.1, "node4": 0.05}  # seconds per item


def _children_cpu() -> float:
    """The `evc` processes' CPU-seconds (ansible-playbook's included, also where EVC's
    warm Ansible server ran it): :func:`_util.cpu` less this process's own."""
    from _util import cpu

    own = resource.getrusage(resource.RUSAGE_SELF)
    return cpu() - own.ru_utime - own.ru_stime


def _per_item(cpu: float, small: float) -> tuple[float, float]:
    """(CPU-s of one more item, a job's fixed CPU-s) from the full and the small job."""
    marginal = (cpu - small) / (ITEMS - SMALL)
    return marginal, small - SMALL * marginal


def _report(ideal: float, jobs: dict[str, tuple[dict, float, float]]) -> int:
    """``jobs``: mode -> (the full job, its CPU-s, the small job's CPU-s)."""
    print(f"ideal makespan for {ITEMS} items: {ideal:6.1f} s")
    for mode, (job, cpu, small) in jobs.items():
        marginal, fixed = _per_item(cpu, small)
        print(
            f"{mode:>12}: makespan {job['makespan_s']:6.1f} s = "
            f"{job['makespan_s'] / ideal:4.2f}x ideal ({job['ok']} ok, {job['failed']} failed)\n"
            f"{'':>14}controller {cpu:6.2f} CPU-s for {ITEMS} items ({1000 * cpu / ITEMS:.2f} ms"
            f" each), {small:5.2f} for {SMALL}: {1000 * marginal:6.2f} ms per item more, "
            f"{fixed:5.2f} s a job"
        )
        for node, n in sorted(job["nodes"].items()):
            print(
                f"{'':>14}{node}: {n.get('items') or 0:3d} items in {n.get('shards', 0):2d} shards"
            )
    ok = True
    if "pull" in jobs:
        ratio = jobs["pull"][0]["makespan_s"] / ideal
        ok &= ratio <= PULL_TARGET
        print(
            f"pull makespan {ratio:.2f}x ideal, target <= {PULL_TARGET}: "
            + ("PASS" if ratio <= PULL_TARGET else "FAIL")
        )
    if {"push-dynamic", "pull"} <= set(jobs):
        share = _per_item(*jobs["pull"][1:])[0] / _per_item(*jobs["push-dynamic"][1:])[0]
        ok &= share <= CPU_TARGET
        print(
            f"pull CPU per item = {share:.3f} of push's, target <= {CPU_TARGET:.3f}: "
            + ("PASS" if share <= CPU_TARGET else "FAIL")
        )
    return 0 if ok else 1


def lab() -> int:
    sys.path.insert(0, str(ROOT / "bench"))
    from _util import EVC, bench_workspace, timed
    from infer_strategies import ALONE, CPUS, _dataset, _job, unequal_lab

    with tempfile.TemporaryDirectory() as tmp:
        env = bench_workspace(Path(tmp), "evcmodes", "172.31.249.0/24")
        folder = _dataset(Path(tmp), ITEMS)
        subsets = {n: _dataset(Path(tmp), k) for n, k in ALONE.items()}
        small = subsets[min(ALONE, key=ALONE.get)]
        assert len(list(small.iterdir())) == SMALL
        try:
            alone = unequal_lab(env, subsets)  # cert push: the queue credential too
            jobs = {}
            for mode, args in (("push-dynamic", ["--strategy", "dynamic"]),
                               ("pull", ["--mode", "pull"])):  # fmt: skip
                cpu = [_children_cpu()]
                for data in (small, folder):
                    job = _job(env, data, *args)
                    cpu.append(_children_cpu())
                jobs[mode] = (job, cpu[2] - cpu[1], cpu[1] - cpu[0])
        finally:
            timed(EVC + ["lab", "down"], env)
            timed(EVC + ["registry", "down", "--purge"], env)
    for node, tput in alone.items():
        print(f"{node} alone ({CPUS[node]} CPU, {ALONE[node]} items): {tput:5.2f} items/s")
    return _report(ITEMS / sum(alone.values()), jobs)


def standin() -> int:
    sys.path.insert(0, str(ROOT))
    import pytest

    from evc.infer import nodes, runner
    from evc.model import deploy
    from evc.queue import acl, server
    from tests.unit import pull_support, queue_support
    from tests.unit.fake_fleet import FakeFleet, add_model

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(acl, "device_rule", pull_support.with_announcements())
        ws = queue_support.make_workspace(Path(tmp) / "ws")
        add_model(ws, "1", time.time())
        fake = FakeFleet()
        for module in (deploy, nodes, runner):
            mp.setattr(module, "run_playbook", fake)
        target = ",".join(STANDIN_S)
        deploy.deploy(ws, deploy.DeployOptions(ref="faces:1", target=target))
        folder, small = Path(tmp) / "data", Path(tmp) / "small"
        for where, count in ((folder, ITEMS), (small, SMALL)):
            where.mkdir()
            for i in range(count):  # about the size of the lab's JPEGs
                (where / f"{i:04d}.jpg").write_bytes(bytes([i % 256]) * 60_000)
        server.up(ws)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.unit.pull_support", str(ws.root),
             *(f"{d}={s}" for d, s in STANDIN_S.items())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        try:
            json.loads(proc.stdout.readline())  # ready
            cpu = []
            for data in (small, folder):
                options = runner.RunOptions(model="faces:1", target=target, data=data,
                                            mode="pull")  # fmt: skip
                cpu.append(time.process_time())
                result = runner.run(ws, options)
                cpu[-1] = time.process_time() - cpu[-1]
        finally:
            proc.stdin.close()
            proc.wait(30)
            server.down(ws)
    job = result.to_dict()
    for node, s in STANDIN_S.items():
        print(f"{node} (stand-in): {1 / s:5.1f} items/s")
    print("push-dynamic: - (needs the lab: its cost is ansible's)")
    ideal = ITEMS / sum(1 / s for s in STANDIN_S.values())
    return _report(ideal, {"pull": (job, cpu[1], cpu[0])})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--standin",
        action="store_true",
        help="pull mode only, against stand-in nodes on loopback (no lab)",
    )
    return standin() if parser.parse_args().standin else lab()


if __name__ == "__main__":
    sys.exit(main())
