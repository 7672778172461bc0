"""Fleet runs: EVC's run_playbook vs plain ``ansible-playbook`` with its defaults.

Side by side in one run, on the same 8 lab nodes and the same modules (ping, facts,
telemetry): wall time and controller CPU-seconds (this process, its children's rusage
and the runs EVC's warm Ansible server forked: bench/_util.py ``cpu``), interleaved,
median of ROUNDS. Issue 19's target: EVC at least 2.5x faster than the defaults
(forks 5, facts gathered, no pipelining). Variants:

- ``defaults``: ``ansible-playbook`` on a copy of the playbooks without their
  ``gather_facts: false`` (so facts are gathered, as by default), forks 5, only the
  workspace's known_hosts added (``ANSIBLE_SSH_EXTRA_ARGS``);
- ``evc``: :func:`evc.ansible.run_playbook` as it is;
- ``evc-no-server``: the same without the warm Ansible server (``EVC_ANSIBLE_SERVER=0``:
  ansible-playbook started afresh for every run);
- ``evc+mitogen``: the same with mitogen's ``mitogen_linear`` strategy (only when
  the ``mitogen`` package is installed: EVC does not depend on it, see README).

Then the controller's part of a push-mode shard hand-over (infer_shard.yml: one
ansible-playbook run, one task, one node), less its file transfer: a one-task run
on one node, in CPU-seconds (issue 19's target: under 0.4).

Uses its own lab ("evcfleetbench", 8 nodes) and removes it at the end; or, with
``--workspace DIR``, the lab of an existing workspace (not removed).

``--scale N`` measures scale instead, on a lab of N light nodes (sshd and python, no
Docker engine; its own lab, "evcscalebench" unless ``--lab``): EVC's ping, facts and
telemetry on all N against node1 alone, interleaved, median of ROUNDS (issue 19's
target at 50: at most 3x), and each node's memory (its cgroup's usage less page
cache, after the runs).
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _util import bench_lab, cpu, lab_args, lab_fleet

ROUNDS = 5
PLAYBOOKS = ("ping.yml", "facts.yml", "telemetry.yml")


def plain_playbooks(into: Path) -> Path:
    """The bundled playbooks, facts gathered (ansible-playbook's default)."""
    from evc.resources import data_dir

    shutil.copytree(data_dir("playbooks"), into)
    for path in into.glob("*.yml"):
        text = path.read_text().replace("  gather_facts: false\n", "")
        path.write_text(text)
    return into


def mitogen_env() -> dict[str, str] | None:
    try:
        import ansible_mitogen
    except ImportError:
        return None
    strategy = Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"
    return {"ANSIBLE_STRATEGY_PLUGINS": str(strategy), "ANSIBLE_STRATEGY": "mitogen_linear"}


def variants(ws, plain: Path, target: str) -> dict:
    """name -> function(playbook) that runs it on ``target`` and fails loudly."""
    import evc.ansible as evc_ansible

    base_env = evc_ansible.ansible_env

    def plain_run(playbook: str) -> None:
        env = {**os.environ, "ANSIBLE_SSH_EXTRA_ARGS": f"-o UserKnownHostsFile={ws.known_hosts}"}
        cmd = [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(ws.inventory),
            "-l",
            target,
            playbook,
        ]
        proc = subprocess.run(cmd, cwd=plain, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}")

    def evc_run(extra: dict[str, str], server: str = "1"):
        def run(playbook: str) -> None:
            evc_ansible.ansible_env = lambda *a, **k: {**base_env(*a, **k), **extra}
            os.environ["EVC_ANSIBLE_SERVER"] = server
            try:
                result = evc_ansible.run_playbook(ws, playbook, target)
            finally:
                evc_ansible.ansible_env = base_env
                os.environ.pop("EVC_ANSIBLE_SERVER")
            if not result.ok:
                sys.exit(f"{playbook} on {target} failed: {result.to_dict()}")

        return run

    out = {"defaults": plain_run, "evc": evc_run({}), "evc-no-server": evc_run({}, "0")}
    if (mito := mitogen_env()) is not None:
        out["evc+mitogen"] = evc_run(mito)
    return out


def measure(runs: dict, playbooks, rounds: int) -> dict:
    """(variant, playbook) -> ([wall s], [cpu s]), interleaved."""
    out = {(v, p): ([], []) for v in runs for p in playbooks}
    for _ in range(rounds):
        for playbook in playbooks:
            for name, run in runs.items():
                cpu0, start = cpu(), time.perf_counter()
                run(playbook)
                wall, used = out[(name, playbook)]
                wall.append(time.perf_counter() - start)
                used.append(cpu() - cpu0)
    return out


def report(title: str, found: dict, playbooks) -> float:
    """Print medians per playbook; return the smallest defaults/evc wall ratio."""
    print(title)
    worst = float("inf")
    for playbook in playbooks:
        base = statistics.median(found[("defaults", playbook)][0])
        for (name, pb), (wall, used) in found.items():
            if pb != playbook:
                continue
            w, c = statistics.median(wall), statistics.median(used)
            print(f"  {playbook:14} {name:12} wall {w:6.2f} s  cpu {c:5.2f} s  x{base / w:4.1f}")
        worst = min(worst, base / statistics.median(found[("evc", playbook)][0]))
    return worst


def node_memory(ws) -> list[int]:
    """Bytes each lab node's container uses, less page cache (Docker's own figure)."""
    from evc.lab.nodes import Nodes

    used = []
    for container in Nodes(ws).containers():
        mem = container.stats(stream=False)["memory_stats"]
        stats = mem.get("stats", {})
        used.append(mem["usage"] - stats.get("total_inactive_file", stats.get("inactive_file", 0)))
    return used


def scale(nodes: int, rounds: int, lab: str) -> int:
    """N light nodes against one: EVC's wall time per playbook, and memory per node."""
    from evc.config import Workspace
    from evc.engine import docker_client
    from evc.lab.network import free_subnet

    with tempfile.TemporaryDirectory() as tmp:
        subnet = free_subnet(docker_client(), f"evc-{lab}", "172.31.231.0/24")
        started = time.perf_counter()
        with lab_fleet(Path(tmp) / "ws", lab, subnet, nodes, "light") as env:
            up_s = time.perf_counter() - started
            os.environ.update(env)
            ws = Workspace.find()
            runs = {t: variants(ws, Path(tmp), t)["evc"] for t in ("node1", "lab")}
            measure(runs, PLAYBOOKS, 1)  # warm: SSH masters, telemetry state on the nodes
            found = measure(runs, PLAYBOOKS, rounds)
            memory = node_memory(ws)
    print(f"{nodes} light nodes (lab up {up_s:.0f} s), median of {rounds}; load "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (shared machine)")  # fmt: skip
    worst = 0.0
    for playbook in PLAYBOOKS:
        one, all_ = (statistics.median(found[(t, playbook)][0]) for t in ("node1", "lab"))
        cpu_one, cpu_all = (statistics.median(found[(t, playbook)][1]) for t in ("node1", "lab"))
        worst = max(worst, all_ / one)
        print(f"  {playbook:14} 1 node {one:5.2f} s ({cpu_one:4.2f} CPU-s)  {nodes} nodes "
              f"{all_:5.2f} s ({cpu_all:4.2f} CPU-s)  ratio {all_ / one:4.2f}x")  # fmt: skip
    mib = [m / 2**20 for m in memory]
    print(f"memory per node: median {statistics.median(mib):.1f} MiB, max {max(mib):.1f} MiB, "
          f"all {sum(mib):.0f} MiB")  # fmt: skip
    print(f"worst {nodes}/1 ratio {worst:.2f}x  target <= 3x: {'PASS' if worst <= 3 else 'FAIL'}")
    return 0 if worst <= 3 else 1


def _scale_args(parser) -> None:
    parser.add_argument("--scale", type=int, metavar="N", help="N light nodes against one")
    parser.add_argument("--lab", default="evcscalebench", help="the --scale lab's name")


def main() -> int:
    args = lab_args(__doc__, ROUNDS, _scale_args)
    if args.scale:
        return scale(args.scale, args.rounds, args.lab)
    with (
        tempfile.TemporaryDirectory() as tmp,
        bench_lab(args.workspace, "evcfleetbench", "172.31.230.0/24", 8) as ws,
    ):
        plain = plain_playbooks(Path(tmp) / "plain")
        runs = variants(ws, plain, "lab")
        measure(runs, PLAYBOOKS, 1)  # warm: SSH masters, telemetry state on the nodes
        fleet_found = measure(runs, PLAYBOOKS, args.rounds)
        one = {k: v for k, v in variants(ws, plain, "node1").items() if k != "defaults"}
        shard_found = measure(one, ["ping.yml"], args.rounds)
    ratio = report(f"8 nodes, median of {args.rounds} (x: defaults' wall / this wall)",
                   fleet_found, PLAYBOOKS)  # fmt: skip
    print("one node, one task (the controller's part of a shard hand-over):")
    for name, (wall, used) in shard_found.items():
        w, c = statistics.median(wall), statistics.median(used)
        print(f"  {name[0]:12} wall {w:6.2f} s  cpu {c:5.2f} s (target < 0.4)")
    print(f"evc vs defaults, worst playbook: {ratio:.1f}x  target >= 2.5x: "
          f"{'PASS' if ratio >= 2.5 else 'FAIL'}")  # fmt: skip
    return 0 if ratio >= 2.5 else 1


if __name__ == "__main__":
    sys.exit(main())
